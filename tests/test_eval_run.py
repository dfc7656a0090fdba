"""`spct eval run` end to end on the tiny random model, plus the nested-subset voting and its input errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from spct_jax.cli import main as spct
from spct_jax.data.schema import PreferenceItem
from spct_jax.eval.run import Plan, item_dump, predictions_name, votes_for
from spct_jax.grm.scorer import SampleRecord

# A RewardBench-format file (the allenai/reward-bench `filtered` rows): three sections, a multi-turn prompt.
RB_ROWS = [
    {"prompt": "What is 2 + 2?", "chosen": "4.", "chosen_model": "a", "rejected": "5.", "rejected_model": "b",
     "subset": "math-prm", "id": 11},
    {"prompt": "Write a haiku about rain.", "chosen": "Soft rain on the roof", "chosen_model": "a",
     "rejected": "Rain is wet.", "rejected_model": "b", "subset": "alpacaeval-easy", "id": 12},
    {"prompt": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7."},
                {"role": "user", "content": "A larger one?"}], "chosen": "11.", "chosen_model": "a",
     "rejected": "9.", "rejected_model": "b", "subset": "mt-bench-hard", "id": 13},
]
EXPECTED_FILES = ["items.jsonl", "predictions_k1.jsonl", "predictions_k2.jsonl", "predictions_metarm_k1.jsonl",
                  "predictions_metarm_k2.jsonl", "results.json", "results.md", "scaling.png", "viewer.html"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "rewardbench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RB_ROWS))
    return path


@pytest.fixture(scope="module")
def meta_rm(tmp_path_factory) -> Path:
    """A random meta RM in the HF sequence-classification layout, on the tiny model's byte vocabulary."""
    from spct_jax.models.registry import tiny_random_config
    from spct_jax.models.scalar_head import init_scalar_rm, save_scalar_rm
    from spct_jax.tokenizer import ByteTokenizer

    path = tmp_path_factory.mktemp("metarm")
    save_scalar_rm(init_scalar_rm(tiny_random_config(ByteTokenizer().vocab_size), seed=3), path)
    return path


