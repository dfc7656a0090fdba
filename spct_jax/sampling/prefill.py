"""The prompt pass: fill the KV cache from the prompts, in chunks, and hand every decode row its prefix.

With fan-out (the default) each row shard prefills its U distinct prompts once and its Q prompt slots read them as
one shared prefix, k rows per slot (`KVCache.shared_by`): nothing is copied k times. Without it every row
re-prefills its own prompt (the baseline fan-out replaces; tests compare the two).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from spct_jax.models.transformer import Decoder, KVCache

PREFILL_CHUNK = 512  # prompt buckets are powers of two, so longer prompts split evenly

Pin = Callable[..., jax.Array]  # pin(x, kind="rows"): a sharding constraint (layout.Layout.pin) or the identity


def no_pin(x, kind: str = "rows"):
    return x


def prefill(model: Decoder, ids: jax.Array, mask: jax.Array, cache: KVCache, pin: Pin = no_pin):
    """Prefill in chunks of PREFILL_CHUNK columns so attention scores are [chunk, S], never [P, S] at once, and
    project only the last column to the vocabulary (Gemma's 256k-wide logits for every prompt token would dwarf
    the cache). `pin` keeps the cache and hidden states on their row shards between chunks.
    ids, mask: [U, P] -> (cache, logits of the last column [U, V])."""
    u, p = ids.shape
    if p <= PREFILL_CHUNK:
        h, cache = model.hidden_states(ids, mask, cache, constrain=pin)
        return pin(cache, "cache"), pin(model.logits_from_hidden(h[:, -1]))
    split = lambda x: x.reshape(u, p // PREFILL_CHUNK, PREFILL_CHUNK).swapaxes(0, 1)  # [chunks, U, C]

    def one(cache, chunk):
        h, cache = model.hidden_states(pin(chunk[0]), pin(chunk[1]), cache, constrain=pin)
        return pin(cache, "cache"), pin(h[:, -1])

    cache, lasts = jax.lax.scan(one, cache, (split(ids), split(mask)))
    return cache, pin(model.logits_from_hidden(lasts[-1]))


def local_take(x: jax.Array, src: jax.Array, shards: int, axis: int = 0) -> jax.Array:
    """Rows of `x` (along `axis`) picked by `src` WITHIN each of `shards` contiguous row blocks, so that a device
    never reads another device's rows.  x: [..., S * U, ...], src: [S * Q] (indices into the row's own block of U)
    -> [..., S * Q, ...] (the KV cache's rows are its axis 1, after the stacked layers).

        x    [ u0 u1 u2 u3 | u4 u5 u6 u7 ]     (S = 2 blocks of U = 4, one per row shard)
        src  [ 0  0  3     | 1  2  2     ]     -> [ u0 u0 u3 | u5 u6 u6 ]

    A vmap over the shard axis makes it a gather with a batch dimension, which GSPMD partitions along that axis:
    no all-gather of `x` (a plain take with arbitrary indices would make every device gather the whole of it)."""
    pre, post = x.shape[:axis], x.shape[axis + 1:]
    u, q = x.shape[axis] // shards, src.shape[0] // shards
    xs = x.reshape(*pre, shards, u, *post)
    out = jax.vmap(lambda a, i: jnp.take(a, i, axis=axis), in_axes=(axis, 0), out_axes=axis)(
        xs, src.reshape(shards, q))  # [..., S, Q, ...]
    return out.reshape(*pre, shards * q, *post)


def fill(model: Decoder, ids: jax.Array, mask: jax.Array, prompt_src: jax.Array, *, rows_per_slot: int,
         new_slots: int, shards: int, fan_out: bool, pin: Pin = no_pin,
         prefix_slots: int = 1) -> tuple[KVCache, jax.Array]:
    """The cache and first logits of every decode row.  ids, mask: [S * U, P] left-padded prompts, U distinct ones
    per row shard; prompt_src: [S * Q] which prompt of its OWN shard each prompt slot is; rows_per_slot = k
    -> (cache for R = S * Q * k rows with `new_slots` own slots each, last-column logits [R, V]).

    Row q*k + j is sample j of prompt slot q. With a layout, shard s prefills its own U prompts, gathers its own
    Q prefixes from them and keeps its own Q * k rows; the cache is pinned before any write. With prefix_slots
    C > 1 (layout._grouped) slot q of a shard reads prompt q // C of it, so the U prefilled prompts are the
    prefixes as they are, each read by C * k rows: nothing is gathered."""
    u, p = ids.shape
    k = rows_per_slot
    ids, mask = pin(ids), pin(mask)
    if fan_out and prefix_slots > 1:
        cache, last = prefill(model, ids, mask, pin(model.init_cache(u, p), "cache"), pin)
        cache = pin(cache.shared_by(prefix_slots * k, new_slots), "cache")
        return cache, pin(jnp.repeat(last, prefix_slots * k, axis=0))  # [R = S * U * C * k, V]
    if fan_out:
        cache, last = prefill(model, ids, mask, pin(model.init_cache(u, p), "cache"), pin)
        take = lambda x, axis=0: local_take(x, prompt_src, shards, axis)  # noqa: E731
        rows_dim = cache.rows_dim  # k, v: [L, U, K, P, Dh]
        cache = dataclasses.replace(cache, k=take(cache.k, rows_dim), v=take(cache.v, rows_dim),
                                    valid=take(cache.valid), next_pos=take(cache.next_pos))
        cache = pin(cache.shared_by(k, new_slots), "cache")  # [Q, P] prefix read by k rows each; nothing recomputed
        return cache, pin(jnp.repeat(take(last), k, axis=0))  # [R, V]
    rows = prompt_src.shape[0] * k
    row_src = jnp.repeat(prompt_src, k)  # re-prefill every row (the baseline fan-out replaces)
    take = lambda x: local_take(x, row_src, shards)  # noqa: E731
    return prefill(model, pin(take(ids)), pin(take(mask)), pin(model.init_cache(rows, p + new_slots), "cache"), pin)
