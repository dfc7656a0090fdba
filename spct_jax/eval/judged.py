"""What `spct eval run` shows the GRM for each benchmark, and how the judged items' votes become that benchmark's
predictions again, so that the scorer (and `spct eval score` on the written file) sees what any judge would give.

What is judged (`judged_units`; results.json's `items` counts these, `benchmark_items` the data's):
  ppe           a correctness question (32 responses) as its conflict pairs, uid question_id+j (ppe.py: PPE's own
                pairwise view; 32 chain-of-thought answers do not fit one prompt).
  rmbench       each item as its 9 pairs [chosen i, rejected j], uid <uid>+c<i>r<j> (rmbench.pairwise_items). Its
                6 responses in one prompt would share integer scores often, and a tie counts as wrong there.
  rewardbench2  best-of-4 items as 4-response prompts. A Ties item (up to 20+ responses) as one single-response
                item per response, uid <uid>+r<i>: the Ties formula compares scores across a prompt's correct and
                incorrect answers and across prompts, so every response needs a score on one absolute scale - the
                1-10 rating of the GRM's single-response template, as the official generative script rates Ties
                ("ties dataset must be scored with absolute ratings", scripts/run_generative_v2.py). The score is the
                per-sample mean (a sum would depend on how many samples parsed), and a response none of whose
                samples parsed gets -1, the official failed rating (rewardbench/generative_v2.py
                `run_judge_ratings_multi`: ratings of -1 are the invalid ones).
  others        as they are (JudgeBench, RewardBench, RMB pairs, PPE human pairs, ReaLMistake, items).
Then, with two orders (orders.py), every pair of those is judged as an AB and a BA copy.

Predictions (`run_predictions`), per method@k, from each judged row's vote:
  - totals in the original response order, for most units;
  - ReaLMistake: the per-sample mean (its ROC-AUC ranks items against each other; a sum would rank 6 parsed
    samples at 8 = 48 below 8 at 7 = 56), no prediction where no sample was summed (realmistake.py: "Failed");
  - two orders: JudgeBench's per-order lines; for any other benchmark the sum of both orders' totals (orders.py);
  - RewardBench 2 Ties: the item's responses' ratings gathered back into one line.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from spct_jax.data.schema import PreferenceItem
from spct_jax.eval import ppe, rewardbench2, rmbench
from spct_jax.eval.consistency import position_consistency, verdict
from spct_jax.eval.judgebench import PairPredictions
from spct_jax.eval.orders import ORDERS, PAIR_KEY, original_frame, order_of, with_orders

ITEM_KEY = "item_uid"  # a unit's data item, where the unit is a part of it (rmbench.pairwise_items uses the same)
RATED_KEY = "rated_response"  # a RewardBench 2 Ties unit: the index of the one response it rates
FAILED_RATING = -1.0  # rewardbench/generative_v2.py: a rating that failed is -1


def ties_units(item: PreferenceItem) -> list[PreferenceItem]:
    """A RewardBench 2 Ties item as one single-response item per response, uid <uid>+r<i>."""
    return [dataclasses.replace(item, responses=[text], rewards=None if item.rewards is None else [item.rewards[i]],
                                best=None, uid=f"{item.uid}+r{i}", meta={**item.meta, ITEM_KEY: item.uid, RATED_KEY: i})
            for i, text in enumerate(item.responses)]


def base_units(benchmark: str, items: Sequence[PreferenceItem]) -> list[PreferenceItem]:
    """The items the GRM judges for `benchmark`, before any second order (module docstring)."""
    if benchmark == "ppe":
        return ppe.pairwise_items(items)
    if benchmark == "rmbench":
        return rmbench.pairwise_items(items)
    if benchmark == "rewardbench2":
        out: list[PreferenceItem] = []
        for item in items:
            out += ties_units(item) if rewardbench2.subset_of(item) == rewardbench2.TIES else [item]
        return out
    return list(items)


def orders_mode(benchmark: str, *, both_orders: bool = False, single_game: bool = False) -> str | None:
    """"both", "AB" (JudgeBench's single game) or None (one judgement per item, the GRM's shuffle on).
    JudgeBench is judged in both orders unless single_game, as its run_judge.py does; other benchmarks on
    request. ValueError for a flag that does not apply."""
    if single_game and benchmark != "judgebench":
        raise ValueError("--single-game applies to judgebench only (its AB-only protocol)")
    if single_game and both_orders:
        raise ValueError("--single-game judges the AB order only; it cannot be combined with --both-orders")
    if benchmark == "judgebench":
        return "AB" if single_game else "both"
    return "both" if both_orders else None


def judged_units(benchmark: str, items: Sequence[PreferenceItem], mode: str | None) -> list[PreferenceItem]:
    units = base_units(benchmark, items)
    if mode is None:
        return units
    try:
        return with_orders(units, both=mode == "both")
    except ValueError as e:
        if type(e) is not ValueError:  # a DataError (a uid clash) says all it needs to
            raise
        raise ValueError(f"--both-orders: {benchmark}: {e}") from None


def shuffles(unit: PreferenceItem) -> bool:
    """Whether the GRM shows this unit's samples their own shuffles (orders.py: not for a copy of a fixed order)."""
    return order_of(unit) is None


