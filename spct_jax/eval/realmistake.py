"""ReaLMistake scoring (psunlpgroup/ReaLMistake, COLM 2024; SPEC §10.4).

Items are single responses; `rewards` is [1.0] for `error_label == "no_error"` and [0.0] for "error" (the schema's
"1 for correct responses and 0 for incorrect ones"). The prediction is one score per item: the GRM's total reward.

- "ROC-AUC" (DeepSeek-GRM's metric, [P] Table 13): the score as a continuous detector. A GRM scores good responses
  high, so the score detects "no_error": positive class = no_error, detector = score. This is the same number as
  positive class = error with detector = -score (an AUC is unchanged by swapping both the classes and the score's
  sign); using the raw score against positive class = error would give 1 - AUC instead.
- "Accuracy", "Precision", "Recall", "F1": the official binary metrics with error as the positive class
  (`src/error_detection_analysis/calculate_performance.py`: `y_true = [1 if d["error_label"] == "error" ...]`,
  `precision_recall_fscore_support(..., average="binary", zero_division=0)`), after thresholding: an item is
  predicted "error" iff score < threshold. The default 5.5 is the midpoint of the paper's 1-10 scale; for a
  Voting@k sum (range k..10k) pass 5.5 * k.
The official script averages per (task, response model) file; here every item given is pooled into one number.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from spct_jax.data.schema import DataError, PreferenceItem
from spct_jax.eval.metrics import binary_metrics, roc_auc
from spct_jax.eval.predictions import check_predictions

DEFAULT_THRESHOLD = 5.5
SCORE_KEY = "ReaLMistake"


def score_realmistake(items: Sequence[PreferenceItem], preds: Mapping[str, Sequence[float]], *,
                      threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """"ROC-AUC" (also under "ReaLMistake", the headline) and the thresholded "Accuracy", "Precision", "Recall",
    "F1" with error as the positive class."""
    check_predictions(items, preds)
    no_error: list[bool] = []
    scores: list[float] = []
    for item in items:
        if item.num_responses != 1 or item.rewards is None or item.rewards[0] not in (0.0, 1.0):
            raise DataError(f"item {item.uid!r}: a ReaLMistake item is one response with reward 0 (error) or 1 "
                            f"(no_error); got {item.num_responses} responses, rewards={item.rewards!r}")
        no_error.append(item.rewards[0] == 1.0)
        scores.append(preds[item.uid][0])
    auc = roc_auc(no_error, scores)
    out = {SCORE_KEY: auc, "ROC-AUC": auc}
    out.update(binary_metrics([not ok for ok in no_error], [s < threshold for s in scores]))
    return out
