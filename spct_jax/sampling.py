"""Batched sampling of k parallel continuations per prompt: one prefill, a fanned-out KV cache, a jitted loop.

SPCT samples many critiques of one long prompt (Voting@k with k = 8 or 32, N_RFT = 3, GRPO's G = 4), so the prompt is
prefilled ONCE and its cache is fanned out to k rows. The fan-out does not even copy it: the prompt's keys and
values stay one shared prefix (`SharedPrefix` in models/transformer.py) that its k rows read, and each row owns
only the slots it generates:

    prefill (U distinct prompts, left-padded to bucket P)    decode (Q prompt slots x k rows)
    prefix slots 0 ........ P-1                              own slots 0 ...... N-1   (global slot P + s)
    prompt 0    [ . . a b c d ]  <---- rows 0 .. k-1         row 0      [ x1 x2 ...      ]
    prompt 1    [ e f g h i j ]  <---- rows k .. 2k-1        row 1      [ y1 y2 ...      ]
                  ^ left pad, never visible                  ...          ^ k different draws per prompt

Reading the prompt once per step for all k rows (one [k*G, Dh] x [Dh, P] matmul per KV head) instead of k
copies is what makes k = 32 cheap. Identical prompts (e.g. two samples that drew the same response order) are
prefilled once too: prompt slots gather their prefix by a slot -> distinct-prompt index. Every row writes its
t-th new token at own slot t, so one decode step is one column for the whole batch. Rows that have emitted a
stop token keep running (the loop is batched) but their outputs are frozen and cut on the host.

Randomness is per row: the key of (prompt, sample j, step t) is derived from `seed`, the prompt's own tokens (and
its occurrence number among identical prompts), j and t. A row's draws therefore do not depend on what else is in
the batch or where the prompt sits in the list, nor on how the rows are split over devices or hosts.

With a mesh that spans several processes (multi-controller JAX), every process runs `sample` with the same
arguments: each builds the (small) host inputs whole but copies to its devices only the rows they hold, and
every process gets the whole `Samples` back (the outputs are all-gathered across hosts).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from spct_jax.models.transformer import Decoder
from spct_jax.parallel.compilation import compile_phase
from spct_jax.parallel.mesh import batch_axes

_TRACES: Counter = Counter()  # incremented at trace time only: one count per compiled (shape, static-config) bucket
_BISECT_STEPS = 32
PREFILL_CHUNK = 512  # prompt buckets are powers of two, so longer prompts split evenly


def compile_count() -> int:
    """How many times the sampling program has been traced (compiled) in this process."""
    return sum(_TRACES.values())


@dataclasses.dataclass(frozen=True)
class Samples:
    """tokens[i][j]: ids generated for prompt i, sample j, up to and including the first stop token.
    logprobs[i][j]: their log-probabilities under the sampling distribution (temperature, top-k/top-p applied;
    for greedy decoding, under the model's own distribution)."""

    tokens: list[list[list[int]]]
    logprobs: list[list[list[float]]]

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for row in self.tokens for s in row)


@dataclasses.dataclass(frozen=True)
class _Static:
    num_samples: int
    new_bucket: int
    greedy: bool
    top_k: int | None
    use_top_p: bool
    stop_tokens: tuple[int, ...]
    pad_id: int
    fan_out: bool = True  # False re-prefills each prompt k times (the baseline that fan-out replaces)


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