@dataclasses.dataclass
class RunPredictions:
    """One method@k's predictions: `preds` for the scorer, `lines` for the predictions file (the same data),
    `order_lines` the per-order lines of a non-JudgeBench two-order run, `consistency` the position consistency
    of a two-order run."""

    preds: Mapping[str, Any]
    lines: list[dict[str, Any]]
    order_lines: list[dict[str, Any]] | None = None
    consistency: dict[str, float] | None = None


def _row_value(benchmark: str, row: Mapping[str, Any], vote: Mapping[str, Any]) -> list[float] | None:
    """The row's prediction in its SHOWN order: the totals, or for a rated unit (ReaLMistake, RewardBench 2 Ties) the
    per-sample mean, None when no sample was summed."""
    totals = [float(x) for x in vote["totals"]]
    if benchmark != "realmistake" and RATED_KEY not in (row.get("meta") or {}):
        return totals
    summed = len(vote["kept"])
    return [t / summed for t in totals] if summed else None


def run_predictions(benchmark: str, rows: Sequence[Mapping[str, Any]], r: int) -> RunPredictions:
    """The predictions of run r (the r-th vote of every row, Plan.runs order) from the judged rows."""
    plain: dict[str, list[float] | None] = {}
    by_order: dict[str, dict[str, tuple[list[float], bool]]] = {}  # pair uid -> order -> (totals in A,B; any summed)
    rated: dict[str, dict[int, float]] = {}
    sequence: list[str] = []  # prediction uids in first-seen order

    def first_seen(uid: str) -> None:
        if uid not in plain and uid not in by_order and uid not in rated:
            sequence.append(uid)

    for row in rows:
        vote, meta = row["votes"][r], row.get("meta") or {}
        value = _row_value(benchmark, row, vote)
        order = order_of(meta)
        if order is not None:
            first_seen(meta[PAIR_KEY])
            by_order.setdefault(meta[PAIR_KEY], {})[order] = (original_frame(order, value), bool(vote["kept"]))
        elif RATED_KEY in meta:
            first_seen(meta[ITEM_KEY])
            rated.setdefault(meta[ITEM_KEY], {})[meta[RATED_KEY]] = FAILED_RATING if value is None else value[0]
        else:
            first_seen(row["uid"])
            plain[row["uid"]] = value

    preds: dict[str, Any] = PairPredictions() if benchmark == "judgebench" else {}
    lines: list[dict[str, Any]] = []
    order_lines: list[dict[str, Any]] = []
    verdicts = {}
    for uid in sequence:
        if uid in by_order:
            shown = by_order[uid]
            per_order = {o: (scores if summed else None) for o, (scores, summed) in shown.items()}
            seen = [o for o in ORDERS if o in per_order]
            order_lines += [{"uid": uid, "order": o, "scores": per_order[o]} for o in seen]
            if len(seen) == 2:
                verdicts[uid] = (verdict(per_order["AB"]), verdict(per_order["BA"]))
            if benchmark == "judgebench":
                preds[uid] = {o: per_order[o] for o in seen}
            else:
                preds[uid] = [sum(v) for v in zip(*(shown[o][0] for o in seen))]
                lines.append({"uid": uid, "scores": preds[uid]})
        elif uid in rated:
            got = rated[uid]
            preds[uid] = [got[i] for i in sorted(got)]
            lines.append({"uid": uid, "scores": preds[uid]})
        elif plain[uid] is not None:  # a ReaLMistake item with no summed sample has no line (realmistake.py)
            preds[uid] = plain[uid]
            lines.append({"uid": uid, "scores": plain[uid]})
    if benchmark == "judgebench":
        lines, order_lines = order_lines, None
    consistency = position_consistency(verdicts) if verdicts else None
    return RunPredictions(preds=preds, lines=lines, order_lines=order_lines or None, consistency=consistency)
