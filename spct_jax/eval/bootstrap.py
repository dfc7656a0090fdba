"""Paired bootstrap intervals: is "method A beats method B on the same items" signal or noise?

Two methods judged on the same n items give per-item correctness vectors a and b (1 = right). Their accuracy
difference is mean(a - b), and the items are the unit of sampling: a percentile bootstrap resamples items with
replacement (`resamples` times, seeded), takes mean(a - b) of each resample, and reports the central `level`
interval of those means. Pairing matters: the two methods share the items' difficulty, so the spread of a - b is
far smaller than that of a and b apart.

Verdict, read off the interval (the difference is "A minus B", so "holds" means A is better):
  "holds"         the whole interval is above 0;
  "reversed"      the whole interval is below 0;
  "within noise"  the interval contains 0.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

HOLDS, WITHIN_NOISE, REVERSED = "holds", "within noise", "reversed"


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over the items and its bootstrap interval [low, high] at `level`."""
    diff: float
    low: float
    high: float
    n: int
    level: float
    resamples: int

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "verdict": self.verdict}


def verdict(low: float, high: float) -> str:
    if low > 0:
        return HOLDS
    if high < 0:
        return REVERSED
    return WITHIN_NOISE


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> PairedDifference:
    """The percentile bootstrap of mean(a - b) over items (module docstring). a[i] and b[i] are item i's values."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if np.shape(a) != np.shape(b) or d.ndim != 1 or d.size == 0:
        raise ValueError(f"need two equally long, non-empty 1-D vectors, got shapes {np.shape(a)} and {np.shape(b)}")
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples}, {level}")
    rng = np.random.default_rng(seed)
    # [resamples, n] indices; 2000 x 300 items is 600k draws, milliseconds.
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return PairedDifference(diff=float(d.mean()), low=float(low), high=float(high), n=int(d.size), level=level,
                            resamples=resamples)


__all__ = ["HOLDS", "PairedDifference", "REVERSED", "WITHIN_NOISE", "paired_bootstrap", "verdict"]
