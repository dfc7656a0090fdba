"""A benchmark of one's own: accuracy on `{"context", "responses"[, "uid", "best"|"rewards"]}` lines (data format
"items", the lines `spct score --input` reads), so that one item format serves scoring and evaluation alike.

No official code to follow, so the rule is the plainest one the other benchmarks share:
  - an item's ground truth is its `best`, else the unique argmax of its `rewards` (schema.best_from_rewards, the
    same reading Eq. 10 gives rewards);
  - the judge earns metrics.pick_credit(scores, best, ties): 1 when the best response alone scores highest, 0 when
    another scores above it, and for a shared top score the tie rule's credit. The default is "half" (1/m for an
    m-way tie, 0.5 for a pair): the expected value of the paper's random tie-break, and RewardBench's and
    RewardBench 2's generative-judge rule, so an integer-scored GRM is neither flattered nor punished by ties.
"Pairs" (2 responses) and "Best-of-N" (3 or more) are the mean credits of those items, "Accuracy" (the headline)
the mean over all items. An item that cannot be scored - one response, or no `best` and no unique maximum of
`rewards` - is an error naming its uid (a line without `uid` is named `<file>:<line>`); `spct data check` lists
the items that lack ground truth.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from spct_jax.data.schema import DataError, PreferenceItem, best_from_rewards
from spct_jax.eval.metrics import TieRule, check_tie_rule, mean, pick_credit
from spct_jax.eval.predictions import check_predictions

SCORE_KEY = "Accuracy"
PAIRS, BEST_OF_N = "Pairs", "Best-of-N"


def ground_truth_best(item: PreferenceItem) -> int:
    """The index of the item's best response: `best`, else the unique maximum of `rewards`; DataError if neither."""
    if item.num_responses < 2:
        raise DataError(f"item {item.uid!r}: {item.num_responses} response; accuracy needs 2 or more to choose from")
    if item.best is not None:
        return item.best
    best = best_from_rewards(list(item.rewards)) if item.rewards is not None else None
    if best is None:
        why = "no 'rewards'" if item.rewards is None else f"rewards {item.rewards} share their maximum"
        raise DataError(f"item {item.uid!r}: no ground truth (no 'best', and {why}); give 'best' or rewards with one "
                        "maximum, or score it with `spct score` instead")
    return best


def score_items(items: Sequence[PreferenceItem], preds: Mapping[str, Sequence[float]], *, ties: TieRule = "half",
                seed: int = 0) -> dict[str, float]:
    """"Pairs" and "Best-of-N" (those present) and "Accuracy", fractions in [0, 1]."""
    check_tie_rule(ties)
    for item in items:
        ground_truth_best(item)  # every item scorable, before any prediction is looked at
    check_predictions(items, preds)
    credit: dict[str, list[float]] = {PAIRS: [], BEST_OF_N: []}
    for item in items:
        c = pick_credit(preds[item.uid], ground_truth_best(item), ties, seed=seed, key=item.uid)
        credit[PAIRS if item.num_responses == 2 else BEST_OF_N].append(c)
    out = {name: mean(c) for name, c in credit.items() if c}
    every = credit[PAIRS] + credit[BEST_OF_N]
    if every:
        out[SCORE_KEY] = mean(every)
    return out
