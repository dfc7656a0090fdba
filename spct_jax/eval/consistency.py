"""Position consistency of a pairwise judge: does its verdict on a pair survive swapping the order the two
responses are shown in? Usable for any benchmark of pairs judged in both orders (JudgeBench reports it).

A verdict is JudgeBench's vocabulary in the pair's ORIGINAL frame (response A = the data's first response):
"A>B", "B>A", "A=B" (equal scores; JudgeLM's rule, ScalerLab/JudgeBench `utils/judges.py` L282-287:
`if scores[0] > scores[1]: "A>B" elif scores[0] < scores[1]: "B>A" else: "A=B"`), or None (no verdict). Scores
are always written in the original order, whichever order was shown, so no verdict needs flipping here; a verdict
recorded in the shown frame is brought back with `flip` (JudgeBench `utils/metrics.py` L6-11, L47).

Two shares, both over all the pairs given:
  "Inconsistent": the two verdicts differ, JudgeBench's own count (`utils/metrics.py` L60-61:
                  `if decision1 != decision2: n_inconsistent += 1`, computed there but not printed). A win in one
                  order and a tie in the other differs; so does a verdict against no verdict; two missing verdicts
                  are equal, as they are in that code.
  "Flipped":      the winner itself swaps (A>B in one order, B>A in the other): position bias in its plainest form.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

Verdict = str | None
VERDICTS: tuple[str, ...] = ("A>B", "B>A", "A=B")
_FLIP = {"A>B": "B>A", "B>A": "A>B"}


def verdict(scores: Sequence[float] | None) -> Verdict:
    """The verdict on a pair from its two scores in the original order; None for no scores (no verdict)."""
    if scores is None:
        return None
    if len(scores) != 2:
        raise ValueError(f"a pair verdict needs 2 scores, got {len(scores)}")
    a, b = scores
    return "A>B" if a > b else "B>A" if b > a else "A=B"


def flip(v: Verdict) -> Verdict:
    """JudgeBench's `flip_judgment` (`utils/metrics.py` L6-11): swaps A>B and B>A, leaves anything else as is."""
    return _FLIP.get(v, v) if v is not None else None


def position_consistency(verdicts: Mapping[str, tuple[Verdict, Verdict]]) -> dict[str, float]:
    """{"Inconsistent", "Flipped"} as fractions of the pairs. `verdicts` maps a pair's uid to (verdict with the
    original order shown, verdict with the swapped order shown), both in the original frame."""
    if not verdicts:
        raise ValueError("position consistency of no pairs")
    differ = sum(ab != ba for ab, ba in verdicts.values())
    flipped = sum(ab in _FLIP and ba == _FLIP[ab] for ab, ba in verdicts.values())
    return {"Inconsistent": differ / len(verdicts), "Flipped": flipped / len(verdicts)}


def position_consistency_of_scores(shown_ab: Mapping[str, Sequence[float] | None],
                                   shown_ba: Mapping[str, Sequence[float] | None]) -> dict[str, float]:
    """The same from two {uid: scores in the original order} maps, one per shown order, over the uids in both."""
    both = [u for u in shown_ab if u in shown_ba]
    return position_consistency({u: (verdict(shown_ab[u]), verdict(shown_ba[u])) for u in both})
