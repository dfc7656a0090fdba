"""RewardBench 2 scoring on hand-made rows in the published allenai/reward-bench-2 schema, checked against numbers
worked out by hand from the official rules (`rewardbench/utils.py` L569-572 for the best-of-4 subsets,
`process_single_model` L1033-1108 for Ties; the overall score is the unweighted mean of the subsets)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spct_jax.data import DataError, read_preferences
from spct_jax.eval import benchmarks, rewardbench2
from spct_jax.eval.predictions import PredictionError


def row(id_: str, subset: str, n_correct: int, n_rejected: int) -> dict:
    """One row of allenai/reward-bench-2 (split test), with made-up text."""
    return {"id": id_, "prompt": f"Question {id_}?", "chosen": [f"good {id_} {i}" for i in range(n_correct)],
            "rejected": [f"bad {id_} {i}" for i in range(n_rejected)], "num_correct": n_correct,
            "num_incorrect": n_rejected, "total_completions": n_correct + n_rejected,
            "models": ["toy"] * (n_correct + n_rejected), "subset": subset, "additional_metadata": {}}


def read(tmp_path: Path, rows: list[dict]):
    path = tmp_path / "rb2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_preferences(path)


# best-of-4 rows and their scores [chosen, rejected x 3] -> hand-worked credit
BEST_OF_4 = {
    "f1": ("Factuality", [9, 1, 2, 3]),  # chosen strictly best: 1
    "f2": ("Factuality", [5, 5, 1, 0]),  # 2-way tie at the top: 1/2
    "f3": ("Factuality", [4, 4, 4, 1]),  # 3-way tie: 1/3
    "f4": ("Factuality", [2, 3, 1, 0]),  # beaten: 0
    "m1": ("Math", [7, 7, 7, 7]),        # all equal (a judge that failed): 1/4, the official 0.25 "error"
}
# Ties: prompt 1 and 2 each as "ref" (one correct answer) and "tied" (two); scores [correct..., incorrect...]
TIES = {
    "ref:1": (1, [8, 3, 5]),      # worst correct 8 - best incorrect 5 = 3: accurate
    "tied:1": (2, [9, 7, 4, 2]),  # 7 - 4 = 3: accurate; correct spread 9 - 7 = 2
    "ref:2": (1, [4, 6, 1]),      # 4 - 6 = -2: not accurate
    "tied:2": (2, [6, 6, 5, 1]),  # 6 - 5 = 1: accurate; spread 0
}


def ties_rows():
    return [row(uid, "Ties", n, len(s) - n) for uid, (n, s) in TIES.items()]


def test_best_of_4_ties_split_and_the_ties_formula_by_hand(tmp_path):
    rows = [row(uid, subset, 1, 3) for uid, (subset, _) in BEST_OF_4.items()] + ties_rows()
    items = read(tmp_path, rows)
    preds = {uid: s for uid, (_, s) in BEST_OF_4.items()} | {uid: s for uid, (_, s) in TIES.items()}
    got = rewardbench2.score_rewardbench2(items, preds, details=True)
    factuality = (1 + 1 / 2 + 1 / 3 + 0) / 4
    assert got["Factuality"] == pytest.approx(factuality) and got["Math"] == pytest.approx(0.25)
    # Ties terms: ref accuracy (1 + 0) / 2; tied accuracy (1 + 1) / 2;
    # correctness_preferred: tied margin > spread: 3 > 2, 1 > 0 -> 1;
    # correctness_preferred_hard: min(ref, tied margin) > spread: min(3, 3) > 2, min(-2, 1) > 0 -> 1/2;
    # margin score: mean(tanh(3 / 2 - 1), tanh(-2 / 0 - 1) = tanh(-inf) = -1).
    margin = (math.tanh(0.5) - 1) / 2
    assert got["Ties ref_accuracy"] == 0.5 and got["Ties tied_accuracy"] == 1.0
    assert got["Ties correctness_preferred"] == 1.0 and got["Ties correctness_preferred_hard"] == 0.5
    assert got["Ties correctness_margin_score"] == pytest.approx(margin)
    ties = 0.3 * 1.0 + 0.3 * 0.5 + 0.2 * 1.0 + 0.2 * 0.5 + 0.01 * margin
    assert got["Ties"] == pytest.approx(ties) and ties == pytest.approx(0.7473105858)
    assert got["RewardBench 2"] == pytest.approx((factuality + 0.25 + ties) / 3)
    assert set(got) == {"Factuality", "Math", "Ties", "RewardBench 2"} | {f"Ties {k}" for k in
                                                                         rewardbench2.TIES_WEIGHTS}


def test_ties_zero_over_zero_margin_counts_nothing(tmp_path):
    """A tied prompt whose correct answers share one score and tie the best incorrect one: 0 / 0 -> nan -> 0."""
    spec = {"ref:1": TIES["ref:1"], "tied:1": TIES["tied:1"], "ref:3": (1, [5, 5, 2]), "tied:3": (2, [5, 5, 5, 1])}
    items = read(tmp_path, [row(uid, "Ties", n, len(s) - n) for uid, (n, s) in spec.items()])
    got = rewardbench2.score_rewardbench2(items, {uid: s for uid, (_, s) in spec.items()})
    # accuracy: prompt 1 right, prompt 3 wrong (0 > 0 is false) in both halves; preferred and hard: 3 > 2 only;
    # margin: mean(tanh(0.5), nan -> 0)
    expected = 0.3 * 0.5 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * math.tanh(0.5) / 2
    assert got["Ties"] == pytest.approx(expected) and got["RewardBench 2"] == got["Ties"]


def test_other_tie_rules_for_the_best_of_4_subsets(tmp_path):
    items = read(tmp_path, [row(uid, subset, 1, 3) for uid, (subset, _) in BEST_OF_4.items()])
    preds = {uid: s for uid, (_, s) in BEST_OF_4.items()}
    wrong = rewardbench2.score_rewardbench2(items, preds, ties="wrong")
    assert wrong["Factuality"] == pytest.approx(1 / 4) and wrong["Math"] == 0.0


def test_registry_and_cli(tmp_path, capsys):
    from spct_jax.eval.cli import score_main

    rows = [row(uid, subset, 1, 3) for uid, (subset, _) in BEST_OF_4.items()]
    (tmp_path / "rb2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps({"uid": u, "scores": s}) + "\n"
                                                 for u, (_, s) in BEST_OF_4.items()))
    assert score_main(["--benchmark", "rewardbench2", "--data", str(tmp_path / "rb2.jsonl"), "--predictions",
                       str(tmp_path / "pred.jsonl"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == pytest.approx({"Factuality": 11 / 24, "Math": 0.25, "RewardBench 2": (11 / 24 + 0.25) / 2})
    assert benchmarks.score_benchmark("rewardbench2", read(tmp_path, rows),
                                      {u: s for u, (_, s) in BEST_OF_4.items()}) == got


def test_bad_input(tmp_path):
    items = read(tmp_path, [row("f1", "Factuality", 1, 3)] + ties_rows())
    preds = {uid: s for uid, (_, s) in TIES.items()} | {"f1": [1, 2, 3]}
    with pytest.raises(PredictionError, match=r"uid 'f1': 3 scores for 4 responses"):
        rewardbench2.score_rewardbench2(items, preds)
    with pytest.raises(PredictionError, match=r"no prediction for 1 of 5 items: uid 'f1'"):
        rewardbench2.score_rewardbench2(items, {uid: s for uid, (_, s) in TIES.items()})
    only_ref = read(tmp_path, [row("ref:1", "Ties", 1, 2)])
    with pytest.raises(DataError, match="need a prompt present both as 'ref:N' and 'tied:N'"):
        rewardbench2.score_rewardbench2(only_ref, {"ref:1": TIES["ref:1"][1]})
    odd = read(tmp_path, [row("7", "Ties", 1, 2)])
    with pytest.raises(DataError, match="a Ties id is 'ref:N' or 'tied:N'"):
        rewardbench2.score_rewardbench2(odd, {"7": [1, 0, 0]})
    unknown = read(tmp_path, [row("x", "Chat", 1, 3)])
    with pytest.raises(DataError, match="'Chat' is not a RewardBench 2 subset"):
        rewardbench2.score_rewardbench2(unknown, {"x": [1, 0, 0, 0]})