def _top_p_mask(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep the smallest set of highest-probability tokens whose mass reaches top_p, without sorting V.

    Bisection on a probability threshold tau: mass(p >= tau) is non-increasing in tau, so we search for the largest
    tau whose mass still reaches top_p. 32 halvings of [0, max p] resolve it far below float32 spacing of any
    realistic probability; ties at the threshold are kept.   logits: [R, V]
    """
    probs = jax.nn.softmax(logits, axis=-1)
    lo = jnp.zeros(probs.shape[:-1], probs.dtype)
    hi = jnp.max(probs, axis=-1)

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        mass = jnp.sum(jnp.where(probs >= mid[:, None], probs, 0.0), axis=-1)
        ok = mass >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, _BISECT_STEPS, step, (lo, hi))
    return probs >= lo[:, None]


_CDF_BLOCK = 256  # inverse-CDF search: one cumsum over V / 256 block sums, then one within the chosen block


def _draw(probs: jax.Array, u: jax.Array) -> jax.Array:
    """Inverse-CDF sampling: the first token whose cumulative probability reaches u * total.

    One uniform per row instead of a Gumbel draw per vocabulary entry (the Gumbel noise was most of a decode
    step's sampling cost at V = 32k). Two levels (block sums, then inside one block) keep the cumsums short.
    A zero-probability token (masked by top-k/top-p) is never chosen: the first index whose running sum reaches
    x > 0 always adds positive mass.   probs: [R, V] (need not be normalised), u: [R] in (0, 1] -> [R] int32.
    """
    r, v = probs.shape
    nb = -(-v // _CDF_BLOCK)
    blocks = jnp.pad(probs, ((0, 0), (0, nb * _CDF_BLOCK - v))).reshape(r, nb, _CDF_BLOCK)  # [R, NB, BLK]
    ends = jnp.cumsum(jnp.sum(blocks, axis=-1), axis=-1)  # [R, NB] running mass at each block's end
    x = u * ends[:, -1]  # [R]
    blk = jnp.minimum(jnp.sum(ends < x[:, None], axis=-1), nb - 1)  # first block whose end reaches x
    before = jnp.where(blk > 0, jnp.take_along_axis(ends, jnp.maximum(blk - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    inner = jnp.take_along_axis(blocks, blk[:, None, None], axis=1)[:, 0]  # [R, BLK]
    within = jnp.sum(before[:, None] + jnp.cumsum(inner, axis=-1) < x[:, None], axis=-1)
    # Rounding can leave x just above the block's own running sum: fall back to its last positive entry.
    last_pos = jnp.max(jnp.where(inner > 0, jnp.arange(_CDF_BLOCK), -1), axis=-1)
    return (blk * _CDF_BLOCK + jnp.minimum(within, last_pos)).astype(jnp.int32)


def _choose(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array, st: _Static):
    """One token per row.  logits: [R, V] float32, keys: [R] -> (tokens [R], logprobs [R])."""
    if st.greedy:
        tok = jnp.argmax(logits, axis=-1)
        lp = jax.nn.log_softmax(logits, axis=-1)
        return tok, jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]
    scaled = logits / temperature
    if st.top_k is not None:
        kth = jax.lax.top_k(scaled, st.top_k)[0][:, -1:]  # [R, 1]; lax.top_k is a partial selection, not a sort
        scaled = jnp.where(scaled >= kth, scaled, -jnp.inf)
    if st.use_top_p:
        scaled = jnp.where(_top_p_mask(scaled, top_p), scaled, -jnp.inf)
    lp = jax.nn.log_softmax(scaled, axis=-1)
    u = 1.0 - jax.vmap(lambda k: jax.random.uniform(k, ()))(keys)  # (0, 1]
    tok = _draw(jnp.exp(lp), u)
    return tok, jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]


def _prefill(model: Decoder, ids: jax.Array, mask: jax.Array, cache, pin=lambda x, kind="rows": x):
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


def _local_take(x: jax.Array, src: jax.Array, shards: int, axis: int = 0) -> jax.Array:
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


def _generate(graphdef, state, ids, mask, prompt_src, row_key_data, max_new, temperature, top_p, *, st: _Static,
              layout: "_Layout | None"):
    """ids, mask: [S * U, P] left-padded prompts, U distinct ones per row shard; prompt_src: [S * Q] which prompt of
    its OWN shard each prompt slot is; row_key_data: [R = S * Q * k, *key] uint32 raw key data, row q*k + j is
    sample j of prompt slot q -> (tokens [R, N], logprobs [R, N], steps).

    With a layout (a mesh), every array with a row dim is split over the row shards in contiguous blocks: shard s
    prefills its own U prompts, gathers its own Q prefixes from them and decodes its own Q * k rows. Without one,
    S = 1 and the same program runs on one device.
    """
    _TRACES[(ids.shape, prompt_src.shape, st)] += 1
    model: Decoder = nnx.merge(graphdef, state)
    # Keys arrive as raw uint32 data so that the host can build them and split them over devices like any array.
    row_keys = jax.random.wrap_key_data(row_key_data)  # [R]
    u, p = ids.shape
    k, n = st.num_samples, st.new_bucket
    rows = prompt_src.shape[0] * k
    shards = 1 if layout is None else layout.shards
    pin = (lambda x, kind="rows": x) if layout is None else layout.pin
    ids, mask = pin(ids), pin(mask)
    if st.fan_out:
        # Prefill each shard's distinct prompts once, on that shard (the cache is pinned before any write).
        cache, last = _prefill(model, ids, mask, pin(model.init_cache(u, p), "cache"), pin)
        take = lambda x, axis=0: _local_take(x, prompt_src, shards, axis)  # noqa: E731
        rows_dim = cache.rows_dim  # k, v: [L, U, K, P, Dh]
        cache = dataclasses.replace(cache, k=take(cache.k, rows_dim), v=take(cache.v, rows_dim),
                                    valid=take(cache.valid), next_pos=take(cache.next_pos))
        cache = pin(cache.shared_by(k, n), "cache")  # [Q, P] prefix read by k rows each; nothing recomputed
        last = pin(jnp.repeat(take(last), k, axis=0))  # [R, V]
    else:
        row_src = jnp.repeat(prompt_src, k)  # re-prefill every row (the baseline fan-out replaces)
        take = lambda x: _local_take(x, row_src, shards)  # noqa: E731
        cache, last = _prefill(model, pin(take(ids)), pin(take(mask)), pin(model.init_cache(rows, p + n), "cache"),
                               pin)
    stops = jnp.asarray(st.stop_tokens, jnp.int32)
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))

    def cond(c):
        step, _, _, done, _, _ = c
        return (step < max_new) & ~jnp.all(done)

    def body(c):
        step, toks, lps, done, cache, logits = c
        tok, lp = _choose(logits, fold(row_keys, step), temperature, top_p, st)
        tok = jnp.where(done, st.pad_id, tok).astype(jnp.int32)  # finished rows stop changing
        lp = jnp.where(done, 0.0, lp)
        toks = jax.lax.dynamic_update_slice_in_dim(toks, tok[:, None], step, axis=1)
        lps = jax.lax.dynamic_update_slice_in_dim(lps, lp[:, None], step, axis=1)
        hit = jnp.any(tok[:, None] == stops[None, :], axis=-1) if st.stop_tokens else jnp.zeros_like(done)
        done = done | hit
        logits, cache = model.extend(tok[:, None], jnp.ones((rows, 1), bool), cache, constrain=pin)
        return step + 1, pin(toks), pin(lps), pin(done), pin(cache, "cache"), pin(logits[:, -1])

    init = (jnp.zeros((), jnp.int32), pin(jnp.full((rows, n), st.pad_id, jnp.int32)),
            pin(jnp.zeros((rows, n), jnp.float32)), pin(jnp.zeros((rows,), bool)), cache, last)
    steps, toks, lps, _, _, _ = jax.lax.while_loop(cond, body, init)
    return toks, lps, steps


@dataclasses.dataclass(frozen=True)
class _Layout:
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
        """k, v [L, B, K, S, Dh] (the layers stacked, never split): rows over the row axes, KV heads over tensor."""
        heads = cache.k.shape[2]
        tensor = "tensor" if "tensor" in self.mesh.axis_names and heads % self.mesh.shape["tensor"] == 0 else None
        kv, rows = self.sharding(None, self.row_axes or None, tensor, None, None), self.rows
        prefix = None if cache.prefix is None else dataclasses.replace(cache.prefix, k=kv, v=kv, valid=rows)
        return dataclasses.replace(cache, k=kv, v=kv, valid=rows, length=self.sharding(), next_pos=rows,
                                   prefix=prefix)


_jitted_generate = jax.jit(_generate, static_argnames=("st", "layout"))


@jax.jit
def _row_key_data(base: jax.Array, seeds: jax.Array, samples: jax.Array) -> jax.Array:
    """Raw data of the key of each row, fold_in(fold_in(base, seed), sample).  seeds, samples: [R] uint32 (what
    fold_in turns its data into) -> [R, *key] uint32."""
    keys = jax.vmap(lambda s, j: jax.random.fold_in(jax.random.fold_in(base, s), j))(seeds, samples)
    return jax.random.key_data(keys)


def _to_global(x: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
    """A host array that every process holds whole -> a global array on `sharding`: each process copies only the
    slices its own devices hold (jax.device_put cannot target another host's devices)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole array on this host; rows held by other hosts' devices are all-gathered (a collective: every
    process must call it)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _row_seed(prompt: Sequence[int], occurrence: int) -> int:
    digest = hashlib.blake2b(np.asarray(prompt, np.int64).tobytes() + occurrence.to_bytes(4, "little"), digest_size=4)
    return int.from_bytes(digest.digest(), "little") & 0x7FFFFFFF


def _pad_left(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for r, p in enumerate(prompts):
        ids[r, length - len(p):] = p
        mask[r, length - len(p):] = True
    return ids, mask


@dataclasses.dataclass(frozen=True)
class _Call:
    """One sampler call, laid out for S row shards (S = 1 without a mesh).

    A prompt slot is one prompt with `per_slot` rows (samples j0 .. j0 + per_slot - 1 of it). Slots go to shards in
    contiguous blocks of Q; each shard prefills the distinct prompts of its own slots (U per shard, padded):

        slots (S=2, Q=2)   shard 0: [p0 x4, p1 x4]   shard 1: [p2 x4, p2' x4]   (p2' = p2's samples 4..7)
        prompts            shard 0: [p0, p1]         shard 1: [p2, filler]
    """

    ids: np.ndarray  # [S * U, P] left-padded
    mask: np.ndarray  # [S * U, P]
    src: np.ndarray  # [S * Q] index of each slot's prompt within its shard's U
    slots: list[tuple[int, int] | None]  # [S * Q] (prompt index, first sample) or None for filler
    per_slot: int
    row_keys: np.ndarray  # [S * Q * per_slot, 2] (prompt seed, sample index) as uint32


def _plan_call(group: Sequence[int], prompts: Sequence[Sequence[int]], seeds: Sequence[int], num_samples: int,
               shards: int, pad_id: int) -> _Call:
    # Fewer prompts than shards (k = 32 samples of one prompt on 8 devices): split each prompt's samples over
    # several slots, so every shard decodes rows instead of the rows padding up to a multiple of the shards.
    split = 1
    while len(group) * split < shards and num_samples % (2 * split) == 0:
        split *= 2
    per_slot = num_samples // split
    slots: list[tuple[int, int] | None] = [(i, t * per_slot) for i in group for t in range(split)]
    q_pad = bucket(len(slots), minimum=1)
    q_pad = -(-q_pad // shards) * shards  # every shard holds the same number of slots
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
    length = bucket(max(len(p) for b in blocks for p in b))
    flat = [p for b in blocks for p in b + [(pad_id,)] * (u - len(b))]
    ids, mask = _pad_left(flat, length, pad_id)
    keys = [(0, 0) if slot is None else (seeds[slot[0]], slot[1] + j) for slot in slots for j in range(per_slot)]
    return _Call(ids=ids, mask=mask, src=src, slots=slots, per_slot=per_slot, row_keys=np.asarray(keys, np.uint32))


def _groups(prompts: Sequence[Sequence[int]], num_samples: int, max_batch_rows: int) -> list[list[int]]:
    """Prompt indices per sampler call: same length bucket, at most max_batch_rows rows (at least one prompt)."""
    order = sorted(range(len(prompts)), key=lambda i: (bucket(len(prompts[i])), i))
    groups: list[list[int]] = []
    for i in order:
        if (groups and (len(groups[-1]) + 1) * num_samples <= max_batch_rows
                and bucket(len(prompts[groups[-1][0]])) == bucket(len(prompts[i]))):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _static(model: Decoder, num_samples: int, max_new_tokens: int, temperature: float, top_k: int | None,
            top_p: float | None, stop_tokens: Sequence[int], fan_out: bool) -> _Static:
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError("num_samples and max_new_tokens must be >= 1")
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 1")
    cfg = model.config
    greedy = temperature == 0 or top_k == 1
    return _Static(num_samples=num_samples, new_bucket=bucket(max_new_tokens), greedy=greedy,
                   top_k=None if greedy or top_k is None else min(top_k, cfg.vocab_size),
                   use_top_p=not greedy and top_p is not None and top_p < 1.0,
                   stop_tokens=tuple(sorted(set(int(t) for t in stop_tokens))),
                   pad_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0, fan_out=fan_out)


def _check_prompts(model: Decoder, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    prompts = [list(map(int, p)) for p in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token (e.g. BOS)")
    vocab = model.config.vocab_size
    if any(t < 0 or t >= vocab for p in prompts for t in p):
        raise ValueError(f"prompt token id out of range [0, {vocab})")
    return prompts


def _default_seeds(prompts: Sequence[Sequence[int]]) -> list[int]:
    seen: Counter = Counter()
    seeds = []
    for p in prompts:
        seeds.append(_row_seed(p, seen[tuple(p)]))
        seen[tuple(p)] += 1
    return seeds


def _layout(mesh: jax.sharding.Mesh | None, row_axes: str | Sequence[str] | None) -> _Layout | None:
    if mesh is None:
        return None
    if row_axes is None:
        row_axes = batch_axes(mesh)
    row_axes = (row_axes,) if isinstance(row_axes, str) else tuple(row_axes)
    missing = [a for a in row_axes if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"row axes {missing} are not axes of the mesh {dict(mesh.shape)}")
    return _Layout(mesh=mesh, row_axes=row_axes)


def _inputs(call: _Call, layout: _Layout | None, base: jax.Array) -> tuple:
    seeds, samples = call.row_keys.T  # [R] each
    key_data = np.asarray(_row_key_data(base, seeds, samples))  # [R, *key] uint32, the same on every host
    host = (call.ids, call.mask, call.src, key_data)
    if layout is None:
        return tuple(map(jnp.asarray, host))
    # Every row-indexed input is split over the row shards; each process copies only its own devices' rows.
    return tuple(_to_global(x, layout.rows) for x in host)


def _scalars(max_new_tokens: int, temperature: float, top_p: float | None) -> tuple:
    return jnp.int32(max_new_tokens), jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p or 1.0)


def sample(model: Decoder, prompts: Sequence[Sequence[int]], *, num_samples: int = 1, max_new_tokens: int,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           stop_tokens: Sequence[int] = (), seed: int = 0, max_batch_rows: int = 256,
           mesh: jax.sharding.Mesh | None = None, data_axis: str | Sequence[str] | None = None,
           fan_out: bool = True, prompt_seeds: Sequence[int] | None = None,
           progress: bool | None = None) -> Samples:
    """Sample `num_samples` continuations of each prompt; temperature 0 is greedy.

    Prompts are grouped by length bucket (at most `max_batch_rows` = prompts x num_samples per call, at least one
    prompt; rows padded to a power of two), so a job over prompts of many lengths compiles once per (length
    bucket, batch bucket, max_new bucket). Identical prompts in a call are prefilled once (per row shard).
    `prompt_seeds` (one int per prompt) replaces the default per-prompt seed (a hash of the prompt's tokens and its
    occurrence number) when callers have stable ids.

    With `mesh`, everything with a row is split over `data_axis` (default: the mesh's batch axes, data x fsdp):
    the distinct prompts are prefilled where their rows decode, each shard reads only its own prefixes, the KV
    cache's heads split over "tensor" when they divide, and the outputs are gathered once per call. Parameters keep
    whatever sharding they already have (e.g. the partition rules'). A mesh may span several processes: then every
    process calls `sample` with the same arguments, the parameters must be global arrays on the mesh's devices,
    each host feeds only the rows its devices hold, and every process returns the same, whole `Samples`. The
    tokens do not depend on the mesh, the batching or the number of processes.
    """
    st = _static(model, num_samples, max_new_tokens, temperature, top_k, top_p, stop_tokens, fan_out)
    prompts = _check_prompts(model, prompts)
    if prompt_seeds is None:
        prompt_seeds = _default_seeds(prompts)
    elif len(prompt_seeds) != len(prompts):
        raise ValueError("prompt_seeds needs one seed per prompt")
    layout = _layout(mesh, data_axis)
    shards = 1 if layout is None else layout.shards
    base = jax.random.key(seed)
    graphdef, state = nnx.split(model)
    groups = _groups(prompts, num_samples, max_batch_rows)

    tokens: list = [[None] * num_samples for _ in prompts]
    logprobs: list = [[None] * num_samples for _ in prompts]
    stop_set = set(st.stop_tokens)
    show = progress if progress is not None else len(groups) > 1
    for group in tqdm(groups, desc="sampling", unit="batch", disable=not show):
        call = _plan_call(group, prompts, prompt_seeds, num_samples, shards, st.pad_id)
        with compile_phase("sampling"):  # compile counts (parallel/compilation.py), unless a stage phase names them
            toks, lps, _ = _jitted_generate(graphdef, state, *_inputs(call, layout, base),
                                            *_scalars(max_new_tokens, temperature, top_p),
                                            st=dataclasses.replace(st, num_samples=call.per_slot), layout=layout)
        toks, lps = _to_host(toks), _to_host(lps)  # [R, N] each: the one gather of this call
        for q, slot in enumerate(call.slots):
            if slot is None:
                continue
            i, j0 = slot
            for jj in range(call.per_slot):
                row = toks[q * call.per_slot + jj, :max_new_tokens].tolist()
                end = next((t + 1 for t, tok in enumerate(row) if tok in stop_set), len(row))
                tokens[i][j0 + jj] = row[:end]
                logprobs[i][j0 + jj] = lps[q * call.per_slot + jj, :end].tolist()
    return Samples(tokens=tokens, logprobs=logprobs)


def compile_call(model: Decoder, prompts: Sequence[Sequence[int]], *, num_samples: int = 1, max_new_tokens: int,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 stop_tokens: Sequence[int] = (), max_batch_rows: int = 256, mesh: jax.sharding.Mesh | None = None,
                 data_axis: str | Sequence[str] | None = None, fan_out: bool = True):
    """The compiled program of `sample`'s FIRST sampler call for these arguments, without running it:
    `compile_call(...).memory_analysis()` is XLA's own per-device account of that call's memory (arguments,
    outputs, temporaries), the figure the planner and the benchmarks compare with."""
    st = _static(model, num_samples, max_new_tokens, temperature, top_k, top_p, stop_tokens, fan_out)
    prompts = _check_prompts(model, prompts)
    layout = _layout(mesh, data_axis)
    group = _groups(prompts, num_samples, max_batch_rows)[0]
    call = _plan_call(group, prompts, _default_seeds(prompts), num_samples, 1 if layout is None else layout.shards,
                      st.pad_id)
    graphdef, state = nnx.split(model)
    args = (graphdef, state, *_inputs(call, layout, jax.random.key(0)), *_scalars(max_new_tokens, temperature, top_p))
    return _jitted_generate.lower(*args, st=dataclasses.replace(st, num_samples=call.per_slot),
                                  layout=layout).compile()
