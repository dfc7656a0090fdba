"""JudgeBench scoring (ScalerLab/JudgeBench `utils/metrics.py`, `run_judge.py`) and position consistency.

The reference numbers on the recorded real verdicts are re-derived here from the verdict files with a few lines
that follow JudgeBench's `compute_final_metrics`, independently of spct_jax.eval.judgebench. The data are read in
place from $SPCT_SHARED_DATA (default ../shared/data); those tests skip without it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from spct_jax.data import DataError, read_preferences
from spct_jax.data.schema import PreferenceItem
from spct_jax.eval import benchmarks, judgebench
from spct_jax.eval.consistency import position_consistency, position_consistency_of_scores, verdict
from spct_jax.eval.predictions import PredictionError

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "formats" / "judgebench.jsonl"
JUDGES = ["arena_hard__o1-mini-2024-09-12.jsonl", "reward_model__Skywork_Skywork-Reward-Llama-3.1-8B.jsonl"]
PREFIXES = {"Knowledge": "mmlu-pro", "Reasoning": "livebench-reasoning", "Math": "livebench-math",
            "Coding": "livecodebench", "JudgeBench": ""}


def reference(rows: list[dict], prefix: str, single_game: bool) -> float:
    """JudgeBench's compute_final_metrics over the rows whose source starts with `prefix`, in percent."""
    rows = [r for r in rows if r["source"].startswith(prefix)]
    opposite = {"A>B": "B>A", "B>A": "A>B"}
    correct = 0
    for r in rows:
        d1, d2 = [j["decision"] if j is not None else None for j in r["judgments"]]
        if single_game:
            correct += d1 == r["label"]
            continue
        d2 = opposite.get(d2, d2)  # the second verdict was given with B shown first
        counter = sum((d == r["label"]) - (d == opposite[r["label"]]) for d in (d1, d2))
        correct += counter > 0
    return 100 * correct / len(rows)


def prediction_lines(rows: list[dict], orders=("AB", "BA")) -> str:
    """Recorded verdicts as prediction lines: scores in the ORIGINAL (A, B) order whichever order was shown."""
    shown_scores = {"A>B": [1.0, 0.0], "B>A": [0.0, 1.0], "A=B": [0.5, 0.5]}
    out = []
    for r in rows:
        for k, order in enumerate(orders):
            j = r["judgments"][k]
            s = shown_scores[j["decision"]] if j is not None and j["decision"] is not None else None
            if s is not None and order == "BA":
                s = [s[1], s[0]]  # shown (B, A) -> original (A, B)
            out.append(json.dumps({"uid": r["pair_id"], "order": order, "scores": s}))
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("judge", JUDGES)
@pytest.mark.parametrize("single_game", [False, True], ids=["both-orders", "single-game"])
def test_recorded_real_verdicts_reproduce_judgebench(shared_data, tmp_path, judge, single_game):
    rows = [json.loads(x) for x in (shared_data / "judgebench" / "outputs" / judge).read_text().splitlines()]
    items = read_preferences(shared_data / "judgebench" / "judgebench_gpt-4o.jsonl")
    assert len(rows) == len(items) == 350
    path = tmp_path / "pred.jsonl"
    path.write_text(prediction_lines(rows, ("AB",) if single_game else ("AB", "BA")))
    got = benchmarks.score_benchmark("judgebench", items, benchmarks.load_benchmark_predictions("judgebench", path))
    for key, prefix in PREFIXES.items():
        ref = reference(rows, prefix, single_game)
        assert 100 * got[key] == pytest.approx(ref, abs=1e-9), key
        assert f"{100 * got[key]:.2f}" == f"{ref:.2f}"  # what run_judge.py prints
    if not single_game:
        flips = {"A>B": "B>A", "B>A": "A>B"}
        differ = sum(r["judgments"][0]["decision"] != flips.get(r["judgments"][1]["decision"],
                                                                r["judgments"][1]["decision"]) for r in rows)
        assert got["Inconsistent"] == pytest.approx(differ / len(rows))  # metrics.py L60-61
    else:
        assert "Inconsistent" not in got
    # The same lines scored as single game by the option, like run_judge.py --single_game.
    if not single_game:
        one = judgebench.score_judgebench(items, judgebench.load_predictions(path), single_game=True)
        assert 100 * one["JudgeBench"] == pytest.approx(reference(rows, "", True))


def test_recorded_verdicts_include_ties_and_the_rule_handles_them(shared_data):
    rows = [json.loads(x) for x in (shared_data / "judgebench" / "outputs" / JUDGES[0]).read_text().splitlines()]
    assert sum("A=B" in (j["decision"] for j in r["judgments"]) for r in rows) > 20  # o1-mini does say A=B


# ---------------------------------------------------------------- the rule on hand-made pairs

def pair(uid: str, label: str, source: str = "livebench-math") -> PreferenceItem:
    return PreferenceItem(context=[{"role": "user", "content": "q"}], responses=["a", "b"], rewards=None,
                          best=0 if label == "A>B" else 1, source="judgebench", uid=uid, meta={"subset": source})


