"""Per-item predictions: what any judge hands to the benchmark scorers.

A predictions file is JSONL, one line per item: `{"uid": "...", "scores": [s_1, ..., s_n]}`, where `scores` are the
judge's total rewards for the item's responses in the item's ORIGINAL order (a pair is [chosen, rejected]; RMB
best-of-N is [bon_best, *loser_list]; PPE correctness is response_1..response_32). The uid is the source's own id as
a string (RewardBench `id`, RMB `pair_uid` / `bon_uid`, PPE `question_id`, ReaLMistake `metadata.id`).
Two benchmarks depart from one line per data item:
  - PPE correctness may instead be predicted pairwise, one line per conflict pair keyed `question_id+j` (the j-th
    of the question's `sampled_conflict_pairs`) with the pair's two scores in the pair's order; this is what
    `spct eval run` writes (eval/ppe.py: `pairwise_items`, `prediction_items`);
  - ReaLMistake may omit the line of an item the judge could not score (no sample parsed): the scorer counts it
    as "Failed", never as an "error" verdict (eval/realmistake.py).
Other keys on a line (critiques, per-sample scores, ...) are ignored here. The file may be local or gs://
(spct_jax.paths).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from spct_jax.data.schema import DataError, PreferenceItem

Predictions = dict[str, list[float]]


class PredictionLines(dict):
    """{uid: scores} as load_predictions read it, with `where[uid]`: the `file:line` of the uid's line, so that a
    prediction that does not fit its item (a wrong score count, a uid no item has) names where it was written."""

    def __init__(self) -> None:
        super().__init__()
        self.where: dict[str, str] = {}


def where_of(preds: Mapping[str, Any], uid: str) -> str:
    """`file:line: ` of the uid's prediction when `preds` came from a file (PredictionLines), else ''."""
    where = getattr(preds, "where", {}).get(uid)
    return f"{where}: " if where else ""


class PredictionError(DataError):
    """A bad predictions file or predictions that do not fit the items (a missing uid, a wrong score count).

    A DataError, so a caller that reports bad input rows reports bad predictions the same way.
    """


def _uid(value: Any, where: str) -> str:
    # RewardBench ids are ints in the source; a writer that dumps them as JSON numbers still means the same item.
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise PredictionError(f"{where}: field 'uid' must be a string (or an integer id), got {value!r}")


def _scores(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or not value:
        raise PredictionError(f"{where}: field 'scores' must be a non-empty list of numbers, got {value!r}")
    out = []
    for s in value:
        # bool is an int subclass; `true` in a scores list is a writer bug, not a reward of 1.
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise PredictionError(f"{where}: field 'scores' holds {s!r}; every score must be a finite number")
        out.append(float(s))
    return out


def load_predictions(path: str | os.PathLike) -> PredictionLines:
    """Read a predictions JSONL file into {uid: scores} (a PredictionLines, which also holds each uid's `file:line`).
    Blank lines are skipped; anything else malformed raises PredictionError naming `file:line` (bad JSON, not an
    object, a missing or ill-typed field, a duplicate uid)."""
    from spct_jax import paths

    source = paths.as_path(path)
    path = os.fspath(path)  # as the user wrote it, for messages
    preds = PredictionLines()
    first_line: dict[str, int] = {}
    try:
        with source.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PredictionError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise PredictionError(f"{where}: expected a JSON object, got {type(row).__name__}")
                for key in ("uid", "scores"):
                    if key not in row:
                        raise PredictionError(f"{where}: missing field {key!r}")
                uid = _uid(row["uid"], where)
                if uid in preds:
                    raise PredictionError(f"{where}: duplicate uid {uid!r} (first seen on line {first_line[uid]})")
                preds[uid] = _scores(row["scores"], where)
                first_line[uid] = lineno
                preds.where[uid] = where
    except UnicodeDecodeError as e:
        raise PredictionError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return preds


def check_predictions(items: Sequence[PreferenceItem], preds: Mapping[str, Sequence[float]], *,
                      allow_extra: bool = True) -> None:
    """Raise PredictionError unless every item has exactly one score per response.

    Extra predictions (uids with no item) are allowed by default, so one predictions file for a whole benchmark can
    score any part of it; `allow_extra=False` rejects them. The message always names the offending uid(s), and
    the file and line of a prediction when `preds` came from load_predictions.
    """
    seen: set[str] = set()
    missing: list[str] = []
    for item in items:
        if item.uid in seen:
            # Two items under one uid would silently share one prediction.
            raise DataError(f"items: duplicate uid {item.uid!r}")
        seen.add(item.uid)
        scores = preds.get(item.uid)
        if scores is None:
            missing.append(item.uid)
        elif len(scores) != item.num_responses:
            raise PredictionError(f"{where_of(preds, item.uid)}uid {item.uid!r}: {len(scores)} scores for "
                                  f"{item.num_responses} responses (scores go in the item's original response order)")
    if missing:
        shown = ", ".join(repr(u) for u in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise PredictionError(f"no prediction for {len(missing)} of {len(items)} items: uid {shown}")
    if not allow_extra:
        extra = [u for u in preds if u not in seen]
        if extra:
            shown = ", ".join(repr(u) for u in extra[:5]) + (", ..." if len(extra) > 5 else "")
            raise PredictionError(f"{where_of(preds, extra[0])}{len(extra)} predictions match no item: uid {shown}")
