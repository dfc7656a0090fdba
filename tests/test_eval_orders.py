"""`spct eval run` per benchmark: two-order judging (JudgeBench by default, --both-orders elsewhere), RM-Bench's
pairs, RewardBench 2's Ties ratings and the generic `items` benchmark; each run's predictions score with
`spct eval score` to its results.json. A stand-in GRM whose verdicts are known (truthful, or always preferring the
first response shown) checks the order plumbing in seconds; one real run on JudgeBench pairs checks the whole path
with the tiny random model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from spct_jax.cli import main as spct
from spct_jax.data.schema import PreferenceItem
from spct_jax.eval import cli, judged, orders, run
from spct_jax.grm.scorer import Judgement, SampleRecord

FORMATS = Path(__file__).parent / "fixtures" / "data" / "formats"
JB = FORMATS / "judgebench.jsonl"  # jb-toy-1 A>B (mmlu-pro), jb-toy-2 B>A (livebench-math), jb-toy-3 A>B (livecodebench)


class FakeGRM:
    """GenerativeRewardModel.score's contract: one Judgement per item, k samples whose scores are in the item's
    response order. `rate(item)` gives every sample's scores (None: a parse failure)."""

    def __init__(self, rate):
        self.rate = rate
        self.calls: list[tuple[list[str], bool]] = []

    def score(self, items, *, k, shuffle=True, **_):
        self.calls.append(([it.uid for it in items], shuffle))
        out = []
        for it in items:
            scores = self.rate(it)
            samples = tuple(SampleRecord(permutation=tuple(range(it.num_responses)), text="fake", principles="",
                                         critique="", scores=scores, error=None if scores else "fake failure")
                            for _ in range(k))
            out.append(Judgement(uid=it.uid, rewards=(), best=None, num_valid=0, num_failed=0, uncertainty=None,
                                 samples=samples))
        return out


def truthful(item: PreferenceItem):
    """Knows the answer: the ground-truth best (or a correct rated response) gets 9, the rest 2."""
    if item.num_responses == 1:
        return (9,) if item.rewards and item.rewards[0] == 1.0 else (3,)
    best = item.best if item.best is not None else item.rewards.index(max(item.rewards))
    return tuple(9 if i == best else 2 for i in range(item.num_responses))


def first_shown(item: PreferenceItem):
    """Position bias in its plainest form: the first response shown wins."""
    return (8,) + (3,) * (item.num_responses - 1)


@pytest.fixture
def fake(monkeypatch):
    def install(rate):
        grm = FakeGRM(rate)
        monkeypatch.setattr(run, "load_judge", lambda args, runtime: grm)
        return grm
    return install