def write(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_both_orders_rule_by_hand(tmp_path):
    items = [pair("win-tie", "A>B"), pair("split", "A>B"), pair("ties", "B>A"), pair("null-win", "B>A"),
             pair("both-wrong", "A>B", "mmlu-pro-law"), pair("both-right", "B>A", "mmlu-pro-law")]
    lines = [
        {"uid": "win-tie", "order": "AB", "scores": [9, 1]}, {"uid": "win-tie", "order": "BA", "scores": [4, 4]},
        {"uid": "split", "order": "AB", "scores": [9, 1]}, {"uid": "split", "order": "BA", "scores": [1, 9]},
        {"uid": "ties", "order": "AB", "scores": [2, 2]}, {"uid": "ties", "order": "BA", "scores": [3, 3]},
        {"uid": "null-win", "order": "AB", "scores": None}, {"uid": "null-win", "order": "BA", "scores": [1, 8]},
        {"uid": "both-wrong", "order": "AB", "scores": [1, 2]}, {"uid": "both-wrong", "order": "BA", "scores": [0, 5]},
        {"uid": "both-right", "order": "AB", "scores": [1, 2]}, {"uid": "both-right", "order": "BA", "scores": [0, 5]},
    ]
    got = judgebench.score_judgebench(items, judgebench.load_predictions(write(tmp_path, lines)))
    # win-tie: +1 + 0 > 0 right; split: +1 - 1 = 0 wrong; ties: 0 wrong; null-win: 0 + 1 right;
    # both-wrong: -2 wrong; both-right: +2 right. Math holds the first four, Knowledge the last two.
    assert got["Math"] == pytest.approx(2 / 4) and got["Knowledge"] == pytest.approx(1 / 2)
    assert got["JudgeBench"] == pytest.approx(3 / 6) and "Coding" not in got and "Reasoning" not in got
    # verdicts differ for win-tie (A>B vs A=B), split and null-win; only split swaps the winner
    assert got["Inconsistent"] == pytest.approx(3 / 6) and got["Flipped"] == pytest.approx(1 / 6)
    # single game: only the AB verdicts, and a tie or no verdict is wrong
    one = judgebench.score_judgebench(items, judgebench.load_predictions(write(tmp_path, lines)), single_game=True)
    assert one["JudgeBench"] == pytest.approx(3 / 6)  # win-tie, split, both-right
    assert one["Math"] == pytest.approx(2 / 4) and set(one) == {"Math", "Knowledge", "JudgeBench"}
    per_source = judgebench.score_judgebench(items, judgebench.load_predictions(write(tmp_path, lines)), details=True)
    assert per_source["livebench-math"] == got["Math"] and per_source["mmlu-pro-law"] == got["Knowledge"]


def test_ab_only_lines_and_plain_predictions_are_single_game(tmp_path):
    items = [pair("p1", "A>B"), pair("p2", "B>A")]
    path = write(tmp_path, [{"uid": "p1", "scores": [2, 1]}, {"uid": "p2", "order": "AB", "scores": [3, 3]}])
    assert judgebench.score_judgebench(items, judgebench.load_predictions(path)) == {"Math": 0.5, "JudgeBench": 0.5}
    # what the generic reader (predictions.load_predictions) gives: {uid: scores}, no order -> AB
    assert judgebench.score_judgebench(items, {"p1": [2, 1], "p2": [3, 3]}) == {"Math": 0.5, "JudgeBench": 0.5}


def test_position_consistency():
    assert verdict([1, 2]) == "B>A" and verdict([2.0, 2]) == "A=B" and verdict(None) is None
    got = position_consistency({"a": ("A>B", "A>B"), "b": ("A>B", "B>A"), "c": ("A=B", "B>A"), "d": (None, None)})
    assert got == {"Inconsistent": 2 / 4, "Flipped": 1 / 4}  # two missing verdicts are equal, as in JudgeBench
    got = position_consistency_of_scores({"x": [1, 0], "y": [0, 1], "z": [1, 1]}, {"x": [0, 1], "y": [0, 2]})
    assert got == {"Inconsistent": 1 / 2, "Flipped": 1 / 2}  # over the uids judged in both orders


# ---------------------------------------------------------------- bad input names file, line and uid

@pytest.mark.parametrize("lines, problem", [
    ([{"uid": "jb-toy-1", "order": "AB", "scores": [1, 0, 2]}],
     "pred.jsonl:1: uid 'jb-toy-1': field 'scores' must be [s_A, s_B] (2 scores in the original order) or null, "
     "got 3 scores"),
    ([{"uid": "jb-toy-1", "order": "AB", "scores": [1, 0]}, {"uid": "jb-toy-1", "order": "ab", "scores": [1, 0]}],
     "pred.jsonl:2: uid 'jb-toy-1': field 'order' must be 'AB' or 'BA', got 'ab'"),
    ([{"uid": "jb-toy-1", "order": "AB", "scores": [1, 0]}, {"uid": "jb-toy-1", "order": "AB", "scores": [0, 1]}],
     "pred.jsonl:2: uid 'jb-toy-1': a second AB line (first on line 1)"),
    ([{"uid": "jb-toy-1", "order": "AB", "scores": [1, True]}], "pred.jsonl:1: uid 'jb-toy-1': field 'scores' holds"),
    ([{"order": "AB", "scores": [1, 0]}], "pred.jsonl:1: missing field 'uid'"),
])
def test_bad_prediction_lines(tmp_path, lines, problem):
    with pytest.raises(PredictionError) as e:
        judgebench.load_predictions(write(tmp_path, lines))
    assert problem in str(e.value), str(e.value)


def fixture_lines(orders=("AB", "BA")) -> list[dict]:
    return [{"uid": f"jb-toy-{k}", "order": o, "scores": [1, 0]} for k in (1, 2, 3) for o in orders]


@pytest.mark.parametrize("change, problem", [
    (lambda ls: ls + [{"uid": "jb-nope", "order": "AB", "scores": [1, 0]}],
     "pred.jsonl:7: uid 'jb-nope' is not a pair of the JudgeBench data given (3 pairs)"),
    (lambda ls: [x for x in ls if x["uid"] != "jb-toy-2"],
     "pred.jsonl: no prediction for 1 of 3 pairs: uid 'jb-toy-2'"),
    (lambda ls: [x for x in ls if (x["uid"], x["order"]) != ("jb-toy-3", "AB")],
     "pred.jsonl:5: uid 'jb-toy-3' has a BA line but no AB line"),
    (lambda ls: [x for x in ls if (x["uid"], x["order"]) != ("jb-toy-2", "BA")],
     "pred.jsonl:3: uid 'jb-toy-2' is judged in the original order only, while 2 of 3 pairs are judged in both"),
])
def test_predictions_that_do_not_fit_the_pairs(tmp_path, change, problem):
    items = read_preferences(FIXTURE)
    path = write(tmp_path, change(fixture_lines()))
    with pytest.raises(PredictionError) as e:
        judgebench.score_judgebench(items, judgebench.load_predictions(path))
    assert problem in str(e.value), str(e.value)


def test_row_without_label_names_file_line_and_uid(tmp_path):
    rows = [json.loads(x) for x in FIXTURE.read_text().splitlines()]
    del rows[1]["label"]
    (tmp_path / "jb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"jb\.jsonl:2: field 'label': missing \(pair_id 'jb-toy-2'\)"):
        read_preferences(tmp_path / "jb.jsonl")


# ---------------------------------------------------------------- spct eval score

def test_eval_score_cli(tmp_path, capsys):
    from spct_jax.eval import cli

    path = write(tmp_path, fixture_lines(("AB",)))  # jb-toy-2 is B>A: [1, 0] is wrong there
    assert cli.score_main(["--benchmark", "judgebench", "--data", str(FIXTURE), "--predictions", str(path),
                           "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"Knowledge": 1.0, "Math": 0.0, "Coding": 1.0,
                                                    "JudgeBench": pytest.approx(2 / 3)}
    # Both orders: two lines per uid, read by the benchmark's own reader (benchmarks.load_benchmark_predictions).
    path = write(tmp_path, fixture_lines())
    assert cli.score_main(["--benchmark", "judgebench", "--data", str(FIXTURE), "--predictions", str(path)]) == 0
    out = capsys.readouterr().out
    assert "JudgeBench" in out and " 66.67" in out and "Inconsistent" in out
    want = judgebench.score_judgebench(read_preferences(FIXTURE), judgebench.load_predictions(path), single_game=True)
    assert cli.score_main(["--benchmark", "judgebench", "--data", str(FIXTURE), "--predictions", str(path), "--json",
                           "--single-game"]) == 0
    assert json.loads(capsys.readouterr().out) == want and "Inconsistent" not in want
    # a second AB line of one pair names the file, line and uid
    path.write_text(path.read_text() + json.dumps({"uid": "jb-toy-1", "order": "AB", "scores": [1, 0]}) + "\n")
    assert cli.score_main(["--benchmark", "judgebench", "--data", str(FIXTURE), "--predictions", str(path)]) == 1
    assert f"{path}:7: uid 'jb-toy-1': a second AB line (first on line 1)" in capsys.readouterr().err


def test_eval_score_help_lists_every_benchmark_with_its_rule_and_source(capsys):
    from spct_jax.eval import cli

    assert cli.score_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert set(benchmarks.BENCHMARK_INFO) == set(benchmarks.BENCHMARKS) == set(benchmarks.HEADLINE_KEYS)
    for name, (rule, source) in benchmarks.BENCHMARK_INFO.items():
        assert f"  {name:<12}  {rule}" in text and f"source: {source}" in text
