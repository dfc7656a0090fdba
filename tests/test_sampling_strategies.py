"""The sampling strategies against closed forms on hand-made distributions: which tokens each may draw, the
log-probability it reports, the inverse-CDF draw, the bisection nucleus, and the mapping from `sample`'s options."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spct_jax.sampling import strategies as S

# One row of a hand-made distribution: probabilities 0.5, 0.3, 0.15, 0.05 (logits are their logs).
PROBS = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
LOGITS = jnp.log(jnp.asarray(PROBS))[None]  # [1, 4]


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


_choose = jax.jit(lambda strategy, logits, keys: strategy.choose(logits, keys))  # one compile per strategy kind
N = 4000


def _many(strategy, logits):
    """N independent draws from one row: tokens [N], logprobs [N]."""
    tok, lp = _choose(strategy, jnp.repeat(logits, N, axis=0), _keys(N))
    return np.asarray(tok), np.asarray(lp)


def test_greedy_takes_the_argmax_with_the_models_own_logprob():
    logits = jnp.asarray([[0.0, 2.0, 1.0], [3.0, -1.0, 0.5]])
    tok, lp = S.Greedy().choose(logits, _keys(2))
    assert tok.tolist() == [1, 0]
    np.testing.assert_allclose(lp, np.asarray(jax.nn.log_softmax(logits))[[0, 1], [1, 0]], rtol=1e-6)


def test_draw_is_the_inverse_cdf_across_blocks():
    rng = np.random.default_rng(0)
    probs = rng.random((64, 700)).astype(np.float32) * (rng.random((64, 700)) < 0.3)  # zeros too, 3 blocks of 256
    u = rng.random(64).astype(np.float32) * 0.999 + 0.001
    got = np.asarray(jax.jit(S.draw)(jnp.asarray(probs), jnp.asarray(u)))
    cdf = np.cumsum(probs.astype(np.float64), axis=-1)
    want = [int(np.searchsorted(c, x * c[-1])) for c, x in zip(cdf, u)]  # first index whose cdf reaches u * total
    # float32 rounding may move a draw to a neighbouring positive entry only when u sits on a cdf step
    assert np.mean(got == np.asarray(want)) > 0.95
    assert np.all(probs[np.arange(64), got] > 0)  # never a zero-probability token


def test_temperature_reports_the_tempered_logprob_and_matches_its_frequencies():
    t = 2.0
    tok, lp = _many(S.Temperature(temperature=jnp.float32(t)), LOGITS)
    tempered = PROBS ** (1 / t) / np.sum(PROBS ** (1 / t))
    np.testing.assert_allclose(lp, np.log(tempered)[tok], rtol=1e-5)
    freq = np.bincount(tok, minlength=4) / len(tok)
    np.testing.assert_allclose(freq, tempered, atol=0.03)


def test_top_k_draws_only_the_k_largest_renormalised():
    tok, lp = _many(S.TopK(temperature=jnp.float32(1.0), k=2), LOGITS)
    assert set(tok.tolist()) == {0, 1}
    np.testing.assert_allclose(lp, np.log(PROBS[tok] / 0.8), rtol=1e-5)


@pytest.mark.parametrize("p,kept", [(0.4, [0]), (0.7, [0, 1]), (0.9, [0, 1, 2]), (0.99, [0, 1, 2, 3])])
def test_top_p_keeps_the_fewest_most_likely_tokens_reaching_p(p, kept):
    mask = np.asarray(S.top_p_mask(LOGITS, jnp.float32(p)))[0]
    assert np.flatnonzero(mask).tolist() == kept
    tok, lp = _many(S.TopP(temperature=jnp.float32(1.0), p=jnp.float32(p)), LOGITS)
    assert set(tok.tolist()) <= set(kept)
    np.testing.assert_allclose(lp, np.log(PROBS[tok] / PROBS[kept].sum()), rtol=1e-5)


def test_top_p_after_top_k_measures_mass_among_the_k_survivors():
    # top-2 leaves 0.5 / 0.8 = 0.625 and 0.3 / 0.8 = 0.375: p = 0.6 keeps only token 0 (0.625 >= 0.6)
    tok, lp = _many(S.TopP(temperature=jnp.float32(1.0), p=jnp.float32(0.6), k=2), LOGITS)
    assert set(tok.tolist()) == {0} and np.allclose(lp, 0.0, atol=1e-6)
    tok, _ = _many(S.TopP(temperature=jnp.float32(1.0), p=jnp.float32(0.7), k=2), LOGITS)
    assert set(tok.tolist()) == {0, 1}


def test_from_options_picks_the_strategy_and_checks_the_options():
    assert isinstance(S.from_options(0.0, None, None, 10), S.Greedy)
    assert isinstance(S.from_options(0.7, 1, 0.9, 10), S.Greedy)
    assert type(S.from_options(0.7, None, 1.0, 10)) is S.Temperature
    top_k = S.from_options(0.7, 50, None, 10)
    assert type(top_k) is S.TopK and top_k.k == 10 and float(top_k.temperature) == np.float32(0.7)  # k clipped to V
    top_p = S.from_options(0.7, 5, 0.9, 10)
    assert isinstance(top_p, S.TopP) and top_p.k == 5
    for bad in [dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0)]:
        with pytest.raises(ValueError):
            S.from_options(**{"temperature": 1.0, "top_k": None, "top_p": None, **bad}, vocab_size=10)


def test_a_new_temperature_or_p_reuses_the_compiled_program_and_k_does_not():
    traces = []

    @jax.jit
    def choose(strategy, logits, keys):
        traces.append(1)
        return strategy.choose(logits, keys)

    for t, p in [(1.0, 0.9), (0.5, 0.8)]:
        choose(S.TopP(temperature=jnp.float32(t), p=jnp.float32(p), k=3), LOGITS, _keys(1))
    assert len(traces) == 1
    choose(S.TopP(temperature=jnp.float32(1.0), p=jnp.float32(0.9), k=2), LOGITS, _keys(1))
    assert len(traces) == 2
