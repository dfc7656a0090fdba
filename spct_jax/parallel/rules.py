"""Partition rules: which mesh axes split each parameter, optimizer moment, KV-cache entry and activation.

A rule is (regex, PartitionSpec); a parameter's path is its nnx state path joined by "/", e.g.
"layers/attn/q_proj/kernel" or, inside the meta RM, "backbone/layers/attn/q_proj/kernel". The first rule
whose regex matches the WHOLE path wins. A parameter no rule matches is an error listing every such path: a
silently replicated 27B embedding would only show up as an out-of-memory on the pod.

Layouts (kernels are stored [in, out]). "fsdp" splits the model dim D of every matrix (ZeRO-3: a block's weights
are all-gathered just before use and its gradients reduce-scattered), "tensor" splits heads / MLP width / vocab
as in Megatron, so q/k/v/gate/up are column-parallel and o/down row-parallel (one reduction per sub-block):

    embed            [V, D]            P("tensor", "fsdp")
    lm_head          [D, V]            P("fsdp", "tensor")
    q/k/v_proj       [L, D, H*Dh]      P(None, "fsdp", "tensor")      bias [L, H*Dh]: P(None, "tensor")
    o_proj           [L, H*Dh, D]      P(None, "tensor", "fsdp")
    gate/up_proj     [L, D, F]         P(None, "fsdp", "tensor")
    down_proj        [L, F, D]         P(None, "tensor", "fsdp")
    *_norm scale     [L, D] / [D]      P()  (replicated: D floats per norm)
    score (meta RM)  [D, 1]            P("fsdp", None)

The blocks' params are stacked on a leading layer dim L (the decoder scans over it, models/transformer.py), which
is never split: every device holds its share of every layer, and the scan's step l reads slice l locally.

Axes a mesh lacks (e.g. the trainer's 1-device ("data", "fsdp") mesh has no "tensor") are dropped, i.e. size 1.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from spct_jax.parallel.mesh import batch_axes

Rule = tuple[str, P]
_PREFIX = r"(?:.*/)?"  # any wrapper (the meta RM's "backbone/") in front of a decoder path

DECODER_RULES: tuple[Rule, ...] = (
    (_PREFIX + r"embed", P("tensor", "fsdp")),
    (_PREFIX + r"lm_head/kernel", P("fsdp", "tensor")),
    # The blocks, stacked [L, ...]: the leading layer dim (None) is never split.
    (_PREFIX + r"layers/attn/(q|k|v)_proj/kernel", P(None, "fsdp", "tensor")),
    (_PREFIX + r"layers/attn/(q|k|v)_proj/bias", P(None, "tensor")),  # Qwen2
    (_PREFIX + r"layers/attn/o_proj/kernel", P(None, "tensor", "fsdp")),
    (_PREFIX + r"layers/mlp/(gate|up)_proj/kernel", P(None, "fsdp", "tensor")),
    (_PREFIX + r"layers/mlp/down_proj/kernel", P(None, "tensor", "fsdp")),
    (_PREFIX + r"layers/(input|post_attn|pre_mlp|post_mlp)_norm/scale", P()),
    (_PREFIX + r"final_norm/scale", P()),
)
SCALAR_HEAD_RULES: tuple[Rule, ...] = (
    (r"score/kernel", P("fsdp", None)),  # [D, 1]: the 1 cannot be split
)
DEFAULT_RULES: tuple[Rule, ...] = DECODER_RULES + SCALAR_HEAD_RULES


class ShardingRuleError(ValueError):
    """Parameters that no rule matches, or whose dims a mesh cannot split; the message lists every one."""


# -- paths ------------------------------------------------------------------------------------------------------
def _key_str(k: Any) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def path_str(keypath: Sequence[Any]) -> str:
    """"layers/0/attn/q_proj/kernel" from a jax key path. An nnx Variable's own ".value" key is dropped, so the
    path names the parameter, not the Variable's field."""
    keys = [_key_str(k) for k in keypath]
    if keypath and isinstance(keypath[-1], jax.tree_util.GetAttrKey) and keys[-1] == "value":
        keys = keys[:-1]
    return "/".join(keys)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """[(path, leaf)] in tree order."""
    return [(path_str(kp), leaf) for kp, leaf in jax.tree_util.tree_leaves_with_path(tree)]


