"""`spct eval run --benchmark all --data-dir DIR`: the layout it reads, one table, a folder per benchmark, and
resuming: finished benchmarks are skipped (or re-scored when only scoring options changed), an interrupted one goes
on from its finished chunks, other judging settings are refused."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from spct_jax.cli import main as spct
from spct_jax.eval import cli, run_all

TREE = Path(__file__).parent / "fixtures" / "eval" / "data_dir"  # judgebench/ (+ outputs/), rewardbench/, items/
BENCHMARK_FILES = ["items.jsonl", "predictions.jsonl", "results.json", "results.md", "viewer.html"]


def test_discover_reads_the_documented_layout(tmp_path):
    found, notes = run_all.discover(TREE)
    assert found == {"rewardbench": [str(TREE / "rewardbench" / "rewardbench.jsonl")],
                     "judgebench": [str(TREE / "judgebench" / "judgebench.jsonl")],  # not outputs/: verdicts
                     "items": [str(TREE / "items")]}
    assert notes == []
    (tmp_path / "rmb").mkdir()
    (tmp_path / "rmb" / "MANIFEST.json").write_text("{}")
    (tmp_path / "train").mkdir()
    found, notes = run_all.discover(tmp_path)
    assert found == {}
    assert notes == [f"{tmp_path / 'rmb'}: no data file where rmb is read from (rmb/Pairwise_set/**, "
                     "rmb/BoN_set/**); not run", f"{tmp_path}: not benchmark folders, ignored: train"]


def test_discover_on_the_shared_sample(shared_data):
    found, notes = run_all.discover(shared_data)
    assert list(found) == ["rewardbench", "rmb", "judgebench"]
    assert found["rewardbench"] == [str(shared_data / "rewardbench" / "llmbar.jsonl")]  # not llmbar_source/
    assert found["rmb"] == [str(shared_data / "rmb" / "Pairwise_set"), str(shared_data / "rmb" / "BoN_set")]
    assert [Path(p).name for p in found["judgebench"]] == ["judgebench_claude-3-5-sonnet.jsonl",
                                                          "judgebench_gpt-4o.jsonl"]
    assert notes == [f"{shared_data}: not benchmark folders, ignored: train"]


def all_argv(out, *extra):
    return ["eval", "run", "--model", "tiny-random", "--benchmark", "all", "--data-dir", str(TREE), "--k", "1",
            "--max-new-tokens", "8", "--limit", "1", "--out", str(out), *extra]


@pytest.mark.timeout(300)
def test_all_on_a_fixture_tree_then_a_rerun_skips_or_rescores_without_the_model(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert spct(all_argv(out)) == 0
    table = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["items", "judgebench", "results.json", "results.md",
                                                     "rewardbench"]
    for name in ("items", "judgebench", "rewardbench"):
        assert sorted(p.name for p in (out / name).iterdir()) == BENCHMARK_FILES  # no .judging left
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["benchmarks"]) == ["rewardbench", "judgebench", "items"]
    assert summary["runs"] == ["Voting@1"] and summary["overall"] is None  # PPE and RMB are absent
    assert summary["mean_of"] == ["RewardBench", "JudgeBench", "Accuracy"]
    scores = [summary["benchmarks"][n]["scores"][k]["Voting@1"] for n, k in
              [("rewardbench", "RewardBench"), ("judgebench", "JudgeBench"), ("items", "Accuracy")]]
    assert summary["mean"]["Voting@1"] == pytest.approx(sum(scores) / 3)
    jb = json.loads((out / "judgebench" / "results.json").read_text())
    assert (jb["orders"], jb["items"], jb["benchmark_items"]) == ("both", 2, 1)
    assert summary["benchmarks"]["judgebench"]["consistency"] == jb["runs"][0]["consistency"]
    assert table == (out / "results.md").read_text()
    assert "| judgebench | JudgeBench |" in table and "| Mean | of the 3 scores above |" in table

    # Rerun: everything finished with these settings; the model is never loaded.
    def no_model(args, runtime):
        raise AssertionError("a finished benchmark was judged again")

    monkeypatch.setattr(run_all, "load_judge", no_model)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.parent != out}
    assert spct(all_argv(out)) == 0
    captured = capsys.readouterr()
    assert captured.out == table and captured.err.count("finished earlier with these settings; skipped") == 3
    assert {p: p.read_bytes() for p in before} == before

    # Only a scoring option changed: re-scored from items.jsonl, still without the model.
    assert spct(all_argv(out, "--details")) == 0
    captured = capsys.readouterr()
    assert captured.err.count("re-scored with the new scoring options") == 2  # items takes no --details:
    assert "items: finished earlier with these settings; skipped" in captured.err  # its options did not change
    rb = json.loads((out / "rewardbench" / "results.json").read_text())
    assert rb["score_options"] == {"details": True} and "math-prm" in rb["runs"][0]["scores"]
    assert (out / "items" / "items.jsonl").read_bytes() == before[out / "items" / "items.jsonl"]

    # Other judging settings: refused, nothing changed.
    assert spct(all_argv(out, "--seed", "5")) == 2
    err = capsys.readouterr().err
    assert "holds rewardbench results judged with other settings" in err and "seed: 0 there, 5 now" in err


def test_a_sigterm_stops_the_run_and_the_rerun_resumes_where_it_stopped(tmp_path, capsys, monkeypatch):
    from test_eval_orders import FakeGRM, truthful

    calls: list[list[str]] = []

    class Stopping(FakeGRM):
        def score(self, items, **kw):
            calls.append([it.uid for it in items])
            if stop and items[0].source == "judgebench":  # the second benchmark's first chunk
                os.kill(os.getpid(), signal.SIGTERM)
            return super().score(items, **kw)

    monkeypatch.setattr(run_all, "load_judge", lambda args, runtime: Stopping(truthful))
    out = tmp_path / "out"
    argv = ["eval", "run", "--model", "tiny-random", "--benchmark", "all", "--data-dir", str(TREE), "--k", "1",
            "--out", str(out), "--batch-items", "1"]
    stop = True
    assert spct(argv) == 0
    err = capsys.readouterr().err
    assert "stopped during judgebench; the same command resumes there" in err
    assert calls == [["11"], ["12"], ["jb-toy-1"]]  # rewardbench done, then the chunk in flight was finished
    assert (out / "rewardbench" / "results.json").exists() and not (out / "results.json").exists()
    assert (out / "judgebench" / ".judging" / "manifest.json").exists() and not (out / "items").exists()

    calls.clear()
    stop = False
    assert spct(argv) == 0
    # rewardbench skipped, judgebench resumed after its first chunk, items judged
    assert calls == [["jb-toy-1+BA"], ["jb-toy-2"], ["jb-toy-2+BA"], ["weight-1"], ["prime-2"]]
    summary = json.loads((out / "results.json").read_text())
    assert summary["benchmarks"]["judgebench"]["scores"]["JudgeBench"] == {"Voting@1": 1.0}
    assert summary["mean"] == {"Voting@1": 1.0}  # the truthful stand-in gets every benchmark right


def _results(tmp_path, name, scores, **extra):
    folder = tmp_path / "out" / name
    folder.mkdir(parents=True)
    runs = [{"method": "voting", "k": k, "k_meta": None, "scores": {key: v[i] for key, v in scores.items()}}
            for i, k in enumerate((1, 8))]
    (folder / "results.json").write_text(json.dumps({"data": [name], "items": 4, "benchmark_items": 2,
                                                     "parse_rate": 1.0, "runs": runs, **extra}))


def test_table_has_the_papers_overall_only_with_its_four_parts(tmp_path):
    _results(tmp_path, "rewardbench", {"RewardBench": [0.6, 0.8]})
    _results(tmp_path, "ppe", {"PPE Preference": [0.5, 0.6], "PPE Correctness": [0.7, 0.6]})
    _results(tmp_path, "rmb", {"RMB": [0.4, 0.6]})
    _results(tmp_path, "realmistake", {"ReaLMistake": [0.9, 1.0]})
    args = cli.parse_run_args(["--model", "m", "--benchmark", "all", "--data-dir", "d", "--out", str(tmp_path / "out")])
    s = run_all.summary(args, ["rewardbench", "ppe", "rmb", "realmistake"])
    assert s["overall"] == {"Voting@1": pytest.approx(0.55), "Voting@8": pytest.approx(0.65)}
    assert s["mean"] == {"Voting@1": pytest.approx(3.1 / 5), "Voting@8": pytest.approx(3.6 / 5)}
    md = run_all.summary_markdown(s)
    assert "| Overall | paper: mean of RewardBench, PPE Preference, PPE Correctness, RMB | 55.00 | 65.00 |  |" in md
    assert "| ppe | PPE Correctness | 70.00 | 60.00 | 2 (4 judged) |" in md
    assert "Inconsistent" not in md.split("\n")[2]  # no pair was judged in both orders
    s = run_all.summary(args, ["rewardbench", "ppe", "realmistake"])
    assert s["overall"] is None and "| Overall |" not in run_all.summary_markdown(s)


@pytest.mark.parametrize("argv, message", [
    (["--benchmark", "all", "--data", "x.jsonl"], "--benchmark all takes --data-dir DIR"),
    (["--benchmark", "rewardbench", "--data-dir", "d"], "--benchmark rewardbench takes --data PATH"),
])
def test_all_and_data_flags_pair_up(tmp_path, capsys, argv, message):
    assert cli.run_main(["--model", "tiny-random", "--out", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_all_without_benchmark_data_fails_before_any_model_work(tmp_path, capsys):
    assert spct(["eval", "run", "--model", "tiny-random", "--benchmark", "all", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 1
    assert "no benchmark data in the layout rewardbench/, ppe/" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
