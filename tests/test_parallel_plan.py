"""The memory planner and `spct plan`, and the run configs it reads."""
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from spct_jax.models import PRESETS, count_params
from spct_jax.config_files import ConfigFileError, load_config, split_overrides
from spct_jax.parallel.cli import plan_main
from spct_jax.parallel.mesh import AXES
from spct_jax.parallel.plan import CATEGORIES, PHASES, abstract_params, param_count, plan
from spct_jax.parallel.plan_phases import CPU, TPU, MeshShape, sampler_layout, sampler_program
from spct_jax.parallel.rules import named_leaves, param_specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["gemma2_2b_v5e", "gemma2_9b_v5p", "gemma2_27b_v5p"]


def cfg_path(name: str) -> str:
    return os.path.join(ROOT, "configs", f"{name}.py")


def test_planner_on_27b_v5p_is_fast_and_its_weight_bytes_are_exact():
    config = load_config(cfg_path("gemma2_27b_v5p"), ["--config.mesh.tensor=1"])  # pure FSDP: every matrix divides
    t0 = time.perf_counter()
    p = plan(config)  # includes the smallest-slice search
    seconds = time.perf_counter() - t0
    assert seconds < 30, f"planner took {seconds:.1f} s"  # ~1 s uncontended; CI boxes are shared
    count = count_params(PRESETS["gemma2-27b"])  # full nnx.eval_shape of the decoder
    assert p.param_count == count == 27_227_128_320
    assert (p.mesh, p.accelerator.chips) == ({"data": 1, "fsdp": 32, "tensor": 1}, 32)
    shards = p.mesh["fsdp"] * p.mesh["tensor"]
    params = abstract_params(PRESETS["gemma2-27b"], "float32")
    specs = dict(named_leaves(param_specs(AbstractMesh((1, 32, 1), AXES), params)))
    replicated = sum(int(np.prod(x.shape)) for n, x in named_leaves(params) if specs[n] == P())  # the norms
    assert 0 < replicated < 1e-4 * count
    update = p.phase("grpo_update")
    # Every matrix divides evenly: master bytes = (count - replicated norms) x 4 bytes / shards + norms x 4 bytes.
    masters = (count - replicated) * 4 // shards + replicated * 4
    assert update.parts["weight_args"] == p.phase("grpo_rollout").parts["masters"] == masters
    assert update.parts["reference"] == (count - replicated) * 2 // shards + replicated * 2  # bf16 copy
    assert 0 <= update.bytes_per_device["optimizer"] - 2 * masters <= 64  # AdamW mu + nu + step counters
    assert update.bytes_per_device["grads"] == 2 * masters  # fp32 accumulator + one micro-batch's grads
    # Sampling holds the masters and the bf16 sampling copy; with the activations pinned the blocks' weights stay
    # sharded inside the program and only the embedding is gathered whole (the LM head), bf16, on every chip.
    rollout = p.phase("grpo_rollout")
    assert rollout.parts["weight_args"] == update.parts["reference"]  # sampling copy in the compute dtype
    embed = PRESETS["gemma2-27b"].vocab_size * PRESETS["gemma2-27b"].hidden_size * 2
    assert rollout.parts["gathered"] == embed
    assert set(rollout.layouts) == {"pinned"} and rollout.layouts["pinned"] == rollout.peak_bytes
    assert all(p.phase(ph).fits for s in p.stages.values() for ph in s.phases)  # tensor=1 fits too


def test_abstract_params_match_the_full_model_for_every_family():
    for name in ("llama3-8b", "qwen2.5-7b", "gemma2-2b"):
        assert param_count(abstract_params(PRESETS[name], "float32")) == count_params(PRESETS[name]), name
    rm = abstract_params(PRESETS["gemma2-2b"], "bfloat16", scalar_rm=True)
    assert param_count(rm) == count_params(PRESETS["gemma2-2b"]) + PRESETS["gemma2-2b"].hidden_size
    assert {x.dtype for x in jax.tree.leaves(rm)} == {np.dtype("bfloat16")}


def test_sampler_layout_and_kv_cache_follow_the_sampler():
    # 256 rows over 32 shards: 8 prompt slots per shard, each its own prompt (responses shuffled per row).
    assert sampler_layout(256, 32) == (8, 8)
    assert sampler_layout(100, 32) == (4, 4)  # 100 rows pad to 128
    m = PRESETS["gemma2-2b"]
    one = sampler_program(m, MeshShape(1, 16, 1), rows=64, prompt_len=3000, new_tokens=1000, b=2, backend=CPU)
    # k and v, every layer, kv heads x head dim x 2 bytes, per device: prefill cache + taken prefix [4, 4096] and
    # own slots [4, 1024], all live at once on CPU; on TPU the prefill cache is freed before the own slots exist.
    assert one["kv_cache"] == 2 * 26 * 4 * 256 * 2 * (2 * 4 * 4096 + 4 * 1024)
    tpu = sampler_program(m, MeshShape(1, 16, 1), rows=64, prompt_len=3000, new_tokens=1000, b=2, backend=TPU)
    assert tpu["kv_cache"] == 2 * 26 * 4 * 256 * 2 * max(2 * 4 * 4096, 4 * 4096 + 4 * 1024)
    four = sampler_program(m, MeshShape(1, 4, 4), rows=64, prompt_len=3000, new_tokens=1000, b=2, backend=CPU)
    assert four["kv_cache"] == 4 * one["kv_cache"] // 4  # 4x the rows per device, kv heads split 4 ways
    assert four["gathered"] == one["gathered"] / 4  # the embedding (LM head) splits its vocabulary over tensor