# -- matching ---------------------------------------------------------------------------------------------------
def match_partition_rules(rules: Iterable[Rule], tree: Any) -> Any:
    """The tree (same structure: an nnx.State stays an nnx.State) with each leaf replaced by its PartitionSpec.

    Raises ShardingRuleError listing every unmatched path, and every spec with more entries than its leaf has dims.
    """
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]
    unmatched: list[str] = []
    too_long: list[str] = []

    def one(keypath, leaf):
        name = path_str(keypath)
        for regex, spec in compiled:
            if regex.fullmatch(name):
                if len(spec) > np.ndim(leaf):
                    too_long.append(f"{name} {tuple(np.shape(leaf))} <- {spec}")
                return spec
        unmatched.append(f"{name} {tuple(np.shape(leaf))}")
        return P()

    specs = jax.tree_util.tree_map_with_path(one, tree)
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} parameter(s) match no partition rule:\n  " + "\n  ".join(unmatched))
    if too_long:
        problems.append(f"{len(too_long)} rule(s) have more dims than their parameter:\n  " + "\n  ".join(too_long))
    if problems:
        raise ShardingRuleError("\n".join(problems))
    return specs


def unmatched_paths(rules: Iterable[Rule], tree: Any) -> list[str]:
    """Paths no rule matches (empty when the rules cover the tree)."""
    compiled = [re.compile(pattern) for pattern, _ in rules]
    return [name for name, _ in named_leaves(tree) if not any(r.fullmatch(name) for r in compiled)]


def _entry_axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def fit_spec_to_mesh(spec: P, shape: Sequence[int], mesh: Mesh | jax.sharding.AbstractMesh, name: str, *,
                     allow_replicate_fallback: bool = False, problems: list[str] | None = None) -> P:
    """Drop axes the mesh lacks; check every split dim divides evenly.

    A dim that does not divide is an error (appended to `problems`, or raised) unless `allow_replicate_fallback`,
    which keeps that one dim whole and warns.
    """
    entries = []
    for dim, entry in enumerate(spec):
        axes = tuple(a for a in _entry_axes(entry) if a in mesh.axis_names)
        ways = int(np.prod([mesh.shape[a] for a in axes]))
        if axes and shape[dim] % ways:
            msg = f"{name} {tuple(shape)}: dim {dim} ({shape[dim]}) does not divide over {axes} ({ways} ways)"
            if allow_replicate_fallback:
                warnings.warn(f"replicating one dim: {msg}", stacklevel=3)
                axes = ()
            elif problems is not None:
                problems.append(msg)
            else:
                raise ShardingRuleError(msg)
        entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while entries and entries[-1] is None:  # P("fsdp", None) == P("fsdp"); keep specs canonical
        entries.pop()
    return P(*entries)


def param_specs(mesh: Mesh | jax.sharding.AbstractMesh, tree: Any, rules: Iterable[Rule] = DEFAULT_RULES, *,
                allow_replicate_fallback: bool = False) -> Any:
    """PartitionSpecs fitted to `mesh` (see fit_spec_to_mesh); raises one error listing every bad parameter."""
    specs = match_partition_rules(rules, tree)
    problems: list[str] = []
    fitted = jax.tree_util.tree_map_with_path(
        lambda kp, leaf, spec: fit_spec_to_mesh(spec, np.shape(leaf), mesh, path_str(kp),
                                                allow_replicate_fallback=allow_replicate_fallback,
                                                problems=problems),
        tree, specs)
    if problems:
        raise ShardingRuleError(f"{len(problems)} parameter(s) cannot be split on mesh {dict(mesh.shape)} (pick "
                                "other axis sizes, or allow_replicate_fallback=True):\n  " + "\n  ".join(problems))
    return fitted


