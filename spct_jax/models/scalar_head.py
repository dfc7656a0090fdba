"""`ScalarRM`: the meta RM's model, a `Decoder` backbone plus a linear `score` head on the last non-pad token.

Checkpoints use transformers' `XForSequenceClassification` layout with `num_labels=1` (base under `model.`, head
`score.weight` [1, D], no bias), which is how the released DeepSeek-GRM-27B-MetaRM is shaped. A ScalarRM is a
module of its own, so its params, optimiser state and checkpoints never mix with the GRM's even when both start
from the same base model (`ScalarRM.from_decoder`).

The backbone is built with `tie_embeddings=True` only so that `Decoder` creates no `lm_head`: a scalar RM never
produces token logits, and sequence-classification checkpoints carry no `lm_head.weight`.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.models.config import ConfigError, ModelConfig
from spct_jax.models.transformer import Decoder, Dense
from spct_jax.models.param_map import Mapping, Path_, TensorMap, decoder_mapping
from spct_jax.models.weights import (export_tensors, load_into, read_hf_config, rule_shardings, spans_processes,
                                     write_checkpoint)

_ARCHITECTURES = {"gemma2": "Gemma2ForSequenceClassification", "llama": "LlamaForSequenceClassification",
                  "qwen2": "Qwen2ForSequenceClassification"}


def _backbone_config(config: ModelConfig) -> ModelConfig:
    return config.replace(tie_embeddings=True)


class ScalarRM(nnx.Module):
    """`rm(input_ids [B, T], attention_mask [B, T]) -> scores [B]` (float32 logits, unbounded).

    The score is read at the last position whose mask is 1, so left- and right-padded batches both work; a row
    with no real token scores its column 0 (as transformers does).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        self.config = _backbone_config(config)
        self.backbone = Decoder(self.config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.score = Dense(config.hidden_size, 1, use_bias=False, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        b, t = input_ids.shape
        mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        h, _ = self.backbone.hidden_states(input_ids, mask)  # [B, T, D]
        last = jnp.argmax(jnp.where(mask, jnp.arange(t), -1), axis=1)  # [B] rightmost real token (0 if none)
        h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # [B, D]
        # The head runs in float32: it is one [D] dot product per row, and BCE on bf16 logits loses resolution.
        return (h_last.astype(jnp.float32) @ self.score.kernel[...].astype(jnp.float32))[:, 0]

    @classmethod
    def from_decoder(cls, decoder: Decoder, seed: int = 0) -> "ScalarRM":
        """A meta RM starting from a pretrained LM's backbone (the paper's starts from Gemma-2-27B base).

        The new module references the decoder's current arrays (jax arrays are immutable, so training the RM never
        changes the decoder) and gets a fresh `score` head drawn from `seed`; the LM head, if any, is dropped.
        """
        param_dtype = decoder.embed[...].dtype
        abstract = nnx.eval_shape(lambda: cls(decoder.config, rngs=nnx.Rngs(0), dtype=decoder.dtype,
                                              param_dtype=param_dtype))
        graphdef, state = nnx.split(abstract)
        flat = dict(nnx.to_flat_state(state))
        for path, var in nnx.to_flat_state(nnx.state(decoder)):
            if path[0] == "lm_head":
                continue
            flat[("backbone",) + path].set_value(var[...])
        head = Dense(decoder.config.hidden_size, 1, use_bias=False, rngs=nnx.Rngs(params=seed), param_dtype=param_dtype)
        flat[("score", "kernel")].set_value(head.kernel[...])
        return nnx.merge(graphdef, nnx.from_flat_state(flat))


def init_scalar_rm(config: ModelConfig, *, seed: int = 0, dtype=jnp.float32, param_dtype=jnp.float32) -> ScalarRM:
    """A randomly initialised ScalarRM (tests, toy runs); use `from_decoder` or `load_scalar_rm` for real ones."""
    return ScalarRM(config, rngs=nnx.Rngs(params=seed), dtype=dtype, param_dtype=param_dtype)


def scalar_rm_mapping(config: ModelConfig) -> Mapping:
    """Every ScalarRM parameter and its transformers sequence-classification name."""
    return decoder_mapping(config, prefix=("backbone",), hf_prefix="model.") + [
        TensorMap("score.weight", ("score", "kernel"), True)]


def _num_labels(hf: dict) -> int:
    # transformers writes id2label; a config without it means the library default of 2 labels.
    id2label = hf.get("id2label")
    return len(id2label) if id2label else int(hf.get("num_labels", 2))


def load_scalar_rm(path: str | os.PathLike, *, dtype=jnp.float32, compute_dtype=None,
                   place: Callable[[Path_, np.ndarray], jax.Array] | None = None, mesh=None) -> ScalarRM:
    """Load an HF `{Gemma2,Llama,Qwen2}ForSequenceClassification` folder with `num_labels=1`.

    dtype: the params' dtype; compute_dtype defaults to it. mesh: params land in the partition rules' layout,
    each process reading only its own devices' rows; place: the older whole-tensor hook (`weights.load_into`).
    """
    if mesh is not None and place is not None:
        raise ValueError("load_scalar_rm: give mesh= or place=, not both")
    hf = read_hf_config(path)
    labels = _num_labels(hf)
    if labels != 1:
        raise ConfigError(f"{path}: field 'id2label' gives num_labels={labels}; a scalar RM needs num_labels=1")
    cfg = ModelConfig.from_hf_config(hf)
    abstract = nnx.eval_shape(lambda: ScalarRM(cfg, rngs=nnx.Rngs(0), dtype=compute_dtype or dtype, param_dtype=dtype))
    return load_into(abstract, path, scalar_rm_mapping(abstract.config), dtype=dtype, place=place,
                     sharding=None if mesh is None else rule_shardings(mesh))


def scalar_rm_hf_config(cfg: ModelConfig, dtype) -> dict:
    """transformers' config.json of a sequence-classification RM (num_labels=1) with `cfg`'s backbone."""
    if cfg.pad_token_id is None:
        raise ConfigError("field 'pad_token_id' is None: transformers cannot pick the scored token of a padded "
                          "batch without it; build the RM with config.replace(pad_token_id=...)")
    hf = _backbone_config(cfg).to_hf_config()
    hf.update(architectures=[_ARCHITECTURES[cfg.family]], id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
              torch_dtype={np.dtype(np.float32): "float32"}.get(np.dtype(dtype), "bfloat16"))
    return hf


def save_scalar_rm(rm: ScalarRM, path: str | os.PathLike, *, dtype=np.float32,
                   max_shard_bytes: int = 5 * 1024**3, extra_files=None) -> None:
    """Write `rm` as an HF `XForSequenceClassification` folder (num_labels=1) that transformers loads.

    transformers finds the scored token by `input_ids != pad_token_id`, so the config must name a pad token.
    An RM whose params span processes is written collectively: call it on every process (`write_checkpoint`).
    """
    cfg = rm.config
    hf = scalar_rm_hf_config(cfg, dtype)
    write_checkpoint(path, hf, export_tensors(rm, scalar_rm_mapping(cfg), dtype), max_shard_bytes=max_shard_bytes,
                     collective=spans_processes(rm), extra_files=extra_files)


__all__ = ["ScalarRM", "init_scalar_rm", "load_scalar_rm", "save_scalar_rm", "scalar_rm_hf_config",
           "scalar_rm_mapping"]
