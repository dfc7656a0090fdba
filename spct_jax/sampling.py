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
from spct_jax.parallel.rules import spec_ways

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


def _prefill(model: Decoder, ids: jax.Array, mask: jax.Array, cache):
    """Prefill in chunks of PREFILL_CHUNK columns so attention scores are [chunk, S], never [P, S] at once, and
    project only the last column to the vocabulary (Gemma's 256k-wide logits for every prompt token would dwarf
    the cache).  ids, mask: [U, P] -> (cache, logits of the last column [U, V])."""
    u, p = ids.shape
    if p <= PREFILL_CHUNK:
        h, cache = model.hidden_states(ids, mask, cache)
        return cache, model.logits_from_hidden(h[:, -1])
    split = lambda x: x.reshape(u, p // PREFILL_CHUNK, PREFILL_CHUNK).swapaxes(0, 1)  # [chunks, U, C]

    def one(cache, chunk):
        h, cache = model.hidden_states(chunk[0], chunk[1], cache)
        return cache, h[:, -1]

    cache, lasts = jax.lax.scan(one, cache, (split(ids), split(mask)))
    return cache, model.logits_from_hidden(lasts[-1])


def _generate(graphdef, state, ids, mask, prompt_src, row_key_data, max_new, temperature, top_p, *, st: _Static,
              data_sharding):
    """ids, mask: [U, P] distinct left-padded prompts; prompt_src: [Q] which distinct prompt each prompt slot
    is; row_key_data: [R = Q * k, *key] uint32 raw key data, row q*k + j is sample j of prompt slot q
    -> (tokens [R, N], logprobs [R, N], steps).
    """
    _TRACES[(ids.shape, prompt_src.shape, st)] += 1
    model: Decoder = nnx.merge(graphdef, state)
    # Keys arrive as raw uint32 data so that the host can build them and split them over devices like any array.
    row_keys = jax.random.wrap_key_data(row_key_data)  # [R]
    u, p = ids.shape
    k, n = st.num_samples, st.new_bucket
    rows = prompt_src.shape[0] * k
    if st.fan_out:
        cache, last = _prefill(model, ids, mask, model.init_cache(u, p))  # each distinct prompt once
        cache = cache.take(prompt_src).shared_by(k, n)  # [Q, P] prefix read by k rows each; nothing recomputed
        last = jnp.repeat(jnp.take(last, prompt_src, axis=0), k, axis=0)  # [R, V]
    else:
        row_src = jnp.repeat(prompt_src, k)
        cache, last = _prefill(model, jnp.take(ids, row_src, axis=0), jnp.take(mask, row_src, axis=0),
                               model.init_cache(rows, p + n))
    if data_sharding is not None:
        mesh = data_sharding.mesh
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        shards = spec_ways(data_sharding.spec, mesh)
        prefix_rows = cache.prefix.valid.shape[0] if cache.prefix is not None else 0
        # A prefix of fewer prompts than shards (k=32 samples of one prompt on 8 devices) is replicated.
        prefix_sharding = data_sharding if prefix_rows % shards == 0 else replicated
        specs = dataclasses.replace(
            jax.tree.map(lambda x: data_sharding if x.ndim else replicated, dataclasses.replace(cache, prefix=None)),
            prefix=None if cache.prefix is None else jax.tree.map(lambda _: prefix_sharding, cache.prefix))
        cache = jax.lax.with_sharding_constraint(cache, specs)
        last = jax.lax.with_sharding_constraint(last, data_sharding)
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
        logits, cache = model.extend(tok[:, None], jnp.ones((rows, 1), bool), cache)
        return step + 1, toks, lps, done, cache, logits[:, -1]

    init = (jnp.zeros((), jnp.int32), jnp.full((rows, n), st.pad_id, jnp.int32), jnp.zeros((rows, n), jnp.float32),
            jnp.zeros((rows,), bool), cache, last)
    steps, toks, lps, _, _, _ = jax.lax.while_loop(cond, body, init)
    return toks, lps, steps


_jitted_generate = jax.jit(_generate, static_argnames=("st", "data_sharding"))


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


def _pad_left(prompts: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for r, p in enumerate(prompts):
        ids[r, length - len(p):] = p
        mask[r, length - len(p):] = True
    return ids, mask


def sample(model: Decoder, prompts: Sequence[Sequence[int]], *, num_samples: int = 1, max_new_tokens: int,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           stop_tokens: Sequence[int] = (), seed: int = 0, max_batch_rows: int = 256,
           mesh: jax.sharding.Mesh | None = None, data_axis: str | tuple[str, ...] = "data",
           fan_out: bool = True, prompt_seeds: Sequence[int] | None = None,
           progress: bool | None = None) -> Samples:
    """Sample `num_samples` continuations of each prompt; temperature 0 is greedy.

    Prompts are grouped by length bucket (at most `max_batch_rows` = prompts x num_samples per call, at least one
    prompt; rows padded to a power of two), so a job over prompts of many lengths compiles once per (length bucket, batch bucket, max_new bucket).
    Identical prompts in a call are prefilled once. `prompt_seeds` (one int per prompt) replaces the default
    per-prompt seed (a hash of the prompt's tokens and its occurrence number) when callers have stable ids.
    With `mesh`, the rows are sharded over `data_axis`; parameters keep whatever sharding they already have. A
    mesh may span several processes: then every process calls `sample` with the same arguments, the parameters
    must be global arrays on the mesh's devices (e.g. placed by `param_shardings`), each host feeds and runs only
    the rows its devices hold, and every process returns the same, whole `Samples`.
    """
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError("num_samples and max_new_tokens must be >= 1")
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 1")
    prompts = [list(map(int, p)) for p in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token (e.g. BOS)")
    cfg = model.config
    if any(t < 0 or t >= cfg.vocab_size for p in prompts for t in p):
        raise ValueError(f"prompt token id out of range [0, {cfg.vocab_size})")
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    greedy = temperature == 0 or top_k == 1
    st = _Static(num_samples=num_samples, new_bucket=bucket(max_new_tokens), greedy=greedy,
                 top_k=None if greedy or top_k is None else min(top_k, cfg.vocab_size),
                 use_top_p=not greedy and top_p is not None and top_p < 1.0,
                 stop_tokens=tuple(sorted(set(int(t) for t in stop_tokens))), pad_id=pad_id, fan_out=fan_out)

    if prompt_seeds is None:
        seen: Counter = Counter()
        prompt_seeds = []
        for p in prompts:
            prompt_seeds.append(_row_seed(p, seen[tuple(p)]))
            seen[tuple(p)] += 1
    elif len(prompt_seeds) != len(prompts):
        raise ValueError("prompt_seeds needs one seed per prompt")
    base = jax.random.key(seed)

    graphdef, state = nnx.split(model)
    data_sharding, replicated, min_rows = None, None, 1
    if mesh is not None:
        data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(data_axis))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        min_rows = spec_ways(data_sharding.spec, mesh)
    order = sorted(range(len(prompts)), key=lambda i: (bucket(len(prompts[i])), i))
    groups: list[list[int]] = []
    for i in order:
        if (groups and (len(groups[-1]) + 1) * num_samples <= max_batch_rows
                and bucket(len(prompts[groups[-1][0]])) == bucket(len(prompts[i]))):
            groups[-1].append(i)
        else:
            groups.append([i])

    tokens: list = [None] * len(prompts)
    logprobs: list = [None] * len(prompts)
    stop_set = set(st.stop_tokens)
    show = progress if progress is not None else len(groups) > 1
    for group in tqdm(groups, desc="sampling", unit="batch", disable=not show):
        # Identical prompts (e.g. the same shuffle of one item) share a single prefill.
        unique: dict[tuple[int, ...], int] = {}
        prompt_src = [unique.setdefault(tuple(prompts[i]), len(unique)) for i in group]
        row_keys = [(prompt_seeds[i], j) for i in group for j in range(num_samples)]
        q_pad = bucket(len(group), minimum=1)
        while (q_pad * num_samples) % min_rows:  # rows must split evenly over the data axis
            q_pad *= 2
        u_pad = bucket(len(unique), minimum=1)
        length = bucket(max(len(p) for p in unique))
        batch_prompts = list(unique) + [(pad_id,)] * (u_pad - len(unique))  # filler rows are discarded
        ids, mask = _pad_left(batch_prompts, length, pad_id)
        prompt_src += [0] * (q_pad - len(group))
        row_keys += [(0, 0)] * ((q_pad - len(group)) * num_samples)
        seeds, samples = np.asarray(row_keys, np.uint32).T  # [R] each
        key_data = np.asarray(_row_key_data(base, seeds, samples))  # [R, *key] uint32, the same on every host
        src = np.asarray(prompt_src, np.int32)  # [Q]
        if data_sharding is None:
            inputs = tuple(map(jnp.asarray, (ids, mask, src, key_data)))
        else:  # the prompts are small and read by every row: replicated; the rows are split over the data axis
            inputs = (_to_global(ids, replicated), _to_global(mask, replicated), _to_global(src, replicated),
                      _to_global(key_data, data_sharding))
        toks, lps, _ = _jitted_generate(graphdef, state, *inputs, jnp.int32(max_new_tokens),
                                        jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p or 1.0),
                                        st=st, data_sharding=data_sharding)
        toks, lps = _to_host(toks), _to_host(lps)  # [R, N] each
        for r, i in enumerate(group):
            tokens[i], logprobs[i] = [], []
            for j in range(num_samples):
                row = toks[r * num_samples + j, :max_new_tokens].tolist()
                end = next((t + 1 for t, tok in enumerate(row) if tok in stop_set), len(row))
                tokens[i].append(row[:end])
                logprobs[i].append(lps[r * num_samples + j, :end].tolist())
    return Samples(tokens=tokens, logprobs=logprobs)
