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

All values are in [0, 1]; a section with no items is absent. `ties` is each scorer's default tie rule (see
metrics.py); ReaLMistake's ROC-AUC counts a tied positive/negative pair as 1/2.

Two benchmarks are predicted differently from their data items (see their modules): a PPE correctness question is
predicted per conflict pair (uid question_id+j, 2 scores) - or whole, K scores, which adds Best-of-K - and a
ReaLMistake item may have no prediction at all (the judge failed on it), reported under "Failed".
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

from spct_jax.data.schema import PreferenceItem
from spct_jax.eval import ppe, realmistake, rewardbench, rmb

Scorer = Callable[..., dict[str, float]]

BENCHMARKS: dict[str, Scorer] = {
    "rewardbench": rewardbench.score_rewardbench,
    "rmb": rmb.score_rmb,
    "ppe": ppe.score_ppe,
    "realmistake": realmistake.score_realmistake,
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


def overall(scores: Mapping[str, float]) -> float:
    """The paper's Overall: mean of RewardBench, PPE Preference, PPE Correctness and RMB. It is only defined with
    all four present (a partial mean is not comparable with the paper's tables), so a missing one raises."""
    missing = [k for k in OVERALL_PARTS if k not in scores]
    if missing:
        raise ValueError(f"Overall needs {', '.join(OVERALL_PARTS)}; missing {', '.join(missing)}")
    return sum(scores[k] for k in OVERALL_PARTS) / len(OVERALL_PARTS)
