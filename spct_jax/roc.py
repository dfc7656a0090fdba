"""ROC-AUC: how well a score separates two classes. Evaluation scores judges with it and the meta RM's training
reports it on held-out trajectories, so it sits below both."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def roc_auc(labels: Sequence[int | bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve of `scores` as a detector of the positive class (label 1 / True).

    The Mann-Whitney form with tied scores given their average rank, which is what
    `sklearn.metrics.roc_auc_score` computes (a tie between a positive and a negative counts 1/2).
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of one length, got {y.shape} and {s.shape}")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC is undefined with only one class present")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # A run of `c` tied values ending at 1-based rank `end` occupies ranks end-c+1..end; its average rank:
    midrank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum_pos = float(midrank[inverse][y].sum())
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
