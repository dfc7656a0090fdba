"""JudgeBench scoring, as ScalerLab/JudgeBench computes it (@ e2c52c2: `utils/metrics.py`, `run_judge.py`).

Items are pairs (response_A, response_B) with `best` = the label's winner (0 for "A>B", 1 for "B>A") and the row's
`source` (e.g. "mmlu-pro-law") in `meta["subset"]`; see data/readers/benchmarks.py `judgebench`.

Predictions. JudgeBench judges every pair twice, "in the original order and swapped" (`run_judge.py` L28, L34-36:
`judge.get_judgment(question, response_B, response_A)` unless `--single_game`). A prediction line is

    {"uid": pair_id, "order": "AB" | "BA", "scores": [s_A, s_B] | null}

with the scores ALWAYS in the original (A, B) order, whichever order was shown, and `null` when the judge gave no
verdict (JudgeBench writes `judgment = None` on a failure, `run_judge.py` L29-31, L37-39). A line without `order` is
an AB line, so a plain `{"uid", "scores"}` file is a single-game run. Equal scores are the verdict "A=B".
JudgeBench's own reward-model judges write `'A>B' if score_A > score_B else 'B>A'` (`utils/judges.py` L473,
L525, L564), which gives every tie to B; we follow its JudgeLM judge instead (L282-287: equal scores -> "A=B"),
so a tie counts for neither response.

Rule (`utils/metrics.py` `compute_final_metrics`):
  - both orders (the default protocol): each of the two verdicts counts +1 when equal to the label and -1 when
    equal to the opposite label, anything else (a tie, no verdict) 0; the pair is correct when the sum is
    positive (L63-76), and the score is 100 * correct / pairs (L78);
  - AB only (`--single_game`): the verdict must equal the label (L20-26); a tie or no verdict is wrong.
  One protocol holds for the whole run (`reverse_order` is one flag there), so predictions that mix pairs judged
  once and pairs judged twice are refused rather than scored under two rules.
Categories (`run_judge.py` L94-96): pairs whose source starts with "mmlu-pro" (Knowledge), "livebench-reasoning"
(Reasoning), "livebench-math" (Math), "livecodebench" (Coding), and all pairs (Overall, our "JudgeBench").
Values are fractions in [0, 1] like every scorer here; `spct eval score` prints them as percentages with two
decimals, as `run_judge.py` L96 does (`f"{score:.2f}%"`). With both orders the position consistency
(eval/consistency.py: "Inconsistent", "Flipped") is reported beside the score.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from spct_jax.data.schema import DataError, PreferenceItem
from spct_jax.eval.consistency import Verdict, flip, position_consistency, verdict
from spct_jax.eval.predictions import PredictionError

ORDERS: tuple[str, ...] = ("AB", "BA")
LABELS: tuple[str, ...] = ("A>B", "B>A")  # index = the item's `best`
# run_judge.py L94: the source prefixes it reports, in its order, under JudgeBench's paper names.
CATEGORIES: dict[str, str] = {"Knowledge": "mmlu-pro", "Reasoning": "livebench-reasoning",
                              "Math": "livebench-math", "Coding": "livecodebench"}
SCORE_KEY = "JudgeBench"

Scores = list[float] | None


class PairPredictions(dict):
    """{uid: {order: scores or None}}, plus where each (uid, order) line came from, so that a prediction that does
    not fit the data is reported as `file:line`."""

    def __init__(self, path: str | None = None):
        super().__init__()
        self.path = path
        self.lines: dict[tuple[str, str], int] = {}

    def where(self, uid: str, order: str | None = None) -> str:
        """`file:line` of the uid's line in `order` (its first line when None), or "predictions" without a file."""
        orders = [order] if order else [o for o in ORDERS if (uid, o) in self.lines]
        line = self.lines.get((uid, orders[0])) if orders else None
        if self.path is None:
            return "predictions"
        return f"{self.path}:{line}" if line is not None else self.path


