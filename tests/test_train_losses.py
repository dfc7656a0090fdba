"""Losses against hand computations written independently in numpy (spct_jax/train/losses.py, spct_jax/models/logprobs.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax.models import ModelConfig, init_model
from spct_jax.models.logprobs import sequence_logprobs, token_logprobs_from_logits
from spct_jax.train.losses import (GRPO_AGGREGATIONS, bce_loss, group_advantages, grpo_diagnostics, grpo_loss,
                                   k3_kl, nll_loss)

TINY = ModelConfig(family="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# -- NLL and chunked log-probs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_batch():
    model = init_model(TINY, seed=1)
    rng = np.random.default_rng(0)
    b, t = 3, 11
    ids = rng.integers(0, TINY.vocab_size, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    mask[1, 8:] = 0  # right padding
    mask[2, 5:] = 0
    loss_mask = mask.astype(np.float32).copy()
    loss_mask[:, :3] = 0  # prompt tokens are not targets
    return model, ids, mask, loss_mask


def test_nll_equals_numpy_log_softmax(tiny_batch):
    model, ids, mask, loss_mask = tiny_batch
    logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))  # [B, T, V]
    lsm = np_log_softmax(logits.astype(np.float64))
    want_sum, want_den = 0.0, 0.0
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if loss_mask[b, t]:
                want_sum -= lsm[b, t - 1, ids[b, t]]  # logits at t-1 score token t
                want_den += 1
    graphdef, params = nnx.split(model)
    for chunk in (3, 4, 64):  # 10 predicted positions: ragged chunks, even chunks, one chunk
        @jax.jit
        def f(p):
            lp = sequence_logprobs(nnx.merge(graphdef, p), jnp.asarray(ids), jnp.asarray(mask), chunk=chunk)
            return lp, nll_loss(lp, jnp.asarray(loss_mask))
        lp, (s, d) = f(params)
        assert float(d) == want_den
        np.testing.assert_allclose(float(s), want_sum, rtol=1e-5)
        assert np.all(np.asarray(lp)[:, 0] == 0)
    np.testing.assert_allclose(np.asarray(token_logprobs_from_logits(jnp.asarray(logits), jnp.asarray(ids))),
                               np.asarray(lp), rtol=1e-5, atol=1e-6)


def test_chunked_logprob_gradients_match_unchunked(tiny_batch):
    model, ids, mask, loss_mask = tiny_batch
    graphdef, params = nnx.split(model)

    def loss(p, chunk):
        lp = sequence_logprobs(nnx.merge(graphdef, p), jnp.asarray(ids), jnp.asarray(mask), chunk=chunk)
        return nll_loss(lp, jnp.asarray(loss_mask))[0]

    g1 = jax.jit(jax.grad(lambda p: loss(p, 64)))(params)
    g3 = jax.jit(jax.grad(lambda p: loss(p, 3)))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g3)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# -- GRPO -------------------------------------------------------------------------------------------------------
def np_grpo(logp, old, ref, adv, mask, eps, beta):
    """Loss (mean over rollouts of per-rollout token means) and d loss / d logp, by the PPO case table."""
    b, t = logp.shape
    loss_tok = np.zeros((b, t))
    grad_tok = np.zeros((b, t))
    for i in range(b):
        a = adv[i]
        for j in range(t):
            rho = np.exp(logp[i, j] - old[i, j])
            if a >= 0 and rho > 1 + eps:  # gains capped: constant, no gradient
                obj, dobj = (1 + eps) * a, 0.0
            elif a < 0 and rho < 1 - eps:  # losses capped from below: constant, no gradient
                obj, dobj = (1 - eps) * a, 0.0
            else:  # includes A < 0 with rho > 1 + eps: the unclipped (more pessimistic) term
                obj, dobj = rho * a, rho * a
            d = ref[i, j] - logp[i, j]
            kl = np.exp(d) - d - 1
            dkl = 1 - np.exp(d)  # d kl / d logp
            loss_tok[i, j] = -(obj - beta * kl)
            grad_tok[i, j] = -(dobj - beta * dkl)
    n = mask.sum(1)
    rows = (n > 0).sum()
    loss = sum((loss_tok[i] * mask[i]).sum() / n[i] for i in range(b) if n[i] > 0) / rows
    grad = np.where(n[:, None] > 0, grad_tok * mask / np.maximum(n[:, None], 1) / rows, 0.0)
    return loss, grad


# Log-ratios cover: below 1-eps, inside, exactly on-policy, inside, above 1+eps (eps = 0.2).
LOG_RATIOS = np.log(np.array([0.6, 0.9, 1.0, 1.1, 1.5, 1.3]))


def grpo_case(adv, beta, seed=0):
    rng = np.random.default_rng(seed)
    b, t = len(adv), len(LOG_RATIOS)
    old = rng.normal(-2.0, 0.5, (b, t))
    logp = old + LOG_RATIOS[None, :]
    ref = logp + rng.normal(0, 0.3, (b, t))
    mask = np.ones((b, t))
    mask[0, -1] = 0
    return logp, old, ref, np.asarray(adv, float), mask


def jax_grpo(logp, old, ref, adv, mask, **kw):
    f = lambda lp: (lambda s, d: s / d)(*grpo_loss(lp, *map(jnp.asarray, (old, ref, adv, mask)), **kw))
    val, grad = jax.value_and_grad(f)(jnp.asarray(logp, jnp.float32))
    return float(val), np.asarray(grad)


@pytest.mark.parametrize("beta", [0.0, 0.08])
@pytest.mark.parametrize("adv", [[1.0, 0.5, -1.0, -1.5]])
def test_grpo_loss_and_gradient_closed_form(adv, beta):
    logp, old, ref, adv, mask = grpo_case(adv, beta)
    want_loss, want_grad = np_grpo(logp, old, ref, adv, mask, 0.2, beta)
    loss, grad = jax_grpo(logp, old, ref, adv, mask, epsilon=0.2, beta=beta)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    if beta == 0.0:
        neg, pos = 2, 0  # rows with A = -1 and A = +1
        # A < 0, rho = 1.5 > 1 + eps: the unclipped term is active, so the gradient is nonzero (= -A*rho/(n*B)).
        np.testing.assert_allclose(grad[neg, 4], 1.0 * 1.5 / 6 / 4, rtol=1e-5)
        # A < 0, rho = 0.6 < 1 - eps: the clipped constant is active, no gradient.
        assert grad[neg, 0] == 0.0
        # A > 0: the mirror image.
        assert grad[pos, 4] == 0.0
        np.testing.assert_allclose(grad[pos, 0], -1.0 * 0.6 / 5 / 4, rtol=1e-5)


def test_grpo_all_equal_group_gives_no_policy_gradient():
    adv = np.asarray(group_advantages(jnp.array([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]), 4))
    assert np.all(adv == 0.0)
    logp, old, ref, _, mask = grpo_case([0.0] * 8, 0.0, seed=3)
    _, grad = jax_grpo(logp, old, ref, adv, mask, beta=0.0)
    assert np.all(grad == 0.0)
    _, grad_kl = jax_grpo(logp, old, ref, adv, mask, beta=0.08)  # only the KL term remains
    _, want = np_grpo(logp, old, ref, adv, mask, 0.2, 0.08)
    np.testing.assert_allclose(grad_kl, want, rtol=1e-5, atol=1e-8)


def test_grpo_aggregations_by_name():
    logp, old, ref, adv, mask = grpo_case([1.0, -1.0, 0.5, 0.0], 0.08)
    mask[3] = 0  # a padding row: not a rollout
    args = tuple(map(jnp.asarray, (logp, old, ref, adv, mask)))
    s_tm, _ = grpo_loss(*args, aggregation="token_mean")
    for name in GRPO_AGGREGATIONS:
        s, d = grpo_loss(*args, aggregation=name)
        if name == "seq_mean_token_mean":
            assert float(d) == 3.0
            want, _ = np_grpo(logp[:3], old[:3], ref[:3], adv[:3], mask[:3], 0.2, 0.08)
            np.testing.assert_allclose(float(s / d), want, rtol=1e-5)
        elif name == "token_mean":
            assert float(d) == mask.sum()
        elif name == "seq_sum":
            assert float(d) == 3.0
            np.testing.assert_allclose(float(s), float(s_tm), rtol=1e-6)
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(*args, aggregation="nope")


def test_grpo_diagnostics():
    logp, old, ref, adv, mask = grpo_case([1.0, -1.0], 0.08)
    diag = grpo_diagnostics(*map(jnp.asarray, (logp, old, ref, adv, mask)), epsilon=0.2)
    # Row 0 (A > 0, first 5 tokens): rho = 1.5 clipped. Row 1 (A < 0, 6 tokens): rho = 0.6 clipped.
    np.testing.assert_allclose(float(diag["clip_fraction"]), 2 / 11, rtol=1e-6)
    d = ref - logp
    np.testing.assert_allclose(float(diag["kl_mean"]), ((np.exp(d) - d - 1) * mask).sum() / 11, rtol=1e-5)


def test_k3_kl_formula_and_zero_at_reference():
    rng = np.random.default_rng(0)
    logp, ref = rng.normal(-3, 1, (2, 7)), rng.normal(-3, 1, (2, 7))
    want = np.exp(ref - logp) - (ref - logp) - 1
    np.testing.assert_allclose(np.asarray(k3_kl(jnp.asarray(logp), jnp.asarray(ref))), want, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(k3_kl(jnp.asarray(logp), jnp.asarray(ref))) >= 0)
    assert np.all(np.asarray(k3_kl(jnp.asarray(logp), jnp.asarray(logp))) == 0.0)
    diag = grpo_diagnostics(*map(jnp.asarray, (logp, logp, logp, np.ones(2), np.ones((2, 7)))))
    assert float(diag["kl_mean"]) == 0.0 and float(diag["clip_fraction"]) == 0.0


def test_group_advantages_values():
    r = jnp.array([1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0])
    adv = np.asarray(group_advantages(r, 4))
    g = np.asarray(r).reshape(2, 4)
    want = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(adv, want.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(adv[:4], [1.5, -0.5, -0.5, -0.5], rtol=1e-3)  # sample std of (1,-1,-1,-1) is 1
    with pytest.raises(ValueError):
        group_advantages(jnp.ones(6), 4)


# -- BCE --------------------------------------------------------------------------------------------------------
def test_bce_closed_form_including_extreme_logits():
    x = np.array([-1e4, -30.0, -2.0, 0.0, 0.7, 3.0, 30.0, 1e4, 1e4, -1e4])
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    # -(y log σ(x) + (1-y) log(1-σ(x))) with log σ(x) = -log(1+e^-x) and log(1-σ(x)) = -log(1+e^x)
    want = y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)
    s, d = bce_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    assert float(d) == len(x)
    np.testing.assert_allclose(float(s), want.sum(), rtol=1e-6)
    moderate = np.abs(x) < 10  # the textbook formula where float64 represents 1 - σ(x) well
    sig = 1 / (1 + np.exp(-x[moderate]))
    textbook = -(y[moderate] * np.log(sig) + (1 - y[moderate]) * np.log(1 - sig))
    s_mod, _ = bce_loss(jnp.asarray(x[moderate], jnp.float32), jnp.asarray(y[moderate], jnp.float32))
    np.testing.assert_allclose(float(s_mod), textbook.sum(), rtol=1e-5)
    grad = jax.grad(lambda z: bce_loss(z, jnp.asarray(y, jnp.float32))[0])(jnp.asarray(x, jnp.float32))
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(np.asarray(grad), 1 / (1 + np.exp(-np.clip(x, -500, 500))) - y, atol=1e-6)
    s_m, d_m = bce_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(moderate))
    assert float(d_m) == moderate.sum()
    np.testing.assert_allclose(float(s_m), want[moderate].sum(), rtol=1e-6)
