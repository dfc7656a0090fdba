"""RM-Bench scoring on hand-made rows in the published THU-KEG/RM-Bench schema, checked against the 3x3 matrices
worked out by hand from `scripts/utils.py` `compute_accuracy` (rows = chosen style, columns = rejected style,
concise / detailed / detailed-markdown; hard = upper triangle, normal = diagonal, easy = lower triangle)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from spct_jax.data import DataError, read_preferences
from spct_jax.eval import benchmarks, rmbench
from spct_jax.eval.predictions import PredictionError


def row(id_: int, domain: str) -> dict:
    return {"id": id_, "prompt": f"Prompt {id_}?", "domain": domain,
            "chosen": [f"right {s}" for s in ("concise", "detailed", "markdown")],
            "rejected": [f"wrong {s}" for s in ("concise", "detailed", "markdown")]}


def read(tmp_path: Path, rows: list[dict]):
    (tmp_path / "total_dataset.json").write_text(json.dumps(rows))
    return read_preferences(tmp_path / "total_dataset.json")


# Whole predictions: [chosen concise, detailed, markdown, rejected concise, detailed, markdown].
WHOLE = {
    # chosen 5 6 7 vs rejected 4 6 8 -> M rows [1 0 0], [1 0 0] (6 vs 6 ties: a strict > loses), [1 1 0]
    "chat:1": [5, 6, 7, 4, 6, 8],
    # chosen 3 3 3 vs rejected 1 1 4 -> every row [1 1 0]
    "chat:2": [3, 3, 3, 1, 1, 4],
    # chosen 2 2 2 vs rejected 1 3 1 -> every row [1 0 1]
    "safety-refuse:3": [2, 2, 2, 1, 3, 1],
}
# Pairwise predictions for safety-response:5: [chosen i, rejected j]; (0, 0) ties, (2, 0) loses, the rest win.
PAIRWISE = {rmbench.pair_uid("safety-response:5", i, j): ([1, 1] if (i, j) == (0, 0) else
                                                           [0, 1] if (i, j) == (2, 0) else [1, 0])
            for i in range(3) for j in range(3)}

ROWS = [row(1, "chat"), row(2, "chat"), row(3, "safety-refuse"), row(5, "safety-response")]


def test_matrix_levels_domains_and_overall_by_hand(tmp_path):
    items = read(tmp_path, ROWS)
    got = rmbench.score_rmbench(items, WHOLE | PAIRWISE, details=True)
    # Chat, mean matrix [[1, .5, 0], [1, .5, 0], [1, 1, 0]]:
    #   hard (upper: (0,1) (0,2) (1,2)) = (.5 + 0 + 0) / 3; normal = (1 + .5 + 0) / 3; easy (lower) = 3 / 3
    assert got["Chat Hard"] == pytest.approx(1 / 6) and got["Chat Normal"] == pytest.approx(1 / 2)
    assert got["Chat Easy"] == pytest.approx(1.0) and got["Chat"] == pytest.approx((1 / 6 + 1 / 2 + 1) / 3)
    # Safety = safety-refuse + safety-response. Refuse: rows [1 0 1] -> hard 2/3, normal 2/3, easy 2/3.
    # Response: all 1 but (0,0) and (2,0) -> hard 1, normal 2/3, easy 2/3. Mean: 5/6, 2/3, 2/3.
    assert got["Safety Hard"] == pytest.approx(5 / 6) and got["Safety Normal"] == pytest.approx(2 / 3)
    assert got["Safety Easy"] == pytest.approx(2 / 3) and got["Safety"] == pytest.approx(13 / 18)
    assert got["Easy"] == pytest.approx((1 + 2 / 3) / 2) and got["Normal"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert got["Hard"] == pytest.approx((1 / 6 + 5 / 6) / 2)
    assert got["RM-Bench"] == pytest.approx((5 / 9 + 13 / 18) / 2) == pytest.approx(23 / 36)
    # README: Overall = Domain Avg = Difficulty Avg
    assert got["RM-Bench"] == pytest.approx((got["Easy"] + got["Normal"] + got["Hard"]) / 3)
    assert "Math" not in got and "Code" not in got


def test_tie_rule_option(tmp_path):
    items = read(tmp_path, ROWS[:2])
    half = rmbench.score_rmbench(items, WHOLE, ties="half", details=True)
    # chat:1's 6 vs 6 on the diagonal now earns 1/2: normal = (1 + (.5 + 1) / 2 + 0) / 3
    assert half["Chat Normal"] == pytest.approx(7 / 12) and half["Chat"] == pytest.approx(7 / 12)


def test_pairwise_items_and_prediction_uids(tmp_path):
    items = read(tmp_path, ROWS)
    pairs = rmbench.pairwise_items(items[3:])
    assert [p.uid for p in pairs[:3]] == ["safety-response:5+c0r0", "safety-response:5+c0r1", "safety-response:5+c0r2"]
    assert pairs[5].responses == ["right detailed", "wrong markdown"] and pairs[5].best == 0
    preds = WHOLE | PAIRWISE
    assert benchmarks.expected_uids("rmbench", items, preds) == set(WHOLE) | set(PAIRWISE)


def test_registry_and_cli(tmp_path, capsys):
    from spct_jax.eval.cli import score_main

    items = read(tmp_path, ROWS[:3])
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps({"uid": u, "scores": s}) + "\n" for u, s in WHOLE.items()))
    assert score_main(["--benchmark", "rmbench", "--data", str(tmp_path / "total_dataset.json"), "--predictions",
                       str(tmp_path / "pred.jsonl"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == pytest.approx(benchmarks.score_benchmark("rmbench", items, WHOLE))
    assert got["Safety"] == pytest.approx(2 / 3) and got["Chat"] == pytest.approx(5 / 9)


def test_bad_input(tmp_path):
    items = read(tmp_path, ROWS)
    with pytest.raises(PredictionError, match=r"uid 'chat:1': 5 scores for 6 responses"):
        rmbench.score_rmbench(items, WHOLE | PAIRWISE | {"chat:1": [1, 2, 3, 4, 5]})
    with pytest.raises(PredictionError, match=r"uid 'safety-response:5': predicted both whole and pairwise"):
        rmbench.score_rmbench(items, WHOLE | PAIRWISE | {"safety-response:5": [1] * 6})
    partial = {k: v for k, v in PAIRWISE.items() if not k.endswith("c2r2")}
    with pytest.raises(PredictionError, match=r"uid 'safety-response:5': no prediction \(whole, or pairwise 1 of 9"):
        rmbench.score_rmbench(items, WHOLE | partial)
    with pytest.raises(PredictionError, match=r"uid 'safety-response:5\+c0r0': 3 scores for a pair"):
        rmbench.score_rmbench(items, WHOLE | PAIRWISE | {rmbench.pair_uid("safety-response:5", 0, 0): [1, 2, 3]})
    bad = [dict(ROWS[0], domain="poetry")]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"bad\.json:\[0\]: field 'domain': expected one of chat, code, math"):
        read_preferences(tmp_path / "bad.json")
