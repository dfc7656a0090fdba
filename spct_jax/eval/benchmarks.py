"""Official scoring of the paper's benchmarks from per-item predictions, and the paper's Overall.

One module per benchmark holds its rules (rewardbench.py, rmb.py, ppe.py, realmistake.py, each citing the
official file:line it mirrors); this one names them and combines them. Every scorer takes the items, a
{uid: scores} mapping (see predictions.py) and keyword options, checks that the predictions fit the items (a
missing uid or a wrong score count raises PredictionError naming the uid), and returns a flat dict of floats keyed
by the benchmark's own section names, plus one headline key per benchmark:

| name        | headline key(s)                     | sections                                          | ties    |
|-------------|-------------------------------------|---------------------------------------------------|---------|
| rewardbench | "RewardBench"                       | "Chat", "Chat Hard", "Safety", "Reasoning"        | "half"  |
| rmb         | "RMB"                               | "Pairwise/BoN Helpfulness/Harmlessness"           | "wrong" |
| ppe         | "PPE Preference", "PPE Correctness" | "MMLU-Pro", "MATH", "GPQA", "MBPP-Plus", "IFEval" | "half"  |
| realmistake | "ReaLMistake" (= "ROC-AUC")         | "Accuracy", "Precision", "Recall", "F1", "Failed" | -       |
| judgebench  | "JudgeBench"                        | "Knowledge", "Reasoning", "Math", "Coding";       | a tie   |
|             |                                     | "Inconsistent", "Flipped" with both orders        | is 0    |
| rewardbench2| "RewardBench 2"                     | "Factuality", "Precise IF", "Math", "Safety",     | "half"  |
|             |                                     | "Focus", "Ties"                                   | (1/m)   |
| rmbench     | "RM-Bench"                          | "Chat", "Math", "Code", "Safety"; "Easy",         | "wrong" |
|             |                                     | "Normal", "Hard"                                  |         |
| items       | "Accuracy"                          | "Pairs", "Best-of-N"                              | "half"  |

`items` is not a published benchmark: it scores one's own `{"context", "responses", "best"|"rewards"}` lines
(eval/items.py). All values are in [0, 1] (but RewardBench 2's "Ties", whose official formula spans [-0.01, 1.01]); a section with
no items is absent. `ties` is each scorer's default tie rule (see metrics.py); ReaLMistake's ROC-AUC counts a tied
positive/negative pair as 1/2.

Some benchmarks are predicted differently from their data items (see their modules): a PPE correctness question is
predicted per conflict pair (uid question_id+j, 2 scores) - or whole, K scores, which adds Best-of-K -, a
ReaLMistake item may have no prediction at all (the judge failed on it), reported under "Failed", an RM-Bench item
whole (6 scores) or per comparison (uid <uid>+c<i>r<j>, 2 scores), and a JudgeBench pair has one line per order
shown, `{"uid", "order": "AB"|"BA", "scores": [s_A, s_B] | null}`, which the generic reader cannot hold: read
predictions through `load_benchmark_predictions`, which picks the benchmark's reader, and check a file's uids with
`expected_uids`.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from spct_jax.data.schema import PreferenceItem
from spct_jax.eval import items as generic
from spct_jax.eval import judgebench, ppe, realmistake, rewardbench, rewardbench2, rmb, rmbench
from spct_jax.eval.predictions import PredictionError, load_predictions

Scorer = Callable[..., dict[str, float]]

BENCHMARKS: dict[str, Scorer] = {
    "rewardbench": rewardbench.score_rewardbench,
    "rmb": rmb.score_rmb,
    "ppe": ppe.score_ppe,
    "realmistake": realmistake.score_realmistake,
    "judgebench": judgebench.score_judgebench,
    "rewardbench2": rewardbench2.score_rewardbench2,
    "rmbench": rmbench.score_rmbench,
    "items": generic.score_items,
}

# One line per benchmark: its rule and the official source it follows (for `--help` and docs/evaluation.md).
BENCHMARK_INFO: dict[str, tuple[str, str]] = {
    "rewardbench": ("pair accuracy, a tie 0.5; sections weighted by prompt count; mean of 4 sections",
                    "allenai/reward-bench scripts/run_generative.py, rewardbench/utils.py"),
    "rmb": ("pairwise accuracy and best-of-N (best must be the unique argmax), a tie wrong; mean of 4 sections",
            "Zhou-Zoey/RMB-Reward-Model-Benchmark eval/scripts/my_run_rm.py"),
    "ppe": ("pair accuracy on human votes (Preference) and on conflict pairs, mean of 5 sets (Correctness); a tie 0.5",
            "lmarena/PPE (no metric code available)"),
    "realmistake": ("ROC-AUC of the score as a no-error detector; thresholded precision/recall/F1",
                    "psunlpgroup/ReaLMistake src/error_detection_analysis/calculate_performance.py"),
    "judgebench": ("each pair judged in both orders: +1/-1 per verdict, correct if the sum > 0; per category",
                   "ScalerLab/JudgeBench utils/metrics.py, run_judge.py"),
    "rewardbench2": ("best-of-4, credit 1/m for an m-way tie at the top; Ties' weighted formula; mean of 6 subsets",
                     "allenai/reward-bench scripts/run_v2.py, rewardbench/utils.py"),
    "rmbench": ("3x3 chosen-vs-rejected style matrix: hard = upper, normal = diagonal, easy = lower triangle",
                "THU-KEG/RM-Bench scripts/utils.py compute_accuracy"),
    "items": ("your own {context, responses, best|rewards} lines: the best must score highest, a tie 1/m",
              "none (spct-jax's generic rule, eval/items.py)"),
}

# The scores each benchmark is summarised by (the scaling plot, the `--benchmark all` table). Other keys of a result
# are sections or diagnostics - JudgeBench's "Inconsistent" is a share of pairs, not a score - and are not drawn.
HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "rewardbench": (rewardbench.SCORE_KEY,), "rmb": (rmb.SCORE_KEY,),
    "ppe": (ppe.PREFERENCE_KEY, ppe.CORRECTNESS_KEY), "realmistake": (realmistake.SCORE_KEY,),
    "judgebench": (judgebench.SCORE_KEY,), "rewardbench2": (rewardbench2.SCORE_KEY,), "rmbench": (rmbench.SCORE_KEY,),
    "items": (generic.SCORE_KEY,),
}

# [P] App. D.2 / Table 2: "Overall" is the mean of these four; ReaLMistake is reported apart.
OVERALL_PARTS: tuple[str, ...] = (rewardbench.SCORE_KEY, ppe.PREFERENCE_KEY, ppe.CORRECTNESS_KEY, rmb.SCORE_KEY)


def score_benchmark(name: str, items: Sequence[PreferenceItem], preds: Mapping[str, Sequence[float]],
                    **opts) -> dict[str, float]:
    """Score `items` of benchmark `name` with that benchmark's official rules; `opts` are the scorer's keyword
    options (e.g. ties="random", seed=1, prior_sets=True, details=True, threshold=6.0, subset="math")."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    scorer = BENCHMARKS[name]
    accepted = [p.name for p in inspect.signature(scorer).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise ValueError(f"benchmark {name!r} takes no option {', '.join(unknown)} (it takes {', '.join(accepted)})")
    return scorer(items, preds, **opts)


def load_benchmark_predictions(name: str, path) -> Mapping:
    """The predictions file of benchmark `name`, read by that benchmark's reader: JudgeBench's keeps each pair's
    AB and BA lines (judgebench.load_predictions); every other benchmark uses predictions.load_predictions."""
    if name == "judgebench":
        return judgebench.load_predictions(path)
    return load_predictions(path)


def expected_uids(name: str, items: Sequence[PreferenceItem], preds: Mapping) -> set[str]:
    """The uids a predictions file may hold for these items: PPE correctness questions may be predicted per
    conflict pair (question_id+j) and RM-Bench items per comparison (<uid>+c<i>r<j>)."""
    if name == "ppe":
        return {it.uid for it in ppe.prediction_items(items, preds)}
    if name == "rmbench":
        return rmbench.prediction_uids(items, preds)
    return {it.uid for it in items}


def overall(scores: Mapping[str, float]) -> float:
    """The paper's Overall: mean of RewardBench, PPE Preference, PPE Correctness and RMB. It is only defined with
    all four present (a partial mean is not comparable with the paper's tables), so a missing one raises."""
    missing = [k for k in OVERALL_PARTS if k not in scores]
    if missing:
        raise ValueError(f"Overall needs {', '.join(OVERALL_PARTS)}; missing {', '.join(missing)}")
    return sum(scores[k] for k in OVERALL_PARTS) / len(OVERALL_PARTS)


def read_benchmark_items(data: Sequence[str | os.PathLike], benchmark: str, *,
                         format: str | None = None) -> list[PreferenceItem]:
    """Every item in the data files or folders `data` (folders read recursively), as benchmark `benchmark` reads
    them: a PPE correctness item without its set (MMLU-Pro, MATH, ...) gets the one its file's path names."""
    from spct_jax.data.formats import data_files, read_preferences  # the readers pull in more than scoring needs

    items: list[PreferenceItem] = []
    for src in data:
        for path in data_files(src):
            got = read_preferences(path, format=format)
            # PPE correctness rows do not name their set; the file's name usually does (PPE-MATH-Best-of-K...).
            # Only the path from the named folder on is read, so that no unrelated parent folder name counts.
            named = Path(src).name + "/" + path.relative_to(src).as_posix() if Path(src).is_dir() else path.name
            found = ppe.parse_correctness_set(named) if benchmark == "ppe" else None
            if found is not None:
                got = [dataclasses.replace(it, meta={**it.meta, "benchmark": found})
                       if ppe.is_correctness(it) and "benchmark" not in it.meta else it for it in got]
            items += got
    return items


@dataclasses.dataclass(frozen=True)
class ScoredFile:
    """What `score_predictions` found: the scores (empty when there was nothing to score), how many data items
    were read, and the uids of predictions that match no item (not used)."""

    scores: dict[str, float]
    num_items: int
    unmatched: list[str]


def score_predictions(benchmark: str, data: Sequence[str | os.PathLike], predictions: str | os.PathLike, *,
                      format: str | None = None, strict: bool = False, **options) -> ScoredFile:
    """Score a predictions file against benchmark data with the benchmark's official rules (`spct eval score`).
    strict: predictions that match no item are an error instead of being left out. Raises ValueError (DataError,
    PredictionError, an option the benchmark does not take) or OSError naming the file or uid."""
    items = read_benchmark_items(data, benchmark, format=format)
    preds = load_benchmark_predictions(benchmark, predictions)
    expected = expected_uids(benchmark, items, preds)
    extra = [u for u in preds if u not in expected]
    if strict and extra:
        shown = ", ".join(repr(u) for u in extra[:5]) + (", ..." if len(extra) > 5 else "")
        raise PredictionError(f"{len(extra)} predictions match no item: uid {shown}")
    return ScoredFile(score_benchmark(benchmark, items, preds, **options), len(items), extra)