def param_shardings(mesh: Mesh, tree: Any, rules: Iterable[Rule] = DEFAULT_RULES, *,
                    allow_replicate_fallback: bool = False) -> Any:
    """NamedShardings with the tree's structure: the `param_shardings` argument of the train steps."""
    specs = param_specs(mesh, tree, rules, allow_replicate_fallback=allow_replicate_fallback)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs)


def rule_placer(mesh: Mesh, rules: Iterable[Rule] = DEFAULT_RULES
                ) -> Callable[[Sequence[Any], np.ndarray], jax.Array]:
    """`place(path, host_array)` for the weight loaders (`from_pretrained(..., place=...)`, `load_model`): each
    tensor goes straight into the NamedSharding the rules give its path, the layout `param_shardings` gives the
    loaded model, and each process copies only the shards its own devices hold. So no device ever holds a whole
    model, and a host holds one tensor at a time."""

    def place(path: Sequence[Any], host: np.ndarray) -> jax.Array:
        name = "/".join(map(str, path))
        spec = param_specs(mesh, {name: jax.ShapeDtypeStruct(host.shape, host.dtype)}, rules)[name]
        return jax.make_array_from_callback(host.shape, NamedSharding(mesh, spec), lambda index: host[index])

    return place


def spec_ways(spec: P, mesh: Mesh | jax.sharding.AbstractMesh) -> int:
    """How many ways `spec` splits an array on `mesh` (1 = a full copy on every device)."""
    return int(np.prod([mesh.shape[a] for e in spec for a in _entry_axes(e) if a in mesh.axis_names]))


# -- optimizer state ----------------------------------------------------------------------------------------------
def _mirror_params(opt_state: Any, params: Any, per_param: Any, scalar_value: Any) -> Any:
    """Map each optax-state leaf to the `per_param` value of the parameter it mirrors (path suffix AND shape,
    through any chain / masked wrapper); scalars (step counts) get `scalar_value`; anything else is an error."""
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], Any]] = {}
    for (name, leaf), value in zip(named_leaves(params), jax.tree.leaves(per_param)):
        by_path[tuple(name.split("/"))] = (tuple(np.shape(leaf)), value)
    lengths = sorted({len(k) for k in by_path}, reverse=True)
    unknown: list[str] = []

    def one(keypath, leaf):
        shape = tuple(np.shape(leaf))
        if len(shape) == 0:
            return scalar_value
        name = path_str(keypath)
        parts = tuple(p for p in name.split("/") if p)
        for n in lengths:
            hit = by_path.get(parts[-n:])
            if hit is not None and hit[0] == shape:
                return hit[1]
        unknown.append(f"{name} {shape}")
        return scalar_value

    out = jax.tree_util.tree_map_with_path(one, opt_state)
    if unknown:
        raise ShardingRuleError(f"{len(unknown)} optimizer-state array(s) mirror no parameter (an unplanned buffer "
                                "must not silently replicate):\n  " + "\n  ".join(unknown))
    return out


def opt_state_specs(opt_state: Any, params: Any, specs: Any) -> Any:
    """PartitionSpecs for an optax state: Adam's mu / nu follow their parameter, scalars are replicated."""
    return _mirror_params(opt_state, params, specs, P())


def opt_state_shardings(mesh: Mesh, opt_state: Any, params: Any, shardings: Any) -> Any:
    """NamedShardings for an optax state, mirroring the parameters' (see opt_state_specs)."""
    return _mirror_params(opt_state, params, shardings, NamedSharding(mesh, P()))


