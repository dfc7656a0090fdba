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

from spct_jax import paths
from spct_jax.models.config import ModelConfig
from spct_jax.models.transformer import Decoder, init_model
from spct_jax.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from spct_jax.tokenizers.save import TOKENIZER_FILES

NAMED = ("tiny-random", "smollm2-135m")


def tiny_random_config(vocab_size: int) -> ModelConfig:
    # 8192 positions: its byte tokenizer spends ~3.9K tokens on the App. G default template alone, so 4096 left no
    # room for an item plus the default 512 new tokens (`spct serve --model tiny-random` refused every request).
    # RoPE has no position table, so the number costs nothing until a sequence is that long.
    return ModelConfig(family="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=True, max_position_embeddings=8192,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)


def load_model(spec: str | os.PathLike, *, dtype=jnp.float32, seed: int = 0, compute_dtype=None,
               place: Callable[[tuple[Any, ...], np.ndarray], jax.Array] | None = None, mesh=None
               ) -> tuple[Decoder, Tokenizer]:
    """(model, tokenizer) for a `--model` value (a local, gcsfuse or `gs://` folder, a `.gguf`, or a name).

    dtype: the params' dtype; compute_dtype defaults to it. mesh: every param lands in the partition rules'
    layout on it (`parallel.rules`, the train steps' layout), and each process reads from an HF folder only the
    rows its own devices hold (`weights.load_into`); a `.gguf` is read whole on each process, tiny-random drawn
    whole. place(path, host_array): the older hook, given each tensor whole (e.g. `rule_placer(mesh)`).
    """
    if mesh is not None and place is not None:
        raise ValueError("load_model: give mesh= or place=, not both")
    spec_s = str(spec)
    if spec_s == "tiny-random":
        tok = ByteTokenizer()
        model = init_model(tiny_random_config(tok.vocab_size), seed=seed, dtype=compute_dtype or dtype,
                           param_dtype=dtype)
        if mesh is not None:
            from spct_jax.models.weights import rule_shardings

            sharding = rule_shardings(mesh)
            place = lambda path, host: jax.device_put(host, sharding(path, host.shape))  # noqa: E731
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
    from spct_jax.models.weights import from_pretrained

    path = paths.as_path(spec_s)
    if path.suffix == ".gguf":
        from spct_jax.models.gguf_import import load_gguf

        if mesh is not None:
            from spct_jax.parallel.rules import rule_placer

            place = rule_placer(mesh)
        return load_gguf(Path(spec_s), dtype=dtype, compute_dtype=compute_dtype, place=place)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {spec_s!r}: not a checkpoint folder, a .gguf file or one of {NAMED}")
    model = from_pretrained(path, dtype=dtype, compute_dtype=compute_dtype, place=place, mesh=mesh)
    return model, _tokenizer(path)


def _tokenizer(folder) -> Tokenizer:
    """The folder's tokenizer; a remote folder's small tokenizer files are copied to a local temp dir first."""
    if not paths.is_remote(folder):
        return load_tokenizer(Path(os.fspath(folder)))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in TOKENIZER_FILES:
            if (folder / name).exists():
                paths.copy_file(folder / name, Path(tmp) / name)
        return load_tokenizer(Path(tmp))


def describe_model(spec: str | os.PathLike) -> tuple[ModelConfig, Tokenizer]:
    """(config, tokenizer) of a `--model` value without reading its weights (e.g. to export a trained copy)."""
    spec_s = str(spec)
    if spec_s == "tiny-random":
        tok = ByteTokenizer()
        return tiny_random_config(tok.vocab_size), tok
    if spec_s == "smollm2-135m":
        from spct_jax.models.smollm2 import smollm2_gguf_path

        spec_s = str(smollm2_gguf_path())
    path = paths.as_path(spec_s)
    if path.suffix == ".gguf":
        from spct_jax.models.gguf_import import config_from_gguf, tokenizer_for

        return config_from_gguf(Path(spec_s)), tokenizer_for(Path(spec_s))
    if not path.is_dir():
        raise FileNotFoundError(f"--model {spec_s!r}: not a checkpoint folder, a .gguf file or one of {NAMED}")
    from spct_jax.models.weights import read_hf_config

    return ModelConfig.from_hf_config(read_hf_config(path)), _tokenizer(path)
