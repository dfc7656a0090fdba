"""HF checkpoints <-> spct-jax params: `from_pretrained` and `save_pretrained`.

A checkpoint folder is transformers' layout: `config.json` plus `model.safetensors` or shards listed in
`model.safetensors.index.json`. Loading streams one tensor at a time from memory-mapped files straight into the
(optionally sharded) device array, so host memory holds at most one tensor beyond the model. Only safetensors are
read: pickled `.bin` checkpoints are refused by design.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.models.config import ConfigError, ModelConfig
from spct_jax.models.safetensors_io import CheckpointReader, write_safetensors
from spct_jax.models.transformer import Decoder

Path_ = tuple[Any, ...]
# (hf tensor name, our state path, transpose?) — transformers' Linear stores [out, in], our Dense stores [in, out].
Mapping = list[tuple[str, Path_, bool]]
# Tensors transformers may write that carry no parameters of ours.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class WeightsError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor."""


def decoder_mapping(cfg: ModelConfig, *, prefix: Path_ = (), hf_prefix: str = "model.") -> Mapping:
    """Every parameter of a `Decoder` and its transformers name."""
    out: Mapping = [(f"{hf_prefix}embed_tokens.weight", prefix + ("embed",), False),
                    (f"{hf_prefix}norm.weight", prefix + ("final_norm", "scale"), False)]
    norms = {"input_layernorm": "input_norm", "post_attention_layernorm": "post_attn_norm"}
    if cfg.is_gemma:
        norms.update(pre_feedforward_layernorm="pre_mlp_norm", post_feedforward_layernorm="post_mlp_norm")
    for i in range(cfg.num_layers):
        hf, ours = f"{hf_prefix}layers.{i}.", prefix + ("layers", i)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.append((f"{hf}self_attn.{proj}.weight", ours + ("attn", proj, "kernel"), True))
            if cfg.qkv_bias and proj != "o_proj":
                out.append((f"{hf}self_attn.{proj}.bias", ours + ("attn", proj, "bias"), False))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            out.append((f"{hf}mlp.{proj}.weight", ours + ("mlp", proj, "kernel"), True))
        for hf_norm, our_norm in norms.items():
            out.append((f"{hf}{hf_norm}.weight", ours + (our_norm, "scale"), False))
    return out


def lm_mapping(cfg: ModelConfig) -> Mapping:
    m = decoder_mapping(cfg)
    if not cfg.tie_embeddings:
        m.append(("lm_head.weight", ("lm_head", "kernel"), True))
    return m


def read_hf_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no config.json")
    return json.loads(path.read_text())


def load_into(module: nnx.Module, folder: str | os.PathLike, mapping: Mapping, *, dtype,
              place: Callable[[Path_, np.ndarray], jax.Array] | None = None, strict: bool = True) -> nnx.Module:
    """Fill an (abstract or concrete) module's params from a checkpoint, one tensor at a time.

    place(path, host_array) puts a tensor on device(s), e.g. with the param's NamedSharding; the default
    is a plain device_put.
    """
    graphdef, state = nnx.split(module)
    flat = dict(nnx.to_flat_state(state))
    reader = CheckpointReader(folder)
    try:
        expected = {hf for hf, _, _ in mapping}
        missing = [hf for hf in expected if hf not in reader]
        if missing:
            raise WeightsError(f"{folder}: checkpoint is missing tensor {missing[0]!r}"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if strict:
            extra = [k for k in reader.keys() if k not in expected and not k.endswith(_IGNORED_SUFFIXES)
                     and not (k == "lm_head.weight" and "lm_head.weight" not in expected)]  # tied copies are harmless
            if extra:
                raise WeightsError(f"{folder}: unexpected tensor {extra[0]!r} for this model"
                                   + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        for hf, path, transpose in mapping:
            if path not in flat:
                raise WeightsError(f"internal: no parameter at {'/'.join(map(str, path))} for tensor {hf!r}")
            var = flat[path]
            want = tuple(var.shape)
            got = reader.shape(hf)
            got_t = tuple(reversed(got)) if transpose else got
            if got_t != want:
                raise WeightsError(f"{folder}: tensor {hf!r} has shape {got}, expected "
                                   f"{tuple(reversed(want)) if transpose else want}")
            view = reader.get(hf)
            # A private copy: the view aliases the memory map, which must not outlive the reader.
            host = np.array(view.T if transpose else view, dtype=np.float32, order="C")
            del view
            arr = jnp.asarray(host, dtype) if place is None else place(path, host.astype(jnp.dtype(dtype)))
            var.set_value(arr)
    finally:
        reader.close()
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def from_pretrained(path: str | os.PathLike, *, dtype=jnp.float32, compute_dtype=None,
                    place: Callable[[Path_, np.ndarray], jax.Array] | None = None) -> Decoder:
    """Load an HF causal-LM folder (Gemma-2, Llama, Qwen2) or a `.gguf` file into a `Decoder`.

    dtype: the params' dtype; compute_dtype defaults to it.
    """
    path = Path(path)
    if path.suffix == ".gguf":
        from spct_jax.models.gguf_import import from_gguf

        return from_gguf(path, dtype=dtype, compute_dtype=compute_dtype)
    cfg = ModelConfig.from_hf_config(read_hf_config(path))
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0), dtype=compute_dtype or dtype, param_dtype=dtype))
    return load_into(abstract, path, lm_mapping(cfg), dtype=dtype, place=place)


def export_tensors(module: nnx.Module, mapping: Mapping, dtype) -> list[tuple[str, tuple[int, ...], np.dtype, Callable]]:
    flat = dict(nnx.to_flat_state(nnx.state(module)))
    out = []
    for hf, path, transpose in mapping:
        var = flat[path]
        shape = tuple(reversed(var.shape)) if transpose else tuple(var.shape)

        def produce(var=var, transpose=transpose):
            host = np.asarray(jax.device_get(var[...]).astype(np.float32))
            return (host.T if transpose else host).astype(dtype)

        out.append((hf, shape, np.dtype(dtype), produce))
    return out


def write_checkpoint(folder: str | os.PathLike, hf_config: dict[str, Any], tensors, *, max_shard_bytes: int) -> None:
    """config.json plus one safetensors file, or shards and an index when larger than max_shard_bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[list] = [[]]
    size = 0
    for t in tensors:
        nbytes = int(np.prod(t[1], dtype=np.int64)) * np.dtype(t[2]).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    if len(shards) == 1:
        write_safetensors(folder / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(folder / name, shard)
            weight_map.update({t[0]: name for t in shard})
        total = sum(int(np.prod(t[1], dtype=np.int64)) * np.dtype(t[2]).itemsize for s in shards for t in s)
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps(hf_config, indent=1))


def save_pretrained(model: Decoder, path: str | os.PathLike, *, dtype=np.float32,
                    max_shard_bytes: int = 5 * 1024**3) -> None:
    """Write `model` as an HF causal-LM folder that transformers and vLLM load."""
    cfg = model.config
    hf_config = cfg.to_hf_config()
    hf_config["torch_dtype"] = {np.dtype(np.float32): "float32"}.get(np.dtype(dtype), "bfloat16")
    write_checkpoint(path, hf_config, export_tensors(model, lm_mapping(cfg), dtype), max_shard_bytes=max_shard_bytes)


__all__ = ["ConfigError", "WeightsError", "from_pretrained", "save_pretrained", "decoder_mapping", "load_into"]