@pytest.fixture(scope="module")
def run(data, meta_rm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    rc = spct(["eval", "run", "--model", "tiny-random", "--meta-rm", str(meta_rm), "--benchmark", "rewardbench",
               "--data", str(data), "--k", "2,1", "--max-new-tokens", "8", "--out", str(out), "--seed", "1"])
    assert rc == 0
    return out


def test_run_writes_every_artifact_and_nothing_else(run):
    assert sorted(p.name for p in run.iterdir()) == EXPECTED_FILES  # no temporary files left behind
    results = json.loads((run / "results.json").read_text())
    assert results["files"] == EXPECTED_FILES
    assert results["k"] == [1, 2] and results["k_meta"] == [1, 1] and results["items"] == 3
    assert [(r["method"], r["k"], r["k_meta"]) for r in results["runs"]] == [
        ("voting", 1, None), ("voting", 2, None), ("metarm", 1, 1), ("metarm", 2, 1)]
    for r in results["runs"]:
        assert set(r["scores"]) == {"Chat", "Chat Hard", "Reasoning", "RewardBench"}
        assert all(0.0 <= v <= 1.0 for v in r["scores"].values())
    md = (run / "results.md").read_text()
    assert "| MetaRM | 2 | 1 |" in md and "RewardBench" in md
    assert (run / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run / "viewer.html").read_text()
    assert 'id="item-0-sample-0-critique"' in page and "MetaRM@2 (k_meta=1)" in page


def test_results_are_what_spct_eval_score_gives_for_each_predictions_file(run, data, capsys):
    results = json.loads((run / "results.json").read_text())
    for r in results["runs"]:
        lines = [json.loads(x) for x in (run / r["predictions"]).read_text().splitlines()]
        assert [x["uid"] for x in lines] == ["11", "12", "13"] and all(len(x["scores"]) == 2 for x in lines)
        capsys.readouterr()
        assert spct(["eval", "score", "--benchmark", "rewardbench", "--data", str(data),
                     "--predictions", str(run / r["predictions"]), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == r["scores"]


def test_items_dump_holds_samples_meta_scores_and_votes(run):
    rows = [json.loads(x) for x in (run / "items.jsonl").read_text().splitlines()]
    assert [r["uid"] for r in rows] == ["11", "12", "13"]
    assert rows[2]["context"][1] == {"role": "assistant", "content": "7."} and rows[0]["best"] == 0
    for row in rows:
        assert len(row["samples"]) == 2  # max(k) samples, drawn once
        for s in row["samples"]:
            assert sorted(s["permutation"]) == [0, 1] and isinstance(s["meta_score"], float)
            assert (s["scores"] is None) == (s["error"] is not None)  # tiny-random writes garbage: parse errors
            assert {"text", "principles", "critique", "kept"} <= set(s)
        assert [(v["method"], v["k"], v["num_valid"] + v["num_failed"]) for v in row["votes"]] == [
            ("voting", 1, 1), ("voting", 2, 2), ("metarm", 1, 1), ("metarm", 2, 2)]


def _record(scores, meta):
    return SampleRecord(permutation=(0, 1), text="", principles="", critique="", scores=scores, error=None,
                        meta_score=meta)


def test_every_k_votes_over_the_first_k_samples():
    item = PreferenceItem(context=[{"role": "user", "content": "q"}], responses=["a", "b"], rewards=None, best=0,
                          source="t", uid="u")
    samples = [_record((8, 3), 0.1), _record(None, 5.0), _record((2, 9), 0.9), _record((7, 1), 0.5)]
    votes = votes_for(item, samples, Plan(ks=[1, 2, 4], k_metas=[1, 1, 2], temperature=0.5), seed=0)
    got = {(v["method"], v["k"]): (v["totals"], v["kept"]) for v in votes}
    assert got == {("voting", 1): ([8, 3], [0]), ("voting", 2): ([8, 3], [0]), ("voting", 4): ([17, 13], [0, 2, 3]),
                   ("metarm", 1): ([8, 3], [0]),
                   ("metarm", 2): ([8, 3], [0]),  # the failure has the top meta score but cannot take a slot
                   ("metarm", 4): ([9, 10], [2, 3])}
    dump = item_dump(item, samples, votes)
    assert [s["kept"] for s in dump["samples"]] == [False, False, True, True]  # marks of MetaRM@4, the headline


def test_prediction_file_names():
    assert predictions_name("voting", 8, several=False) == "predictions.jsonl"
    assert predictions_name("metarm", 8, several=False) == "predictions_metarm.jsonl"
    assert predictions_name("voting", 8, several=True) == "predictions_k8.jsonl"
    assert predictions_name("metarm", 32, several=True) == "predictions_metarm_k32.jsonl"


@pytest.mark.parametrize("extra, rc, message", [
    (["--benchmark", "nope"], 2, "invalid choice: 'nope'"),
    (["--data", "/no/such/file.jsonl"], 1, "/no/such/file.jsonl: no such file"),
    (["--k", "0,2"], 2, "every k must be >= 1"),
    (["--k", "1,x"], 2, "expected comma-separated integers"),
    (["--k-meta", "1"], 1, "--k-meta needs --meta-rm"),
    (["--benchmark", "realmistake"], 1, "ReaLMistake item is one response"),
    (["--threshold", "3"], 1, "--threshold applies to realmistake only"),
    (["--limit", "0"], 1, "--limit must be >= 1"),
])
def test_bad_inputs_fail_clearly_before_any_model_work(data, tmp_path, capsys, extra, rc, message):
    out = tmp_path / "out"
    args = {"--benchmark": "rewardbench", "--data": str(data)}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    argv = ["eval", "run", "--model", "tiny-random", "--out", str(out)] + [x for kv in args.items() for x in kv]
    assert spct(argv) == rc
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_k_meta_must_pair_with_k(data, meta_rm, tmp_path, capsys):
    argv = ["eval", "run", "--model", "tiny-random", "--meta-rm", str(meta_rm), "--benchmark", "rewardbench",
            "--data", str(data), "--out", str(tmp_path / "o")]
    assert spct(argv + ["--k", "1,4", "--k-meta", "2"]) == 1
    assert "--k-meta gives 1 values for 2 k values" in capsys.readouterr().err
    assert spct(argv + ["--k", "2", "--k-meta", "3"]) == 1
    assert "--k-meta 3 outside [1, k=2]" in capsys.readouterr().err


def test_out_must_be_a_folder(data, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert spct(["eval", "run", "--model", "tiny-random", "--benchmark", "rewardbench", "--data", str(data),
                 "--out", str(tmp_path / "f")]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- PPE correctness: one prompt per conflict pair

PPE_FIXTURE = Path(__file__).parent / "fixtures" / "data" / "formats" / "ppe_correctness.jsonl"


def _ppe_pairs_of(rows) -> dict:
    """uid -> (the pair's two responses, best), from PPE correctness rows, in PPE's pairwise view."""
    want = {}
    for row in rows:
        for j, (a, b) in enumerate(row["sampled_conflict_pairs"]):
            want[f"{row['question_id']}+{j}"] = ([row[f"response_{a + 1}"], row[f"response_{b + 1}"]],
                                                  0 if row["scores"][a] > row["scores"][b] else 1)
    return want


def test_ppe_correctness_items_are_judged_as_their_conflict_pairs():
    from spct_jax.data.formats import read_preferences
    from spct_jax.eval.judged import base_units

    rows = [json.loads(x) for x in PPE_FIXTURE.read_text().splitlines()]
    judged = base_units("ppe", read_preferences(PPE_FIXTURE))
    assert {it.uid: (it.responses, it.best) for it in judged} == _ppe_pairs_of(rows)
    assert [it.uid for it in judged] == ["mmlu-1+0", "mmlu-1+1", "mmlu-2+0", "mmlu-2+1", "mmlu-2+2", "mmlu-2+3"]


def test_ppe_correctness_run_prompts_hold_two_responses(tmp_path, capsys):
    """The fixture's questions have 32 responses each; every GRM prompt must hold one conflict pair (2 responses),
    under PPE's pairwise uid question_id+j, and `spct eval score` must reproduce results.json from the pairs.
    (The first question only: its 2 pairs exercise the whole path at a third of the sampling time.)"""
    from spct_jax.eval.cli import run_main

    data = tmp_path / "ppe.jsonl"
    data.write_text(PPE_FIXTURE.read_text().splitlines()[0] + "\n")
    out = tmp_path / "out"
    assert run_main(["--model", "tiny-random", "--benchmark", "ppe", "--subset", "math", "--data", str(data),
                     "--k", "1", "--max-new-tokens", "8", "--out", str(out)]) == 0
    want = _ppe_pairs_of([json.loads(data.read_text())])
    dumped = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert [d["uid"] for d in dumped] == list(want) == ["mmlu-1+0", "mmlu-1+1"]
    for d in dumped:
        assert (d["responses"], d["best"]) == want[d["uid"]]
        assert d["samples"] and all(len(s["permutation"]) == 2 for s in d["samples"])
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["uid"] for p in preds] == list(want) and all(len(p["scores"]) == 2 for p in preds)
    results = json.loads((out / "results.json").read_text())
    assert (results["items"], results["benchmark_items"]) == (2, 1)
    [run] = results["runs"]
    # Best-of-K needs all 32 scores of a question, which pairwise judging never produces.
    assert set(run["scores"]) == {"MATH", "PPE Correctness"}
    capsys.readouterr()
    assert spct(["eval", "score", "--benchmark", "ppe", "--subset", "math", "--data", str(data),
                 "--predictions", str(out / "predictions.jsonl"), "--json", "--strict"]) == 0
    assert json.loads(capsys.readouterr().out) == run["scores"]


# ---------------------------------------------------------------- ReaLMistake: per-sample means across items

def _realmistake(uid: str, ok: bool) -> PreferenceItem:
    return PreferenceItem(context=[{"role": "user", "content": f"task {uid}"}], responses=[f"response {uid}"],
                          rewards=[1.0 if ok else 0.0], best=None, source="realmistake", uid=uid,
                          meta={"error_label": "no_error" if ok else "error"})


def _single_samples(score: int, parsed: int, k: int = 8) -> list[SampleRecord]:
    """k samples of a one-response item: the first `parsed` give `score`, the rest failed to parse."""
    return [SampleRecord(permutation=(0,), text="", principles="", critique="",
                         scores=(score,) if j < parsed else None, error=None if j < parsed else "no \\boxed{}",
                         meta_score=float(j)) for j in range(k)]


def _realmistake_runs(cases, tmp_path, k_metas=None):
    """score_runs (what `spct eval run` scores) on hand-made samples; also writes the data file and the
    predictions so that `spct eval score` can be checked against the same numbers."""
    from spct_jax.eval.run import EvalOptions, Prepared, score_runs

    items = [_realmistake(uid, ok) for uid, ok, _, _ in cases]
    plan = Plan(ks=[8], k_metas=k_metas, temperature=0.5)
    rows = []
    for item, (_, _, score, parsed) in zip(items, cases):
        samples = _single_samples(score, parsed)
        rows.append(item_dump(item, samples, votes_for(item, samples, plan, seed=0)))
    args = EvalOptions(model="m", benchmark="realmistake", data=["d"], out="o", k=[8])
    runs, files = score_runs(Prepared(args, plan, items, items, None), rows)
    data = tmp_path / "realmistake.jsonl"
    data.write_text("".join(json.dumps({"input": it.context[0]["content"], "llm_response": it.responses[0],
                                        "error_label": it.meta["error_label"], "metadata": {"id": it.uid}}) + "\n"
                            for it in items))
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return runs, data


def _score_cli(data, pred, capsys) -> dict:
    capsys.readouterr()
    assert spct(["eval", "score", "--benchmark", "realmistake", "--data", str(data), "--predictions", str(pred),
                 "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_realmistake_ranks_items_by_their_per_sample_mean(tmp_path, capsys):
    # A no-error item with 6 of 8 samples parsed at 8 (sum 48) against an error item with 8 of 8 at 7 (sum 56):
    # the sums rank them backwards (AUC 0.0); the means (8 vs 7) rank them right. A second no-error item with 5 of
    # 8 at 8 (sum 40) fell under the old summed threshold 5.5 * 8 = 44 and was called "error".
    cases = [("a", True, 8, 6), ("b", False, 7, 8), ("c", True, 8, 5)]
    runs, data = _realmistake_runs(cases, tmp_path, k_metas=[4])
    for run in runs:  # Voting@8, then MetaRM@8 keeping 4 (the mean over the 4 kept)
        lines = [json.loads(x) for x in (tmp_path / run["predictions"]).read_text().splitlines()]
        assert lines == [{"uid": "a", "scores": [8.0]}, {"uid": "b", "scores": [7.0]}, {"uid": "c", "scores": [8.0]}]
        assert run["scores"]["ROC-AUC"] == run["scores"]["ReaLMistake"] == 1.0
        # Per-sample threshold 5.5: a and c are "no_error" (right), b at 7 is "no_error" too (wrong).
        assert run["scores"]["Accuracy"] == pytest.approx(2 / 3) and run["scores"]["Failed"] == 0.0
        assert _score_cli(data, tmp_path / run["predictions"], capsys) == run["scores"]


def test_realmistake_item_with_no_parsed_sample_is_a_failure_not_an_error_verdict(tmp_path, capsys):
    # c's 8 samples all failed: no score. It must not be scored 0 and so called "error" (its label, by luck here).
    cases = [("a", True, 8, 8), ("b", False, 3, 8), ("c", False, 0, 0)]
    [run], data = _realmistake_runs(cases, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / run["predictions"]).read_text().splitlines()]
    assert [x["uid"] for x in lines] == ["a", "b"]  # no prediction for c
    s = run["scores"]
    assert s["Failed"] == pytest.approx(1 / 3)
    assert s["ROC-AUC"] == pytest.approx(0.75)  # a>b: 1; a vs the unscored c: chance, 1/2
    assert s["Accuracy"] == pytest.approx(2 / 3)  # c is wrong, whatever its label
    assert (s["Precision"], s["Recall"]) == (1.0, 0.5)  # c is not an "error" verdict
    assert _score_cli(data, tmp_path / run["predictions"], capsys) == s


class _StandInGRM:
    """GenerativeRewardModel.score's contract without a model: k samples per item, each giving the response that
    `pick(item)` names 9 and the others 1 (scores in the item's own response order)."""

    def __init__(self, pick):
        self.pick = pick

    def score(self, items, *, k, **_):
        from spct_jax.grm.scorer import Judgement

        out = []
        for it in items:
            scores = tuple(9 if i == self.pick(it) else 1 for i in range(it.num_responses))
            samples = tuple(SampleRecord(permutation=tuple(range(it.num_responses)), text="stand-in", principles="",
                                         critique="", scores=scores, error=None) for _ in range(k))
            out.append(Judgement(uid=it.uid, rewards=(), best=None, num_valid=k, num_failed=0, uncertainty=None,
                                 samples=samples))
        return out


def test_evaluate_is_a_library_call_with_typed_options(tmp_path):
    """`evaluate(EvalOptions(...), grm=...)` judges, scores and writes without a command line, and returns
    results.json's content: a judge that always names the best response scores 1.0, one that always names the
    first scores the share of items whose best comes first; both agree with `spct eval score` on the files."""
    from spct_jax.eval.benchmarks import score_predictions
    from spct_jax.eval.run import EvalOptions, EvalResult, evaluate
    from spct_jax.grm.judge import Runtime

    data = tmp_path / "items.jsonl"
    rows = [{"uid": f"q{i}", "context": f"question {i}", "responses": ["a", "b", "c"], "best": i % 3}
            for i in range(5)]  # best at positions 0, 1, 2, 0, 1
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one_device = Runtime(mesh=None, dtype="float32")
    for name, pick, want in (("oracle", lambda it: it.best, 1.0), ("first", lambda it: 0, 2 / 5)):
        options = EvalOptions(model=name, benchmark="items", data=[str(data)], out=str(tmp_path / name), k=(1, 2),
                              batch_items=2)
        got = evaluate(options, grm=_StandInGRM(pick), runtime=one_device, show_progress=False)
        assert isinstance(got, EvalResult) and not got.preempted
        runs = {(r["method"], r["k"]): r for r in got.results["runs"]}
        assert set(runs) == {("voting", 1), ("voting", 2)}
        for run in runs.values():
            assert run["scores"]["Accuracy"] == pytest.approx(want)
            again = score_predictions("items", [data], tmp_path / name / run["predictions"])
            assert again.scores == run["scores"] and again.num_items == 5 and again.unmatched == []
        assert got.results["items"] == 5 and got.markdown == (tmp_path / name / "results.md").read_text()
