"""Attention over slots: the full reference, a blockwise (flash-style) XLA path, and TPU splash attention.

`attend(q, k, v, ...)` is what the decoder calls; `impl` picks the path:

    "full"       the score array [B, K, G, T, S] in float32, masked, softmaxed, applied to v. The oracle: it is
                 the decoder's original code, kept verbatim (`reference_attention`).
    "blockwise"  an online-softmax loop over query blocks x key blocks (FlashAttention-2's algorithm) in plain
                 XLA, with a custom VJP that recomputes each block's probabilities from the saved log-sum-exp:
                 neither pass holds more than one [bq, bk] block of scores per (row, head).
    "splash"     jax's Pallas TPU kernel (jax.experimental.pallas.ops.tpu.splash_attention). It covers what
                 training needs (GQA, soft-cap, causal or sliding window, padding as segment ids) but only for
                 queries at slots 0..T-1 over the same T keys; anything else (a cache offset, a shared prefix)
                 falls back to "blockwise".
    "decode"     the full path's function for a few queries (decode steps), laid out for XLA:CPU: the prefix and
                 the own slots are scored separately and share one softmax (no [.., P + S] concatenation), each
                 query head's scores over its row's own keys are a matrix-vector product (XLA:CPU runs a batched
                 [G, Dh] x [Dh, S] product per row and head several times slower than G products with one query),
                 and every product has its batch dimensions leading, so no operand is transposed per step.
    "auto"       $SPCT_ATTENTION_IMPL if set, else: "decode" on a one-device CPU for at most DECODE_MAX_QUERIES
                 queries per KV head (T x G), "full" when the scores are small (T < 128: decode steps and short
                 chunks, whose score rows are no bigger than the K/V they read; or one block in all), "splash" on
                 a single-device TPU program that it supports, "blockwise" otherwise.

Slots, not positions (see transformer.py). Queries sit at `q_slots`; key slot s is visible to a query at slot q
when s <= q and s > q - window, and the key is valid. With a shared prefix of P slots in front of the S own slots,
slots are numbered globally, prefix first:

    global slot     0 .. P-1              P .. P+S-1
                    [ prefix, U prompts ] [ own slots, B rows ]      query at own slot q -> global P + q
    row r reads     prefix row r // (B/U)  own row r

Blocks (block size 4, T = S = 12, window 6, queries at slots 0..11). Only blocks that hold a visible key are
visited (`_kv_range`); inside a visited block the mask is exact:

              key block 0    1        2
    q block 0   [x . . .][. . . .][. . . .]      x: visible, causal and inside the window
                [x x . .][. . . .][. . . .]      .: masked inside a visited block
                [x x x .][. . . .][. . . .]      blank: block skipped
                [x x x x][. . . .][. . . .]      (q block 0 visits key blocks 0..0,
            1   [x x x x][x . . .]                q block 1 visits 0..1, q block 2 visits 0..2:
                [. x x x][x x . .]                its first query, slot 8, sees slot 3 > 8 - 6)
                [. . x x][x x x .]
                [. . . x][x x x x]
            2   [. . . .][x x x x][x . . .]
                ...

A query with no visible key (a pad query: left padding hides every slot up to it) gets what the full path gives
it: masked logits there are a finite -1e30, so its softmax is uniform and its output the mean of v over all P + S
slots. The blockwise path masks with -inf, notices the empty row (l == 0) and writes that mean (and its gradient,
1/N to every slot's value) directly. Splash cannot express an empty row; it gives pad queries their own segment
instead (each sees the pad keys up to itself), which changes pad rows' outputs only: no real query ever sees a pad
key, so no real token's output or gradient changes.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp

MASKED = -1e30  # the full path's mask value: finite, so an empty row softmaxes to uniform instead of NaN
IMPLS = ("auto", "full", "decode", "blockwise", "splash")
ENV_IMPL = "SPCT_ATTENTION_IMPL"  # forces what "auto" means (tests run the decoder with blockwise forced)
ENV_BLOCK = "SPCT_ATTENTION_BLOCK"  # default block size of the blockwise path (query and key blocks)
DEFAULT_BLOCK = 512
FULL_BELOW_T = 128  # "auto" keeps the full path for fewer queries than this
DECODE_MAX_QUERIES = 16  # "auto": the decode path (one-device CPU) up to this many queries (T x G) per KV head


# -- the reference (full) path --------------------------------------------------------------------------------
def reference_attention(q, k, v, *, q_slots, kv_valid, scale, softcap=None, window=None, prefix=None):
    """The decoder's original attention, unchanged. q: [B, T, K, G, Dh]; k, v: [B, K, S, Dh]; q_slots: [T];
    kv_valid: [B, S]; prefix: (k, v [U, K, P, Dh], valid [U, P]) or None -> [B, T, K, G, Dh] in q's dtype."""
    b, t, kh, groups, dh = q.shape
    s = k.shape[2]
    qg = q
    scale = jnp.asarray(scale, q.dtype)
    logits = jnp.einsum("btkgd,bksd->bkgts", qg, k.astype(q.dtype)) * scale
    k_slots = jnp.arange(s)
    visible = k_slots[None, :] <= q_slots[:, None]  # [T, S] causal in slot space
    if window is not None:
        visible &= k_slots[None, :] > q_slots[:, None] - window
    mask = visible[None, None, None] & kv_valid[:, None, None, None, :]  # [B, 1, 1, T, S]
    if prefix is not None:
        pk, pv, p_valid = prefix  # [U, K, P, Dh], [U, P]
        u, p = p_valid.shape
        qu = qg.reshape(u, b // u, t, kh, groups, dh)  # rows grouped by prompt
        p_logits = jnp.einsum("uctkgd,ukpd->uckgtp", qu, pk.astype(q.dtype)) * scale
        p_visible = jnp.ones((t, p), bool)  # every prefix slot precedes every own slot
        if window is not None:  # own slot s sits at global slot P + s
            p_visible &= jnp.arange(p)[None, :] > (p + q_slots)[:, None] - window
        p_mask = p_visible[None, None, None, None] & p_valid[:, None, None, None, None, :]  # [U,1,1,1,T,P]
        logits = jnp.concatenate([p_logits.reshape(b, *p_logits.shape[2:]), logits], axis=-1)  # [B,K,G,T,P+S]
        mask = jnp.concatenate(
            [jnp.broadcast_to(p_mask, (u, b // u, 1, 1, t, p)).reshape(b, 1, 1, t, p),
             jnp.broadcast_to(mask, (b, 1, 1, t, s))], axis=-1)
    logits = logits.astype(jnp.float32)
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    logits = jnp.where(mask, logits, MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    if prefix is not None:
        p_probs = probs[..., :p].reshape(u, b // u, *probs.shape[1:-1], p)  # [U, C, K, G, T, P]
        return (jnp.einsum("uckgtp,ukpd->uctkgd", p_probs, pv.astype(q.dtype)).reshape(qg.shape)
                + jnp.einsum("bkgts,bksd->btkgd", probs[..., p:], v.astype(q.dtype)))
    return jnp.einsum("bkgts,bksd->btkgd", probs, v.astype(q.dtype))


# -- the decode path ------------------------------------------------------------------------------------------
def decode_attention(q, k, v, *, q_slots, kv_valid, scale, softcap=None, window=None, prefix=None):
    """Same contract and function as `reference_attention`, written for few queries on XLA:CPU (module docstring).

    Queries are regrouped per KV head, M = T x G of them per row ("m" below); prefix scores are [U, K, C x M, P]
    (the C rows reading one prompt's prefix are one matrix product with it), own scores [B, K, M, S]. One max
    and one sum over both parts make the softmax of the concatenation without building it:

        out = (exp(s_p - m) . v_p + exp(s_o - m) . v_o) / (sum exp(s_p - m) + sum exp(s_o - m)),
        m = max(max s_p, max s_o)

    Masked scores are the full path's finite MASKED, so a query with no visible key averages all P + S values,
    as there."""
    b, t, kh, groups, dh = q.shape
    s, m = k.shape[2], t * groups
    dt = q.dtype
    scale = jnp.asarray(scale, dt)

    def masked(logits, mask):
        logits = logits.astype(jnp.float32)
        if softcap is not None:
            logits = jnp.tanh(logits / softcap) * softcap
        return jnp.where(mask, logits, MASKED)

    # own slots: [B, K, M, Dh] queries, one [B, K, S] matrix-vector product per query
    qo = q.transpose(0, 2, 1, 3, 4).reshape(b, kh, m, dh)
    kd = k.astype(dt)
    own = jnp.stack([jnp.einsum("bkd,bksd->bks", qo[:, :, i], kd) for i in range(m)], axis=2) * scale
    k_slots = jnp.arange(s)
    visible = k_slots[None, :] <= q_slots[:, None]  # [T, S]
    if window is not None:
        visible &= k_slots[None, :] > q_slots[:, None] - window
    own_mask = visible[None, None, :, None, :] & kv_valid[:, None, None, None, :]  # [B, 1, T, 1, S]
    own = masked(own, jnp.broadcast_to(own_mask, (b, 1, t, groups, s)).reshape(b, 1, m, s))  # [B, K, M, S]
    top = own.max(axis=-1)  # [B, K, M]
    if prefix is not None:
        pk, pv, p_valid = prefix  # [U, K, P, Dh], [U, P]
        u, p = p_valid.shape
        c = b // u
        # [B, T, K, G, Dh] -> [U, K, C x M, Dh]: rows of one prompt, then their queries
        qp = q.reshape(u, c, t, kh, groups, dh).transpose(0, 3, 1, 2, 4, 5).reshape(u, kh, c * m, dh)
        pre = jnp.einsum("ukmd,ukpd->ukmp", qp, pk.astype(dt)) * scale  # [U, K, C x M, P]
        p_visible = jnp.ones((t, p), bool)
        if window is not None:  # own slot q sits at global slot P + q
            p_visible &= jnp.arange(p)[None, :] > (p + q_slots)[:, None] - window
        p_mask = p_visible[None, None, None, :, None, :] & p_valid[:, None, None, None, None, :]  # [U,1,1,T,1,P]
        pre = masked(pre, jnp.broadcast_to(p_mask, (u, 1, c, t, groups, p)).reshape(u, 1, c * m, p))
        to_rows = lambda x: x.reshape(u, kh, c, m, *x.shape[3:]).swapaxes(1, 2).reshape(b, kh, m, *x.shape[3:])
        to_prompts = lambda x: x.reshape(u, c, kh, m, *x.shape[3:]).swapaxes(1, 2).reshape(u, kh, c * m,
                                                                                              *x.shape[3:])
        top = jnp.maximum(top, to_rows(pre.max(axis=-1)))
    e_own = jnp.exp(own - top[..., None])  # [B, K, M, S]
    total = e_own.sum(axis=-1)  # [B, K, M]
    out = jnp.einsum("bkms,bksd->bkmd", e_own.astype(dt), v.astype(dt)).astype(jnp.float32)
    if prefix is not None:
        e_pre = jnp.exp(pre - to_prompts(top)[..., None])  # [U, K, C x M, P]
        total = total + to_rows(e_pre.sum(axis=-1))
        out = out + to_rows(jnp.einsum("ukmp,ukpd->ukmd", e_pre.astype(dt), pv.astype(dt)).astype(jnp.float32))
    out = out / total[..., None]  # [B, K, M, Dh]
    return out.reshape(b, kh, t, groups, dh).transpose(0, 2, 1, 3, 4).astype(dt)


# -- the blockwise path ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static layout of one blockwise call (hashable: a custom_vjp non-differentiable argument).

    Segments are the key ranges in global slot order: (prefix,) own. Segment i has `lens[i]` real slots, padded
    to `nks[i]` blocks of `bks[i]`; its first real slot is global slot `firsts[i]`. Queries: `t` real ones padded
    to `nq` blocks of `bq`; query slot q is global slot q + `q_first` (the prefix length)."""

    scale: float
    softcap: float | None
    window: int | None
    t: int
    bq: int
    nq: int
    lens: tuple[int, ...]
    bks: tuple[int, ...]
    nks: tuple[int, ...]

    @property
    def firsts(self) -> tuple[int, ...]:
        return tuple(sum(self.lens[:i]) for i in range(len(self.lens)))

    @property
    def q_first(self) -> int:
        return self.firsts[-1]


def _dot(eq, a, b):
    """einsum accumulating in float32. bf16 operands stay bf16 where the hardware multiplies them into float32
    (TPU, GPU); XLA:CPU's dot has no bf16 x bf16 -> f32 kernel, so there they are widened first."""
    if jax.default_backend() == "cpu":
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def _grouped(x, u):
    """[B, ...] -> [U, C, ...]: rows grouped by the segment's key row (C = B / U; own segment: U = B, C = 1)."""
    return x.reshape(u, x.shape[0] // u, *x.shape[1:])


def _kv_range(plan: _Plan, seg: int, q_glob):
    """Key blocks [lo, hi) of segment `seg` that may hold a key visible to queries at global slots q_glob [bq]."""
    bk, n, first = plan.bks[seg], plan.nks[seg], plan.firsts[seg]
    hi = jnp.clip((jnp.max(q_glob) - first) // bk + 1, 0, n)  # causal: keys up to the last query
    if plan.window is None:
        return jnp.zeros_like(hi), hi
    lo = jnp.clip((jnp.min(q_glob) - plan.window + 1 - first) // bk, 0, n)  # window: from the first query's reach
    return lo, hi


def _block_logits(plan: _Plan, seg: int, j, qg, k, valid, q_glob):
    """Scaled, capped, masked logits of one block, f32 [U, C, K, G, bq, bk], and tanh(raw / cap) for the VJP.

    qg: [U, C, K, G, bq, Dh]; k: [U, K, Sp, Dh]; valid: [U, Sp]; j: the key block; q_glob: [bq]."""
    bk = plan.bks[seg]
    kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)  # [U, K, bk, Dh]
    s = _dot("uckgtd,uksd->uckgts", qg, kb) * plan.scale
    th = None
    if plan.softcap is not None:  # Gemma-2: cap before the mask, as the full path does
        th = jnp.tanh(s / plan.softcap)
        s = th * plan.softcap
    k_glob = plan.firsts[seg] + j * bk + jnp.arange(bk)  # [bk]
    vis = k_glob[None, :] <= q_glob[:, None]  # [bq, bk]
    if plan.window is not None:
        vis &= k_glob[None, :] > q_glob[:, None] - plan.window
    vb = jax.lax.dynamic_slice_in_dim(valid, j * bk, bk, axis=1)  # [U, bk]
    mask = vis[None, None, None, None] & vb[:, None, None, None, None, :]  # [U, 1, 1, 1, bq, bk]
    return jnp.where(mask, s, -jnp.inf), th


def _mean_v(plan: _Plan, segs, b):
    """Mean of v over every real slot of every segment, per row: [B, K, Dh] f32 (an empty row's output)."""
    total = 0.0
    for (_, v, _), n in zip(segs, plan.lens):
        sums = jnp.sum(v[:, :, :n].astype(jnp.float32), axis=2)  # [U, K, Dh]
        total = total + jnp.repeat(sums, b // v.shape[0], axis=0)  # row r reads key row r // C
    return total / sum(plan.lens)


def _forward(plan: _Plan, q, segs, q_slots):
    """q: [B, K, G, Tp, Dh]; segs: ((k, v [U, K, Sp, Dh], valid [U, Sp]), ...); q_slots: [Tp]
    -> out [B, K, G, Tp, Dh] in q's dtype, lse [B, K, G, Tp] f32 (+inf on empty rows)."""
    b, kh, g, _, dh = q.shape
    bq = plan.bq

    def q_block(i):
        qb = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=3)  # [B, K, G, bq, Dh]
        q_glob = jax.lax.dynamic_slice_in_dim(q_slots, i * bq, bq) + plan.q_first  # [bq]
        m = jnp.full((b, kh, g, bq), -jnp.inf, jnp.float32)  # running max
        l = jnp.zeros((b, kh, g, bq), jnp.float32)  # running sum of exp(logit - m)
        acc = jnp.zeros((b, kh, g, bq, dh), jnp.float32)  # running sum of exp(logit - m) * v
        for seg, (k, v, valid) in enumerate(segs):
            u, bk = k.shape[0], plan.bks[seg]
            qg = _grouped(qb, u)

            def body(j, state, seg=seg, k=k, v=v, valid=valid, qg=qg, bk=bk):
                m, l, acc = state  # [U, C, K, G, bq], [U, C, K, G, bq], [U, C, K, G, bq, Dh]
                s, _ = _block_logits(plan, seg, j, qg, k, valid, q_glob)
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # nothing visible yet: keep exp() finite
                p = jnp.exp(s - m_safe[..., None])
                corr = jnp.exp(m - m_safe)
                vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)  # [U, K, bk, Dh]
                pv = _dot("uckgts,uksd->uckgtd", p.astype(v.dtype), vb)
                return m_new, l * corr + jnp.sum(p, axis=-1), acc * corr[..., None] + pv

            lo, hi = _kv_range(plan, seg, q_glob)
            m, l, acc = jax.lax.fori_loop(lo, hi, body, (_grouped(m, u), _grouped(l, u), _grouped(acc, u)))
            m, l, acc = (x.reshape(b, *x.shape[2:]) for x in (m, l, acc))
        return m, l, acc

    m, l, acc = jax.lax.map(q_block, jnp.arange(plan.nq))  # [nq, B, K, G, bq(, Dh)]
    m, l = (jnp.moveaxis(x, 0, 3).reshape(b, kh, g, -1) for x in (m, l))  # [B, K, G, Tp]
    acc = jnp.moveaxis(acc, 0, 3).reshape(b, kh, g, -1, dh)  # [B, K, G, Tp, Dh]
    seen = l > 0
    out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None],
                    _mean_v(plan, segs, b)[:, :, None, None, :])
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
    return out.astype(q.dtype), lse


def _backward(plan: _Plan, q, segs, q_slots, out, lse, dout):
    """FlashAttention-2's backward, one query block at a time: p = exp(logit - lse) recomputed per block,
    dv += p^T dO, ds = p (dO v^T - rowsum(dO * O)), dq += ds k, dk += ds^T q (times the scale and, with a cap,
    tanh's derivative). -> dq [B, K, G, Tp, Dh], ((dk, dv [U, K, Sp, Dh]), ...)."""
    b, kh, g, _, dh = q.shape
    bq = plan.bq
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, G, Tp]

    def q_block(dkv, i):
        qb = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=3)  # [B, K, G, bq, Dh]
        dob = jax.lax.dynamic_slice_in_dim(dout, i * bq, bq, axis=3)
        lse_b = jax.lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=3)  # [B, K, G, bq]
        delta_b = jax.lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=3)
        q_glob = jax.lax.dynamic_slice_in_dim(q_slots, i * bq, bq) + plan.q_first
        dq = jnp.zeros((b, kh, g, bq, dh), jnp.float32)
        new_dkv = []
        for seg, ((k, v, valid), (dk, dv)) in enumerate(zip(segs, dkv)):
            u, bk = k.shape[0], plan.bks[seg]
            qg, dog, lse_g, delta_g = (_grouped(x, u) for x in (qb, dob, lse_b, delta_b))

            def body(j, state, seg=seg, k=k, v=v, valid=valid, bk=bk, qg=qg, dog=dog, lse_g=lse_g,
                     delta_g=delta_g):
                dq, dk, dv = state
                s, th = _block_logits(plan, seg, j, qg, k, valid, q_glob)
                p = jnp.exp(s - lse_g[..., None])  # [U, C, K, G, bq, bk]; 0 where masked or on an empty row
                kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=2)  # [U, K, bk, Dh]
                vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=2)
                dv_j = _dot("uckgts,uckgtd->uksd", p.astype(dog.dtype), dog)
                dp = _dot("uckgtd,uksd->uckgts", dog, vb)
                ds = p * (dp - delta_g[..., None])
                if th is not None:
                    ds = ds * (1.0 - th * th)  # d(cap * tanh(x / cap)) / dx
                ds = ds * plan.scale
                dq = dq + _dot("uckgts,uksd->uckgtd", ds.astype(kb.dtype), kb)
                dk_j = _dot("uckgts,uckgtd->uksd", ds.astype(qg.dtype), qg)
                add = lambda acc, x: jax.lax.dynamic_update_slice_in_dim(
                    acc, jax.lax.dynamic_slice_in_dim(acc, j * bk, bk, axis=2) + x, j * bk, axis=2)
                return dq, add(dk, dk_j), add(dv, dv_j)

            lo, hi = _kv_range(plan, seg, q_glob)
            dq_g, dk, dv = jax.lax.fori_loop(lo, hi, body, (_grouped(dq, u), dk, dv))
            dq = dq_g.reshape(b, *dq_g.shape[2:])
            new_dkv.append((dk, dv))
        return tuple(new_dkv), dq

    init = tuple((jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)) for k, v, _ in segs)
    dkv, dq = jax.lax.scan(q_block, init, jnp.arange(plan.nq))  # dq: [nq, B, K, G, bq, Dh]
    dq = jnp.moveaxis(dq, 0, 3).reshape(q.shape)
    # Empty rows output mean(v): each of their dO reaches every real slot's value with weight 1 / N.
    empty = jnp.isinf(lse)[..., None]  # [B, K, G, Tp, 1]
    g_empty = jnp.sum(jnp.where(empty, dout.astype(jnp.float32), 0.0), axis=(2, 3)) / sum(plan.lens)  # [B, K, Dh]
    grads = []
    for (k, v, _), (dk, dv), n in zip(segs, dkv, plan.lens):
        u = k.shape[0]
        per_key_row = jnp.sum(_grouped(g_empty, u), axis=1)  # [U, K, Dh]
        real = (jnp.arange(v.shape[2]) < n)[None, None, :, None]
        dv = dv + jnp.where(real, per_key_row[:, :, None, :], 0.0)
        grads.append((dk.astype(k.dtype), dv.astype(v.dtype), None))
    return dq.astype(q.dtype), tuple(grads)


