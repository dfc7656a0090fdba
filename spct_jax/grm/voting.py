"""Inference-time scaling: per-sample response shuffles, Voting@k (Eq. 14) and meta-RM-guided voting (MetaRM@k).

Permutation convention, used everywhere in spct_jax: `perm[p]` is the ORIGINAL index of the response shown at
PRESENTED position p. So the prompt shows `permute(responses, perm)`, the GRM's scores come back in presented
order, and `unpermute(scores, perm)` puts them back in original order before voting (§4: "responses are shuffled
before sampling"; Table 17 reverses the order for samples 2 and 3).

Voting@k (Eq. 14): S*_i = sum over the k samples of S_{i,j}. A sample whose scores failed to parse has no vote:
it is dropped and counted (our handling; the paper does not say).

MetaRM@k (§4, App. C.1): the meta RM gives each of the k trajectories a scalar; only the k_meta samples with the
highest meta reward vote. Default k_meta = k/2 (the paper's setting, e.g. k = 32, k_meta = 16); for odd k we
round up, so k = 1 keeps its only sample. Our choices where the paper is silent:
  * ranking is by meta score, descending; equal meta scores keep the lower sample index first (stable, so the
    kept set never depends on the seed);
  * parse failures rank below every valid sample, whatever their meta score: a failure has no scores to vote
    with, so letting it take one of the k_meta slots would only throw a vote away.

Best response (App. D.1): "we shuffle the responses and determine the best response by argmax_i S_i" - a
seeded shuffle of the response indices, then the first maximum in that order, so ties break at random but
reproducibly. Pass a different seed per item (e.g. (seed, item_index)): one fixed seed for every item would
resolve every tie among the same positions the same way, a positional bias.

Uncertainty (ours): the per-response variance (population, ddof=0) of the votes that were summed. The paper
does not use it; RL users can down-weight rewards whose samples disagree.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TypeVar, Union

import numpy as np

T = TypeVar("T")
Seed = Union[int, Sequence[int]]

# The paper's default meta-RM keep ratio: "k_meta = 1/2 k" (§5.1, Table 3 / Fig. 4 captions).
META_KEEP_FRACTION = 0.5


def _entropy(seed: Seed) -> list[int]:
    parts = list(seed) if isinstance(seed, (tuple, list)) else [seed]
    for x in parts:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
            raise ValueError(f"seed must be a non-negative int or a sequence of them, got {seed!r}")
    return [int(x) for x in parts]


def _rng(seed: Seed, *extra: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(_entropy(seed) + list(extra))))


def sample_permutations(num_responses: int, k: int, seed: Seed) -> list[tuple[int, ...]]:
    """k presentation orders, sample j's drawn from SeedSequence([*seed, j]) alone.

    Each permutation depends only on (seed, j, num_responses), so asking for more samples, or scoring items
    in a different batch, never changes an existing sample's order. Mix an item identifier into `seed`
    (a tuple) if different items should see different orders.
    """
    if num_responses < 1 or k < 0:
        raise ValueError(f"need num_responses >= 1 and k >= 0, got {num_responses}, {k}")
    return [tuple(int(i) for i in _rng(seed, j).permutation(num_responses)) for j in range(k)]


def _check_perm(perm: Sequence[int], n: int) -> None:
    if len(perm) != n or sorted(perm) != list(range(n)):
        raise ValueError(f"{tuple(perm)} is not a permutation of range({n})")


def permute(items: Sequence[T], perm: Sequence[int]) -> list[T]:
    """Items in presented order: position p shows items[perm[p]]."""
    _check_perm(perm, len(items))
    return [items[i] for i in perm]


def unpermute(scores: Sequence[T], perm: Sequence[int]) -> tuple[T, ...]:
    """Scores given in presented order, back in original order: original[perm[p]] = scores[p]."""
    _check_perm(perm, len(scores))
    out: list[T | None] = [None] * len(scores)
    for p, i in enumerate(perm):
        out[i] = scores[p]
    return tuple(out)  # type: ignore[arg-type]


def presented_position(perm: Sequence[int], original_index: int) -> int:
    """Where original response `original_index` is shown (e.g. for the hint, which names a presented position)."""
    _check_perm(perm, len(perm))
    return list(perm).index(original_index)


def seeded_argmax(values: Sequence[float], seed: Seed) -> int:
    """The paper's tie-break: shuffle the indices with `seed`, return the first index holding the maximum."""
    if len(values) == 0:
        raise ValueError("argmax of nothing")
    order = _rng(seed).permutation(len(values))
    top = max(values)
    return int(next(i for i in order if values[i] == top))


@dataclasses.dataclass(frozen=True)
class Vote:
    """The combined judgement of k samples for one item, responses in original order.

    totals: summed scores per response over the samples in `kept` (all zeros when none).
    best: index of the best response by `seeded_argmax(totals)`, or None when no sample voted.
    num_valid / num_failed: parsed / unparsable samples among all k (num_valid + num_failed == k).
    kept: indices (into the k samples, ascending) of the samples whose scores were summed.
    uncertainty: per-response variance of the summed votes (ddof=0), or None when no sample voted.
    """

    totals: tuple[int | float, ...]
    best: int | None
    num_valid: int
    num_failed: int
    kept: tuple[int, ...]
    uncertainty: tuple[float, ...] | None

    @property
    def num_used(self) -> int:
        return len(self.kept)


