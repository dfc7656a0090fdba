"""models/attention.py: the blockwise (flash-style) path, the decode path and the splash wrapper against the full
reference.

Exactness bound, float32 everywhere: for the output and every gradient, max |path - full| <= 1e-5 x
max(max |full|, 1) per array (inputs are unit normals; measured errors ~1e-7 relative). Every row is compared, pad
queries included: the blockwise path reproduces the full path's uniform average for a query with no visible key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spct_jax.models import attention as A

RTOL = 1e-5


def close(got, ref, rtol=RTOL):
    """max |got - ref| <= rtol x max(max |ref|, 1): relative to the array's size, but never to less than the inputs'
    unit scale, where float32 cancellation, not an error, decides (e.g. with one visible key the full path's dk is
    exactly 0 and the blockwise path's p * (dO.v - rowsum(dO * O)) leaves ~1e-9)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    err, size = float(np.max(np.abs(got - ref), initial=0.0)), max(float(np.max(np.abs(ref), initial=0.0)), 1.0)
    assert err <= rtol * size, f"max error {err:.3g} > {rtol} x {size:.3g}"


def make(rng, *, b, t, s, kh, g, dh, pads=(), p=0, u=None, p_pads=()):
    """Random q [B, T, K, G, Dh], k/v [B, K, S, Dh], kv_valid [B, S] (row i's first pads[i] slots invalid) and a
    prefix of U rows x P slots (row i's first p_pads[i] invalid) when p > 0; a cotangent for the output."""
    f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    valid = np.ones((b, s), bool)
    for i, n in enumerate(pads):
        valid[i, :n] = False
    prefix = None
    if p:
        p_valid = np.ones((u, p), bool)
        for i, n in enumerate(p_pads):
            p_valid[i, :n] = False
        prefix = (f(u, kh, p, dh), f(u, kh, p, dh), jnp.asarray(p_valid))
    return f(b, t, kh, g, dh) * 2.0, f(b, kh, s, dh), f(b, kh, s, dh), jnp.asarray(valid), prefix, f(b, t, kh, g, dh)


def compare(q, k, v, valid, prefix, ct, *, q_slots, scale=0.3, softcap=None, window=None, block_q=4, block_kv=3):
    """Blockwise == full and decode == full: the output and the gradients of <out, ct> w.r.t. q, k, v (and the
    prefix's k, v). The paths run in one jitted program (one compile per case; eager dispatch of the loops is far
    slower)."""
    opts = dict(scale=scale, softcap=softcap, window=window)

    @jax.jit
    def both(q, k, v, valid, prefix, ct, q_slots):
        def run(fn, q, k, v, pkv):
            pre = None if pkv is None else (*pkv, prefix[2])
            return fn(q, k, v, q_slots=q_slots, kv_valid=valid, prefix=pre, **opts)

        block = lambda *a, **kw: A.blockwise_attention(*a, **kw, block_q=block_q, block_kv=block_kv)  # noqa: E731
        pkv = None if prefix is None else prefix[:2]
        results = []
        for fn in (A.reference_attention, block, A.decode_attention):
            out, vjp = jax.vjp(lambda *a, fn=fn: run(fn, *a), q, k, v, pkv)
            results.append((out, vjp(ct)))
        return results

    (ref, g_ref), *paths = both(q, k, v, valid, prefix, ct, q_slots)
    for got, g_got in paths:
        close(got, ref)
        for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
            close(a, b)


# name -> (shapes, call options). Block sizes 4 x 3 so that every case crosses several blocks.
CASES = {
    # Gemma-2: soft-cap, a window (5) shorter than the sequence (13), GQA, left padding
    "gemma2_cap_window": (dict(b=2, t=13, s=13, kh=2, g=2, dh=8, pads=(0, 3)),
                          dict(q_slots=jnp.arange(13), softcap=2.0, window=5)),
    # Llama / Qwen2: no cap, no window
    "llama_plain": (dict(b=2, t=13, s=13, kh=2, g=3, dh=8, pads=(4, 0)), dict(q_slots=jnp.arange(13))),
    # row 0: 6 pad slots (its first 6 queries see nothing); row 1: all padding (no query sees anything)
    "empty_rows": (dict(b=2, t=11, s=11, kh=1, g=2, dh=8, pads=(6, 11)),
                   dict(q_slots=jnp.arange(11), softcap=3.0, window=4)),
    # decode: one query at slot 9 of a 16-slot cache (slots 10.. unwritten, row 1 left-padded by 4)
    "decode_step": (dict(b=2, t=1, s=16, kh=2, g=2, dh=8, pads=(0, 4)),
                    dict(q_slots=jnp.asarray([9]), softcap=2.0, window=6)),
    # prefill chunk: 5 queries at slots 6..10 (cache offset 6) of a 16-slot cache
    "prefill_chunk": (dict(b=2, t=5, s=16, kh=2, g=2, dh=8, pads=(0, 7)),
                      dict(q_slots=6 + jnp.arange(5), window=4)),
    # shared prefix: U=2 prompts of 7 slots, 3 rows each, 2 queries at own slots 3, 4; the window (6) reaches back
    # into the prefix (global slots P + 3 - 5 ... = 5, 6 visible)
    "shared_prefix_window": (dict(b=6, t=2, s=9, kh=2, g=2, dh=8, p=7, u=2, p_pads=(2, 0)),
                             dict(q_slots=3 + jnp.arange(2), softcap=2.0, window=6)),
    # shared prefix without a window, one decode query per row at own slot 0 (the first step after the prompt)
    "shared_prefix_decode": (dict(b=6, t=1, s=4, kh=1, g=2, dh=8, p=7, u=3, p_pads=(0, 5, 7)),
                             dict(q_slots=jnp.asarray([0]))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_blockwise_equals_full_forward_and_gradients(name):
    shapes, options = CASES[name]
    q, k, v, valid, prefix, ct = make(np.random.default_rng(list(CASES).index(name)), **shapes)
    compare(q, k, v, valid, prefix, ct, **options)


def test_query_without_visible_key_averages_every_slot():
    """The behaviour both paths share, spelled out: no visible key -> mean of v over all P + S slots."""
    q, k, v, valid, prefix, _ = make(np.random.default_rng(9), b=4, t=3, s=5, kh=1, g=1, dh=4, p=2, u=2,
                                     pads=(5, 5, 5, 5), p_pads=(2, 2))
    out = A.blockwise_attention(q, k, v, q_slots=jnp.arange(3), kv_valid=valid, scale=1.0, prefix=prefix,
                                block_q=2, block_kv=2)  # [B, T, K, G, Dh]
    every = jnp.concatenate([jnp.repeat(prefix[1], 2, axis=0), v], axis=2)  # [B, K, P + S, Dh]
    np.testing.assert_allclose(out, jnp.broadcast_to(every.mean(axis=2)[:, None, :, None], out.shape), rtol=1e-6)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_blockwise_equals_full_on_random_shapes(data):
    """Random small shapes, offsets, windows, caps, paddings, prefixes and block sizes."""
    draw = lambda s: data.draw(s)  # noqa: E731
    u = draw(st.sampled_from([1, 2]))
    b = u * draw(st.sampled_from([1, 2]))
    t = draw(st.integers(1, 7))
    offset = draw(st.integers(0, 4))
    s = t + offset + draw(st.integers(0, 3))
    p = draw(st.sampled_from([0, 0, 3, 6]))
    shapes = dict(b=b, t=t, s=s, kh=draw(st.sampled_from([1, 2])), g=draw(st.sampled_from([1, 2])), dh=4,
                  pads=[draw(st.integers(0, s)) for _ in range(b)], p=p, u=u if p else None,
                  p_pads=[draw(st.integers(0, p)) for _ in range(u)] if p else ())
    q, k, v, valid, prefix, ct = make(np.random.default_rng(draw(st.integers(0, 2**16))), **shapes)
    compare(q, k, v, valid, prefix, ct, q_slots=offset + jnp.arange(t),
            softcap=draw(st.sampled_from([None, 1.5])), window=draw(st.sampled_from([None, 1, 3, 8])),
            block_q=draw(st.integers(1, 5)), block_kv=draw(st.integers(1, 5)))


def _temp_bytes(fn, t, block):
    """XLA's temporary bytes of one compiled forward + backward (gradients w.r.t. q, k, v) at T = S = t."""
    b, kh, g, dh = 1, 2, 2, 32
    q = jax.ShapeDtypeStruct((b, t, kh, g, dh), jnp.float32)
    kv = jax.ShapeDtypeStruct((b, kh, t, dh), jnp.float32)
    valid = jax.ShapeDtypeStruct((b, t), jnp.bool_)
    extra = {} if fn is A.reference_attention else dict(block_q=block, block_kv=block)

    def step(q, k, v, valid, ct):
        out = lambda q, k, v: fn(q, k, v, q_slots=jnp.arange(t), kv_valid=valid, scale=0.2, softcap=50.0,  # noqa: E731
                                 window=t // 2, **extra)
        return jax.grad(lambda *a: jnp.sum(out(*a) * ct), argnums=(0, 1, 2))(q, k, v)

    return jax.jit(step).lower(q, kv, kv, valid, q).compile().memory_analysis().temp_size_in_bytes


def test_blockwise_backward_never_holds_a_score_array():
    """Compiled temporaries of forward + backward at T = 2048 (4 query heads): the full path holds several
    [H, T, S] float32 arrays (64 MiB each); the blockwise path less than a quarter of ONE, and a quarter of the
    full path's total at most (measured: ~8 MiB vs ~259 MiB)."""
    t = 2048
    one_scores = 4 * t * t * 4
    full, block = _temp_bytes(A.reference_attention, t, 256), _temp_bytes(A.blockwise_attention, t, 256)
    assert full >= one_scores
    assert block < one_scores / 4
    assert block <= full / 4


def test_choice_of_implementation(monkeypatch):
    monkeypatch.delenv(A.ENV_IMPL, raising=False)
    monkeypatch.delenv(A.ENV_BLOCK, raising=False)
    big_q, big_k = jnp.zeros((1, 1024, 2, 2, 8)), jnp.zeros((1, 2, 1024, 8))
    decode_q = jnp.zeros((4, 1, 2, 2, 8))
    choose = A.choose_impl
    on_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    # a decode step (one score row): the decode path on a one-device CPU, the full one elsewhere; up to 16 queries
    # per KV head
    assert choose(decode_q, big_k, q_slots=jnp.arange(1)) == ("decode" if on_cpu else "full")
    assert choose(jnp.zeros((4, 8, 2, 2, 8)), big_k, q_slots=jnp.arange(8)) == ("decode" if on_cpu else "full")
    assert choose(jnp.zeros((4, 9, 2, 2, 8)), big_k, q_slots=jnp.arange(9)) == "full"
    assert choose(decode_q, big_k, q_slots=jnp.arange(1), impl="full") == "full"
    assert choose(big_q[:, :300], big_k[:, :, :300], q_slots=0) == "full"  # one 512 x 512 block in all
    # splash needs head_dim % 128 == 0 (the MXU's width) and one device (see choose_impl); 8 is neither
    assert choose(big_q, big_k, q_slots=0) == "blockwise"
    # what splash cannot do runs blockwise: a cache offset, a traced slot array, a shared prefix
    assert choose(big_q, big_k, q_slots=7, impl="splash") == "blockwise"
    assert choose(big_q, big_k, q_slots=jnp.arange(1024), impl="splash") == "blockwise"
    prefix = (big_k, big_k, jnp.ones((1, 1024), bool))
    assert choose(big_q, big_k, q_slots=0, prefix=prefix, impl="splash") == "blockwise"
    on_tpu = jax.default_backend() == "tpu"
    assert choose(big_q, big_k, q_slots=0, impl="splash") == ("splash" if on_tpu else "blockwise")
    assert choose(decode_q, big_k, q_slots=jnp.arange(1), impl="blockwise") == "blockwise"
    monkeypatch.setenv(A.ENV_IMPL, "blockwise")  # the override reaches "auto" only
    assert choose(decode_q, big_k, q_slots=jnp.arange(1)) == "blockwise"
    assert choose(big_q, big_k, q_slots=0, impl="full") == "full"
    with pytest.raises(ValueError, match="expected one of"):
        choose(big_q, big_k, q_slots=0, impl="flash")
    monkeypatch.setenv(A.ENV_IMPL, "fast")
    with pytest.raises(ValueError, match=A.ENV_IMPL):
        choose(big_q, big_k, q_slots=0)


def test_attend_dispatches_and_agrees(monkeypatch):
    """attend() with each impl on a case every impl can run (splash in interpret mode is tested below)."""
    monkeypatch.setenv(A.ENV_BLOCK, "4")
    q, k, v, valid, _, _ = make(np.random.default_rng(3), b=2, t=9, s=9, kh=2, g=2, dh=8, pads=(0, 2))
    kw = dict(kv_valid=valid, scale=0.3, softcap=2.0, window=5)
    ref = A.reference_attention(q, k, v, q_slots=jnp.arange(9), **kw)
    for impl in ("full", "decode", "blockwise", "auto"):
        close(A.attend(q, k, v, q_slots=0, impl=impl, **kw), ref)
    close(A.attend(q, k, v, q_slots=jnp.arange(9), impl="splash", **kw), ref)  # falls back: traced slots


def test_splash_kernel_matches_full_on_real_tokens():
    """jax's splash kernel in Pallas interpret mode (its TPU semantics, run on CPU): GQA, soft-cap, a 50-slot
    window and left padding, T = 200 padded to 2 x 2 blocks of 128. Real tokens' outputs and the gradients of a
    loss over real tokens equal the full path's; pad queries differ by design (module docstring)."""
    rng = np.random.default_rng(4)
    q, k, v, valid, _, ct = make(rng, b=2, t=200, s=200, kh=2, g=2, dh=32, pads=(0, 37))
    ct = ct * valid[:, :, None, None, None]  # the loss reads real tokens only
    kw = dict(kv_valid=valid, scale=0.25, softcap=5.0, window=50)
    splash = lambda q, k, v: A.splash_attention(q, k, v, **kw, block=128, interpret=True)  # noqa: E731
    full = lambda q, k, v: A.reference_attention(q, k, v, q_slots=jnp.arange(200), **kw)  # noqa: E731
    real = np.asarray(valid)
    close(np.asarray(splash(q, k, v))[real], np.asarray(full(q, k, v))[real])
    grads = [jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a) * ct), argnums=(0, 1, 2))(q, k, v) for fn in (splash, full)]
    for got, ref in zip(*grads):
        close(got, ref)


# -- the decoder with the blockwise path forced ($SPCT_ATTENTION_IMPL) ----------------------------------------
def _tiny_gemma():
    """A 2-layer Gemma-2-shaped decoder (sliding layer with a 5-slot window, then a full one; soft-cap 5; GQA) with
    remat on, its params drawn at scale 0.5 so that the cap and the window change the logits measurably."""
    from flax import nnx

    from spct_jax.models import ModelConfig, init_model

    cfg = ModelConfig(family="gemma2", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, query_pre_attn_scalar=8, attn_logit_softcap=5.0,
                      final_logit_softcap=30.0, sliding_window=5, layer_types=("sliding", "full"))
    graphdef, state = nnx.split(init_model(cfg, seed=0, remat="full"))
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
    return graphdef, jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype) * 0.5, state)


