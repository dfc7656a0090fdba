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
