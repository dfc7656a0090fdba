"""A damaged checkpoint or run folder ends a stage with one line naming it, not a tensorstore traceback.

A truncated orbax step names its folder and the older steps that remain (and how to resume from them); run_dir
pointing at a file is refused before the runtime starts. Both through the stages' entry point (`run_cli`).
"""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from spct_jax.models import ModelConfig, init_model
from spct_jax.train.checkpoint import CheckpointError, Checkpointer
from spct_jax.train.config import OptimizerConfig
from spct_jax.train.stage_common import StageError, run_cli
from spct_jax.train.state import create_train_state

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "tiny_cpu.py")
TINY = ModelConfig(family="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16)
OPT = OptimizerConfig(learning_rate=3e-3, warmup_steps=3, schedule="cosine", total_steps=14)


@pytest.fixture(scope="module")
def state():
    return create_train_state(init_model(TINY, seed=0), OPT, seed=0)[1]


def save_steps(directory: Path, state, steps: list[int]) -> None:
    with Checkpointer(directory, keep=5) as ckpt:
        for s in steps:
            ckpt.save(s, state, {"index": s})
            ckpt.wait()


def truncate_biggest_file(step_dir: Path) -> None:
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 10)


def test_a_truncated_step_names_its_folder_and_the_older_steps(tmp_path, state):
    save_steps(tmp_path, state, [1, 2])
    truncate_biggest_file(tmp_path / "2")
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointError) as e:
        ckpt.restore(state)
    msg = str(e.value)
    assert isinstance(e.value, StageError) and e.value.exit_code == 1
    assert "\n" not in msg and len(msg) < 600, msg
    assert msg.startswith(f"{tmp_path / '2'}: checkpoint step 2 cannot be restored"), msg
    assert "older steps [1] remain" in msg and "resume from step 1" in msg and "TensorStore({" not in msg, msg
    # Doing what it says works: with step 2 moved away, step 1 restores.
    shutil.move(tmp_path / "2", tmp_path.parent / "moved-step-2")
    with Checkpointer(tmp_path) as ckpt:
        _, position = ckpt.restore(state)
    assert position == {"index": 1}


def test_the_stage_command_prints_one_line_and_exits_1(tmp_path, state):
    ckpt_dir = tmp_path / "checkpoints"
    save_steps(ckpt_dir, state, [3])
    truncate_biggest_file(ckpt_dir / "3")

    def run(config, mesh):  # a stage whose resume meets the damaged step
        with Checkpointer(ckpt_dir) as ckpt:
            ckpt.restore(state)
        return {}

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_cli("spct rft", ["--config", TINY_CONFIG, f"--config.run_dir={tmp_path / 'run'}"], "", run)
    lines = [x for x in err.getvalue().splitlines() if "error" in x]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    assert f"{ckpt_dir / '3'}: checkpoint step 3 cannot be restored" in lines[0]
    assert f"no older step remains: delete {ckpt_dir}" in lines[0]


@pytest.mark.parametrize("below", ["", "sub/run"])
def test_a_run_dir_that_is_a_file_exits_2_before_anything_starts(tmp_path, below):
    from spct_jax.train import rft_cli

    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    run_dir = a_file / below if below else a_file
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = rft_cli.main(["--config", TINY_CONFIG, f"--config.run_dir={run_dir}"])
    assert code == 2, err.getvalue()
    [line] = err.getvalue().strip().splitlines()
    assert f"config field 'run_dir': {a_file} is a file, not a folder" in line
    assert a_file.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]
