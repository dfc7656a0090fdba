"""Where each checkpoint tensor lives in our params: the transformers-name <-> nnx-path mapping of a decoder, the
checkpoint-side shape of a param, and the stacked [L, ...] params a loader fills layer by layer.

Shared by the HF loader (weights.py), the GGUF importer (gguf_import.py) and the scalar head (scalar_head.py), so
none of them imports another for it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from spct_jax.models.config import ModelConfig

Path_ = tuple[Any, ...]


class TensorMap(NamedTuple):
    """One checkpoint tensor and where it lives in our params."""

    hf: str  # transformers' tensor name, e.g. "model.layers.3.self_attn.q_proj.weight"
    path: Path_  # our nnx state path, e.g. ("layers", "attn", "q_proj", "kernel")
    transpose: bool  # transformers' Linear stores [out, in], our Dense stores [in, out]
    layer: int | None = None  # the slice of a stacked [L, ...] param (the decoder's blocks), None: the whole param


Mapping = list[TensorMap]
# path, our (param) shape -> the sharding a loaded param gets, e.g. the partition rules' NamedSharding.
ShardingFn = Callable[[Path_, tuple[int, ...]], jax.sharding.Sharding]


class WeightsError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor."""


def decoder_mapping(cfg: ModelConfig, *, prefix: Path_ = (), hf_prefix: str = "model.") -> Mapping:
    """Every parameter of a `Decoder` and its transformers name: layer i's tensors are slice i of the stacked
    ("layers", ...) params."""
    out: Mapping = [TensorMap(f"{hf_prefix}embed_tokens.weight", prefix + ("embed",), False),
                    TensorMap(f"{hf_prefix}norm.weight", prefix + ("final_norm", "scale"), False)]
    norms = {"input_layernorm": "input_norm", "post_attention_layernorm": "post_attn_norm"}
    if cfg.is_gemma:
        norms.update(pre_feedforward_layernorm="pre_mlp_norm", post_feedforward_layernorm="post_mlp_norm")
    ours = prefix + ("layers",)
    for i in range(cfg.num_layers):
        hf = f"{hf_prefix}layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.append(TensorMap(f"{hf}self_attn.{proj}.weight", ours + ("attn", proj, "kernel"), True, i))
            if cfg.qkv_bias and proj != "o_proj":
                out.append(TensorMap(f"{hf}self_attn.{proj}.bias", ours + ("attn", proj, "bias"), False, i))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            out.append(TensorMap(f"{hf}mlp.{proj}.weight", ours + ("mlp", proj, "kernel"), True, i))
        for hf_norm, our_norm in norms.items():
            out.append(TensorMap(f"{hf}{hf_norm}.weight", ours + (our_norm, "scale"), False, i))
    return out


def lm_mapping(cfg: ModelConfig) -> Mapping:
    m = decoder_mapping(cfg)
    if not cfg.tie_embeddings:
        m.append(TensorMap("lm_head.weight", ("lm_head", "kernel"), True))
    return m


def tensor_shape(var_shape: tuple[int, ...], entry: TensorMap) -> tuple[int, ...]:
    """The checkpoint tensor's shape for a mapping entry whose param has `var_shape` (layer slice, [out, in])."""
    shape = tuple(var_shape[1:]) if entry.layer is not None else tuple(var_shape)
    return tuple(reversed(shape)) if entry.transpose else shape


def sharded_zeros(shape: tuple[int, ...], dtype: np.dtype, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """A zero array laid out by `sharding`, each device's shard copied in from calloc'd host pages (which cost
    nothing until read): no compiled program, whose code XLA:CPU would keep in host memory. The copy is forced
    (may_alias=False): an array aliasing a host buffer cannot be donated to the in-place layer writes."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shards = [jax.device_put(np.zeros(tuple(len(range(*s.indices(n))) for s, n in zip(index, shape)), dtype), device,
                             may_alias=False)
              for device, index in sharding.addressable_devices_indices_map(shape).items()]
    return jax.make_array_from_single_device_arrays(shape, sharding, shards)



def layer_sharding(stacked: NamedSharding) -> NamedSharding:
    """A stacked param's per-layer layout: its spec without the (never split) leading layer dim."""
    spec = tuple(stacked.spec)
    if spec and spec[0] is not None:
        raise WeightsError(f"a stacked param's layer dim must not be split, got {stacked.spec}")
    return NamedSharding(stacked.mesh, P(*spec[1:]))


class StackedParams:
    """The stacked [L, ...] params being filled layer by layer (see the module docstring)."""

    def __init__(self):
        self.arrays: dict[Path_, Any] = {}

    def put(self, path: Path_, shape: tuple[int, ...], dtype: np.dtype, layer: int, value: np.ndarray) -> None:
        """Assembled on the host (the place= hook and GGUF: each param is placed whole)."""
        self.arrays.setdefault(path, np.empty(shape, dtype))[layer] = value

    def device(self, path: Path_, shape: tuple[int, ...], dtype: np.dtype, sharding) -> jax.Array:
        """The stack on device, zeros until its layers are written (then replaced by `set`)."""
        if path not in self.arrays:
            self.arrays[path] = sharded_zeros(shape, dtype, sharding)
        return self.arrays.pop(path)

    def set(self, path: Path_, stack: jax.Array) -> None:
        self.arrays[path] = stack
