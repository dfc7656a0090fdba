"""The paired bootstrap against hand-worked and closed-form cases."""
import math

import numpy as np
import pytest

from spct_jax.eval.bootstrap import HOLDS, REVERSED, WITHIN_NOISE, paired_bootstrap, verdict


def test_a_constant_difference_has_a_zero_width_interval():
    # Every item: a right, b wrong -> every resample's mean difference is exactly 1.
    r = paired_bootstrap([1, 1, 1, 1], [0, 0, 0, 0], resamples=50)
    assert (r.diff, r.low, r.high, r.verdict) == (1.0, 1.0, 1.0, HOLDS)
    r = paired_bootstrap([0, 1, 0], [1, 2, 1], resamples=50)  # a - b = -1 everywhere
    assert (r.low, r.high, r.verdict) == (-1.0, -1.0, REVERSED)


def test_two_items_hand_worked():
    # Differences {0, 1}: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the central 95%
    # of the resample means spans [0, 1], and the observed difference is 0.5.
    r = paired_bootstrap([1, 0], [0, 0], resamples=4000, seed=3)
    assert (r.diff, r.low, r.high) == (0.5, 0.0, 1.0)
    assert r.verdict == WITHIN_NOISE  # 0 is inside


def test_interval_matches_the_normal_closed_form_for_many_items():
    # 400 items, 60% of differences +1 and 40% 0: the bootstrap means are ~Normal(0.6, sd / sqrt(n)) with the
    # population sd of the differences, so the 95% interval is 0.6 +- 1.96 sqrt(0.24 / 400) = 0.6 +- 0.048.
    d = np.array([1] * 240 + [0] * 160)
    r = paired_bootstrap(d, np.zeros_like(d), resamples=20000, seed=0)
    half = 1.959964 * math.sqrt(0.6 * 0.4 / 400)
    assert r.diff == pytest.approx(0.6)
    assert r.low == pytest.approx(0.6 - half, abs=0.006) and r.high == pytest.approx(0.6 + half, abs=0.006)


def test_pairing_uses_item_level_differences():
    # a and b each 50% right, but always on the same items: the difference is 0 on every item, with no spread,
    # where unpaired resampling would give a wide interval.
    a = [1, 0] * 50
    r = paired_bootstrap(a, a)
    assert (r.diff, r.low, r.high, r.verdict) == (0.0, 0.0, 0.0, WITHIN_NOISE)


def test_seeded_and_validated():
    a, b = [1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 1, 0]
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7).as_dict()["verdict"] == paired_bootstrap(a, b, seed=7).verdict
    for bad in (([1, 0], [1]), ([], []), ([[1]], [[0]])):
        with pytest.raises(ValueError):
            paired_bootstrap(*bad)
    with pytest.raises(ValueError):
        paired_bootstrap(a, b, level=1.0)
    assert [verdict(0.01, 0.2), verdict(-0.2, 0.1), verdict(-0.3, -0.01)] == [HOLDS, WITHIN_NOISE, REVERSED]