def eval_run(benchmark, data, out, *extra):
    return cli.run_main(["--model", "tiny-random", "--benchmark", benchmark, "--data", str(data), "--k", "2",
                         "--max-new-tokens", "8", "--out", str(out), *extra])


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def rescored(benchmark, data, predictions, capsys, *extra) -> dict:
    capsys.readouterr()
    assert spct(["eval", "score", "--benchmark", benchmark, "--data", str(data), "--predictions", str(predictions),
                 "--json", "--strict", *extra]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- the copies and the assembly, by hand

def _pair(uid="p", best=0):
    return PreferenceItem(context=[{"role": "user", "content": "q"}], responses=["a", "b"], rewards=[1.0, 0.0],
                          best=best, source="t", uid=uid, meta={"subset": "s"})


def test_swapped_copy_reverses_responses_labels_and_names_itself():
    ab, ba = orders.with_orders([_pair()], both=True)
    assert (ab.uid, ab.responses, ab.best, ab.meta["shown_order"]) == ("p", ["a", "b"], 0, "AB")
    assert (ba.uid, ba.responses, ba.rewards, ba.best) == ("p+BA", ["b", "a"], [0.0, 1.0], 1)
    assert ba.meta == {"subset": "s", "shown_order": "BA", "pair_uid": "p"}
    # a best-of-3 is judged once, as it is; a set without any pair has no second order
    three = PreferenceItem(context=[{"role": "user", "content": "q"}], responses=["a", "b", "c"], rewards=None,
                           best=0, source="t", uid="t3")
    assert orders.with_orders([three, _pair()], both=True)[0] is three
    with pytest.raises(ValueError, match="no item is a pair"):
        orders.with_orders([three], both=True)
    with pytest.raises(ValueError, match="is both a data item's and the swapped copy"):
        orders.with_orders([_pair("p"), _pair("p+BA")], both=True)


def _row(unit, totals, kept=(0,)):
    return {"uid": unit.uid, "meta": unit.meta,
            "votes": [{"totals": list(totals), "kept": list(kept), "num_valid": len(kept), "num_failed": 0}]}


def test_order_lines_are_in_the_original_frame_and_sum_for_other_benchmarks():
    ab, ba = orders.with_orders([_pair()], both=True)
    rows = [_row(ab, [7, 2]), _row(ba, [6, 5])]  # BA shown (b, a): b got 6, a got 5 -> original [5, 6]
    jb = judged.run_predictions("judgebench", rows, 0)
    assert jb.lines == [{"uid": "p", "order": "AB", "scores": [7.0, 2.0]},
                        {"uid": "p", "order": "BA", "scores": [5.0, 6.0]}]
    assert jb.preds == {"p": {"AB": [7.0, 2.0], "BA": [5.0, 6.0]}} and jb.order_lines is None
    assert jb.consistency == {"Inconsistent": 1.0, "Flipped": 1.0}
    rb = judged.run_predictions("rewardbench", rows, 0)
    assert rb.lines == [{"uid": "p", "scores": [12.0, 8.0]}] and rb.order_lines == jb.lines
    # an order none of whose samples was summed is a null line, its verdict None (JudgeBench: no verdict)
    failed = judged.run_predictions("judgebench", [_row(ab, [7, 2]), _row(ba, [0, 0], kept=())], 0)
    assert failed.lines[1] == {"uid": "p", "order": "BA", "scores": None}
    assert failed.consistency == {"Inconsistent": 1.0, "Flipped": 0.0}


def test_ties_items_are_rated_one_response_at_a_time_and_failures_are_minus_one():
    from spct_jax.data.formats import read_preferences

    items = read_preferences(FORMATS / "rewardbench2.jsonl")
    units = judged.base_units("rewardbench2", items)
    assert [u.uid for u in units] == ["7", "ref:3+r0", "ref:3+r1", "ref:3+r2", "tied:3+r0", "tied:3+r1",
                                      "tied:3+r2", "tied:3+r3"]
    assert [u.responses for u in units[1:4]] == [[r] for r in items[1].responses]
    rows = [_row(units[0], [9, 1, 1, 1])] + [_row(u, [12 - i]) for i, u in enumerate(units[1:])]
    rows[2]["votes"][0].update(totals=[0], kept=[])  # ref:3's second response: no sample parsed
    rows[1]["votes"][0].update(totals=[22], kept=[0, 1])  # two samples summed: the mean, 11
    got = judged.run_predictions("rewardbench2", rows, 0)
    assert got.preds == {"7": [9.0, 1.0, 1.0, 1.0], "ref:3": [11.0, -1.0, 10.0], "tied:3": [9.0, 8.0, 7.0, 6.0]}


# ---------------------------------------------------------------- JudgeBench with a stand-in GRM

def test_judgebench_judges_both_orders_with_the_shuffle_off_and_scores_them(tmp_path, fake, capsys, monkeypatch):
    from spct_jax.eval import plots

    drawn = []
    monkeypatch.setattr(plots, "scaling_png", lambda runs, headlines, title: drawn.append(headlines) or b"png")
    grm = fake(truthful)
    out = tmp_path / "out"
    assert eval_run("judgebench", JB, out, "--k", "1,2") == 0
    assert grm.calls == [(["jb-toy-1", "jb-toy-1+BA", "jb-toy-2", "jb-toy-2+BA", "jb-toy-3", "jb-toy-3+BA"], False)]
    assert drawn == [("JudgeBench",)]  # the plot follows the headline, not Inconsistent / Flipped
    results = json.loads((out / "results.json").read_text())
    assert (results["orders"], results["items"], results["benchmark_items"]) == ("both", 6, 3)
    for r in results["runs"]:
        assert r["scores"] == {"Knowledge": 1.0, "Math": 1.0, "Coding": 1.0, "JudgeBench": 1.0,
                               "Inconsistent": 0.0, "Flipped": 0.0}
        assert r["consistency"] == {"Inconsistent": 0.0, "Flipped": 0.0}
        assert rescored("judgebench", JB, out / r["predictions"], capsys) == r["scores"]
    preds = lines(out / "predictions_k2.jsonl")
    # scores in the original (A, B) order whichever order was shown: jb-toy-2's label is B>A
    assert preds[2:4] == [{"uid": "jb-toy-2", "order": "AB", "scores": [4.0, 18.0]},
                          {"uid": "jb-toy-2", "order": "BA", "scores": [4.0, 18.0]}]
    dumped = lines(out / "items.jsonl")
    assert [(d["uid"], d.get("order"), d["best"]) for d in dumped[2:4]] == [("jb-toy-2", "AB", 1),
                                                                            ("jb-toy-2+BA", "BA", 0)]
    assert dumped[3]["responses"] == list(reversed(dumped[2]["responses"]))
    assert "shown BA" in (out / "viewer.html").read_text()


def test_judgebench_exposes_a_first_position_judge_and_single_game_does_not(tmp_path, fake, capsys):
    fake(first_shown)
    assert eval_run("judgebench", JB, tmp_path / "both") == 0
    [r] = json.loads((tmp_path / "both" / "results.json").read_text())["runs"]
    # every pair: A>B shown AB, B>A shown BA: +1 - 1 = 0, never positive; every winner flips
    assert r["scores"]["JudgeBench"] == 0.0 and r["consistency"] == {"Inconsistent": 1.0, "Flipped": 1.0}
    grm = fake(first_shown)
    assert eval_run("judgebench", JB, tmp_path / "one", "--single-game") == 0
    assert grm.calls == [(["jb-toy-1", "jb-toy-2", "jb-toy-3"], False)]
    results = json.loads((tmp_path / "one" / "results.json").read_text())
    [r] = results["runs"]
    assert results["orders"] == "AB" and "consistency" not in r
    # A always wins: right on the two A>B pairs only
    assert r["scores"] == {"Knowledge": 1.0, "Math": 0.0, "Coding": 1.0, "JudgeBench": pytest.approx(2 / 3)}
    assert [x["order"] for x in lines(tmp_path / "one" / "predictions.jsonl")] == ["AB"] * 3
    assert rescored("judgebench", JB, tmp_path / "one" / "predictions.jsonl", capsys, "--single-game") == r["scores"]


# ---------------------------------------------------------------- other benchmarks

def test_both_orders_on_rewardbench_scores_voting_over_both_and_reports_consistency(tmp_path, fake, capsys):
    grm = fake(first_shown)
    data = FORMATS / "rewardbench.jsonl"
    assert eval_run("rewardbench", data, tmp_path / "o", "--both-orders") == 0
    assert [shuffle for _, shuffle in grm.calls] == [False]
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    [r] = results["runs"]
    # chosen first in every pair: AB alone would give 100; both orders tie (8+3 each way): a tie is half
    assert r["scores"]["RewardBench"] == 0.5 and r["consistency"] == {"Inconsistent": 1.0, "Flipped": 1.0}
    assert lines(tmp_path / "o" / "predictions.jsonl")[0] == {"uid": "11", "scores": [22.0, 22.0]}
    assert [x["order"] for x in lines(tmp_path / "o" / r["order_predictions"])] == ["AB", "BA"] * 3
    assert rescored("rewardbench", data, tmp_path / "o" / "predictions.jsonl", capsys) == r["scores"]
    assert "| Inconsistent | Flipped |" in (tmp_path / "o" / "results.md").read_text()


def test_rmbench_is_judged_as_nine_pairs_per_item(tmp_path, fake, capsys):
    grm = fake(truthful)
    data = FORMATS / "rmbench.json"
    assert eval_run("rmbench", data, tmp_path / "o", "--limit", "1") == 0
    uids = [u for chunk, _ in grm.calls for u in chunk]
    assert len(uids) == 9 and uids[:2] == ["chat:8+c0r0", "chat:8+c0r1"] and all(s for _, s in grm.calls)
    [r] = json.loads((tmp_path / "o" / "results.json").read_text())["runs"]
    assert r["scores"]["RM-Bench"] == 1.0 and len(lines(tmp_path / "o" / "predictions.jsonl")) == 9
    from spct_jax.data.formats import read_preferences

    one = tmp_path / "one.json"
    one.write_text(json.dumps(json.loads(data.read_text())[:1]))
    assert read_preferences(one)[0].uid == "chat:8"
    assert rescored("rmbench", one, tmp_path / "o" / "predictions.jsonl", capsys) == r["scores"]


def test_rewardbench2_best_of_4_and_ties_ratings(tmp_path, fake, capsys):
    grm = fake(truthful)
    data = FORMATS / "rewardbench2.jsonl"
    assert eval_run("rewardbench2", data, tmp_path / "o", "--batch-items", "2") == 0
    assert all(shuffle for _, shuffle in grm.calls) and sum(len(u) for u, _ in grm.calls) == 8
    [r] = json.loads((tmp_path / "o" / "results.json").read_text())["runs"]
    # Ties at its official maximum: every correct answer rated 9, every incorrect 3, and the correct answers'
    # spread 0 makes the margin term tanh(+inf) = 1 (rewardbench2.py: Ties spans [-0.01, 1.01])
    assert r["scores"]["Factuality"] == 1.0 and r["scores"]["Ties"] == pytest.approx(1.01)
    assert lines(tmp_path / "o" / "predictions.jsonl")[1] == {"uid": "ref:3", "scores": [9.0, 3.0, 3.0]}
    assert rescored("rewardbench2", data, tmp_path / "o" / "predictions.jsonl", capsys) == r["scores"]
    with pytest.raises(ValueError, match="rewardbench2: no item is a pair"):
        run.prepare(cli.parse_run_args(["--model", "m", "--benchmark", "rewardbench2", "--data", str(data), "--out",
                                    str(tmp_path / "x"), "--both-orders"]), run.Plan([1], None, 0.0))


def test_items_lines_with_ground_truth_are_a_benchmark(tmp_path, fake, capsys):
    fake(first_shown)
    data = Path(__file__).parent / "fixtures" / "eval" / "data_dir" / "items" / "items.jsonl"
    assert eval_run("items", data, tmp_path / "o") == 0
    [r] = json.loads((tmp_path / "o" / "results.json").read_text())["runs"]
    # the first response is right in weight-1 (best 0), wrong in prime-2 (rewards' maximum is the second)
    assert r["scores"] == {"Pairs": 1.0, "Best-of-N": 0.0, "Accuracy": 0.5}
    assert rescored("items", data, tmp_path / "o" / "predictions.jsonl", capsys) == r["scores"]
    capsys.readouterr()
    assert eval_run("items", FORMATS / "items.jsonl", tmp_path / "bad") == 1  # its first line has no ground truth
    assert "item 'items.jsonl:1': no ground truth (no 'best', and no 'rewards')" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--benchmark", "rewardbench", "--single-game"], "--single-game applies to judgebench only"),
    (["--benchmark", "judgebench", "--single-game", "--both-orders"], "cannot be combined with --both-orders"),
    (["--benchmark", "realmistake", "--both-orders"], "realmistake: no item is a pair"),
])
def test_order_flags_that_do_not_apply_fail_before_any_model_work(tmp_path, capsys, extra, message):
    data = {"judgebench": JB, "rewardbench": FORMATS / "rewardbench.jsonl",
            "realmistake": FORMATS / "realmistake.jsonl"}[extra[1]]
    assert cli.run_main(["--model", "tiny-random", "--data", str(data), "--out", str(tmp_path / "o"), *extra]) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- the real thing: JudgeBench pairs, tiny model

