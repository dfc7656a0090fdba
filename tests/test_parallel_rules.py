"""Partition rules cover every parameter; meshes, the distributed setup; sharded steps equal one device."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from spct_jax.models import PRESETS, ModelConfig, init_model
from spct_jax.models.scalar_head import ScalarRM
from spct_jax.models.transformer import KVCache
from spct_jax.parallel.mesh import (AXES, MeshConfig, MeshError, make_mesh, parse_accelerator,
                                    resolve_distributed)
from spct_jax.parallel.rules import (DEFAULT_RULES, ShardingRuleError, activation_spec, kv_cache_shardings,
                                     match_partition_rules, named_leaves, opt_state_specs, param_specs,
                                     unmatched_paths)
from spct_jax.train.config import OptimizerConfig
from spct_jax.train.state import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD = AbstractMesh((2, 16, 4), AXES)  # a 128-chip layout with every axis > 1; no devices needed


def _abstract_state(cfg: ModelConfig, scalar_rm: bool = False) -> nnx.State:
    build = (lambda: ScalarRM(cfg, rngs=nnx.Rngs(0))) if scalar_rm else (lambda: init_model(cfg))
    return nnx.state(nnx.eval_shape(build), nnx.Param)


@pytest.mark.parametrize("name,scalar_rm", [("gemma2-27b", False), ("llama3-8b", False), ("qwen2.5-7b", False),
                                            ("gemma2-27b", True)])
def test_every_parameter_of_the_real_shapes_matches_a_rule(name, scalar_rm):
    state = _abstract_state(PRESETS[name], scalar_rm)  # eval_shape: nothing allocated
    missing = unmatched_paths(DEFAULT_RULES, state)
    assert not missing, f"{name}: parameters without a partition rule:\n" + "\n".join(missing)
    specs = dict(named_leaves(param_specs(POD, state)))  # also: every split dim divides on the pod mesh
    prefix = "backbone/" if scalar_rm else ""
    assert specs[prefix + "embed"] == P("tensor", "fsdp")
    # The blocks are stacked [L, ...]: the layer dim is never split.
    assert specs[prefix + "layers/attn/q_proj/kernel"] == P(None, "fsdp", "tensor")
    assert specs[prefix + "layers/attn/o_proj/kernel"] == P(None, "tensor", "fsdp")
    assert specs[prefix + "layers/mlp/down_proj/kernel"] == P(None, "tensor", "fsdp")
    assert dict(named_leaves(state))[prefix + "layers/mlp/down_proj/kernel"].shape[0] == PRESETS[name].num_layers
    assert specs[prefix + "final_norm/scale"] == P()
    if scalar_rm:
        assert specs["score/kernel"] == P("fsdp")
    if name == "qwen2.5-7b":
        assert specs["layers/attn/k_proj/bias"] == P(None, "tensor") and specs["lm_head/kernel"] == P("fsdp", "tensor")
    # A rule splits at most the mesh: no dim is split over an axis twice, nothing is left fully replicated but norms
    replicated = [n for n, s in specs.items() if s == P()]
    assert all(n.endswith("norm/scale") for n in replicated), replicated


def test_an_unmatched_parameter_is_an_error_listing_every_one():
    tree = {"embed": jnp.zeros((8, 4)), "mystery": {"w": jnp.zeros((4, 4))}, "layers": {0: {"odd": jnp.zeros(3)}}}
    with pytest.raises(ShardingRuleError) as err:
        match_partition_rules(DEFAULT_RULES, tree)
    msg = str(err.value)
    assert "2 parameter(s) match no partition rule" in msg
    assert "mystery/w (4, 4)" in msg and "layers/0/odd (3,)" in msg and "embed" not in msg.split(":", 1)[1]
    assert unmatched_paths(DEFAULT_RULES, tree) == ["layers/0/odd", "mystery/w"]


def test_indivisible_dims_raise_naming_the_param_or_replicate_when_allowed():
    tree = {"embed": jax.ShapeDtypeStruct((250, 64), jnp.float32),
            "final_norm": {"scale": jax.ShapeDtypeStruct((64,), jnp.float32)}}
    mesh = AbstractMesh((1, 2, 4), AXES)
    with pytest.raises(ShardingRuleError, match=r"embed \(250, 64\): dim 0 \(250\) does not divide over \('tensor',\)"):
        param_specs(mesh, tree)
    with pytest.warns(UserWarning, match="replicating one dim"):
        specs = param_specs(mesh, tree, allow_replicate_fallback=True)
    assert specs["embed"] == P(None, "fsdp")  # only the bad dim is whole


def test_axes_the_mesh_lacks_are_dropped():
    tree = {"layers": {"attn": {"q_proj": {"kernel": jax.ShapeDtypeStruct((3, 64, 32), jnp.float32)}}}}
    two_axes = AbstractMesh((1, 4), ("data", "fsdp"))  # the trainer's default mesh has no "tensor"
    assert param_specs(two_axes, tree)["layers"]["attn"]["q_proj"]["kernel"] == P(None, "fsdp")


def test_optimizer_state_mirrors_the_params():
    cfg = ModelConfig(family="qwen2", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2,
                      num_heads=2, num_kv_heads=1, head_dim=8, qkv_bias=True, tie_embeddings=False)
    params = _abstract_state(cfg)
    opt = jax.eval_shape(make_optimizer(OptimizerConfig(weight_decay=0.1)).init, params)
    specs = param_specs(POD, params)
    ospecs = opt_state_specs(opt, params, specs)
    by_name = dict(named_leaves(ospecs))
    mu = {n.split("mu/", 1)[1]: s for n, s in by_name.items() if "/mu/" in n}
    assert mu == dict(named_leaves(specs))  # every moment follows its parameter (square q_proj/o_proj included)
    assert all(s == P() for n, s in by_name.items() if n.endswith("count"))
    with pytest.raises(ShardingRuleError, match="mirror no parameter"):
        opt_state_specs({"factored": jnp.zeros((3, 5))}, params, specs)


def test_kv_cache_rows_over_batch_axes_heads_over_tensor():
    cfg = PRESETS["gemma2-27b"]
    cache = jax.eval_shape(lambda: KVCache.empty(cfg.replace(num_layers=2, layer_types=("sliding", "full")), 64, 128))
    sh = kv_cache_shardings(POD, cache)
    assert cache.k.shape == (2, 64, 16, 128, 128)  # [L, B, K, S, Dh]: every layer stacked
    assert sh.k.spec == P(None, ("data", "fsdp"), "tensor", None, None) and sh.valid.spec == P(("data", "fsdp"))
    assert sh.length.spec == P()
    odd = AbstractMesh((1, 2, 32), AXES)  # 16 KV heads do not split 32 ways: heads stay whole
    assert kv_cache_shardings(odd, cache).v.spec == P(None, ("data", "fsdp"), None, None, None)
    with pytest.raises(ShardingRuleError, match="rows do not divide"):
        kv_cache_shardings(POD, jax.eval_shape(lambda: KVCache.empty(cfg.replace(num_layers=1, layer_types=("full",)),
                                                                      20, 8)))


def test_activation_specs():
    assert activation_spec(POD, "hidden", (64, 128, 4608)) == P(("data", "fsdp"), None, None)
    assert activation_spec(POD, "heads", (64, 128, 32, 128)) == P(("data", "fsdp"), None, "tensor", None)
    assert activation_spec(POD, "logits", (3, 128, 256000)) == P(None, None, "tensor")  # 3 rows: unconstrained


def test_mesh_config_resolution_and_errors():
    assert MeshConfig(2, -1, 2).resolve(32) == (2, 8, 2)
    assert MeshConfig(1, 4, 2).resolve(8) == (1, 4, 2)
    with pytest.raises(MeshError, match="at most one axis"):
        MeshConfig(-1, -1, 1)
    with pytest.raises(MeshError, match="covers 8 devices but there are 16"):
        MeshConfig(1, 4, 2).resolve(16)
    with pytest.raises(MeshError, match="'fsdp'=-1"):
        MeshConfig(3, -1, 1).resolve(8)
    with pytest.raises(MeshError, match="'tensor'"):
        MeshConfig(1, 1, 0)
    mesh = make_mesh(MeshConfig(1, -1, 1))
    assert mesh.axis_names == AXES and all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_accelerator_names():
    assert (parse_accelerator("v5p-64").chips, parse_accelerator("v5p-64").name) == (32, "v5p-64")
    assert parse_accelerator("v5litepod-16").chips == 16 and parse_accelerator("v5e-8").name == "v5litepod-8"
    with pytest.raises(ValueError, match="unknown accelerator"):
        parse_accelerator("a100-8")


def test_distributed_setup_from_flags_env_and_cluster():
    env = {"SPCT_COORDINATOR": "10.0.0.2:1234", "SPCT_NUM_PROCESSES": "4", "SPCT_PROCESS_ID": "3"}
    s = resolve_distributed(environ=env, tpu_chips=0)
    assert (s.mode, s.coordinator_address, s.num_processes, s.process_id) == ("explicit", "10.0.0.2:1234", 4, 3)
    s = resolve_distributed("127.0.0.1:9", 2, 0, environ=env, tpu_chips=0)  # flags win over the environment
    assert (s.coordinator_address, s.num_processes, s.process_id) == ("127.0.0.1:9", 2, 0)
    with pytest.raises(ValueError, match="missing process id"):
        resolve_distributed(environ={"SPCT_COORDINATOR": "h:1", "SPCT_NUM_PROCESSES": "2"}, tpu_chips=0)
    with pytest.raises(ValueError, match="outside"):
        resolve_distributed("h:1", 2, 2, environ={}, tpu_chips=0)
    assert resolve_distributed(environ={}, tpu_chips=4).mode == "auto"  # a TPU VM: jax finds its peers
    assert resolve_distributed(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}, tpu_chips=0).mode == "auto"
    assert resolve_distributed(environ={}, tpu_chips=0).mode == "single"


# -- sharded == unsharded on a (2, 2, 2) mesh of 8 fake CPU devices ------------------------------------------------
SHARDED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from spct_jax.models import ModelConfig, init_model
    from spct_jax.models.scalar_head import init_scalar_rm
    from spct_jax.parallel import MeshConfig, make_mesh, param_shardings, host_local_to_global
    from spct_jax.sampling import sample
    from spct_jax.train.config import GRPOLossConfig, OptimizerConfig
    from spct_jax.train.losses import group_advantages
    from spct_jax.train.state import create_train_state
    from spct_jax.train.steps import make_bce_step, make_grpo_step, make_logprob_fn, make_sft_step

    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(2, 2, 2))
    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8)
    GEMMA = ModelConfig(family="gemma2", query_pre_attn_scalar=8, attn_logit_softcap=50.0, final_logit_softcap=30.0,
                        sliding_window=6, layer_types=("sliding", "full"), **common)
    QWEN = ModelConfig(family="qwen2", qkv_bias=True, tie_embeddings=False, **common)
    LLAMA = ModelConfig(family="llama", tie_embeddings=False, **common)
    # Adam's eps 1e-6, not 1e-8: with 1e-8, a near-zero gradient entry (a sum that cancels in float32) gets an
    # almost sign-like update, so the summation order of two correct layouts (gradients agree to ~1e-6 relative)
    # can move such a parameter by ~4e-5 after two steps. Above that noise, parameters are a sound oracle.
    opt = OptimizerConfig(learning_rate=1e-3, eps=1e-6)
    rng = np.random.default_rng(0)

    def lm_batch(b, t):
        ids = rng.integers(1, 128, (b, t)).astype(np.int32)
        lengths = rng.integers(t // 2, t + 1, b)
        mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
        loss_mask = mask.astype(np.float32)
        loss_mask[:, :3] = 0
        return {"input_ids": ids * mask, "attention_mask": mask, "loss_mask": loss_mask}

    def run(model, make_step, batches, sharded):
        graphdef, state = create_train_state(model, opt, seed=0)
        kw = dict(mesh=mesh, param_shardings=param_shardings(mesh, state.params)) if sharded else {}
        step = make_step(graphdef, optimizer=opt, num_microbatches=2, **kw)
        state = step.place(state)
        losses = []
        for batch in batches:
            state, m = step(state, host_local_to_global(batch, mesh) if sharded else batch)
            losses.append(float(jax.device_get(m["loss"])))  # sync every step: the CPU all-reduce deadlock trap
        if sharded:
            specs = {"/".join(map(str, k)): v.sharding.spec for k, v in nnx.to_flat_state(state.params)}
            return losses, jax.device_get(state.params), specs
        return losses, jax.device_get(state.params), None

    def compare(name, model_fn, make_step, batches, expect_specs):
        l1, p1, _ = run(model_fn(), make_step, batches, False)
        l8, p8, specs = run(model_fn(), make_step, batches, True)
        for k, spec in expect_specs.items():
            assert specs[k] == spec, (name, k, specs[k])
        np.testing.assert_allclose(l8, l1, rtol=1e-5, atol=1e-6)
        worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))
        assert worst <= 1e-5, (name, worst)
        print(name, "OK", l1, worst, flush=True)

    # RFT (SFT) on Gemma-2: tied embedding, soft-caps, sliding window.
    sft = [lm_batch(16, 12) for _ in range(2)]
    compare("sft", lambda: init_model(GEMMA, seed=0), lambda g, **kw: make_sft_step(g, chunk=4, **kw), sft,
            {"embed": P("tensor", "fsdp"), "layers/mlp/down_proj/kernel": P(None, "tensor", "fsdp")})

    # GRPO on Qwen2: q/k/v biases, untied lm_head. Reference log-probs from the sharded forward equal one device's.
    qwen = init_model(QWEN, seed=1)
    g_graph, g_state = create_train_state(qwen, opt, seed=0)
    grpo_batch = lm_batch(16, 12)
    grpo_batch["loss_mask"][:, :6] = 0
    ref1 = np.asarray(make_logprob_fn(g_graph, chunk=4)(g_state.params, grpo_batch))
    lp8 = make_logprob_fn(g_graph, chunk=4, mesh=mesh, param_shardings=param_shardings(mesh, g_state.params))
    ref8 = np.asarray(jax.device_get(lp8(jax.device_put(g_state.params, param_shardings(mesh, g_state.params)),
                                         host_local_to_global(grpo_batch, mesh))))
    np.testing.assert_allclose(ref8, ref1, rtol=1e-5, atol=1e-5)
    rewards = jnp.array([1., -1., -1., 1., 1., 1., -1., -1., -1., 1., 1., -1., 1., -1., -1., -1.])
    grpo_batch.update(ref_logp=ref1 + rng.normal(0, 0.05, ref1.shape).astype(np.float32),
                      advantages=np.asarray(group_advantages(rewards, 4)))
    compare("grpo", lambda: init_model(QWEN, seed=1),
            lambda g, **kw: make_grpo_step(g, loss=GRPOLossConfig(beta=0.08), chunk=4, **kw), [grpo_batch] * 2,
            {"lm_head/kernel": P("fsdp", "tensor"), "layers/attn/q_proj/bias": P(None, "tensor")})

    # Meta RM (BCE) on a Llama-backbone ScalarRM.
    bce = []
    for _ in range(2):
        b = lm_batch(16, 10)
        bce.append({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                    "labels": (rng.random(16) < 0.5).astype(np.float32)})
    compare("bce", lambda: init_scalar_rm(LLAMA, seed=2), make_bce_step, bce,
            {"score/kernel": P("fsdp"), "backbone/embed": P("tensor", "fsdp")})

    # Greedy sampling: parameters laid out by the rules, rows over (data, fsdp).
    model = init_model(GEMMA, seed=3)
    prompts = [list(rng.integers(1, 128, n)) for n in (3, 7, 5)]
    want = sample(model, prompts, num_samples=2, max_new_tokens=6, temperature=0.0).tokens
    graphdef, state = nnx.split(model)
    placed = nnx.merge(graphdef, jax.device_put(state, param_shardings(mesh, state)))
    got = sample(placed, prompts, num_samples=2, max_new_tokens=6, temperature=0.0, mesh=mesh,
                 data_axis=("data", "fsdp")).tokens
    assert got == want, (got, want)
    print("sample OK", flush=True)
    print("ALL_SHARDED_OK")
""")


@pytest.mark.timeout(600)
def test_sharded_steps_and_sampler_equal_one_device():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=570)
    assert proc.returncode == 0 and "ALL_SHARDED_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
