"""The metric kernels every benchmark scorer shares: picking the best response under a tie rule, ROC-AUC (also
with unscored items), binary precision/recall/F1, and expected best-of-K.

Tie rules (the `ties` argument of every accuracy-based scorer). A tie is a shared maximum that includes the
ground-truth best response; a response that is beaten outright earns 0 under every rule.
  "wrong":  a tie earns 0. Scalar-RM rule of RewardBench (`scripts/run_rm.py` L265/L327: `1 if chosen > rejected
            else 0`) and RMB (`eval/scripts/my_run_rm.py` L395-397; RM-R1 `run_rm_bestofn.py` L422-445 for BoN).
  "half":   a tie earns 1/m for m tied responses, i.e. 0.5 for a pair: RewardBench's generative-judge rule
            (`scripts/run_generative.py` L257/L371: `return 0.5  # effectively a tie`). For m > 2 it is the
            expected value of the paper's random tie-break, so "half" = "random" without the sampling noise.
  "random": the paper's rule [P App. D.2] "we shuffle the responses and determine the best response by
            argmax_i S_i": a seeded shuffle then the first maximum. The generator is keyed by (seed, uid), so an
            item's draw does not depend on which other items are scored or in what order.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from spct_jax.roc import roc_auc  # below eval: train and grm use it too

TieRule = Literal["wrong", "half", "random"]
TIE_RULES: tuple[str, ...] = ("wrong", "half", "random")


def check_tie_rule(ties: str) -> None:
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")


def tie_rng(seed: int, key: str) -> np.random.Generator:
    """A generator for one item's tie-break; sha256 rather than hash() because str hashing is salted per process."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def pick_credit(scores: Sequence[float], best: int, ties: TieRule, *, seed: int = 0, key: str = "") -> float:
    """Credit in [0, 1] for identifying response `best` as the argmax of `scores` under the tie rule.

    For a pair this is RewardBench's per-row result; for best-of-N it is "correct only if the best strictly beats
    every loser" under "wrong" (RMB), which for a pointwise scorer is: `best` is the unique argmax.
    """
    top = max(scores)
    if scores[best] != top:
        return 0.0
    tied = [i for i, s in enumerate(scores) if s == top]
    if len(tied) == 1:
        return 1.0
    if ties == "wrong":
        return 0.0
    if ties == "half":
        return 1.0 / len(tied)
    if ties == "random":
        perm = tie_rng(seed, key).permutation(len(scores))
        return 1.0 if int(perm[int(np.argmax(np.asarray(scores, dtype=float)[perm]))]) == best else 0.0
    raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")


def roc_auc_with_failures(labels: Sequence[int | bool], scores: Sequence[float | None]) -> float:
    """ROC-AUC where an item without a score (None: the judge failed on it) ties with every other item, so each
    positive/negative pair it belongs to earns 1/2 - exactly the credit `roc_auc` gives a tied pair, i.e. chance.

    Dropping the failed items instead would let a judge that fails on the hard items look better than one that
    tries them; placing them at a fixed score (the scale's midpoint, or 0) would rank them against the scored items
    as if the judge had said something. Without failures this is `roc_auc`.
    """
    y = np.asarray(labels, dtype=bool)
    if len(scores) != len(y) or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of one length, got {y.shape} and {len(scores)}")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC is undefined with only one class present")
    scored = np.asarray([s is not None for s in scores], dtype=bool)
    pos, neg = int((y & scored).sum()), int((~y & scored).sum())
    concordant = 0.0  # credit summed over the pairs of two scored items
    if pos and neg:
        concordant = roc_auc(y[scored], [s for s in scores if s is not None]) * pos * neg
    return (concordant + 0.5 * (n_pos * n_neg - pos * neg)) / (n_pos * n_neg)


def binary_metrics(y_true: Sequence[int | bool], y_pred: Sequence[int | bool]) -> dict[str, float]:
    """Accuracy, and precision/recall/F1 of the positive class with zero_division=0: the same numbers as
    sklearn's `precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)`."""
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    if t.shape != p.shape or t.ndim != 1 or len(t) == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D of one length, got {t.shape} and {p.shape}")
    tp = int((t & p).sum())
    fp = int((~t & p).sum())
    fn = int((t & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"Accuracy": float((t == p).mean()), "Precision": precision, "Recall": recall, "F1": f1}


def expected_best_of_k(scores: Sequence[float], labels: Sequence[float], k: int | None = None) -> float:
    """Expected label of the top-scored response among K drawn uniformly without replacement from the n
    responses (ties at the top averaged), in closed form; k=None means K = n (all responses).

    With levels v of the score, P(the sample's max is v) = [C(#{s <= v}, K) - C(#{s < v}, K)] / C(n, K), and given
    that, the expected label of a uniformly chosen top response is the mean label at level v (by exchangeability).
    """
    n = len(scores)
    if len(labels) != n or n == 0:
        raise ValueError(f"scores and labels must be non-empty and of one length, got {n} and {len(labels)}")
    k = n if k is None else k
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    s = np.asarray(scores, dtype=float)
    lab = np.asarray(labels, dtype=float)
    total = math.comb(n, k)
    expected = 0.0
    for v in np.unique(s):
        at = s == v
        n_le, n_lt = int((s <= v).sum()), int((s < v).sum())
        p_max = (math.comb(n_le, k) - math.comb(n_lt, k)) / total
        if p_max:
            expected += p_max * float(lab[at].mean())
    return expected


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return float(sum(values) / len(values))