def default_k_meta(k: int) -> int:
    """k/2 as in the paper, rounded up so that at least one sample is kept."""
    return max(1, math.ceil(k * META_KEEP_FRACTION))


def _select_by_meta(valid: list[int], k: int, meta_scores: Sequence[float], k_meta: int) -> list[int]:
    if len(meta_scores) != k:
        raise ValueError(f"{len(meta_scores)} meta scores for {k} samples")
    if any(math.isnan(float(m)) for m in meta_scores):
        raise ValueError("a meta score is NaN")
    if not 1 <= k_meta <= k:
        raise ValueError(f"k_meta = {k_meta} outside [1, k = {k}]")
    valid_set = set(valid)
    # Sort key: valid first, then meta score descending, then sample index ascending (module docstring).
    ranked = sorted(range(k), key=lambda j: (j not in valid_set, -float(meta_scores[j]), j))
    return sorted(j for j in ranked[:k_meta] if j in valid_set)


def vote(sample_scores: Sequence[Sequence[int] | None], *, meta_scores: Sequence[float] | None = None,
         k_meta: int | None = None, seed: Seed = 0, num_responses: int | None = None) -> Vote:
    """Voting@k, or MetaRM@k when `meta_scores` is given (one per sample, any real; higher = better).

    sample_scores: k entries, each the scores of one sample in ORIGINAL response order (unpermute first),
        or None where the sample failed to parse.
    k_meta: samples kept by the meta RM; default `default_k_meta(k)`. Only valid with `meta_scores`.
    seed: tie-break seed for `best` (int or tuple of ints); use a different one per item.
    num_responses: n; needed only to size `totals` when every sample failed, checked otherwise.
    """
    k = len(sample_scores)
    if k == 0:
        raise ValueError("no samples to vote")
    valid = [j for j, s in enumerate(sample_scores) if s is not None]
    lengths = {len(sample_scores[j]) for j in valid}  # type: ignore[arg-type]
    if num_responses is not None:
        lengths.add(num_responses)
    if len(lengths) > 1:
        raise ValueError(f"samples disagree on the number of responses: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    if meta_scores is None:
        if k_meta is not None:
            raise ValueError("k_meta needs meta_scores")
        kept = valid
    else:
        kept = _select_by_meta(valid, k, meta_scores, default_k_meta(k) if k_meta is None else k_meta)
    if not kept:
        return Vote(totals=(0,) * n, best=None, num_valid=len(valid), num_failed=k - len(valid), kept=(),
                    uncertainty=None)
    # No dtype forced: integer scores (the paper's) sum exactly as ints, float scores stay floats.
    votes = np.asarray([sample_scores[j] for j in kept])
    if votes.dtype.kind not in "iuf":
        raise ValueError(f"scores must be numbers, got dtype {votes.dtype}")
    totals = tuple(t.item() for t in votes.sum(axis=0))
    return Vote(totals=totals, best=seeded_argmax(totals, seed), num_valid=len(valid),
                num_failed=k - len(valid), kept=tuple(kept), uncertainty=tuple(float(v) for v in votes.var(axis=0)))


def nested_votes(sample_scores: Sequence[Sequence[int] | None], runs: Sequence[tuple[str, int, int | None]], *,
                 meta_scores: Sequence[float] | None = None, seed: Seed = 0,
                 num_responses: int | None = None) -> list[Vote]:
    """One vote per run over the FIRST k of one item's samples (all of them when fewer): the nested-subset estimate
    of Voting@k / MetaRM@k.

    runs: (method, k, k_meta) with method "voting" or "metarm"; k_meta None means `default_k_meta(k)` for "metarm"
        and must be None for "voting". Drawing max(k) samples once and voting over prefixes makes the k's
        comparable on the same samples (a larger k only adds samples), at the cost of the k's not being independent.
    meta_scores: one per sample (all samples, not per run); needed by "metarm" runs.
    seed: the tie-break seed of every run, the same for every k (pass the seed the samples were scored with,
        mixed with the item, e.g. (seed, item_seed(item)), so the largest-k vote equals the scorer's Judgement).
    """
    out = []
    for method, k, k_meta in runs:
        if method not in ("voting", "metarm"):
            raise ValueError(f"method must be 'voting' or 'metarm', got {method!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if method == "voting":
            if k_meta is not None:
                raise ValueError(f"a voting run has no k_meta, got {k_meta}")
            out.append(vote(sample_scores[:k], seed=seed, num_responses=num_responses))
            continue
        if meta_scores is None:
            raise ValueError("a metarm run needs meta_scores")
        out.append(vote(sample_scores[:k], meta_scores=meta_scores[:k],
                        k_meta=default_k_meta(k) if k_meta is None else k_meta, seed=seed,
                        num_responses=num_responses))
    return out