# -- KV cache ----------------------------------------------------------------------------------------------------
def kv_cache_shardings(mesh: Mesh, cache: Any) -> Any:
    """Shardings for a `KVCache` (or its eval_shape): rows over the batch axes, KV heads over "tensor" when the
    head count divides (else whole: GQA models can have fewer KV heads than tensor shards).

    k, v [L, B, K, S, Dh] (every layer stacked; L never split); valid [B, S]; next_pos [B]; length [] replicated.
    B must divide over the batch axes. A shared prefix (k, v [L, U, K, P, Dh], valid [U, P]) splits its prompts the
    same way when U divides, else it is replicated (k samples of one prompt on more devices than prompts).
    """
    rows = batch_axes(mesh)
    row_ways = int(np.prod([mesh.shape[a] for a in rows]))
    b = cache.valid.shape[0]
    if b % row_ways:
        raise ShardingRuleError(f"KV cache: {b} rows do not divide over the batch axes {rows} ({row_ways} ways)")
    kv_heads = cache.k.shape[2]
    tensor = "tensor" if "tensor" in mesh.axis_names and kv_heads % mesh.shape["tensor"] == 0 else None
    row_entry = rows if rows else None
    kv = NamedSharding(mesh, P(None, row_entry, tensor, None, None))
    rows_only = NamedSharding(mesh, P(row_entry))
    prefix = None
    if cache.prefix is not None:
        split = cache.prefix.valid.shape[0] % row_ways == 0
        p_kv = NamedSharding(mesh, P(None, row_entry if split else None, tensor, None, None))
        prefix = type(cache.prefix)(k=p_kv, v=p_kv, valid=NamedSharding(mesh, P(row_entry if split else None)))
    return type(cache)(k=kv, v=kv, valid=rows_only, length=NamedSharding(mesh, P()), next_pos=rows_only,
                       prefix=prefix)


# -- activations --------------------------------------------------------------------------------------------------
# Logical activation layouts; "batch" stands for the mesh's batch axes.
ACTIVATION_SPECS: dict[str, tuple[Any, ...]] = {
    "hidden": ("batch", None, None),  # [B, T, D] residual stream (D whole: the norms reduce over it)
    "heads": ("batch", None, "tensor", None),  # [B, T, H, Dh] q / k / v / attention output
    "ffn": ("batch", None, "tensor"),  # [B, T, F] MLP inner activations
    "logits": ("batch", None, "tensor"),  # [B, T, V]
    "rows": ("batch",),  # [B, ...] anything split by row only (scores, log-probs, tokens)
    # [V, D] the embedding table as the lookup reads it: whole over the batch axes (gathered like any FSDP weight),
    # so each device looks up its own rows; looking up a D-split table would give D-split activations, which
    # GSPMD can only turn into row-split ones by replicating them first.
    "table": ("tensor", None),
}


def activation_spec(mesh: Mesh, kind: str, shape: Sequence[int]) -> P:
    """The PartitionSpec of activation `kind` for an array of `shape` on `mesh`. Unlike parameters, a dim that
    does not divide is left unconstrained (GSPMD then picks): activations are transient, so a relaxed layout
    costs speed, never memory that the planner counted."""
    layout = ACTIVATION_SPECS[kind]
    if len(layout) > len(shape):
        raise ValueError(f"activation {kind!r} needs >= {len(layout)} dims, got shape {tuple(shape)}")
    entries: list[Any] = []
    for dim, entry in enumerate(layout):
        axes = batch_axes(mesh) if entry == "batch" else _entry_axes(entry)
        axes = tuple(a for a in axes if a in mesh.axis_names)
        ways = int(np.prod([mesh.shape[a] for a in axes]))
        entries.append(axes if axes and shape[dim] % ways == 0 else None)
    return P(*entries)


def constrain(x: jax.Array, mesh: Mesh | None, kind: str) -> jax.Array:
    """with_sharding_constraint to the `kind` layout; identity without a mesh (single-device code paths)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, activation_spec(mesh, kind, x.shape)))


__all__ = ["Rule", "DECODER_RULES", "SCALAR_HEAD_RULES", "DEFAULT_RULES", "ShardingRuleError", "path_str",
           "named_leaves", "match_partition_rules", "unmatched_paths", "fit_spec_to_mesh", "param_specs",
           "param_shardings", "rule_placer", "spec_ways", "opt_state_specs", "opt_state_shardings",
           "kv_cache_shardings", "ACTIVATION_SPECS", "activation_spec", "constrain"]
