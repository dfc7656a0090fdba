"""Where a sampler call's rows go: prompts grouped into calls, calls laid out in row shards, arrays on the mesh.

A prompt slot is one prompt with `per_slot` rows (samples j0 .. j0 + per_slot - 1 of it). Slots go to the row
shards (the devices along the mesh's batch axes) in contiguous blocks of Q; each shard prefills the distinct
prompts of its own slots (U per shard, padded), so no device reads another's prefix:

    slots (S=2, Q=2)   shard 0: [p0 x4, p1 x4]   shard 1: [p2 x4, p2' x4]   (p2' = p2's samples 4..7)
    prompts            shard 0: [p0, p1]         shard 1: [p2, filler]

Lengths and counts are rounded up to powers of two (`bucket`) so that varied calls share compiled programs.
Every host builds the (small) host arrays whole and copies to its own devices only the rows they hold.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from spct_jax.models.padding import pad_rows
from spct_jax.parallel.mesh import batch_axes


def bucket(n: int, minimum: int = 16) -> int:
    """Round up to a power of two (at least `minimum`) so varied lengths share compiled programs."""
    return max(minimum, 1 << max(0, int(n - 1).bit_length()))


def length_bucketed_batches(lengths: Sequence[int], batch_size: int) -> list[tuple[list[int], int, int]]:
    """(row indices, padded rows, padded length) per batch of sequences scored in one forward pass: sorted by
    length so each batch pads little, rows and length rounded up by `bucket` to bound recompiles."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        out.append((idx, bucket(len(idx), minimum=1), bucket(max(lengths[i] for i in idx))))
    return out


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the sampler's arrays lie on a mesh: every row dim (prompts, prompt slots, decode rows) over the
    `row_axes` in contiguous blocks, KV heads over "tensor" when it divides them. Hashable: a jit static."""

    mesh: jax.sharding.Mesh
    row_axes: tuple[str, ...]

    @property
    def shards(self) -> int:
        return int(np.prod([self.mesh.shape[a] for a in self.row_axes]))

    def sharding(self, *spec) -> jax.sharding.NamedSharding:
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))

    @property
    def rows(self) -> jax.sharding.NamedSharding:
        return self.sharding(self.row_axes or None)

    def pin(self, x, kind: str = "rows"):
        """with_sharding_constraint: a whole KVCache ("cache"), or an array's leading dim over the row axes, with
        the head dim of q / k / v ("heads" [R, T, H, Dh]) or the MLP width ("ffn" [R, T, F]) over "tensor" when it
        divides (the model's activations: Decoder.hidden_states(constrain=...))."""
        if kind == "cache":
            return jax.lax.with_sharding_constraint(x, self._cache_shardings(x))
        if kind == "table":  # the embedding as the lookup reads it (rules.ACTIVATION_SPECS): whole over the rows
            tensor = self.mesh.shape.get("tensor", 1)
            return jax.lax.with_sharding_constraint(
                x, self.sharding("tensor" if tensor > 1 and x.shape[0] % tensor == 0 else None))
        spec = [self.row_axes or None] + [None] * (x.ndim - 1)
        tensor = self.mesh.shape.get("tensor", 1)
        if kind in ("heads", "ffn") and tensor > 1 and x.shape[2] % tensor == 0:
            spec[2] = "tensor"
        return jax.lax.with_sharding_constraint(x, self.sharding(*spec))

    def _cache_shardings(self, cache):
        """k, v [L, B, K, S, Dh] (the layers stacked, never split over devices), or a split cache's L buffers
        [B, K, S, Dh]: rows over the row axes, KV heads over tensor."""
        heads = cache.k[0].shape[1] if cache.split else cache.k.shape[2]
        tensor = "tensor" if "tensor" in self.mesh.axis_names and heads % self.mesh.shape["tensor"] == 0 else None
        rows = self.rows
        kv = self.sharding(None, self.row_axes or None, tensor, None, None)
        if cache.split:
            kv = (self.sharding(self.row_axes or None, tensor, None, None),) * len(cache.k)
        prefix = None if cache.prefix is None else dataclasses.replace(cache.prefix, k=kv, v=kv, valid=rows)
        return dataclasses.replace(cache, k=kv, v=kv, valid=rows, length=self.sharding(), next_pos=rows,
                                   prefix=prefix)


def layout_for(mesh: jax.sharding.Mesh | None, row_axes: str | Sequence[str] | None) -> Layout | None:
    """The layout of `sample(mesh=, data_axis=)`: rows over `row_axes`, default the mesh's batch axes."""
    if mesh is None:
        return None
    if row_axes is None:
        row_axes = batch_axes(mesh)
    row_axes = (row_axes,) if isinstance(row_axes, str) else tuple(row_axes)
    missing = [a for a in row_axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"row axes {missing} are not axes of the mesh {dict(mesh.shape)}")
    return Layout(mesh=mesh, row_axes=row_axes)


def groups(prompts: Sequence[Sequence[int]], num_samples: int, max_batch_rows: int) -> list[list[int]]:
    """Prompt indices per sampler call: same length bucket, at most max_batch_rows rows (at least one prompt)."""
    order = sorted(range(len(prompts)), key=lambda i: (bucket(len(prompts[i])), i))
    out: list[list[int]] = []
    for i in order:
        if (out and (len(out[-1]) + 1) * num_samples <= max_batch_rows
                and bucket(len(prompts[out[-1][0]])) == bucket(len(prompts[i]))):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _row_seed(prompt: Sequence[int], occurrence: int) -> int:
    digest = hashlib.blake2b(np.asarray(prompt, np.int64).tobytes() + occurrence.to_bytes(4, "little"), digest_size=4)
    return int.from_bytes(digest.digest(), "little") & 0x7FFFFFFF


def default_seeds(prompts: Sequence[Sequence[int]]) -> list[int]:
    """One seed per prompt: a hash of its tokens and its occurrence number among identical prompts, so a prompt's
    draws do not depend on what else is in the list or where it sits."""
    seen: Counter = Counter()
    seeds = []
    for p in prompts:
        seeds.append(_row_seed(p, seen[tuple(p)]))
        seen[tuple(p)] += 1
    return seeds


@dataclasses.dataclass(frozen=True)
class Call:
    """One sampler call, laid out for S row shards (S = 1 without a mesh); see the module docstring."""

    ids: np.ndarray  # [S * U, P] left-padded
    mask: np.ndarray  # [S * U, P]
    src: np.ndarray  # [S * Q] index of each slot's prompt within its shard's U
    slots: list[tuple[int, int] | None]  # [S * Q] (prompt index, first sample) or None for filler
    per_slot: int
    row_keys: np.ndarray  # [S * Q * per_slot, 2] (prompt seed, sample index) as uint32
    prefix_slots: int = 1  # C > 1: grouped, every prompt of a shard is read by C consecutive slots (see plan_call)


def _call(flat: list[tuple[int, ...]], src: np.ndarray, slots: list, per_slot: int, seeds: Sequence[int],
          pad_id: int, prefix_slots: int = 1) -> Call:
    """The Call of a layout: `flat` the [S * U] prompts to prefill, `src` and `slots` per slot."""
    ids, mask = pad_rows(flat, pad_id=pad_id, length=bucket(max(map(len, flat))), side="left")  # [S * U, P] each
    keys = [(0, 0) if slot is None else (seeds[slot[0]], slot[1] + j) for slot in slots for j in range(per_slot)]
    return Call(ids=ids, mask=mask, src=src, slots=slots, per_slot=per_slot, row_keys=np.asarray(keys, np.uint32),
                prefix_slots=prefix_slots)


def _padded_slots(n: int, shards: int) -> int:
    """n slots padded to a power of two, then to a multiple of the shards (every shard holds as many)."""
    return -(-bucket(n, minimum=1) // shards) * shards


def _grouped(group: Sequence[int], prompts: Sequence[Sequence[int]], seeds: Sequence[int], num_samples: int,
             shards: int, pad_id: int) -> Call | None:
    """The call with identical prompts' slots grouped, or None when grouping would not pay.

    Callers that give every sample its own seed (GenerativeRewardModel, RFT, GRPO: `prompt_seeds`) pass the same
    prompt many times with one sample each. Laid out plainly, each copy is its own slot and gathers its own copy of
    the prefix. Grouped, each distinct prompt gets C consecutive slots (padded with filler slots) and its C * k
    rows read ONE shared prefix, which `fill` then uses as it is (no gather):

        plain    slots [ a a a a b b ]            prefix per slot [ A A A A B B ]  (copies)
        grouped  slots [ a a a a | b b - - ]      prefix per group [ A | B ], C = 4

    Used when C > 1 and the grouped slots are no more than the plain call's padded slots (no extra rows)."""
    order: dict[tuple[int, ...], list[int]] = {}
    for i in group:
        order.setdefault(tuple(prompts[i]), []).append(i)
    c = bucket(max(map(len, order.values())), minimum=1)
    if c == 1:
        return None
    n_groups = _padded_slots(len(order), shards)  # every shard holds the same number of groups
    if n_groups * c > _padded_slots(len(group), shards):
        return None
    slots: list[tuple[int, int] | None] = []
    for members in order.values():
        slots += [(i, 0) for i in members] + [None] * (c - len(members))
    slots += [None] * (n_groups * c - len(slots))
    u = n_groups // shards
    flat = [(pad_id,) if slots[g * c] is None else tuple(prompts[slots[g * c][0]]) for g in range(n_groups)]
    src = np.tile(np.repeat(np.arange(u, dtype=np.int32), c), shards)  # slot -> its group within the shard
    return _call(flat, src, slots, num_samples, seeds, pad_id, prefix_slots=c)


def plan_call(group: Sequence[int], prompts: Sequence[Sequence[int]], seeds: Sequence[int], num_samples: int,
              shards: int, pad_id: int, share_identical: bool = True) -> Call:
    """Lay out the prompts `group` (indices into `prompts`), `num_samples` rows each, over `shards` row shards.
    With `share_identical`, repeated prompts are grouped to read one prefix when that costs no extra rows
    (`_grouped`)."""
    grouped = _grouped(group, prompts, seeds, num_samples, shards, pad_id) if share_identical else None
    if grouped is not None:
        return grouped
    # Fewer prompts than shards (k = 32 samples of one prompt on 8 devices): split each prompt's samples over
    # several slots, so every shard decodes rows instead of the rows padding up to a multiple of the shards.
    split = 1
    while len(group) * split < shards and num_samples % (2 * split) == 0:
        split *= 2
    per_slot = num_samples // split
    slots: list[tuple[int, int] | None] = [(i, t * per_slot) for i in group for t in range(split)]
    q_pad = _padded_slots(len(slots), shards)
    slots += [None] * (q_pad - len(slots))
    q = q_pad // shards
    blocks = []  # per shard: its distinct prompts (dedup within the shard only: a prefix is read where it lives)
    src = np.zeros(q_pad, np.int32)
    for sh in range(shards):
        unique: dict[tuple[int, ...], int] = {}
        for r in range(sh * q, (sh + 1) * q):
            key = (pad_id,) if slots[r] is None else tuple(prompts[slots[r][0]])  # filler: a 1-token prompt
            src[r] = unique.setdefault(key, len(unique))
        blocks.append(list(unique))
    u = bucket(max(map(len, blocks)), minimum=1)
    flat = [p for b in blocks for p in b + [(pad_id,)] * (u - len(b))]
    return _call(flat, src, slots, per_slot, seeds, pad_id)


@jax.jit
def row_key_data(base: jax.Array, seeds: jax.Array, samples: jax.Array) -> jax.Array:
    """Raw data of the key of each row, fold_in(fold_in(base, seed), sample).  seeds, samples: [R] uint32 (what
    fold_in turns its data into) -> [R, *key] uint32."""
    keys = jax.vmap(lambda s, j: jax.random.fold_in(jax.random.fold_in(base, s), j))(seeds, samples)
    return jax.random.key_data(keys)


def to_global(x: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
    """A host array that every process holds whole -> a global array on `sharding`: each process copies only the
    slices its own devices hold (jax.device_put cannot target another host's devices)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host; rows held by other hosts' devices are all-gathered (a collective: every
    process must call it)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
