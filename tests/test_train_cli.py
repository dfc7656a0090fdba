"""`spct rft|grpo|metarm --config configs/tiny_cpu.py`: the three training stages end to end, chained as in a real
run (RFT -> GRPO from the RFT model -> meta RM guiding the GRPO model), plus the command-line failure modes.

tiny-random writes garbage, so these check the plumbing (files, reloadable models, summaries), not learning:
the stages' learning is tested in test_train_steps / test_train_rft and by `spct demo`. The CLIs run in-process
so that JAX's compilation cache is shared between them (the ~4,000-token template makes each compile count).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from spct_jax.models.registry import load_model
from spct_jax.models.scalar_head import load_scalar_rm
from spct_jax.models.weights import from_pretrained
from spct_jax.tokenizer import ByteTokenizer
from spct_jax.train import grpo_cli, metarm_cli, rft_cli
from spct_jax.train.stage_common import split_overrides

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny_cpu.py")


def call(main, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", TINY, *args])
    return code, out.getvalue(), err.getvalue()


def params(module: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(module, nnx.Param))]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_cpu")


@pytest.fixture(scope="module")
def rft_run(run_dir):
    code, out, err = call(rft_cli.main, f"--config.run_dir={run_dir}")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def grpo_run(run_dir, rft_run):
    code, out, err = call(grpo_cli.main, f"--config.run_dir={run_dir}",
                          f"--config.model.init_checkpoint={run_dir / 'rft' / 'model'}")
    assert code == 0, err
    return json.loads(out)


def test_rft_writes_dataset_stats_and_a_reloadable_model(run_dir, rft_run):
    stats = rft_run["rft_stats"]
    assert rft_run["items"] == 3 and stats["items"] == 3 and stats["sampled"] == 3 * 2  # N_RFT = 2
    # A random model gets nothing right: every item goes to hinted sampling and stays unsolved; no SFT.
    assert stats["accepted"] == 0 and stats["hinted_items"] == 3 and stats["unsolved_items"] == 3
    assert "skipped" in rft_run["sft"]
    out = run_dir / "rft"
    assert (out / "rft_data.jsonl").read_text() == ""
    assert json.loads((out / "rft_data.jsonl.stats.json").read_text()) == stats
    assert json.loads((out / "summary.json").read_text()) == rft_run
    # Sampled in one chunk (rft.chunk_items 512), written as a shard with every trajectory, right or wrong.
    assert rft_run["sampling"] == {"chunks": 1, "sampled": [0], "reused": [], "complete": True}
    lines = [json.loads(x) for x in (out / "samples" / "chunk-00000.jsonl").read_text().splitlines()]
    assert [(len(x["plain"]), len(x["hinted"]), x["kept"], x["kept_hinted"]) for x in lines] == [(2, 1, [], [])] * 3
    assert json.loads((out / "samples" / "manifest.json").read_text())["done"]["0"]["items"] == 3

    model, tok = load_model(out / "model")  # what `spct score --model run_dir/rft/model` does
    reference, byte_tok = load_model("tiny-random")
    assert all(np.array_equal(a, b) for a, b in zip(params(model), params(reference)))  # unchanged
    assert isinstance(from_pretrained(out / "model"), type(model))
    text = "Judge these responses: héllo <eos> 🙂\n"
    chat = [{"role": "user", "content": text}]
    assert tok.encode_chat(chat) == byte_tok.encode_chat(chat) and tok.stop_ids == byte_tok.stop_ids
    assert tok.decode(list(range(ByteTokenizer().vocab_size))) == byte_tok.decode(list(range(263)))


def test_rft_rerun_reuses_the_sampled_dataset(run_dir, rft_run):
    code, out, err = call(rft_cli.main, f"--config.run_dir={run_dir}")
    assert code == 0, err
    again = json.loads(out)
    assert again["reused_dataset"] is True and again["rft_stats"] == rft_run["rft_stats"]


def test_rft_refuses_to_resume_samples_drawn_with_other_settings(run_dir, rft_run, tmp_path):
    shutil.copytree(run_dir / "rft" / "samples", tmp_path / "rft" / "samples")  # no rft_data.jsonl: resumes
    code, out, err = call(rft_cli.main, f"--config.run_dir={tmp_path}", "--config.rft.n_rft=3")
    assert code == 2 and out == ""
    assert "manifest.json" in err and "n_rft: 2 there, 3 now" in err and "delete" in err


def test_rft_sft_on_general_data_when_no_trajectory_is_accepted(run_dir, rft_run, tmp_path):
    (tmp_path / "rft").mkdir()
    for name in ("rft_data.jsonl", "rft_data.jsonl.stats.json"):  # reuse the sampled (empty) dataset
        shutil.copy(run_dir / "rft" / name, tmp_path / "rft" / name)
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}."}], "target": w}) + "\n"
                               for w in ("yes", "no")))
    code, out, err = call(rft_cli.main, f"--config.run_dir={tmp_path}", f"--config.rft.general_data={general}")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sft_records"] == {"rft": 0, "general": 2}
    assert summary["sft"]["steps"] == 1 and np.isfinite(summary["sft"]["final_metrics"]["loss"])
    assert (tmp_path / "rft" / "train" / "checkpoints").is_dir()
    trained, _ = load_model(tmp_path / "rft" / "model")
    reference, _ = load_model("tiny-random")
    assert not all(np.array_equal(a, b) for a, b in zip(params(trained), params(reference)))


def test_grpo_from_the_rft_model(run_dir, grpo_run):
    assert grpo_run["steps"] == 1 and grpo_run["preempted"] is False
    m = grpo_run["final_metrics"]
    # All rollouts fail to parse: reward -1 everywhere, every group has zero variance (no policy signal).
    assert m["reward_mean"] == -1.0 and m["zero_variance_groups"] == 1.0 and m["parse_failure_rate"] == 1.0
    assert np.isfinite(m["loss"]) and np.isfinite(m["kl_mean"])
    assert (run_dir / "grpo" / "train" / "metrics.jsonl").is_file()
    # The too-easy filter ([P] App. C.1, on by default) sampled 3 per item with the init checkpoint; a random model
    # gets none right, so nothing is removed. The result is cached for a rerun.
    f = grpo_run["too_easy_filter"]
    assert f["enabled"] and f["items"] == 3 and f["samples"] == 3 and f["too_easy"] == 0 and f["kept"] == 3
    cached = json.loads((run_dir / "grpo" / "too_easy_filter.json").read_text())
    assert cached["kept"] == [0, 1, 2] and cached["report"] == f
    policy, tok = load_model(run_dir / "grpo" / "model")
    assert tok.vocab_size == ByteTokenizer().vocab_size
    assert policy.config.num_layers == 2


def test_metarm_guiding_the_grpo_model(run_dir, grpo_run):
    code, out, err = call(metarm_cli.main, f"--config.run_dir={run_dir}",
                          f"--config.model.init_checkpoint={run_dir / 'grpo' / 'model'}")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["items_train"] == 2 and summary["items_held_out"] == 1  # holdout_fraction 0.34 of 3 items
    train, held = summary["balance"]["train"], summary["balance"]["held_out"]
    assert train["positives"] + train["negatives"] == 2 * 2 and held["positives"] + held["negatives"] == 2
    assert summary["held_out"]["n"] == 2 and summary["held_out"]["auc"] is None  # one class only: undefined
    assert 0 <= summary["held_out"]["accuracy"] <= 1
    rm = load_scalar_rm(run_dir / "metarm" / "model")
    scores = rm(np.array([[5, 6, 7, 8]], np.int32), np.ones((1, 4), np.int32))
    assert scores.shape == (1,) and np.isfinite(np.asarray(scores)).all()
    assert (run_dir / "metarm" / "model" / "tokenizer.json").is_file()


def test_holdout_split_is_by_item_and_seeded():
    train, held = metarm_cli.holdout_split(10, 0.1, seed=0)
    assert len(held) == 1 and sorted(train + held) == list(range(10))
    assert metarm_cli.holdout_split(10, 0.1, seed=0) == (train, held)
    assert metarm_cli.holdout_split(1, 0.5, seed=0) == ([0], [])


@pytest.mark.parametrize("override, names", [
    ("--config.rft.nope=1", "rft.nope"),  # unknown key
    ("--config.rft.steps=many", "rft.steps"),  # wrong type
    ("--config.grpo.group_size=1", "grpo.group_size"),  # valid type, fails the config's own validation
])
def test_bad_override_exits_2_naming_the_key(override, names):
    code, out, err = call(rft_cli.main, override)
    assert code == 2 and names in err and out == ""


@pytest.mark.parametrize("main", [rft_cli.main, grpo_cli.main, metarm_cli.main])
def test_empty_init_checkpoint_is_a_clear_error(main, tmp_path):
    code, _, err = call(main, f"--config.run_dir={tmp_path}", "--config.model.init_checkpoint=")
    assert code == 2 and "model.init_checkpoint" in err and "empty" in err


def test_missing_init_checkpoint_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_model"
    code, _, err = call(grpo_cli.main, f"--config.run_dir={tmp_path}", f"--config.model.init_checkpoint={missing}")
    assert code == 1 and "model.init_checkpoint" in err and str(missing) in err


def test_spct_dispatches_and_fails_on_a_bad_override(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "spct_jax.cli", "metarm", "--config", TINY, "--config.metarm.nope",
                           "3"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "metarm.nope" in proc.stderr


def test_split_overrides_accepts_both_spellings():
    assert split_overrides(["--config", "c.py", "--config.a.b=1", "--config.c", "x"]) == (
        ["--config.a.b=1", "--config.c=x"], ["--config", "c.py"])


def test_metarm_likelihood_head_is_saved_and_loaded_by_what_the_folder_says(run_dir, grpo_run, tmp_path):
    """`--config.metarm.head=likelihood`: scale and bias fit on the same stored samples (the sampling is resumed,
    not redone), a likelihood_meta_rm.json naming the LM, and the judge loader picks that head from the folder."""
    from spct_jax.grm.judge import load_judge
    from spct_jax.grm.likelihood_meta_rm import LikelihoodMetaRM

    grpo_model = run_dir / "grpo" / "model"
    code, out, err = call(metarm_cli.main, f"--config.run_dir={run_dir}", f"--config.model.init_checkpoint={grpo_model}",
                          "--config.metarm.head=likelihood")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["head"] == "likelihood" and summary["fit"]["examples"] == 2 * 2
    assert summary["balance"]["held_out"]["positives"] + summary["balance"]["held_out"]["negatives"] == 2
    folder = run_dir / "metarm" / "model"
    saved = json.loads((folder / "likelihood_meta_rm.json").read_text())
    assert saved["lm"] == str(grpo_model.resolve()) and saved["template"] == "default"
    assert not (folder / "config.json").exists()  # the last-token head's folder was replaced, not mixed in
    grm = load_judge(str(grpo_model), str(folder), template="toy")
    assert isinstance(grm.meta_rm, LikelihoodMetaRM) and grm.meta_rm.lm is grm.model  # same checkpoint: shared
    assert (grm.meta_rm.scale, grm.meta_rm.bias) == (saved["scale"], saved["bias"])
    code, _, err = call(metarm_cli.main, f"--config.run_dir={tmp_path}", "--config.metarm.head=mean_pool")
    assert code == 2 and "metarm.head" in err
