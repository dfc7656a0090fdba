"""Two-order judging of pairs for `spct eval run`: every pair is judged with its responses shown (A, B) and again
shown (B, A), each order with its own k samples, and the two judgements are brought back to the pair's original
frame.

Why the GRM's own shuffle is off for these copies. The GRM normally shows each sample its own seeded shuffle of the
responses ([P] §4), so one item's k samples already mix both orders and no sample is "the AB one". JudgeBench's
protocol (`run_judge.py` L28, L34-36: the judge is asked again with `response_B, response_A`) and the position
consistency (eval/consistency.py) need to know which order each verdict saw, so a copy judged here is shown in its
order to all of its samples (`GenerativeRewardModel.score(..., shuffle=False)`). Items that are not pairs (RMB
best-of-N, RewardBench 2's best-of-4) keep the shuffle: shown in one fixed order, their first response - the
data's chosen one - would always sit first.

A copy is the data's pair with `meta[ORDER_KEY]` = "AB" or "BA" and `meta[PAIR_KEY]` = the pair's uid. The AB copy
keeps the uid; the BA copy has the responses, rewards and `best` reversed and the uid `<uid>+BA` (a uid of its own:
samples are seeded by uid and content, and the judge store and the viewer key rows by uid). Its vote totals are in
the shown (B, A) order and are reversed back by `original_frame`.

What is scored (eval/judged.py builds it):
  - JudgeBench: the two verdicts, by its own rule (+1/-1 per verdict, judgebench.py); predictions are its
    `{"uid", "order", "scores"}` lines, `null` for an order none of whose samples parsed.
  - any other pair benchmark (`--both-orders`): the sum of the two orders' vote totals, i.e. Voting over all 2k
    samples, k shown each way. The AB order alone would not do: the readers put the chosen response first in every
    RewardBench, RMB, PPE and RM-Bench pair, so an AB-only score rewards a judge that prefers the first position.
    The per-order lines go to a second file for the consistency.
Both report "Inconsistent" and "Flipped" (consistency.py) over the pairs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from spct_jax.data.schema import DataError, PreferenceItem

ORDERS: tuple[str, ...] = ("AB", "BA")
ORDER_KEY = "shown_order"
PAIR_KEY = "pair_uid"
SWAPPED_SUFFIX = "+BA"


def order_of(item_or_meta) -> str | None:
    """"AB" / "BA" for a copy judged in a fixed order, None for an item judged with the GRM's shuffle."""
    meta = item_or_meta.meta if isinstance(item_or_meta, PreferenceItem) else item_or_meta
    return (meta or {}).get(ORDER_KEY)


def shown(item: PreferenceItem, order: str) -> PreferenceItem:
    """The pair `item` as judged in `order`: AB as it is, BA with its two responses (and labels) swapped."""
    if item.num_responses != 2:
        raise ValueError(f"item {item.uid!r}: only a pair has two orders ({item.num_responses} responses)")
    meta = {**item.meta, ORDER_KEY: order, PAIR_KEY: item.uid}
    if order == "AB":
        return dataclasses.replace(item, meta=meta)
    if order != "BA":
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return dataclasses.replace(item, responses=list(reversed(item.responses)),
                               rewards=None if item.rewards is None else list(reversed(item.rewards)),
                               best=None if item.best is None else 1 - item.best, uid=item.uid + SWAPPED_SUFFIX,
                               meta=meta)


def with_orders(units: Sequence[PreferenceItem], *, both: bool) -> list[PreferenceItem]:
    """Every pair of `units` as its AB copy, followed by its BA copy when `both` (next to each other, so that a
    chunk of the judge store and the viewer hold both orders of a pair); other units as they are. ValueError if
    there is no pair at all; DataError if a BA copy's uid is already an item's."""
    out: list[PreferenceItem] = []
    pairs = 0
    for unit in units:
        if unit.num_responses != 2:
            out.append(unit)
            continue
        pairs += 1
        out.append(shown(unit, "AB"))
        if both:
            out.append(shown(unit, "BA"))
    if not pairs:
        raise ValueError("no item is a pair of responses, so there is no second order to judge")
    seen: set[str] = set()
    for unit in out:
        if unit.uid in seen:
            raise DataError(f"items: uid {unit.uid!r} is both a data item's and the swapped copy of another's "
                            f"(swapped copies are named <uid>{SWAPPED_SUFFIX})")
        seen.add(unit.uid)
    return out


def original_frame(order: str, scores: Sequence[float]) -> list[float]:
    """A pair's scores in its original (A, B) order, from scores in the order shown."""
    return list(scores) if order == "AB" else list(reversed(scores))
