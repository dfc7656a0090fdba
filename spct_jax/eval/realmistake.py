"""ReaLMistake scoring (psunlpgroup/ReaLMistake, COLM 2024).

Items are single responses; `rewards` is [1.0] for `error_label == "no_error"` and [0.0] for "error" (the schema's
"1 for correct responses and 0 for incorrect ones"). The prediction is one score per item on the 1-10 scale of one
GRM sample: `spct eval run` writes the per-sample mean of the votes it summed (run.py). The metrics below compare
scores ACROSS items, so a sum would not do: with unparsed samples dropped from the vote (our rule, [P] is silent),
a sum depends on how many samples parsed (6 of 8 at 8 = 48 ranks below 8 of 8 at 7 = 56); the mean does not.

- "ROC-AUC" (DeepSeek-GRM's metric, [P] Table 13): the score as a continuous detector. A GRM scores good responses
  high, so the score detects "no_error": positive class = no_error, detector = score. This is the same number as
  positive class = error with detector = -score (an AUC is unchanged by swapping both the classes and the score's
  sign); using the raw score against positive class = error would give 1 - AUC instead.
- "Accuracy", "Precision", "Recall", "F1": the official binary metrics with error as the positive class
  (`src/error_detection_analysis/calculate_performance.py`: `y_true = [1 if d["error_label"] == "error" ...]`,
  `precision_recall_fscore_support(..., average="binary", zero_division=0)`), after thresholding: an item is
  predicted "error" iff score < threshold. The default 5.5 is the midpoint of the paper's 1-10 scale; it holds for
  any k because the score is a per-sample mean.
- "Failed": the fraction of items with no score. An item whose every sample failed to parse has no prediction
  (`spct eval run` writes no line for it). It is NOT an "error" verdict with score 0, which would credit a
  judge's failures on erroneous responses as detections. It is scored as a failed judgement:
    ROC-AUC: ties with every other item, so each pair it is in earns 1/2 (chance; metrics.roc_auc_with_failures);
    Accuracy: wrong, whatever its label (the official `correct = ... p["prediction"] == d["error_label"]`);
    Precision/Recall/F1: not an "error" prediction (the official `y_pred = [1 if p["prediction"] == "error" ...]`
    counts any other output as 0), so a failed erroneous item is a missed error.
  Hence every item without a prediction counts as failed; a predictions file that matches none of the items
  raises instead (that is a wrong file, not a judge that failed everywhere).
The official script averages per (task, response model) file; here every item given is pooled into one number.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from spct_jax.data.schema import DataError, PreferenceItem
from spct_jax.eval.metrics import binary_metrics, roc_auc_with_failures
from spct_jax.eval.predictions import PredictionError, check_predictions

DEFAULT_THRESHOLD = 5.5
SCORE_KEY = "ReaLMistake"
FAILED_KEY = "Failed"


def score_realmistake(items: Sequence[PreferenceItem], preds: Mapping[str, Sequence[float]], *,
                      threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """"ROC-AUC" (also under "ReaLMistake", the headline), the thresholded "Accuracy", "Precision", "Recall", "F1"
    with error as the positive class, and "Failed", the fraction of items without a prediction."""
    seen: set[str] = set()
    for item in items:
        if item.uid in seen:
            raise DataError(f"items: duplicate uid {item.uid!r}")
        seen.add(item.uid)
        if item.num_responses != 1 or item.rewards is None or item.rewards[0] not in (0.0, 1.0):
            raise DataError(f"item {item.uid!r}: a ReaLMistake item is one response with reward 0 (error) or 1 "
                            f"(no_error); got {item.num_responses} responses, rewards={item.rewards!r}")
    scored = [it for it in items if it.uid in preds]
    if items and not scored:
        raise PredictionError(f"no prediction for any of the {len(items)} items (e.g. uid {items[0].uid!r})")
    check_predictions(scored, preds)
    no_error = [item.rewards[0] == 1.0 for item in items]
    scores = [preds[item.uid][0] if item.uid in preds else None for item in items]
    auc = roc_auc_with_failures(no_error, scores)
    out = {SCORE_KEY: auc, "ROC-AUC": auc}
    said_error = [s is not None and s < threshold for s in scores]
    out.update(binary_metrics([not ok for ok in no_error], said_error))
    # A failed item is wrong for Accuracy whatever its label; binary_metrics counted it as a "no_error" verdict.
    right = [s is not None and err == (not ok) for s, err, ok in zip(scores, said_error, no_error)]
    out["Accuracy"] = sum(right) / len(items)
    out[FAILED_KEY] = sum(s is None for s in scores) / len(items)
    return out
