"""The jitted sampler program: the prompt pass (prefill.py), then a `lax.while_loop` of decode steps over a named
`DecodeState`.

Every row writes its t-th new token at column t of `tokens` (and at its own cache slot t), so one step is one
column for the whole batch:

    step t     tokens [R, N]                      logits [R, V]: the next-token logits of each row
    row 0      [ x1 x2 .. xt  pad .. ]            done [R]: the row has emitted a stop token; it keeps running
    row 1      [ y1 y2 .. yt  pad .. ]                      (the loop is batched) but writes pad / 0.0 from then on

The loop stops at max_new steps or when every row is done. The key of row r at step t is fold_in(keys[r], t), so a
row's draws depend only on its own key (built on the host from seed, prompt and sample index).

With `Static.own_phases` the loop runs in phases, each a `while_loop` over a cache with only as many own slots as
its last step needs, grown (`KVCache.grow`) between phases; early steps then attend over fewer empty slots:

    own_phases (128, 256)   steps 0..127 over 128 own slots | steps 128..255 over 256
    one phase               steps 0..255 over 256 own slots

Empty slots are masked, so a phase changes which zeros are summed, not which tokens are drawn.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import jax
import jax.numpy as jnp
from flax import nnx, struct

from spct_jax.models.transformer import Decoder, KVCache
from spct_jax.sampling.layout import Layout
from spct_jax.sampling.prefill import Pin, fill, no_pin
from spct_jax.sampling.strategies import Strategy

_TRACES: Counter = Counter()  # incremented at trace time only: one count per compiled (shape, static-config) bucket


def compile_count() -> int:
    """How many times the sampling program has been traced (compiled) in this process."""
    return sum(_TRACES.values())


@dataclasses.dataclass(frozen=True)
class Static:
    """The compile-time settings of one sampler program (a jit static; the strategy's static part is its k)."""

    num_samples: int  # rows per prompt slot
    new_bucket: int  # N: columns of the outputs, own cache slots per row
    stop_tokens: tuple[int, ...]
    pad_id: int
    fan_out: bool = True  # False re-prefills each prompt k times (the baseline that fan-out replaces)
    split_layers: bool = False  # decode over per-layer buffers (api.decode_layers_for "split") instead of the scan
    prefix_slots: int = 1  # C > 1: each prompt of a shard is read by C consecutive slots (layout._grouped)
    own_phases: tuple[int, ...] = ()  # own slots per decode phase, increasing, the last = new_bucket; () = one

    @property
    def phases(self) -> tuple[int, ...]:
        """Own slots per row in each decode phase; the prompt pass allocates the first phase's."""
        return self.own_phases or (self.new_bucket,)


def own_phases_for(new_bucket: int) -> tuple[int, ...]:
    """N/2 then N own slots (one phase below N = 64): a step attends over 0.75 N own slots on average instead of N
    when all N steps run, fewer when rows stop early. Two loop bodies to compile instead of one; a third phase
    (N/4, N/2, N: 0.69 N) would add another whole body for 0.06 N (SmolLM2's 30 unrolled layers, k = 8, 256 new
    tokens: 9.4 s to compile with one phase, 14.1 s with two, 18.3 s with three)."""
    return (new_bucket // 2, new_bucket) if new_bucket >= 64 else ()


@struct.dataclass
class DecodeState:
    """The loop carry after `step` decode steps."""

    step: jax.Array  # [] int32: tokens generated so far (the column the next one goes to)
    tokens: jax.Array  # [R, N] int32, pad after a row's stop token and beyond `step`
    logprobs: jax.Array  # [R, N] float32, 0.0 where tokens is padding
    done: jax.Array  # [R] bool: the row has emitted a stop token
    cache: KVCache  # the prompts' prefix and each row's own slots
    logits: jax.Array  # [R, V] float32: next-token logits of every row

    @classmethod
    def start(cls, cache: KVCache, logits: jax.Array, new_bucket: int, pad_id: int, pin: Pin = no_pin):
        rows = logits.shape[0]
        return cls(step=jnp.zeros((), jnp.int32), tokens=pin(jnp.full((rows, new_bucket), pad_id, jnp.int32)),
                   logprobs=pin(jnp.zeros((rows, new_bucket), jnp.float32)), done=pin(jnp.zeros((rows,), bool)),
                   cache=cache, logits=logits)


def decode(model: Decoder, state: DecodeState, row_keys: jax.Array, max_new: jax.Array, strategy: Strategy,
           st: Static, pin: Pin = no_pin) -> DecodeState:
    """Run decode steps until `max_new` ([] int32) tokens or every row is done.  row_keys: [R] typed keys."""
    stops = jnp.asarray(st.stop_tokens, jnp.int32)
    layers = None
    if st.split_layers:  # cut once here, so the loop body reads separate buffers in place (api.decode_layers_for)
        state = state.replace(cache=pin(state.cache.split_layers(), "cache"))
        layers = model.layer_states()
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    rows = row_keys.shape[0]

    def running_until(end: int):
        return lambda s: (s.step < jnp.minimum(max_new, end)) & ~jnp.all(s.done)

    def step(s: DecodeState) -> DecodeState:
        tok, lp = strategy.choose(s.logits, fold(row_keys, s.step))
        tok = jnp.where(s.done, st.pad_id, tok).astype(jnp.int32)  # finished rows stop changing
        lp = jnp.where(s.done, 0.0, lp)
        toks = jax.lax.dynamic_update_slice_in_dim(s.tokens, tok[:, None], s.step, axis=1)
        lps = jax.lax.dynamic_update_slice_in_dim(s.logprobs, lp[:, None], s.step, axis=1)
        hit = jnp.any(tok[:, None] == stops[None, :], axis=-1) if st.stop_tokens else jnp.zeros_like(s.done)
        done = s.done | hit
        logits, cache = model.extend(tok[:, None], jnp.ones((rows, 1), bool), s.cache, constrain=pin, layers=layers)
        return DecodeState(step=s.step + 1, tokens=pin(toks), logprobs=pin(lps), done=pin(done),
                           cache=pin(cache, "cache"), logits=pin(logits[:, -1]))

    state = jax.lax.while_loop(running_until(st.phases[0]), step, state)
    for prev, end in zip(st.phases, st.phases[1:]):  # room for the next phase's steps: own slots prev..end-1
        state = state.replace(cache=pin(state.cache.grow(state.cache.max_len + end - prev), "cache"))
        state = jax.lax.while_loop(running_until(end), step, state)
    return state


def generate(graphdef, state, ids, mask, prompt_src, row_key_data, max_new, strategy: Strategy, *, st: Static,
             layout: Layout | None):
    """The whole sampler call.  ids, mask: [S * U, P] left-padded prompts, U distinct ones per row shard;
    prompt_src: [S * Q] which prompt of its OWN shard each prompt slot is; row_key_data: [R = S * Q * k, *key]
    uint32 raw key data, row q*k + j is sample j of prompt slot q; max_new: [] int32
    -> (tokens [R, N], logprobs [R, N], steps []).

    With a layout (a mesh), every array with a row dim is split over the row shards in contiguous blocks (see
    prefill.fill). Without one, S = 1 and the same program runs on one device.
    """
    _TRACES[(ids.shape, prompt_src.shape, st, jax.tree.structure(strategy))] += 1
    model: Decoder = nnx.merge(graphdef, state)
    # Keys arrive as raw uint32 data so that the host can build them and split them over devices like any array.
    row_keys = jax.random.wrap_key_data(row_key_data)  # [R]
    shards = 1 if layout is None else layout.shards
    pin = no_pin if layout is None else layout.pin
    cache, logits = fill(model, ids, mask, prompt_src, rows_per_slot=st.num_samples, new_slots=st.phases[0],
                         shards=shards, fan_out=st.fan_out, pin=pin, prefix_slots=st.prefix_slots)
    out = decode(model, DecodeState.start(cache, logits, st.new_bucket, st.pad_id, pin), row_keys, max_new,
                 strategy, st, pin)
    return out.tokens, out.logprobs, out.step


jitted_generate = jax.jit(generate, static_argnames=("st", "layout"))
