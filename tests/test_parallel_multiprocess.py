"""Real multi-process JAX: two processes on localhost (4 fake CPU devices each) run RFT (SFT) steps on one global
(2, 2, 2) mesh, each feeding only its own rows, and reach the one-process result."""
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import os, sys
    out_path = sys.argv[1]
    import jax, numpy as np
    from jax.experimental import multihost_utils
    from spct_jax.models import ModelConfig, init_model
    from spct_jax.parallel import (MeshConfig, host_local_to_global, initialize_distributed, make_mesh,
                                   param_shardings)
    from spct_jax.parallel.rules import named_leaves
    from spct_jax.train.config import OptimizerConfig
    from spct_jax.train.state import create_train_state
    from spct_jax.train.steps import make_sft_step

    setup = initialize_distributed()  # SPCT_COORDINATOR / SPCT_NUM_PROCESSES / SPCT_PROCESS_ID, or one process
    cfg = ModelConfig(family="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, tie_embeddings=False)
    opt = OptimizerConfig(learning_rate=1e-3)
    graphdef, state = create_train_state(init_model(cfg, seed=0), opt, seed=0)  # same seed: same init everywhere

    rng = np.random.default_rng(0)  # every process draws the same global batches, then keeps its own rows
    batches = []
    for _ in range(2):
        ids = rng.integers(1, 128, (16, 12)).astype(np.int32)
        mask = (np.arange(12)[None, :] < rng.integers(6, 13, 16)[:, None]).astype(np.int32)
        loss_mask = mask.astype(np.float32)
        loss_mask[:, :3] = 0
        batches.append({"input_ids": ids * mask, "attention_mask": mask, "loss_mask": loss_mask})

    if setup.mode == "single":
        step = make_sft_step(graphdef, optimizer=opt, chunk=4)  # one device: the reference
    else:
        assert jax.process_count() == 2 and jax.local_device_count() == 4 and jax.device_count() == 8
        mesh = make_mesh(MeshConfig(2, 2, 2))
        step = make_sft_step(graphdef, optimizer=opt, chunk=4, mesh=mesh,
                             param_shardings=param_shardings(mesh, state.params))
    state = step.place(state)
    losses = []
    n, pid = jax.process_count(), jax.process_index()
    for batch in batches:
        if setup.mode != "single":
            rows = 16 // n
            batch = host_local_to_global({k: v[pid * rows:(pid + 1) * rows] for k, v in batch.items()}, mesh)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"].addressable_data(0)))  # replicated; reading it syncs every step
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if pid == 0:
        np.savez(out_path, losses=np.asarray(losses), **{k: np.asarray(v) for k, v in named_leaves(params)})
    print("WORKER_DONE", pid, losses, flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPCT_")}
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **extra}


@pytest.mark.timeout(600)
def test_two_processes_match_one_process(tmp_path):
    port = _free_port()
    workers = []
    for pid in range(2):
        env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=4", SPCT_COORDINATOR=f"127.0.0.1:{port}",
                   SPCT_NUM_PROCESSES="2", SPCT_PROCESS_ID=str(pid))
        workers.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "multi.npz")], cwd=ROOT,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for w in workers:
            outputs.append(w.communicate(timeout=400))
    finally:
        for w in workers:  # a hung collective must not outlive the test
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0 and "WORKER_DONE" in out, out[-2000:] + err[-4000:]

    single = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "single.npz")], cwd=ROOT,
                            env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=1"), capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-4000:]

    multi, ref = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert sorted(multi.files) == sorted(ref.files) and len(ref.files) > 10
    np.testing.assert_allclose(multi["losses"], ref["losses"], rtol=1e-5)
    worst = max(float(np.max(np.abs(multi[k] - ref[k]))) for k in ref.files if k != "losses")
    assert worst <= 1e-5, worst