def test_plan_cli_table_and_json(capsys):
    assert plan_main(["--config", cfg_path("gemma2_27b_v5p"), "--no-search"]) == 0
    table = capsys.readouterr().out
    for word in ("weights", "grads", "optimizer", "kv_cache", "activations", "peak", "fits v5p-64", "27,227,128,320",
                 *[p for ps in PHASES.values() for p in ps]):
        assert word in table, word
    assert plan_main(["--config", cfg_path("gemma2_27b_v5p"), "--json", "--no-search",
                      "--config.grpo.max_new_tokens=2048"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["param_count"] == 27_227_128_320 and out["stage"] == "grpo"
    assert set(out["bytes_per_device"]) == set(CATEGORIES) and out["peak_phase"] in PHASES["grpo"]
    assert all(isinstance(v, int) and v >= 0 for v in out["bytes_per_device"].values())
    assert set(out["stages"]) == {"rft", "grpo", "metarm", "inference"} and isinstance(out["fits"], bool)
    phases = {k: v["phases"] for k, v in out["stages"].items()}
    assert {k: tuple(v) for k, v in phases.items()} == PHASES
    assert phases["grpo"]["grpo_rollout"]["bytes_per_device"]["kv_cache"] > 0
    assert phases["rft"]["sft"]["bytes_per_device"]["kv_cache"] == 0 and phases["rft"]["sft"]["bytes_per_device"]["grads"] > 0
    assert plan_main(["--config", cfg_path("gemma2_27b_v5p"), "--no-search", "--config.mesh.fsdp=5"]) == 2
    assert "mesh" in capsys.readouterr().err


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_load_validate_and_carry_the_papers_values(name):
    c = load_config(cfg_path(name))
    assert (c.rft.learning_rate, c.rft.batch_size, c.rft.steps, c.rft.n_rft) == (5e-6, 1024, 900, 3)
    assert (c.grpo.learning_rate, c.grpo.batch_size, c.grpo.steps, c.grpo.group_size) == (4e-7, 512, 900, 4)
    assert (c.grpo.beta, c.grpo.epsilon) == (0.08, 0.2)
    assert (c.metarm.learning_rate, c.metarm.batch_size) == (1e-5, 512)
    assert (c.inference.temperature, c.inference.k_meta) == (0.5, c.inference.k // 2)
    assert c.run_dir.startswith("/mnt/spct/") and c.model.preset.startswith("gemma2")
    p = plan(c, search_smallest=False)
    fits = {ph: pp.fits for s in p.stages.values() for ph, pp in s.phases.items()}
    # docs/training-on-tpu.md "Plan the memory" says which phases do not fit and what would make them fit.
    expected_misfits = {"gemma2_27b_v5p": set(), "gemma2_9b_v5p": set(),
                        "gemma2_2b_v5e": set()}[name]
    assert {ph for ph, ok in fits.items() if not ok} == expected_misfits, {ph: p.phase(ph).peak_bytes for ph in fits}


def test_every_config_value_names_its_source():
    for file in ["base"] + CONFIGS:
        text = open(cfg_path(file)).read()
        for line in text.splitlines():
            if re.match(r"\s+c\.\w+(\.\w+)* = ", line) or re.match(r"\s+\w+=.*,\s*(#.*)?$", line):
                if "ConfigDict()" in line and "#" not in line:
                    continue  # a section header
                assert re.search(r"#.*(\[P\]|ours)", line), f"{file}.py: no source comment: {line.strip()}"


def test_overrides_and_validation_errors():
    c = load_config(cfg_path("gemma2_27b_v5p"), ["--config.grpo.beta=0.02", "--config.run_dir", "/mnt/b/x"])
    assert (c.grpo.beta, c.run_dir) == (0.02, "/mnt/b/x")
    with pytest.raises(ConfigFileError, match="names no field"):
        load_config(cfg_path("gemma2_27b_v5p"), ["--config.grpo.nope=1"])
    with pytest.raises(ConfigFileError, match="bad override"):
        load_config(cfg_path("gemma2_27b_v5p"), ["--config.grpo.steps=many"])
    with pytest.raises(ValueError, match="inference.k_meta"):
        load_config(cfg_path("gemma2_27b_v5p"), ["--config.inference.k_meta=64"])
    with pytest.raises(ValueError, match="grpo.batch_size"):
        load_config(cfg_path("gemma2_27b_v5p"), ["--config.grpo.num_microbatches=5"])
    with pytest.raises(ConfigFileError, match="not found"):
        load_config("configs/nope.py")
    assert split_overrides(["--json", "--config.a", "1", "--config.b=2", "--stage", "rft"]) == (
        ["--config.a=1", "--config.b=2"], ["--json", "--stage", "rft"])


# Each phase's program, compiled (never run) on 8 fake CPU devices for a scaled-down Gemma-2 (F = 8 D as in the
# 27B, 4 layers: two steps of the scanned (sliding, full) pair, small vocab), against the planner's formulas with
# the CPU backend's counts (plan_phases.CPU) for the same program. What is compared: XLA's arguments + outputs +
# temporaries - aliased (plan_xla.memory_bytes) with the planner's program bytes (weight arguments, optimizer
# state, KV cache, gathered weights, activations, grads, batch), within 15%; the resident arrays a phase holds
# around its program (masters, reference copy) are exact array sizes and not part of this check.
# float32 compute: XLA's CPU backend upcasts bf16 matmuls to f32 (f32 copies of weights and activations that a
# TPU does not make), so bf16 would measure the CPU, not the program. The TPU counts (plan_phases.TPU) come from
# the TPU compiler on the 27B config: benchmarks/compile_27b.py, docs/training-on-tpu.md.
XLA_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import json, jax, jax.numpy as jnp
    from jax.sharding import AbstractMesh
    from spct_jax.models import ModelConfig
    from spct_jax.parallel import MeshConfig, make_mesh
    from spct_jax.parallel import plan_phases as pp, plan_xla as px
    from spct_jax.parallel.mesh import AXES
    from spct_jax.parallel.plan import abstract_opt_state, abstract_params, sharded_bytes
    from spct_jax.parallel.rules import opt_state_specs, param_specs
    from spct_jax.train.config import OptimizerConfig

    m = ModelConfig(family="gemma2", vocab_size=2048, hidden_size=128, intermediate_size=1024, num_layers=4,
                    num_heads=4, num_kv_heads=2, head_dim=32, query_pre_attn_scalar=32, attn_logit_softcap=50.0,
                    final_logit_softcap=30.0, sliding_window=64, layer_types=("sliding", "full") * 2)
    f32 = jnp.float32
    ROWS, SEQ, MB = 32, 256, 2
    cases = [  # phase, mesh (data, fsdp, tensor)
        ("rft_sampling", (1, 8, 1)), ("grpo_rollout", (2, 4, 1)), ("inference", (1, 4, 2)),
        ("grpo_reference", (2, 4, 1)), ("sft", (1, 8, 1)), ("grpo_update", (2, 4, 1)), ("bce", (1, 4, 2))]
    out = {}
    for phase, shape in cases:
        mesh, am, ms = make_mesh(MeshConfig(*shape)), AbstractMesh(shape, AXES), pp.MeshShape(*shape)
        rm = phase == "bce"
        params = abstract_params(m, "float32", rm)
        specs = param_specs(am, params)
        weights = sharded_bytes(params, specs, am)
        if phase.endswith("sampling") or phase in ("grpo_rollout", "inference"):
            kw = dict(rows=ROWS, prompt_len=200, new_tokens=48)
            compiled = px.sampler_call(m, mesh, dtype=f32, **kw)
            planned = weights + sum(pp.sampler_program(m, ms, b=4, backend=pp.CPU, **kw).values())
        elif phase == "grpo_reference":
            compiled = px.logprob_call(m, mesh, rows=ROWS, block_rows=16, seq=SEQ, dtype=f32)
            planned = weights + sum(pp.logprob_program(m, ms, rows=ROWS, block_rows=16, seq=SEQ, b=4,
                                                       backend=pp.CPU).values())
        else:
            kind = {"sft": "sft", "grpo_update": "grpo", "bce": "bce"}[phase]
            compiled = px.train_step_call(m, mesh, kind, rows=ROWS, seq=SEQ, microbatches=MB, compute_dtype=f32,
                                          param_dtype=f32)
            opt = abstract_opt_state(m, "float32", rm, OptimizerConfig())
            adam = sharded_bytes(opt, opt_state_specs(opt, params, specs), am)
            planned = weights + adam + sum(pp.train_program(
                m, ms, rows=ROWS, seq=SEQ, microbatches=MB, b=4, grad_bytes=weights, cast_bytes=weights,
                lm_logits=not rm, batch_fields={"sft": 3, "grpo": 4, "bce": 2}[kind], backend=pp.CPU).values())
        out[phase] = {"mesh": shape, "xla": px.memory_bytes(compiled), "plan": planned}
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.timeout(900)
def test_every_phase_agrees_with_the_compiled_program_on_8_devices():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", XLA_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=870)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert set(result) == {p for ps in PHASES.values() for p in ps} - {"grpo_filter", "metarm_sampling"}
    report = []
    for phase, r in result.items():
        xla = r["xla"]["total"]
        report.append(f"{phase} {r['mesh']}: xla {xla / 1e6:.1f} MB, plan {r['plan'] / 1e6:.1f} MB "
                      f"({r['plan'] / xla:.2f}x)")
    print("\n".join(report))
    for line, r in zip(report, result.values()):
        assert abs(r["plan"] / r["xla"]["total"] - 1) <= 0.15, line
