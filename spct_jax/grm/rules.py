"""The paper's accuracy rules: Eq. 10 (is a set of predicted scores correct?) and Eq. 11 (the RL reward).

Eq. 10 (§3.2, arXiv 2504.02495), with r_i the ground-truth reward of response y_i:
    n >= 2: correct  <=>  S_j > S_i for all i != j,  where j = argmax_l r_l   (strict: a tie with the best is WRONG)
    n == 1: correct  <=>  S_1 == r_1                                           (r_1 in {0, 1}, the 0/1 template)
"with a guarantee that the ground-truth rewards only contain one maximum": a ground truth without a unique
maximum is a data error here (ValueError), not a silent 'wrong'.

Eq. 11: r_hat = +1 if correct else -1. There is no format reward (§3.2: "Unlike DeepSeek-AI (2025), no format
rewards are used"), so an unparsable generation simply gets -1 like any other wrong one.
The same rule decides RFT rejection (keep correct trajectories) and the meta RM's training label.
"""
from __future__ import annotations

from collections.abc import Sequence

from spct_jax.grm.parse import ParseResult, parse_scores
from spct_jax.grm.prompts import TEMPLATES, score_range

# Eq. 11's two values.
REWARD_CORRECT = 1.0
REWARD_WRONG = -1.0


def unique_best(gt_rewards: Sequence[float]) -> int:
    """argmax_l r_l for n >= 2; ValueError when the maximum is shared (Eq. 10 needs exactly one)."""
    if len(gt_rewards) < 2:
        raise ValueError(f"a best response needs n >= 2 ground-truth rewards, got {len(gt_rewards)}")
    top = max(gt_rewards)
    best = [i for i, r in enumerate(gt_rewards) if r == top]
    if len(best) != 1:
        raise ValueError(f"ground-truth rewards {list(gt_rewards)} have no unique maximum (Eq. 10 requires one)")
    return best[0]


def is_correct(scores: Sequence[float], gt_rewards: Sequence[float]) -> bool:
    """Eq. 10. `scores` and `gt_rewards` are in the same (original) response order."""
    if len(scores) != len(gt_rewards):
        raise ValueError(f"{len(scores)} scores for {len(gt_rewards)} ground-truth rewards")
    if len(gt_rewards) == 0:
        raise ValueError("no responses")
    if len(gt_rewards) == 1:
        return bool(scores[0] == gt_rewards[0])
    j = unique_best(gt_rewards)
    return bool(all(scores[j] > s for i, s in enumerate(scores) if i != j))


def default_template(num_responses: int) -> str:
    """The template whose range matches the paper's labels: 'single' (0/1) for n = 1, else 'default' (1..10)."""
    return "single" if num_responses == 1 else "default"


def parse_for_template(text: str, num_responses: int, template: str) -> ParseResult:
    """Scores as Eq. 10 compares them. For 'judge' (App. G (d): \\boxed{index of the best}) the 1-based index is
    turned into a one-hot score vector in presented order, so the same strict-argmax rule applies."""
    if template == "judge":
        choice = parse_scores(text, 1, low=1, high=num_responses)
        if not choice.ok:
            return choice
        picked = choice.scores[0] - 1
        return ParseResult(scores=tuple(int(i == picked) for i in range(num_responses)), error=None)
    low, high = score_range(template)
    return parse_scores(text, num_responses, low=low, high=high)


def rule_reward(text: str, gt_rewards: Sequence[float], *, template: str | None = None) -> float:
    """Eq. 11: +1 if the scores parsed from `text` are correct by Eq. 10, else -1 (parse failures included).

    `gt_rewards` must be in the order the responses were PRESENTED in the prompt that produced `text`
    (un-shuffle the scores first if you need original order; see voting.unpermute).
    template: which prompt produced `text`, fixing the score range; None picks `default_template(n)`, i.e. the
        0/1 'single' template for one response (App. G (b)) and the 1..10 default otherwise.
    Raises ValueError for bad ground truth (no unique maximum), never because of `text`.
    """
    n = len(gt_rewards)
    template = default_template(n) if template is None else template
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {TEMPLATES}")
    if n >= 2:
        unique_best(gt_rewards)  # validate the label even when the text fails to parse
    parsed = parse_for_template(text, n, template)
    if not parsed.ok:
        return REWARD_WRONG
    return REWARD_CORRECT if is_correct(parsed.scores, gt_rewards) else REWARD_WRONG