def _uid(value: Any, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise PredictionError(f"{where}: field 'uid' must be a non-empty string, got {value!r}")


def _scores(value: Any, where: str) -> Scores:
    if value is None:
        return None  # the judge gave no verdict
    if not isinstance(value, list) or len(value) != 2:
        got = f"{len(value)} scores" if isinstance(value, list) else repr(value)
        raise PredictionError(f"{where}: field 'scores' must be [s_A, s_B] (2 scores in the original order) or "
                              f"null, got {got}")
    for s in value:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise PredictionError(f"{where}: field 'scores' holds {s!r}; every score must be a finite number")
    return [float(s) for s in value]


def load_predictions(path: str | os.PathLike) -> PairPredictions:
    """Read a JudgeBench predictions JSONL file. Every malformed line raises PredictionError naming `file:line`
    and the uid: bad JSON, a missing uid, an order other than AB/BA, scores that are not 2 numbers or null, and a
    (uid, order) seen twice. The generic reader (predictions.py) cannot hold two lines per uid, hence this one."""
    from spct_jax import paths

    source = paths.as_path(path)
    shown = os.fspath(path)
    preds = PairPredictions(shown)
    try:
        with source.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                where = f"{shown}:{lineno}"
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PredictionError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise PredictionError(f"{where}: expected a JSON object, got {type(row).__name__}")
                if "uid" not in row:
                    raise PredictionError(f"{where}: missing field 'uid'")
                uid = _uid(row["uid"], where)
                where = f"{where}: uid {uid!r}"
                order = row.get("order", "AB")
                if order not in ORDERS:
                    raise PredictionError(f"{where}: field 'order' must be 'AB' or 'BA', got {order!r}")
                if "scores" not in row:
                    raise PredictionError(f"{where}: missing field 'scores' (null when the judge gave no verdict)")
                scores = _scores(row["scores"], where)
                if (uid, order) in preds.lines:
                    raise PredictionError(f"{where}: a second {order} line (first on line "
                                          f"{preds.lines[(uid, order)]})")
                preds.setdefault(uid, {})[order] = scores
                preds.lines[(uid, order)] = lineno
    except UnicodeDecodeError as e:
        raise PredictionError(f"{shown}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return preds


def as_pair_predictions(preds: Mapping[str, Any]) -> PairPredictions:
    """PairPredictions as they are, or a plain {uid: [s_A, s_B]} map (predictions.load_predictions, which keeps no
    order) read as AB lines: a single-game run."""
    if isinstance(preds, PairPredictions):
        return preds
    out = PairPredictions()
    for uid, value in preds.items():
        if isinstance(value, Mapping):
            bad = [o for o in value if o not in ORDERS]
            if bad:
                raise PredictionError(f"uid {uid!r}: order {bad[0]!r} is not 'AB' or 'BA'")
            out[uid] = {o: _scores(None if s is None else list(s), f"uid {uid!r} ({o})") for o, s in value.items()}
        else:
            out[uid] = {"AB": _scores(None if value is None else list(value), f"uid {uid!r}")}
    return out


def category_of(source: str) -> str | None:
    for name, prefix in CATEGORIES.items():
        if source.startswith(prefix):
            return name
    return None


def label_of(item: PreferenceItem) -> str:
    if item.num_responses != 2 or item.best not in (0, 1):
        raise DataError(f"item {item.uid!r}: a JudgeBench item is a pair with a label (best 0 for A>B, 1 for B>A); "
                        f"got {item.num_responses} responses, best={item.best!r}")
    return LABELS[item.best]


def pair_verdicts(items: Sequence[PreferenceItem], preds: Mapping[str, Any], *, single_game: bool = False,
                  allow_extra: bool = False) -> dict[str, tuple[Verdict, ...]]:
    """{uid: (verdict shown AB,) or (verdict shown AB, verdict shown BA)}, in the original frame, after checking
    that the predictions fit the items: every pair predicted, no unknown uid (unless allow_extra), no BA line
    without its AB line, and one protocol (one or two orders) for all pairs. single_game=True uses the AB lines
    only, like JudgeBench's `--single_game`."""
    pp = as_pair_predictions(preds)
    uids: set[str] = set()
    for item in items:
        if item.uid in uids:
            raise DataError(f"items: duplicate uid {item.uid!r}")
        uids.add(item.uid)
    if not allow_extra:
        for uid in pp:
            if uid not in uids:
                raise PredictionError(f"{pp.where(uid)}: uid {uid!r} is not a pair of the JudgeBench data given "
                                      f"({len(items)} pairs)")
    missing = [it.uid for it in items if it.uid not in pp]
    if missing:
        shown = ", ".join(repr(u) for u in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise PredictionError(f"{pp.path or 'predictions'}: no prediction for {len(missing)} of {len(items)} "
                              f"pairs: uid {shown}")
    for item in items:
        if "AB" not in pp[item.uid]:
            raise PredictionError(f"{pp.where(item.uid, 'BA')}: uid {item.uid!r} has a BA line but no AB line; "
                                  "JudgeBench always judges the original order (run_judge.py L28)")
    if single_game:
        return {it.uid: (verdict(pp[it.uid]["AB"]),) for it in items}
    twice = [it.uid for it in items if "BA" in pp[it.uid]]
    if twice and len(twice) != len(items):
        once = next(it.uid for it in items if "BA" not in pp[it.uid])
        raise PredictionError(f"{pp.where(once, 'AB')}: uid {once!r} is judged in the original order only, while "
                              f"{len(twice)} of {len(items)} pairs are judged in both orders; JudgeBench scores "
                              "one protocol for all pairs (add its BA line, or pass single_game=True)")
    return {it.uid: tuple(verdict(pp[it.uid][o]) for o in ORDERS if o in pp[it.uid]) for it in items}


def pair_correct(label: str, verdicts: Sequence[Verdict]) -> bool:
    """JudgeBench's per-pair rule: one verdict must equal the label (metrics.py L21-23); two are summed, +1 for the
    label, -1 for its opposite, and must come out positive (L64-72)."""
    if len(verdicts) == 1:
        return verdicts[0] == label
    counter = 0
    for decision in verdicts:
        if decision == label:
            counter += 1
        elif decision == flip(label):
            counter -= 1
    return counter > 0


def score_judgebench(items: Sequence[PreferenceItem], preds: Mapping[str, Any], *, single_game: bool = False,
                     allow_extra: bool = False, details: bool = False) -> dict[str, float]:
    """"Knowledge", "Reasoning", "Math", "Coding" (those present), "JudgeBench" (all pairs), each the fraction of
    pairs correct; with both orders also "Inconsistent" and "Flipped" (eval/consistency.py). `preds` is what
    `load_predictions` reads (or a plain {uid: [s_A, s_B]} map: AB only). details=True adds the accuracy per
    source (e.g. "mmlu-pro-law"), keyed by the source."""
    verdicts = pair_verdicts(items, preds, single_game=single_game, allow_extra=allow_extra)
    correct: dict[str, list[bool]] = {name: [] for name in CATEGORIES}
    by_source: dict[str, list[bool]] = {}
    overall: list[bool] = []
    for item in items:
        ok = pair_correct(label_of(item), verdicts[item.uid])
        overall.append(ok)
        source = item.meta.get("subset")
        if not isinstance(source, str):
            raise DataError(f"item {item.uid!r}: meta['subset'] (the row's `source`) is missing; JudgeBench "
                            "reports per category from it")
        by_source.setdefault(source, []).append(ok)
        name = category_of(source)
        if name is not None:
            correct[name].append(ok)
    out = {name: sum(c) / len(c) for name, c in correct.items() if c}
    if overall:
        out[SCORE_KEY] = sum(overall) / len(overall)
        if all(len(v) == 2 for v in verdicts.values()):
            out.update(position_consistency({u: (v[0], v[1]) for u, v in verdicts.items()}))
    if details:
        out.update((source, sum(c) / len(c)) for source, c in sorted(by_source.items()))
    return out