# Jitted with the plan static: under an outer jit they inline; called eagerly (the decoder run without jit, as the
# parity tests do) they hit the compile cache instead of re-tracing their loops on every call.
_forward = jax.jit(_forward, static_argnums=0)
_backward = jax.jit(_backward, static_argnums=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(plan, q, segs, q_slots):
    return _forward(plan, q, segs, q_slots)[0]


def _flash_fwd(plan, q, segs, q_slots):
    out, lse = _forward(plan, q, segs, q_slots)
    return out, (q, segs, q_slots, out, lse)  # O(T * Dh) residuals: no score block survives the forward


def _flash_bwd(plan, res, dout):
    q, segs, q_slots, out, lse = res
    dq, dsegs = _backward(plan, q, segs, q_slots, out, lse, dout)
    return dq, dsegs, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad_to(x, n, axis, value=0):
    extra = n - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(q, k, v, *, q_slots, kv_valid, scale, softcap=None, window=None, prefix=None,
                        block_q=DEFAULT_BLOCK, block_kv=DEFAULT_BLOCK):
    """Same contract as `reference_attention`, in blocks of block_q queries x block_kv keys."""
    b, t, kh, g, dh = q.shape
    segs = [] if prefix is None else [prefix]
    segs.append((k, v, kv_valid))
    bq = min(block_q, t)
    nq = -(-t // bq)
    lens = tuple(int(s[0].shape[2]) for s in segs)
    bks = tuple(min(block_kv, n) for n in lens)
    nks = tuple(-(-n // bk) for n, bk in zip(lens, bks))
    plan = _Plan(scale=float(scale), softcap=None if softcap is None else float(softcap),
                 window=None if window is None else int(window), t=t, bq=bq, nq=nq, lens=lens, bks=bks, nks=nks)
    # Padding lives outside the custom VJP, so autodiff slices padded rows' gradients off by itself. Padded keys
    # are invalid; padded queries repeat the last slot so that they widen no block range.
    padded = tuple(
        (_pad_to(sk.astype(q.dtype), nk * bk, 2), _pad_to(sv.astype(q.dtype), nk * bk, 2),
         _pad_to(sval.astype(bool), nk * bk, 1, False))
        for (sk, sv, sval), bk, nk in zip(segs, bks, nks))
    qt = _pad_to(q.transpose(0, 2, 3, 1, 4), nq * bq, 3)  # [B, K, G, Tp, Dh]
    slots = jnp.pad(jnp.asarray(q_slots, jnp.int32), (0, nq * bq - t), mode="edge")  # [Tp]
    out = _flash(plan, qt, padded, slots)  # [B, K, G, Tp, Dh]
    return out[:, :, :, :t].transpose(0, 3, 1, 2, 4)  # [B, T, K, G, Dh]


# -- TPU splash attention -------------------------------------------------------------------------------------
def splash_supported(q, k, *, q_slots, prefix=None) -> str | None:
    """Why splash cannot run this call (a reason), or None. It is a TPU kernel; its masks are static numpy
    structures built at trace time, so queries must sit at the static slots 0..T-1 over exactly T keys; a prefix
    is a second key range grouped by prompt, which its single key sequence cannot express."""
    if jax.default_backend() != "tpu":
        return f"a {jax.default_backend()} backend (the kernel is TPU-only; interpret mode is for tests)"
    if prefix is not None:
        return "a shared prefix"
    if not isinstance(q_slots, int) or q_slots != 0:
        return "queries at a cache offset (q_slots must be the static int 0)"
    if k.shape[2] != q.shape[1]:
        return "keys other than the queries' own T slots"
    return None


def splash_attention(q, k, v, *, kv_valid, scale, softcap=None, window=None, block=DEFAULT_BLOCK,
                     interpret=False):
    """Self-attention of T queries at slots 0..T-1 over their own T keys with jax's splash kernel.

    q: [B, T, K, G, Dh]; k, v: [B, K, T, Dh]; kv_valid: [B, T] -> [B, T, K, G, Dh]. GQA runs the MQA kernel
    (G query heads over one K/V head) vmapped over KV heads and rows. Padding becomes segment ids: real slots 1,
    pad slots 0 (a pad query sees the pad keys up to itself, never an empty row; see the module docstring),
    slots added to reach a multiple of 128 get 2. `interpret=True` runs the kernel's TPU semantics on CPU."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa  # TPU-only module: imported on use

    b, t, kh, g, dh = q.shape
    blk = min(block, -(-t // 128) * 128)
    tp = -(-t // blk) * blk
    qh = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 3, 1, 4)  # the kernel does not scale
    qh = _pad_to(qh, tp, 3)  # [B, K, G, Tp, Dh]
    kp = _pad_to(k.astype(q.dtype), tp, 2)  # [B, K, Tp, Dh]
    vp = _pad_to(v.astype(q.dtype), tp, 2)
    seg = _pad_to(kv_valid.astype(jnp.int32), tp, 1, 2)  # [B, Tp]
    shape = (tp, tp)
    one = sa.CausalMask(shape) if window is None else sa.LocalMask(shape, window_size=(window - 1, 0), offset=0)
    sizes = sa.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk, block_kv_dkv=blk,
                          block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    kernel = sa.make_splash_mqa_single_device(sa.MultiHeadMask([one] * g), block_sizes=sizes,
                                              attn_logits_soft_cap=softcap, interpret=interpret)
    head = lambda qh1, k1, v1, s: kernel(qh1, k1, v1, segment_ids=sa.SegmentIds(q=s, kv=s))  # [G, Tp, Dh]
    rows = jax.vmap(jax.vmap(head, in_axes=(0, 0, 0, None)), in_axes=(0, 0, 0, 0))
    out = rows(qh, kp, vp, seg)  # [B, K, G, Tp, Dh]
    return out[:, :, :, :t].transpose(0, 3, 1, 2, 4).astype(q.dtype)


# -- dispatch -------------------------------------------------------------------------------------------------
def default_block() -> int:
    return int(os.environ.get(ENV_BLOCK, DEFAULT_BLOCK))


def choose_impl(q, k, *, q_slots, prefix=None, impl="auto", block=None) -> str:
    """The path `attend` takes for these shapes: "full", "blockwise" or "splash" (see the module docstring)."""
    if impl not in IMPLS:
        raise ValueError(f"attention impl {impl!r}: expected one of {IMPLS}")
    if impl == "auto":
        impl = os.environ.get(ENV_IMPL, "auto") or "auto"
        if impl not in IMPLS:
            raise ValueError(f"${ENV_IMPL}={impl!r}: expected one of {IMPLS}")
    if impl == "splash" and splash_supported(q, k, q_slots=q_slots, prefix=prefix) is not None:
        return "blockwise"  # what splash cannot do (a prefix, a cache offset, not a TPU) runs blockwise
    if impl != "auto":
        return impl
    t, keys = q.shape[1], k.shape[2] + (0 if prefix is None else prefix[0].shape[2])
    block = block or default_block()
    # Single-device CPU programs only: in a program sharded over several devices GSPMD keeps the decode path's
    # regrouped [B, K, T x G, ...] intermediates whole over "tensor" (the KV-head split), so a device holds more
    # than its share (tests/test_grm_trajectories.py measures the sampler's memory per device).
    if jax.default_backend() == "cpu" and jax.device_count() == 1 and t * q.shape[3] <= DECODE_MAX_QUERIES:
        return "decode"
    if t < FULL_BELOW_T or t * keys <= block * block:
        return "full"
    # splash inside a multi-device GSPMD program would have its operands replicated (a Pallas call is not
    # partitioned automatically; it needs a shard_map with the mesh, which this module does not see).
    if (jax.device_count() == 1 and q.shape[-1] % 128 == 0
            and splash_supported(q, k, q_slots=q_slots, prefix=prefix) is None):
        return "splash"
    return "blockwise"


def attend(q, k, v, *, q_slots, kv_valid, scale, softcap=None, window=None, prefix=None, impl="auto",
           block_q=None, block_kv=None):
    """Attention of queries q [B, T, K, G, Dh] over keys/values k, v [B, K, S, Dh] -> [B, T, K, G, Dh].

    q_slots: [T] int array, the queries' slots; or a Python int s0, meaning slots s0 .. s0+T-1 known at trace
      time (0 without a cache: what lets splash build its static mask).
    kv_valid: [B, S] bool, the slots holding real tokens. scale: multiplies q.k; softcap: Gemma-2's
      tanh(x / cap) * cap on the scaled logits; window: sliding window in slots, or None.
    prefix: a SharedPrefix layer's (k, v [U, K, P, Dh], valid [U, P]) in front of the S own slots, or None.
    impl: "auto" | "full" | "blockwise" | "splash" (module docstring). block_q / block_kv: blockwise block sizes
      (default $SPCT_ATTENTION_BLOCK or 512); splash uses block_q.
    """
    t = q.shape[1]
    block = default_block()
    block_q, block_kv = block_q or block, block_kv or block
    chosen = choose_impl(q, k, q_slots=q_slots, prefix=prefix, impl=impl, block=block_q)
    if chosen == "splash":
        return splash_attention(q, k, v, kv_valid=kv_valid, scale=scale, softcap=softcap, window=window,
                                block=block_q)
    slots = q_slots + jnp.arange(t, dtype=jnp.int32) if isinstance(q_slots, int) else q_slots
    kw = dict(q_slots=slots, kv_valid=kv_valid, scale=scale, softcap=softcap, window=window, prefix=prefix)
    if chosen == "full":
        return reference_attention(q, k, v, **kw)
    if chosen == "decode":
        return decode_attention(q, k, v, **kw)
    return blockwise_attention(q, k, v, **kw, block_q=block_q, block_kv=block_kv)


__all__ = ["attend", "choose_impl", "reference_attention", "decode_attention", "blockwise_attention",
           "splash_attention", "splash_supported", "IMPLS", "ENV_IMPL", "ENV_BLOCK", "MASKED", "DECODE_MAX_QUERIES"]
