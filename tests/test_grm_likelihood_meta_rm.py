"""The likelihood meta RM: its feature is the LM's own mean token log-prob of the trajectory, its fit is the
logistic-regression MLE, and the scorer, the saved folder and batching all give the same scores."""
import json

import numpy as np
import pytest

from spct_jax.data.schema import PreferenceItem
from spct_jax.demo.toy import TEMPLATE
from spct_jax.grm.likelihood_meta_rm import (CONFIG_NAME, LikelihoodMetaRM, MetaInput, fit_likelihood_meta_rm,
                                             fit_scale_bias, load_meta_rm)
from spct_jax.grm.scorer import GenerativeRewardModel
from spct_jax.models.registry import load_model

ITEM = PreferenceItem(context=[{"role": "user", "content": "What is 2+3?"}], responses=["5", "6", "five"],
                      rewards=[1.0, 0.0, 0.5], best=0, source="test", uid="q1")
TEXTS = ["Specific Criteria: correct sum.\nAnalysis: 5 is right.\nScores: \\boxed{9, 2, 8}",
         "x", "Scores: \\boxed{1, 1, 1}", "Analysis: the second response is 6, which is wrong; " * 3]


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-random")


def _inputs():
    return [MetaInput(item=ITEM, perm=p, text=t) for p in ((0, 1, 2), (2, 0, 1)) for t in TEXTS]


def test_feature_is_the_mean_log_prob_of_the_trajectory_tokens_only(lm):
    import jax.numpy as jnp
    model, tok = lm
    rm = LikelihoodMetaRM(lm=model, tokenizer=tok, template=TEMPLATE)
    xs = _inputs()[::3]
    feats = rm.features(xs)  # bucketed, padded and batched
    # Reference: the model's plain forward on each unpadded row, log-softmax in float64 numpy, averaged over the
    # positions that predict the trajectory's tokens.
    for x, f in zip(xs, feats):
        ids, start = rm.encode(x)
        assert 0 < start < len(ids)
        logits = np.asarray(model(jnp.asarray([ids])), np.float64)[0]  # [T, V]
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        picked = [logp[t - 1, ids[t]] for t in range(start, len(ids))]
        assert f == pytest.approx(np.mean(picked), abs=1e-4)


def test_scores_do_not_depend_on_batch_size_or_on_the_other_rows(lm):
    model, tok = lm
    xs = _inputs()
    full = LikelihoodMetaRM(lm=model, tokenizer=tok, template=TEMPLATE, scale=2.0, bias=-1.0, batch_size=32).scores(xs)
    small = LikelihoodMetaRM(lm=model, tokenizer=tok, template=TEMPLATE, scale=2.0, bias=-1.0, batch_size=3).scores(xs)
    alone = [LikelihoodMetaRM(lm=model, tokenizer=tok, template=TEMPLATE, scale=2.0, bias=-1.0).scores([x])[0]
             for x in xs]
    np.testing.assert_allclose(full, small, atol=1e-5)
    np.testing.assert_allclose(full, alone, atol=1e-5)


def test_the_response_order_changes_the_prompt_and_so_the_score(lm):
    model, tok = lm
    rm = LikelihoodMetaRM(lm=model, tokenizer=tok, template=TEMPLATE)
    a, b = rm.encode(MetaInput(item=ITEM, perm=(0, 1, 2), text=TEXTS[0])), rm.encode(
        MetaInput(item=ITEM, perm=(2, 1, 0), text=TEXTS[0]))
    assert a[0][:a[1]] != b[0][:b[1]] and a[0][a[1]:] == b[0][b[1]:]


def test_fit_matches_the_closed_form_mle_for_a_binary_feature():
    # With x in {0, 1} the logistic MLE is sigmoid(b) = P(y | x = 0) and sigmoid(a + b) = P(y | x = 1).
    x = np.array([0] * 10 + [1] * 10, float)
    y = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2, float)
    scale, bias, _ = fit_scale_bias(x * 3.0 - 7.0, y)  # any affine view of the same feature
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert bias + scale * -7.0 == pytest.approx(logit(0.3), abs=1e-5)
    assert bias + scale * -4.0 == pytest.approx(logit(0.8), abs=1e-5)


def test_fit_is_a_stationary_point_of_bce_and_learns_the_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = (rng.random(400) < 1 / (1 + np.exp(-(-1.5 * x + 0.3)))).astype(float)
    scale, bias, iters = fit_scale_bias(x, y)
    p = 1 / (1 + np.exp(-(scale * x + bias)))
    assert abs(np.mean(p - y)) < 1e-6 and abs(np.mean((p - y) * x)) < 1e-6  # dBCE/dbias = dBCE/dscale = 0
    assert scale < 0 and iters < 50  # a feature that predicts *wrong* trajectories gets a negative scale
    with pytest.raises(ValueError, match="one feature per label"):
        fit_scale_bias(x, y[:-1])


def test_fit_save_load_and_the_scorer_agree(lm, tmp_path):
    model, tok = lm
    xs = _inputs()
    labels = [True, False, False, True, False, True, False, False]
    rm, fit = fit_likelihood_meta_rm(model, tok, xs, labels, template=TEMPLATE)
    assert fit.examples == 8 and fit.positives == 3 and fit.loss <= fit.loss_intercept_only + 1e-9
    rm.save(tmp_path / "meta", lm_path="tiny-random", fit=fit)
    body = json.loads((tmp_path / "meta" / CONFIG_NAME).read_text())
    assert body["fit"]["examples"] == 8 and body["scale"] == rm.scale
    loaded = load_meta_rm(tmp_path / "meta")
    assert isinstance(loaded, LikelihoodMetaRM) and (loaded.scale, loaded.bias) == (rm.scale, rm.bias)
    np.testing.assert_allclose(loaded.scores(xs), rm.scores(xs), atol=1e-6)

    grm = GenerativeRewardModel(model, tok, meta_rm=rm, template=TEMPLATE)
    (j,) = grm.score([ITEM], k=4, k_meta=2, max_new_tokens=16, seed=3)
    again = rm.scores([MetaInput(item=ITEM, perm=s.permutation, text=s.text) for s in j.samples])
    np.testing.assert_allclose([s.meta_score for s in j.samples], again, atol=1e-5)
    assert sum(s.kept for s in j.samples) <= 2


def test_a_bad_folder_fails_with_the_file_and_line(tmp_path):
    (tmp_path / CONFIG_NAME).write_text('{"format": "spct-likelihood-meta-rm/1",\n "scale": }')
    with pytest.raises(ValueError, match=f"{CONFIG_NAME}:2"):
        load_meta_rm(tmp_path)
    (tmp_path / CONFIG_NAME).write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="field 'format'"):
        load_meta_rm(tmp_path)
