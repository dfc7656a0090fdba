"""Real multi-process JAX: two processes on localhost (4 fake CPU devices each, gloo collectives).

- RFT (SFT) steps on one global (2, 2, 2) mesh, each process feeding only its own rows, reach the one-process result.
- The stage drivers (SFT, meta-RM BCE through the shared loop) with per-host feeding (`HostFeed`) reach the
  one-process params and losses on a mesh where the processes' rows interleave.
- `spct rft`, `spct grpo` and `spct metarm` chained on two processes give the one-process trajectories, losses
  and exported weights.
- A SIGTERM delivered to one process stops both after the same step, with one checkpoint of that step.
- Sampling with its rows split over both processes returns the one-process tokens on every process.
Every process runs under a timeout: a hung collective must fail the test, not hang it."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

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


# -- the stage drivers with per-host feeding ---------------------------------------------------------------------
STAGES_WORKER = textwrap.dedent("""
    import os, sys
    import numpy as np
    out_dir, layout, stages = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    import jax
    from spct_jax.parallel import HostFeed, MeshConfig, initialize_distributed, make_mesh
    initialize_distributed()  # SPCT_* variables, or one process
    from flax import nnx
    from jax.experimental import multihost_utils
    from spct_jax.data.batching import SFTRecord
    from spct_jax.models.registry import load_model
    from spct_jax.models.scalar_head import ScalarRM
    from spct_jax.parallel.mesh import AXES
    from spct_jax.parallel.rules import named_leaves
    from spct_jax.train.config import OptimizerConfig
    from spct_jax.train.metarm import MetaRMExample
    from spct_jax.train.metrics import read_jsonl_metrics
    from spct_jax.train.stages import StageRun, sft, train_metarm

    mesh = None  # layout "single": one process, one device, no mesh (the reference)
    if layout == "blocks":  # make_mesh's order; tensor=1 because tiny-random's 263-token vocabulary cannot split
        mesh = make_mesh(MeshConfig(2, 4, 1))
    elif layout == "interleaved":  # the processes' devices alternate, so each process holds every other row block
        mine = lambda p: [d for d in jax.devices() if d.process_index == p]
        order = [d for pair in zip(mine(0), mine(1)) for d in pair]
        auto = jax.sharding.AxisType.Auto
        mesh = jax.sharding.Mesh(np.array(order).reshape(1, 8, 1), AXES, axis_types=(auto,) * 3)
    if mesh is not None:
        assert jax.process_count() == 2 and jax.device_count() == 8
        feed = HostFeed(mesh)
        want = {"blocks": [[0, 1, 2, 3], [4, 5, 6, 7]], "interleaved": [[0, 2, 4, 6], [1, 3, 5, 7]]}[layout]
        assert feed.rows(8).tolist() == want[jax.process_index()], feed.rows(8)
        # Each process builds only its rows of a known batch; together they are that batch, in order.
        full = np.arange(8 * 3).reshape(8, 3)
        assembled = feed.to_global({"x": full[feed.rows(8)]}, 8)["x"]
        assert (multihost_utils.process_allgather(assembled, tiled=True) == full).all()

    model, tok = load_model("tiny-random")
    opt = OptimizerConfig(learning_rate=1e-3, total_steps=3)

    def run(name, steps):
        return StageRun(workdir=os.path.join(out_dir, name), steps=steps, batch_size=8, optimizer=opt, seed=0,
                        progress_bar=False, mesh=mesh)

    rng = np.random.default_rng(0)  # every process draws the same data
    records = [SFTRecord(uid=str(i), messages=[{"role": "user", "content": "q" * int(rng.integers(3, 40))}],
                         target="a" * int(rng.integers(2, 30))) for i in range(24)]
    examples = [MetaRMExample(uid=str(i), ids=tuple(int(t) for t in rng.integers(3, 200, rng.integers(5, 90))),
                              label=float(rng.random() < 0.5), origin="guided") for i in range(24)]
    trained = {}
    trained["sft"], _ = sft(model, tok, records, run("sft", 3), max_len=128)
    if "metarm" in stages:
        trained["metarm"], _ = train_metarm(ScalarRM.from_decoder(trained["sft"], seed=1), examples, run("metarm", 3),
                                            pad_id=tok.pad_id)
    out = {}
    for name, module in trained.items():
        params = multihost_utils.process_allgather(nnx.state(module, nnx.Param), tiled=True)
        out.update({f"{name}/{k}": np.asarray(v) for k, v in named_leaves(params)})
    if jax.process_index() == 0:
        for name in trained:
            recs = read_jsonl_metrics(os.path.join(out_dir, name, "metrics.jsonl"))
            out[f"{name}:loss"] = np.asarray([recs[s]["loss"] for s in sorted(recs)])
        np.savez(os.path.join(out_dir, "result.npz"), **out)
    print("WORKER_DONE", jax.process_index(), flush=True)
