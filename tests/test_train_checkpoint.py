"""Checkpoints: bit-exact round trip, exact resume after SIGKILL, SIGTERM saves and exits 0.

The killed / preempted runs are child processes running this file as a script (`child_main`): a tiny SFT loop
through `run_training`, slowed by a sleep per batch so that signals land mid-training.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from spct_jax.models import ModelConfig, init_model  # noqa: E402
from spct_jax.train.checkpoint import Checkpointer  # noqa: E402
from spct_jax.train.config import LoopConfig, OptimizerConfig  # noqa: E402
from spct_jax.train.loop import epoch_batches, run_training  # noqa: E402
from spct_jax.train.metrics import read_jsonl_metrics  # noqa: E402
from spct_jax.train.state import create_train_state  # noqa: E402
from spct_jax.train.steps import make_sft_step  # noqa: E402

TINY = ModelConfig(family="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16)
OPT = OptimizerConfig(learning_rate=3e-3, warmup_steps=3, schedule="cosine", total_steps=14)
NUM_EXAMPLES, BATCH = 40, 4  # 10 batches an epoch: the runs below cross an epoch boundary


def child_main(workdir: str, total_steps: int, checkpoint_every: int, delay: float) -> None:
    graphdef, state = create_train_state(init_model(TINY, seed=0), OPT, seed=0)
    step = make_sft_step(graphdef, optimizer=OPT, chunk=8)
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, (NUM_EXAMPLES, 16)).astype(np.int32)

    def get_batch(idx: np.ndarray) -> dict:
        time.sleep(delay)
        x = ids[idx]
        return {"input_ids": x, "attention_mask": np.ones_like(x), "loss_mask": np.ones(x.shape, np.float32)}

    cfg = LoopConfig(workdir=workdir, total_steps=total_steps, checkpoint_every=checkpoint_every, keep_checkpoints=2,
                     progress_bar=False)
    result = run_training(step, step.place(state), epoch_batches(NUM_EXAMPLES, BATCH, seed=0, get_batch=get_batch),
                          config=cfg)
    print("DONE", json.dumps({"step": result.step, "preempted": result.preempted,
                              "position": result.data_position}), flush=True)


def spawn(workdir, total_steps, checkpoint_every, delay, cache_dir):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(workdir), str(total_steps),
                             str(checkpoint_every), str(delay)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def records(workdir) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    return len(read_jsonl_metrics(path)) if os.path.exists(path) else 0


def wait_for_records(proc, workdir, n, timeout=120.0):
    end = time.time() + timeout
    while records(workdir) < n:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < end, "child made no progress"
        time.sleep(0.05)


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.split("DONE", 1)[1])


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    graphdef, state = create_train_state(init_model(TINY, seed=3), OPT, seed=7)
    step = make_sft_step(graphdef, optimizer=OPT, chunk=8)
    state = step.place(state)
    ids = np.random.default_rng(0).integers(0, 256, (4, 8)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones(ids.shape, np.float32)}
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for i in range(3):
            state, _ = step(state, batch)
            state = state.replace(rng=jax.random.split(state.rng)[0])
            ckpt.save(i + 1, state, {"epoch": 0, "index": i + 1})
            saved = jax.device_get(state)  # host copy: the next step donates `state`
        ckpt.wait()
        assert ckpt.manager.all_steps() == [2, 3]  # keep-N
        restored, position = ckpt.restore(state)
    assert position == {"epoch": 0, "index": 3}
    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(np.asarray(a), np.asarray(b))
    # The restored state trains on: it has the step's shardings.
    state, metrics = step(restored, batch)
    assert int(state.step) == 4 and np.isfinite(float(metrics["loss"]))


def test_params_reader_reads_one_saved_param_at_a_time(tmp_path):
    """What `spct export` reads: the params of a step alone, by path, bit-exact, without the optimizer state."""
    from flax import nnx

    from spct_jax.train.checkpoint import ParamsReader

    _, state = create_train_state(init_model(TINY, seed=3), OPT, seed=7)
    with Checkpointer(tmp_path, keep=2) as ckpt:
        ckpt.save(4, state, {"epoch": 0, "index": 4})
    params = dict(nnx.to_flat_state(state.params))
    with ParamsReader(tmp_path) as reader:
        assert reader.step == 4
        shapes = reader.shapes()
        assert sorted(map(str, shapes)) == sorted(map(str, params)) and len(shapes) == 2 + 9  # blocks stacked
        assert shapes[("layers", "mlp", "down_proj", "kernel")][0][0] == TINY.num_layers
        for path in [("embed",), ("layers", "mlp", "down_proj", "kernel"), ("final_norm", "scale")]:
            assert shapes[path] == (tuple(params[path].shape), np.dtype(np.float32))
            assert np.array_equal(np.asarray(reader.read(path)), np.asarray(params[path][...]))
    with pytest.raises(FileNotFoundError, match="no checkpoint step 9"):
        ParamsReader(tmp_path, step=9)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # A persistent compilation cache shared by the children: only the first one compiles the step.
    return tmp_path_factory.mktemp("jax_cache")


@pytest.mark.timeout(400)
def test_resume_after_sigkill_repeats_the_uninterrupted_losses(tmp_path, cache_dir):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    total = 14
    finish(spawn(straight, total, 1, 0.0, cache_dir))
    b = spawn(killed, total, 1, 0.25, cache_dir)
    wait_for_records(b, killed, 6)
    b.send_signal(signal.SIGKILL)
    b.wait(timeout=30)
    logged_before = records(killed)
    assert logged_before < total, "the run finished before it was killed"
    lines_before = open(killed / "metrics.jsonl").read().count("\n")
    done = finish(spawn(killed, total, 1, 0.0, cache_dir))
    assert done == {"step": total, "preempted": False, "position": {"epoch": 1, "index": 4}}
    first_resumed = json.loads(open(killed / "metrics.jsonl").read().splitlines()[lines_before])["step"]
    assert 0 < first_resumed <= logged_before  # it resumed from a checkpoint, not from scratch
    want, got = read_jsonl_metrics(straight / "metrics.jsonl"), read_jsonl_metrics(killed / "metrics.jsonl")
    assert sorted(want) == sorted(got) == list(range(total))
    for s in range(total):
        for k in ("loss", "grad_norm", "lr"):
            assert got[s][k] == want[s][k], (s, k, got[s][k], want[s][k])


@pytest.mark.timeout(300)
def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path, cache_dir):
    work = tmp_path / "run"
    proc = spawn(work, 1000, 1000, 0.2, cache_dir)  # no periodic checkpoint would happen
    wait_for_records(proc, work, 3)
    proc.send_signal(signal.SIGTERM)
    done = finish(proc, timeout=120)
    assert done["preempted"] and proc.returncode == 0
    last_logged = max(read_jsonl_metrics(work / "metrics.jsonl"))
    with Checkpointer(work / "checkpoints") as ckpt:
        assert ckpt.latest_step() == done["step"] == last_logged + 1
        template = create_train_state(init_model(TINY, seed=0), OPT, seed=0)[1]
        state, position = ckpt.restore(template)
    assert int(state.step) == done["step"]
    assert position == done["position"] == {"epoch": done["step"] // 10, "index": done["step"] % 10}


if __name__ == "__main__":
    child_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
