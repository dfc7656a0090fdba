"""Eq. 10 correctness and the Eq. 11 reward: ties, n = 1 with a 0/1 label, unparsable output."""
import pytest

from spct_jax.grm.rules import REWARD_CORRECT, REWARD_WRONG, is_correct, rule_reward, unique_best


def test_pair_strict_best():
    assert is_correct((3, 9), [0.0, 1.0])
    assert not is_correct((9, 3), [0.0, 1.0])


def test_ties_with_the_best_are_wrong():
    assert not is_correct((7, 7), [0.0, 1.0])
    assert not is_correct((5, 9, 9), [0.0, 0.0, 1.0])
    assert is_correct((4, 4, 9), [0.0, 0.5, 1.0])  # ties among the non-best responses do not matter


def test_multi_response_best_anywhere():
    assert is_correct((1, 2, 10, 3), [0.1, 0.2, 0.9, 0.3])
    assert not is_correct((1, 2, 9, 10), [0.1, 0.2, 0.9, 0.3])


def test_ground_truth_without_unique_max_raises():
    with pytest.raises(ValueError):
        is_correct((1, 2), [1.0, 1.0])
    with pytest.raises(ValueError):
        rule_reward("garbage", [0.5, 0.5, 0.1])
    with pytest.raises(ValueError):
        unique_best([1.0])


def test_single_response_compares_with_the_label():
    assert is_correct((1,), [1.0]) and is_correct((0,), [0])
    assert not is_correct((0,), [1.0]) and not is_correct((1,), [0.0])


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        is_correct((1, 2, 3), [0.0, 1.0])
    with pytest.raises(ValueError):
        is_correct((), [])


def test_rule_reward_values():
    assert rule_reward("Analysis: ...\nScores: \\boxed{3, 8}", [0.0, 1.0]) == REWARD_CORRECT == 1.0
    assert rule_reward("Scores: \\boxed{8, 3}", [0.0, 1.0]) == REWARD_WRONG == -1.0
    assert rule_reward("Scores: \\boxed{8, 8}", [0.0, 1.0]) == -1.0  # tie


@pytest.mark.parametrize("text", ["", "I think response 2 is better.", "Scores: \\boxed{x, x}", "Scores: \\boxed{3}",
                                  "Scores: \\boxed{3, 11}", "Scores: \\boxed{3, 8"])
def test_unparsable_gives_minus_one(text):
    assert rule_reward(text, [0.0, 1.0]) == -1.0


def test_single_response_uses_the_0_1_template_by_default():
    assert rule_reward("Scores: \\boxed{1}", [1.0]) == 1.0
    assert rule_reward("Scores: \\boxed{0}", [0.0]) == 1.0
    assert rule_reward("Scores: \\boxed{0}", [1.0]) == -1.0
    assert rule_reward("Scores: \\boxed{7}", [1.0]) == -1.0  # outside 0..1: a parse failure
    assert rule_reward("Scores: \\boxed{7}", [7.0], template="default") == 1.0


def test_judge_template_reward():
    assert rule_reward("Scores: \\boxed{2}", [0.0, 1.0], template="judge") == 1.0
    assert rule_reward("Scores: \\boxed{1}", [0.0, 1.0], template="judge") == -1.0
    assert rule_reward("Scores: \\boxed{3}", [0.0, 1.0], template="judge") == -1.0
    assert rule_reward("Scores: \\boxed{x}", [0.0, 1.0], template="judge") == -1.0
    with pytest.raises(ValueError):
        rule_reward("Scores: \\boxed{1}", [0.0, 1.0], template="nope")


def test_a_box_quoted_without_a_scores_line_earns_no_reward():
    # Eq. 11 must not reward a truncated trajectory for the judged response's own \boxed{} (parse.py, rule 1).
    truncated = "Analysis: The response concludes ... \\boxed{1}. However, step 3 divides by"
    assert rule_reward(truncated, [1.0], template="single") == -1.0
    assert rule_reward(truncated + "\nScores: \\boxed{1}", [1.0],
                       template="single") == 1.0