""")


def _start_two(script: str, *args: str) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4",
                                      SPCT_COORDINATOR=f"127.0.0.1:{port}", SPCT_NUM_PROCESSES="2",
                                      SPCT_PROCESS_ID=str(pid)))
            for pid in range(2)]


def _finish(workers: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each worker's stdout after asserting it exited 0; kills any still running (a hung collective)."""
    outputs = []
    try:
        for w in workers:
            outputs.append(w.communicate(timeout=timeout))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, out[-2000:] + err[-4000:]
    return [out for out, _ in outputs]


def _max_diffs(got, ref, stage: str) -> tuple[float, float]:
    """(max |loss difference|, max |param difference|) of one stage."""
    keys = [k for k in ref.files if k.startswith(stage + "/")]
    assert keys and sorted(k for k in got.files if k.startswith(stage + "/")) == sorted(keys)
    loss = float(np.max(np.abs(got[f"{stage}:loss"] - ref[f"{stage}:loss"])))
    return loss, max(float(np.max(np.abs(got[k] - ref[k]))) for k in keys)


@pytest.mark.timeout(900)
def test_stage_drivers_with_per_host_feeding_match_one_process(tmp_path):
    """SFT and the meta RM's BCE on a mesh whose processes' devices alternate, so each process feeds every other
    row block (HostFeed's general case). The contiguous "blocks" layout, GRPO included, is what the stage commands
    use and is checked end to end by test_stage_commands_on_two_processes_match_one_process."""
    single = subprocess.run([sys.executable, "-c", STAGES_WORKER, str(tmp_path / "single"), "single",
                             "sft,metarm"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=1"))
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-4000:]
    ref = np.load(tmp_path / "single" / "result.npz")

    _finish(_start_two(STAGES_WORKER, str(tmp_path / "interleaved"), "interleaved", "sft,metarm"), timeout=400)
    interleaved = np.load(tmp_path / "interleaved" / "result.npz")
    for stage in ("sft", "metarm"):
        assert len(ref[f"{stage}:loss"]) == 3
        loss, params = _max_diffs(interleaved, ref, stage)
        print(f"interleaved {stage}: max |loss diff| {loss:.3g}, max |param diff| {params:.3g}")
        assert loss <= 1e-5 * max(1.0, float(np.max(np.abs(ref[f"{stage}:loss"])))), (stage, loss)
        assert params <= 1e-5, (stage, params)


# -- SIGTERM on one host stops every host at the same step --------------------------------------------------------
SIGTERM_WORKER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    workdir = sys.argv[1]
    import jax
    from spct_jax.parallel import HostFeed, MeshConfig, initialize_distributed, make_mesh, param_shardings
    initialize_distributed()
    from spct_jax.models import ModelConfig, init_model
    from spct_jax.train.config import LoopConfig, OptimizerConfig
    from spct_jax.train.loop import epoch_batches, run_training
    from spct_jax.train.state import create_train_state
    from spct_jax.train.steps import make_sft_step

    cfg = ModelConfig(family="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=4, num_kv_heads=2, head_dim=8, tie_embeddings=False)
    opt = OptimizerConfig(learning_rate=1e-3)
    mesh = make_mesh(MeshConfig(2, 2, 2))
    graphdef, state = create_train_state(init_model(cfg, seed=0), opt, seed=0)
    step = make_sft_step(graphdef, optimizer=opt, chunk=4, mesh=mesh,
                         param_shardings=param_shardings(mesh, state.params))
    ids = np.random.default_rng(0).integers(1, 128, (64, 12)).astype(np.int32)
    feed = HostFeed(mesh)

    def get_batch(idx):
        time.sleep(0.3)  # slow: the signal lands mid-training
        x = ids[idx[feed.rows(len(idx))]]
        return feed.to_global({"input_ids": x, "attention_mask": np.ones_like(x),
                               "loss_mask": np.ones(x.shape, np.float32)}, len(idx))

    loop = LoopConfig(workdir=workdir, total_steps=500, checkpoint_every=1000, progress_bar=False)
    result = run_training(step, step.place(state), epoch_batches(64, 8, seed=0, get_batch=get_batch), config=loop)
    print("DONE", json.dumps({"process": jax.process_index(), "step": result.step, "preempted": result.preempted}),
          flush=True)
""")


@pytest.mark.timeout(600)
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    workers = _start_two(SIGTERM_WORKER, str(tmp_path))
    metrics = tmp_path / "metrics.jsonl"  # process 0 alone writes it
    end = time.time() + 300
    try:
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert all(w.poll() is None for w in workers), "a worker ended before training"
            assert time.time() < end, "no training progress"
            time.sleep(0.1)
    except AssertionError:
        _finish(workers, timeout=1)
        raise
    workers[1].send_signal(signal.SIGTERM)  # only process 1 is told; process 0 must learn it from the loop
    outs = _finish(workers, timeout=200)
    done = [json.loads(out.split("DONE", 1)[1]) for out in outs]
    assert [d["process"] for d in done] == [0, 1]
    assert done[0]["preempted"] and done[1]["preempted"], done
    assert done[0]["step"] == done[1]["step"], done
    assert 3 <= done[0]["step"] < 500
    # One checkpoint, of that step: both processes wrote their shards of the same save.
    steps = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
    assert steps == [done[0]["step"]], (steps, done)


# -- a stage command end to end on two processes --------------------------------------------------------------------
STAGES_CLI_WORKER = textwrap.dedent("""
    import json, sys
    run_dir, args = sys.argv[1], sys.argv[2:]
    from spct_jax.train import grpo_cli, metarm_cli, rft_cli
    # The three stage commands chained as a user runs them, in one process (jax.distributed is joined once).
    for name, main, init in (("rft", rft_cli.main, "tiny-random"), ("grpo", grpo_cli.main, f"{run_dir}/rft/model"),
                             ("metarm", metarm_cli.main, f"{run_dir}/grpo/model")):
        code = main([*args, f"--config.run_dir={run_dir}", f"--config.model.init_checkpoint={init}"])
        assert code == 0, (name, code)
        print(f"STAGE_DONE {name}", flush=True)
""")


@pytest.mark.timeout(900)
def test_stage_commands_on_two_processes_match_one_process(tmp_path):
    """`spct rft`, `spct grpo` and `spct metarm` chained on configs/tiny_cpu.py: one process on one device, then two
    processes x 4 devices on an fsdp=8 mesh, where every sampling phase (rejective and hinted sampling, the too-easy
    filter, GRPO rollouts, the meta RM's samples) splits its rows over both hosts. The same trajectories (RFT's
    statistics, the filter's report, rollout lengths and parse rates, the meta RM's class balance), the same
    losses, and the same exported weights."""
    from spct_jax.models.registry import load_model
    from spct_jax.parallel.rules import named_leaves
    from flax import nnx

    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}."}], "target": w})
                               + "\n" for w in ("yes", "no", "maybe", "never", "always", "often", "once", "twice")))
    args = ["--config", os.path.join(ROOT, "configs", "tiny_cpu.py"), f"--config.rft.general_data={general}",
            "--config.rft.batch_size=8", "--config.rft.steps=2", "--config.grpo.batch_size=8",
            "--config.grpo.group_size=8", "--config.metarm.batch_size=8", "--config.metarm.n_rft=4"]
    single = subprocess.run([sys.executable, "-c", STAGES_CLI_WORKER, str(tmp_path / "single"), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=400,
                            env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=1"))
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-4000:]
    _finish(_start_two(STAGES_CLI_WORKER, str(tmp_path / "multi"), *args,
                       "--config.hardware.accelerator_type=v5litepod-8", "--config.mesh.fsdp=-1"), timeout=600)

    def summary(name, stage):
        return json.loads((tmp_path / name / stage / "summary.json").read_text())

    one, two = ({s: summary(n, s) for s in ("rft", "grpo", "metarm")} for n in ("single", "multi"))
    assert two["rft"]["rft_stats"] == one["rft"]["rft_stats"] and one["rft"]["rft_stats"]["sampled"] > 0
    drop_path = lambda report: {k: v for k, v in report.items() if k != "checkpoint"}  # noqa: E731 (run-dir paths)
    assert drop_path(two["grpo"]["too_easy_filter"]) == drop_path(one["grpo"]["too_easy_filter"])
    assert two["metarm"]["balance"] == one["metarm"]["balance"]
    for stage in ("rft", "grpo", "metarm"):
        m1 = one[stage]["sft"]["final_metrics"] if stage == "rft" else one[stage]["final_metrics"]
        m2 = two[stage]["sft"]["final_metrics"] if stage == "rft" else two[stage]["final_metrics"]
        for key in ("rollout_length", "parse_failure_rate", "reward_mean", "accuracy"):  # trajectories: exact
            assert m2.get(key) == m1.get(key), (stage, key)
        for key in ("loss", "kl_mean", "grad_norm"):
            if key in m1:
                assert abs(m2[key] - m1[key]) <= 1e-5 * max(1.0, abs(m1[key])), (stage, key, m1[key], m2[key])
    for stage in ("rft", "grpo"):
        ref = dict(named_leaves(nnx.state(load_model(tmp_path / "single" / stage / "model")[0], nnx.Param)))
        got = dict(named_leaves(nnx.state(load_model(tmp_path / "multi" / stage / "model")[0], nnx.Param)))
        assert sorted(got) == sorted(ref) and len(ref) > 10
        worst = max(float(np.max(np.abs(np.asarray(got[k]) - np.asarray(ref[k])))) for k in ref)
        print(f"{stage} command, 2 processes vs 1: max |weight diff| {worst:.3g}")
        assert worst <= 1e-5, (stage, worst)


# -- sampling with rows split over hosts ----------------------------------------------------------------------------
SAMPLING_WORKER = textwrap.dedent("""
    import json, sys
    out_path, layout = sys.argv[1], sys.argv[2]
    import jax, numpy as np
    from spct_jax.parallel import MeshConfig, initialize_distributed, make_mesh, param_shardings
    initialize_distributed()  # SPCT_* variables, or one process
    from flax import nnx
    from spct_jax import sampling
    from spct_jax.models import ModelConfig, init_model
    from spct_jax.parallel.mesh import AXES

    cfg = ModelConfig(family="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, tie_embeddings=False)
    model = init_model(cfg, seed=0)  # same seed: same weights on every process
    rng = np.random.default_rng(0)
    # A repeated prompt: one shared prefill, its own draws. 5 prompts x 2 samples pad to 16 rows.
    prompts = [rng.integers(3, 128, n).tolist() for n in (5, 11, 7, 14)]
    prompts.append(prompts[0])
    mesh = None  # layout "single": one process, one device, no mesh (the reference)
    if layout == "blocks":  # make_mesh's order: process p's devices hold row shards 2p, 2p+1 of ("data", "fsdp")
        mesh = make_mesh(MeshConfig(2, 2, 2))
    elif layout == "interleaved":  # the processes' devices alternate, so each holds every other row shard
        mine = lambda p: [d for d in jax.devices() if d.process_index == p]
        order = [d for pair in zip(mine(0), mine(1)) for d in pair]
        auto = jax.sharding.AxisType.Auto
        mesh = jax.sharding.Mesh(np.array(order).reshape(1, 8, 1), AXES, axis_types=(auto,) * 3)
    kw = {}
    if mesh is not None:
        assert jax.process_count() == 2 and jax.device_count() == 8
        graphdef, state = nnx.split(model)
        model = nnx.merge(graphdef, jax.device_put(state, param_shardings(mesh, state)))  # spans both hosts
        kw = dict(mesh=mesh, data_axis=("data", "fsdp"))
    out = {}
    modes = {"greedy": dict(temperature=0.0), "temperature": dict(temperature=1.0, top_p=0.95, seed=7)}
    for name, args in modes.items():
        got = sampling.sample(model, prompts, num_samples=2, max_new_tokens=6, progress=False, **args, **kw)
        out[name] = {"tokens": got.tokens, "logprobs": got.logprobs}
    with open(f"{out_path}.{jax.process_index()}.json", "w") as f:
        json.dump(out, f)
    print("WORKER_DONE", jax.process_index(), flush=True)
""")


@pytest.mark.timeout(600)
def test_sampling_with_rows_split_over_two_processes_matches_one_process(tmp_path):
    """`sample(mesh=...)` on a mesh over 2 processes x 4 devices (parameters sharded over both hosts, rows over
    ("data", "fsdp")): every process returns the one-process tokens, greedy and at temperature 1.0 with top-p."""
    single = subprocess.run([sys.executable, "-c", SAMPLING_WORKER, str(tmp_path / "single"), "single"], cwd=ROOT,
                            env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=1"), capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-4000:]
    with open(tmp_path / "single.0.json") as f:
        ref = json.load(f)
    assert all(len(s) == 6 for mode in ref.values() for row in mode["tokens"] for s in row)  # no stop tokens

    for layout in ("blocks", "interleaved"):
        _finish(_start_two(SAMPLING_WORKER, str(tmp_path / layout), layout), timeout=300)
        for pid in range(2):
            with open(tmp_path / f"{layout}.{pid}.json") as f:
                got = json.load(f)
            for mode in ("greedy", "temperature"):
                assert got[mode]["tokens"] == ref[mode]["tokens"], (layout, pid, mode)
                worst = max(abs(a - b) for rg, rr in zip(got[mode]["logprobs"], ref[mode]["logprobs"])
                            for sg, sr in zip(rg, rr) for a, b in zip(sg, sr))
                print(f"{layout} process {pid} {mode}: tokens identical, max |log-prob diff| {worst:.3g}")
                assert worst <= 1e-5, (layout, pid, mode, worst)
