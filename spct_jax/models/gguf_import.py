"""GGUF (llama.cpp) checkpoints -> `Decoder`: `from_gguf`, `load_gguf`, `config_from_gguf`.

A GGUF file holds metadata (`<arch>.*` hyper-parameters, `tokenizer.*`) and tensors, possibly block-quantized
(Q4_1, Q8_0, ...). Everything is dequantized to float32 on the host with the `gguf` package and then cast to
the requested dtype, so a quantized file loads as an ordinary full-precision model: we never compute in the
quantized format.

Three conventions differ from transformers' checkpoints:
- Tensor names are llama.cpp's (`blk.3.attn_q.weight`); `_GGUF_TO_HF` renames them so that the HF-name table of
  `param_map.lm_mapping` (the one place that knows our param paths) can be reused.
- Shapes are listed in ggml order (fastest axis first). The data, read as a row-major numpy array, already has
  transformers' [out, in] layout, i.e. `reversed(tensor.shape)`.
- For Llama, llama.cpp's converter permutes the rows of q and k within each head from transformers' rotate-half
  layout to interleaved pairs (`_unpermute_rows` undoes it). Qwen2 files are not permuted.

The tokenizer is built from the same file by `spct_jax.tokenizer.tokenizer_from_gguf`; `load_gguf` returns both.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.models.config import ConfigError, ModelConfig
from spct_jax.models.transformer import Decoder
from spct_jax.models.param_map import StackedParams, WeightsError, lm_mapping, tensor_shape

if TYPE_CHECKING:
    from spct_jax.tokenizers.base import Tokenizer

# GGUF `general.architecture` -> our family. Gemma-2 files are refused: llama.cpp stores their norms as (1 + w)
# and renames the extra norms, which would need a mapping of its own.
_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
# Families whose q/k rows llama.cpp permutes (`LlamaModel.permute` in convert_hf_to_gguf.py).
_PERMUTED = {"llama"}

_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_BLOCK_NAMES = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
                "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
                "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
                "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
                "attn_v.bias": "self_attn.v_proj.bias", "ffn_gate.weight": "mlp.gate_proj.weight",
                "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight"}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def _gguf_to_hf(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK.fullmatch(name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"
    return None


def _unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation. w: [n_heads * Dh, ...] (a weight [out, in] or a bias [out]).

    llama.cpp stores each head's rows as Dh/2 interleaved (even, odd) pairs [Dh/2, 2]; transformers' rotate-half
    RoPE wants the two halves one after the other [2, Dh/2].
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _read(path: str | os.PathLike):
    import gguf  # optional dependency: only GGUF users need it

    return gguf.GGUFReader(os.fspath(path))


def _metadata(reader) -> dict[str, Any]:
    # The token list and merges are large and only the tokenizer needs them; their lengths are enough here.
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            out[key + "#len"] = len(field.data)
        else:
            out[key] = field.contents()
    return out


def config_from_gguf_metadata(meta: dict[str, Any], tensor_names: set[str], where: str = "GGUF") -> ModelConfig:
    """A ModelConfig from GGUF metadata and the file's tensor names (tying: `output.weight` absent; biases).

    meta is `_metadata`'s form: scalar fields as values, big arrays only as `<key>#len` lengths.
    """
    arch = meta.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise ConfigError(f"{where}: field 'general.architecture' is {arch!r}; supported: {sorted(_ARCHITECTURES)}")

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            raise ConfigError(f"{where}: metadata is missing field {full!r}")
        return meta[full]

    if meta.get(f"{arch}.expert_count"):
        raise ConfigError(f"{where}: field '{arch}.expert_count': mixture-of-experts models are not supported")
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none") or "rope_freqs.weight" in tensor_names:
        raise ConfigError(f"{where}: field '{arch}.rope.scaling.type' ({scaling!r}) / rope_freqs: only default RoPE "
                          "is supported")
    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rot = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rot != head_dim:
        raise ConfigError(f"{where}: field '{arch}.rope.dimension_count' is {rot} but head_dim is {head_dim}: "
                          "partial rotary embeddings are not supported")
    vocab = meta.get("tokenizer.ggml.tokens#len") or meta.get(f"{arch}.vocab_size")
    if not vocab:
        raise ConfigError(f"{where}: neither 'tokenizer.ggml.tokens' nor '{arch}.vocab_size' gives the vocab size")

    def token_id(kind: str) -> int | None:
        value = meta.get(f"tokenizer.ggml.{kind}_token_id")
        return None if value is None else int(value)

    return ModelConfig(
        family=_ARCHITECTURES[arch],
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")),
        num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10_000.0)),
        tie_embeddings="output.weight" not in tensor_names,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 8192)),
        pad_token_id=token_id("padding"),
        bos_token_id=token_id("bos"),
        eos_token_id=token_id("eos"),
    )


def config_from_gguf(path: str | os.PathLike) -> ModelConfig:
    reader = _read(path)
    return config_from_gguf_metadata(_metadata(reader), {t.name for t in reader.tensors}, where=str(path))


def from_gguf(path: str | os.PathLike, *, dtype=jnp.float32, compute_dtype=None,
              place: Callable[[tuple[Any, ...], np.ndarray], jax.Array] | None = None) -> Decoder:
    """Load a Llama or Qwen2 GGUF file into a `Decoder`, dequantizing every tensor.

    dtype: the params' dtype; compute_dtype defaults to it. place(path, host_array): puts each tensor on
    device(s), as in `weights.load_into`. The tokenizer: `tokenizer_for(path)`, or `load_gguf`.
    """
    import gguf

    reader = _read(path)
    names = {t.name for t in reader.tensors}
    cfg = config_from_gguf_metadata(_metadata(reader), names, where=str(path))
    permute = cfg.family in _PERMUTED
    targets = {m.hf: m for m in lm_mapping(cfg)}
    present = {_gguf_to_hf(n) for n in names}
    missing = sorted(hf for hf in targets if hf not in present)
    if missing:
        raise WeightsError(f"{path}: GGUF has no tensor for {missing[0]!r}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), dtype=compute_dtype or dtype, param_dtype=dtype))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    stacks = StackedParams()  # the blocks' params are stacked [L, ...]: assembled on the host, then placed whole
    for tensor in reader.tensors:
        hf = _gguf_to_hf(tensor.name)
        if hf is None or hf not in targets:
            raise WeightsError(f"{path}: unexpected tensor {tensor.name!r} for this model")
        entry = targets[hf]
        ours, transpose = entry.path, entry.transpose
        var = flat[ours]
        # ggml lists the fastest axis first, so reversed(shape) is the row-major [out, in] of transformers.
        rows_major = tuple(int(n) for n in reversed(tensor.shape))
        if rows_major != tensor_shape(tuple(var.shape), entry):
            raise WeightsError(f"{path}: tensor {tensor.name!r} has shape {rows_major} (as [out, in]), which does not "
                               f"fit parameter {'/'.join(map(str, ours))} of shape {tuple(var.shape)}"
                               + (f" (layer {entry.layer})" if entry.layer is not None else ""))
        try:
            host = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(rows_major)
        except NotImplementedError as e:
            raise WeightsError(f"{path}: tensor {tensor.name!r}: {e}") from None
        if permute and ".attn_q." in tensor.name:
            host = _unpermute_rows(host, cfg.num_heads)
        elif permute and ".attn_k." in tensor.name:
            host = _unpermute_rows(host, cfg.num_kv_heads)
        host = np.ascontiguousarray(host.T if transpose else host)  # [out, in] -> our Dense's [in, out]
        if entry.layer is not None:
            stacks.put(ours, tuple(var.shape), np.dtype(jnp.dtype(dtype)), entry.layer, host)
            continue
        var.set_value(jnp.asarray(host, dtype) if place is None else place(ours, host.astype(jnp.dtype(dtype))))
    for ours, host in stacks.arrays.items():
        flat[ours].set_value(jnp.asarray(host) if place is None else place(ours, host))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def tokenizer_for(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer a GGUF file describes (BPE vocab and merges, chat format from its template)."""
    from spct_jax.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(Path(path))


def load_gguf(path: str | os.PathLike, *, dtype=jnp.float32, compute_dtype=None,
              place: Callable[[tuple[Any, ...], np.ndarray], jax.Array] | None = None) -> tuple[Decoder, Tokenizer]:
    """(Decoder, tokenizer) from one GGUF file; keyword arguments as `from_gguf`."""
    return from_gguf(path, dtype=dtype, compute_dtype=compute_dtype, place=place), tokenizer_for(path)


__all__ = ["config_from_gguf", "config_from_gguf_metadata", "from_gguf", "load_gguf", "tokenizer_for"]