@pytest.mark.timeout(300)
def test_real_judgebench_pairs_end_to_end_with_the_tiny_model(shared_data, tmp_path, capsys):
    """Real pairs in both orders, the whole path: reader, copies, the GRM with its shuffle off, votes, JudgeBench's
    rule, artifacts, and `spct eval score` on what was written. Two pairs (the shortest Math and Coding ones): the
    tiny model's byte tokenizer spends ~3.9K tokens on the template alone, so each judged order is a prefill of
    5-6K tokens on CPU, ~3 s each here; the per-category arithmetic is checked above with the stand-in GRM."""
    rows = [json.loads(x) for x in (shared_data / "judgebench" / "judgebench_gpt-4o.jsonl").read_text().splitlines()]
    picked = [min((r for r in rows if r["source"].startswith(prefix)),
                  key=lambda r: len(r["question"]) + len(r["response_A"]) + len(r["response_B"]))
              for prefix in ("livebench-math", "livecodebench")]
    data = tmp_path / "judgebench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in picked))
    out = tmp_path / "out"
    assert spct(["eval", "run", "--model", "tiny-random", "--benchmark", "judgebench", "--data", str(data),
                 "--limit", "8", "--k", "1,2", "--max-new-tokens", "8", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == results["files"] == [
        "items.jsonl", "predictions_k1.jsonl", "predictions_k2.jsonl", "results.json", "results.md", "scaling.png",
        "viewer.html"]
    assert (results["orders"], results["items"], results["benchmark_items"]) == ("both", 4, 2)
    dumped = lines(out / "items.jsonl")
    assert [d.get("order") for d in dumped] == ["AB", "BA"] * 2
    for d in dumped:
        assert len(d["samples"]) == 2 and all(s["permutation"] == [0, 1] for s in d["samples"])  # shuffle off
    for r in results["runs"]:
        assert {"Math", "Coding", "JudgeBench", "Inconsistent", "Flipped"} == set(r["scores"])
        assert set(r["consistency"]) == {"Inconsistent", "Flipped"}
        got = lines(out / r["predictions"])
        assert [(x["uid"], x["order"]) for x in got] == [(p["pair_id"], o) for p in picked for o in ("AB", "BA")]
        assert rescored("judgebench", data, out / r["predictions"], capsys) == r["scores"]
