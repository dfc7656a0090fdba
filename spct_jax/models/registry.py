"""`--model` names: a checkpoint folder, a `.gguf` file, or a named model (`tiny-random`, `smollm2-135m`).

`tiny-random` is a seeded random tiny decoder with a byte-level tokenizer, for smoke tests and examples (what users
know as the `tiny-random-*` test checkpoints). It writes garbage, which is exactly what exercises the parse-failure
paths end to end.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.models.config import ModelConfig
from spct_jax.models.transformer import Decoder, init_model
from spct_jax.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

NAMED = ("tiny-random", "smollm2-135m")


def tiny_random_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=True, max_position_embeddings=4096,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)


def load_model(spec: str | os.PathLike, *, dtype=jnp.float32, seed: int = 0, compute_dtype=None,
               place: Callable[[tuple[Any, ...], np.ndarray], jax.Array] | None = None
               ) -> tuple[Decoder, Tokenizer]:
    """(model, tokenizer) for a `--model` value.

    dtype: the params' dtype; compute_dtype defaults to it. place(path, host_array) puts each tensor on device(s)
    as it is read (e.g. `parallel.rules.rule_placer(mesh)`: straight into its sharded layout).
    """
    spec_s = str(spec)
    if spec_s == "tiny-random":
        tok = ByteTokenizer()
        model = init_model(tiny_random_config(tok.vocab_size), seed=seed, dtype=compute_dtype or dtype,
                           param_dtype=dtype)
        if place is not None:  # small enough to draw on one device first
            graphdef, state = nnx.split(model)
            flat = dict(nnx.to_flat_state(state))
            for path, var in flat.items():
                var.set_value(place(path, np.asarray(var[...])))
            model = nnx.merge(graphdef, nnx.from_flat_state(flat))
        return model, tok
    if spec_s == "smollm2-135m":
        from spct_jax.models.smollm2 import smollm2_gguf_path

        spec_s = str(smollm2_gguf_path())
    path = Path(spec_s)
    if path.suffix == ".gguf":
        from spct_jax.models.gguf_import import load_gguf

        return load_gguf(path, dtype=dtype, compute_dtype=compute_dtype, place=place)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {spec_s!r}: not a checkpoint folder, a .gguf file or one of {NAMED}")
    from spct_jax.models.weights import from_pretrained

    return from_pretrained(path, dtype=dtype, compute_dtype=compute_dtype, place=place), load_tokenizer(path)
