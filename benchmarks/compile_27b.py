"""The real 27B programs, compiled without allocating: per-device memory from XLA next to `spct plan`'s figure.

    python benchmarks/compile_27b.py [--config configs/gemma2_27b_v5p.py] [--backend cpu|tpu] [--phases ...]

Each phase's program (spct_jax/parallel/plan_xla.py: the library's own jitted train step, log-prob pass and
sampler, at the config's shapes, with every input a jax.ShapeDtypeStruct carrying the rules' sharding) is lowered
and compiled for the config's mesh, and `compiled.memory_analysis()` gives XLA's per-device bytes: arguments +
outputs + temporaries - aliased (a donated buffer counted once). Nothing is allocated.

  --backend cpu   the CPU compiler on fake devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set here
                  before jax is imported): the same SPMD partitioning, but the CPU backend upcasts bf16 dots to
                  f32 and schedules for a CPU, so its temporaries are not a TPU's.
  --backend tpu   the TPU compiler (libtpu, no TPU needed) for the topology of the config's slice, e.g.
                  v5p:4x4x2 for a v5p-64: `jax.experimental.topologies.get_topology_desc`. Run with libtpu on
                  the path (`pip install --target DIR libtpu`, PYTHONPATH=DIR) and JAX_PLATFORMS=cpu.

The table compares the program alone (the planner's program part: its weight and optimizer arguments plus what
the program adds, plan_phases.py) with XLA's figure; the phase column adds the arrays the stage holds around the
program (exact sizes), as `spct plan` prints it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOPOLOGIES = {"v5p-64": "v5p:4x4x2", "v5p-16": "v5p:2x2x2", "v5p-8": "v5p:2x2x1", "v5litepod-16": "v5e:4x4"}
PHASES = ("sft", "grpo_update", "grpo_reference", "grpo_rollout", "rft_sampling", "inference")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "gemma2_27b_v5p.py"))
    ap.add_argument("--backend", choices=("cpu", "tpu"), default="cpu")
    ap.add_argument("--phases", default="sft,grpo_update,grpo_rollout")
    ap.add_argument("--override", action="append", default=[], help="--config.KEY=VALUE, repeatable")
    args = ap.parse_args()

    from spct_jax.config_files import load_config
    from spct_jax.parallel.mesh import MeshConfig, parse_accelerator

    config = load_config(args.config, args.override)
    accel = parse_accelerator(config.hardware.accelerator_type)
    shape = MeshConfig.from_mapping(config.mesh).resolve(accel.chips)
    if args.backend == "cpu":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={accel.chips}").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    from spct_jax.models.config import PRESETS
    from spct_jax.parallel import plan_xla
    from spct_jax.parallel.mesh import AXES, make_mesh
    from spct_jax.parallel.plan import plan

    if args.backend == "cpu":
        mesh = make_mesh(MeshConfig(*shape))
        device = f"{len(jax.devices())} fake CPU devices"
    else:
        from jax.experimental import topologies

        topo = topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[accel.name])
        mesh = Mesh(np.asarray(topo.devices).reshape(shape), AXES,
                    axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))
        device = f"TPU compiler, topology {TOPOLOGIES[accel.name]} ({len(topo.devices)} chips)"

    p = plan(config, search_smallest=False)
    m = PRESETS[config.model.preset]
    compute, param = jnp.dtype(config.model.compute_dtype), jnp.dtype(config.model.param_dtype)
    r, g, inf = config.rft, config.grpo, config.inference
    seq = g.max_prompt_len + g.max_new_tokens
    programs = {
        "sft": lambda: plan_xla.train_step_call(m, mesh, "sft", rows=r.batch_size, seq=r.max_seq_len,
                                                microbatches=r.num_microbatches, compute_dtype=compute,
                                                param_dtype=param, remat=config.model.remat),
        "grpo_update": lambda: plan_xla.train_step_call(m, mesh, "grpo", rows=g.batch_size, seq=seq,
                                                        microbatches=g.num_microbatches, compute_dtype=compute,
                                                        param_dtype=param, remat=config.model.remat),
        "grpo_reference": lambda: plan_xla.logprob_call(m, mesh, rows=g.batch_size, block_rows=g.logprob_rows,
                                                        seq=seq, dtype=jnp.dtype(g.ref_dtype)),
        "grpo_rollout": lambda: plan_xla.sampler_call(
            m, mesh, rows=min(g.rollout_batch_prompts, g.batch_size // g.group_size) * g.group_size,
            prompt_len=g.max_prompt_len, new_tokens=g.max_new_tokens, dtype=compute),
        "rft_sampling": lambda: plan_xla.sampler_call(m, mesh, rows=r.sample_rows,
                                                      prompt_len=r.max_seq_len - r.max_new_tokens,
                                                      new_tokens=r.max_new_tokens, dtype=compute),
        "inference": lambda: plan_xla.sampler_call(m, mesh, rows=inf.batch_prompts * inf.k,
                                                   prompt_len=inf.max_prompt_len, new_tokens=inf.max_new_tokens,
                                                   dtype=jnp.dtype(inf.dtype)),
    }
    gb = 1e9
    print(f"{config.name}: {config.model.preset}, mesh {dict(zip(AXES, shape))}, remat={config.model.remat}, "
          f"compute {compute.name}; {device}; jax {jax.__version__}")
    print("| phase | planner program GB/chip | compiled GB/chip | difference | planner phase GB/chip | compiled "
          "+ resident GB/chip | arguments / outputs / temporaries / aliased GB | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.phases.split(","):
        ph = p.phase(name)
        t0 = time.perf_counter()
        try:
            mem = plan_xla.memory_bytes(programs[name]())
        except Exception as e:  # noqa: BLE001 - a phase the backend cannot compile is reported, not fatal
            print(f"| {name} | {ph.program_bytes / gb:.2f} | failed: {type(e).__name__}: {str(e)[:200]} | | "
                  f"{ph.peak_bytes / gb:.2f} | | | {time.perf_counter() - t0:.0f} |", flush=True)
            continue
        secs = time.perf_counter() - t0
        planned, xla = ph.program_bytes, mem["total"]
        resident = ph.peak_bytes - planned
        print(f"| {name} | {planned / gb:.2f} | {xla / gb:.2f} | {(planned - xla) / xla:+.1%} | "
              f"{ph.peak_bytes / gb:.2f} | {(xla + resident) / gb:.2f} | "
              f"{mem['arguments'] / gb:.2f} / {mem['outputs'] / gb:.2f} / {mem['temporaries'] / gb:.2f} / "
              f"{mem['aliased'] / gb:.2f} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
