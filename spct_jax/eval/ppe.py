"""PPE (Preference Proxy Evaluations, lmarena/PPE, arXiv 2410.14872; SPEC §10.2) scoring.

The official metric code was not available here (SPEC §10.2 says so), so these follow the PPE paper's headline
metrics and DeepSeek-GRM's single numbers per set:
- "PPE Preference": accuracy on the human-preference pairs with a non-tie vote. A pair item's `best` is the
  winner's index; an item with best=None is a tie vote and is left out (consumers drop ties:
  `if w not in ("model_a", "model_b"): continue`), so it needs no prediction.
- "PPE Correctness": per sub-benchmark, pairwise accuracy over `sampled_conflict_pairs` (`[i, j]`, 0-based,
  exactly one of the two correct); the item carries all 32 responses, `rewards` = the 0/1 `scores` labels and
  the pairs in `meta["sampled_conflict_pairs"]` (or `meta["conflict_pairs"]`, as spct_jax.data's reader names
  them). The headline is the mean over the sub-benchmarks present, as [P] Table 9 (mean of MMLU-Pro, MATH, GPQA,
  MBPP-Plus, IFEval).
- "<sub-benchmark> Best-of-K" (extra): the expected 0/1 label of the top-scored response out of all K responses
  (ties at the top averaged), averaged over questions; "PPE Correctness Best-of-K" is their mean.

Ties default to "half", the expected value of the paper's shuffle-then-argmax tie-break (no official PPE rule seen).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from spct_jax.data.schema import DataError, PreferenceItem
from spct_jax.eval.metrics import TieRule, check_tie_rule, expected_best_of_k, mean, pick_credit
from spct_jax.eval.predictions import check_predictions

# PPE's canonical set names (`benchmarks/base.py` canonical_all) without the "_best_of_k" tail -> [P] Table 9 names.
CORRECTNESS_SETS: dict[str, str] = {"mmlu_pro": "MMLU-Pro", "math": "MATH", "gpqa": "GPQA",
                                    "mbpp_plus": "MBPP-Plus", "ifeval": "IFEval"}
PAIRS_KEYS = ("sampled_conflict_pairs", "conflict_pairs")  # the row's field name; the reader's name
PREFERENCE_KEY = "PPE Preference"
CORRECTNESS_KEY = "PPE Correctness"


def parse_correctness_set(text: str) -> str | None:
    """The canonical set key named in `text`: any spelling containing it counts ("mmlu_pro_best_of_k",
    "lmarena-ai/PPE-MMLU-Pro-Best-of-K", "data/ppe/math.jsonl"); None unless exactly one is named."""
    norm = text.lower().replace("-", "_")
    hits = [k for k in CORRECTNESS_SETS if k in norm]
    return hits[0] if len(hits) == 1 else None


def correctness_set(item: PreferenceItem, override: str | None = None) -> str:
    """The sub-benchmark of a correctness item as a canonical key ("mmlu_pro", ...), read from `override` (a
    caller who knows the file's set), else `meta["benchmark"]`, else `source`. The correctness rows themselves do
    not name their set, so one of the three must."""
    for raw in (override, item.meta.get("benchmark"), item.source):
        found = parse_correctness_set(raw) if isinstance(raw, str) else None
        if found is not None:
            return found
    raise DataError(f"item {item.uid!r}: cannot tell its PPE correctness set ({', '.join(CORRECTNESS_SETS)}) from "
                    f"meta['benchmark'] or source {item.source!r}; pass subset=")


def is_correctness(item: PreferenceItem) -> bool:
    return any(k in item.meta for k in PAIRS_KEYS)


def _conflict_pairs(item: PreferenceItem) -> list[tuple[int, int]]:
    pairs = next(item.meta[k] for k in PAIRS_KEYS if k in item.meta)
    labels = item.rewards
    if labels is None:
        raise DataError(f"item {item.uid!r}: a PPE correctness item needs 'rewards' (the 0/1 scores)")
    out = []
    for pair in pairs:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, int) and 0 <= x < item.num_responses for x in pair)):
            raise DataError(f"item {item.uid!r}: bad conflict pair {pair!r}")
        i, j = pair
        if labels[i] == labels[j]:
            raise DataError(f"item {item.uid!r}: conflict pair {pair!r} has equal labels {labels[i]!r}")
        out.append((i, j))
    return out


def score_ppe(items: Sequence[PreferenceItem], preds: Mapping[str, Sequence[float]], *,
              ties: TieRule = "half", seed: int = 0, subset: str | None = None) -> dict[str, float]:
    """Items with conflict pairs in meta are correctness items, the others human-preference pairs; the result
    holds "PPE Preference" and/or the per-set accuracies, their Best-of-K, and "PPE Correctness"."""
    check_tie_rule(ties)
    preference = [it for it in items if not is_correctness(it)]
    correctness = [it for it in items if is_correctness(it)]
    votes = [it for it in preference if it.best is not None]
    check_predictions(votes + correctness, preds)
    out: dict[str, float] = {}

    if votes:
        credit = []
        for item in votes:
            if item.num_responses != 2:
                raise DataError(f"item {item.uid!r}: a PPE preference item is a pair, got {item.num_responses}")
            credit.append(pick_credit(preds[item.uid], item.best, ties, seed=seed, key=item.uid))
        out[PREFERENCE_KEY] = mean(credit)

    pair_credit: dict[str, list[float]] = {}
    bok: dict[str, list[float]] = {}
    for item in correctness:
        name = correctness_set(item, subset)
        scores = preds[item.uid]
        for p, (i, j) in enumerate(_conflict_pairs(item)):
            winner = 0 if item.rewards[i] > item.rewards[j] else 1
            # The pairwise uid convention of PPE's BaseBenchmark is question_id + "+" + index; key the draw on it.
            pair_credit.setdefault(name, []).append(
                pick_credit([scores[i], scores[j]], winner, ties, seed=seed, key=f"{item.uid}+{p}"))
        bok.setdefault(name, []).append(expected_best_of_k(scores, item.rewards))
    # Keys in [P] Table 9's order (MMLU-Pro, MATH, GPQA, MBPP-Plus, IFEval), which CORRECTNESS_SETS follows.
    present = [k for k in CORRECTNESS_SETS if k in bok]
    for key in present:
        if key in pair_credit:
            out[CORRECTNESS_SETS[key]] = mean(pair_credit[key])
    if pair_credit:
        out[CORRECTNESS_KEY] = mean([mean(v) for v in pair_credit.values()])
    for key in present:
        out[f"{CORRECTNESS_SETS[key]} Best-of-K"] = mean(bok[key])
    if bok:
        out[f"{CORRECTNESS_KEY} Best-of-K"] = mean([mean(v) for v in bok.values()])
    return out