IDS = jnp.asarray(np.random.default_rng(0).integers(3, 64, (3, 14)), jnp.int32)
MASK = jnp.asarray(np.arange(14)[None, :] >= np.array([0, 5, 11])[:, None])  # left padding 0, 5, 11


def _forward_and_grads(graphdef, state):
    from flax import nnx

    def loss(st):
        logits = nnx.merge(graphdef, st)(IDS, MASK)
        return jnp.sum(logits * MASK[..., None]), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(state)
    return logits, grads


def _stepped(graphdef, state):
    """Prefill 5 columns then 9 one-column decode steps; 2 prompts of 7 shared by 3 rows each, 6 decode steps."""
    from flax import nnx

    model = nnx.merge(graphdef, state)
    first, cache = model.extend(IDS[:, :5], MASK[:, :5], model.init_cache(3, 16))

    def step(cache, column):  # column: ids [B], mask [B]; one compiled body for every step
        logits, cache = model.extend(column[0][:, None], column[1][:, None], cache)
        return cache, logits[:, 0]

    _, rest = jax.lax.scan(step, cache, (IDS[:, 5:].T, MASK[:, 5:].T))  # [9, B, V]
    prompts = model.extend(IDS[:2, :7], MASK[:2, :7], model.init_cache(2, 7))[1].shared_by(3, 6)
    conts = IDS[:, 7:13].repeat(2, axis=0)  # [6 rows, 6 steps]
    _, shared = jax.lax.scan(step, prompts, (conts.T, jnp.ones(conts.T.shape, bool)))
    return first, rest, shared


@pytest.mark.parametrize("run", [_forward_and_grads, _stepped], ids=["forward_and_grads", "prefill_decode_shared"])
def test_decoder_with_blockwise_forced_equals_full(monkeypatch, run):
    """The integration, through $SPCT_ATTENTION_IMPL (read when attention is traced) with 4-slot blocks: the
    decoder's logits and parameter gradients of a left-padded batch, and its prefill + decode and shared-prefix
    decode logits, are the same with every attention forced blockwise as with the full path."""
    monkeypatch.setenv(A.ENV_BLOCK, "4")
    graphdef, state = _tiny_gemma()
    results = []
    for impl in ("full", "blockwise"):
        monkeypatch.setenv(A.ENV_IMPL, impl)
        traced = jax.jit(lambda st: run(graphdef, st)).trace(state)  # a fresh jit: traced under this impl
        # the blockwise loops (fori_loop over key blocks with traced bounds) are while loops; the full path has none
        assert ("while[" in str(traced.jaxpr)) == (impl == "blockwise")
        results.append(traced.lower().compile()(state))
    for got, ref in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0])):
        close(got, ref)
