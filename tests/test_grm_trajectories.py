"""The trajectory core: one seed scheme for every caller, and the same trajectories on a mesh as on one device."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from spct_jax.demo.toy import ToyConfig, toy_splits
from spct_jax.grm.scorer import GenerativeRewardModel
from spct_jax.grm.trajectories import RolloutConfig, as_item, sample_trajectories, sampling_copy
from spct_jax.models.registry import load_model
from spct_jax.train.grpo import GRPOConfig, filter_too_easy
from spct_jax.train.rft import RFTConfig, rejective_sampling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = RolloutConfig(temperature=0.8, max_new_tokens=10, template="toy", single_template=None)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


@pytest.fixture(scope="module")
def items():
    return toy_splits(0, {"eval": 4}, ToyConfig(num_responses=(2, 3)))["eval"]


def texts(trajs):
    return [[(t.perm, t.completion_ids) for t in ts] for ts in trajs]


def test_every_caller_draws_the_same_trajectory_for_the_same_item_sample_and_seed(tiny, items):
    """Scoring, RFT's plain pass and the core itself agree on (item, j, seed, salt 0); batching, item order and
    rows per sampler call change nothing."""
    model, tok = tiny
    grm = GenerativeRewardModel(model, tok, template="toy")
    core = sample_trajectories(model, tok, items, 3, seed=5, cfg=CFG)
    judged = grm.score(items, k=3, temperature=CFG.temperature, max_new_tokens=CFG.max_new_tokens, seed=5)
    assert [[(s.permutation, s.text) for s in j.samples] for j in judged] == [[(t.perm, t.text) for t in ts]
                                                                              for ts in core]
    rft = rejective_sampling(grm, items, RFTConfig(n_rft=3, hinted="none", rollout=CFG, seed=5))
    assert texts(rft.plain) == texts(core)
    reordered = sample_trajectories(model, tok, items[::-1], 3, seed=5, cfg=CFG, max_batch_rows=2)
    assert texts(reordered[::-1]) == texts(core)
    # A different salt (a GRPO update, the hinted pass, the filter) is an independent draw.
    assert texts(sample_trajectories(model, tok, items, 3, seed=5, cfg=CFG, salt=1)) != texts(core)


def test_the_too_easy_filter_is_a_caller_of_the_core(tiny, items):
    model, tok = tiny
    keep, report = filter_too_easy(GenerativeRewardModel(model, tok, template="toy"), items, samples=2, seed=0,
                                   cfg=CFG)
    assert report.items == 4 and report.kept == len(keep) and report.too_easy + report.kept == 4


def test_responses_must_be_a_list():
    # A string would otherwise be judged as one response per character.
    with pytest.raises(ValueError, match="responses"):
        as_item({"context": "hi", "responses": "abc"})


def test_sampling_copy_casts_floats_once_and_keeps_the_model_when_already_in_dtype(tiny):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model, _ = tiny
    assert sampling_copy(model) is model  # float32 compute: nothing to cast
    copy = sampling_copy(model, jnp.bfloat16)
    leaves = jax.tree.leaves(nnx.state(copy, nnx.Param))
    assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# -- the same trajectories on 8 devices -------------------------------------------------------------------------
SHARDED = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    from flax import nnx
    from spct_jax.demo.toy import ToyConfig, toy_splits
    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.grm.trajectories import RolloutConfig
    from spct_jax.models.registry import load_model
    from spct_jax.parallel.mesh import MeshConfig, make_mesh
    from spct_jax.parallel.rules import param_shardings
    from spct_jax.train.config import GRPOLossConfig, OptimizerConfig
    from spct_jax.train.grpo import GRPOConfig, GRPOUpdate
    from spct_jax.train.metarm import METARM_SALT
    from spct_jax.train.rft import RFTConfig, rejective_sampling
    from spct_jax.train.state import create_train_state
    from spct_jax.train.steps import make_grpo_step

    items = toy_splits(0, {"eval": 3}, ToyConfig(num_responses=(2, 3)))["eval"]
    cfg = RolloutConfig(temperature=1.0, max_new_tokens=8, template="toy", single_template=None)
    out = {}
    for name in sys.argv[1:]:
        mesh = None if name == "one" else make_mesh(MeshConfig.from_mapping(json.loads(name)))
        model, tok = load_model("tiny-random", mesh=mesh)  # params in the partition rules' layout
        grm = GenerativeRewardModel(model, tok, template="toy", mesh=mesh)
        ids = lambda trajs: [[list(t.completion_ids) for t in ts] for ts in trajs]
        r = {}
        for t in (0.0, 0.5):
            js = grm.score(items, k=4, temperature=t, max_new_tokens=8, seed=1)
            r[f"score@{t}"] = [[s.text for s in j.samples] for j in js]
        r["rft"] = ids(rejective_sampling(grm, items, RFTConfig(n_rft=2, rollout=cfg, seed=2)).plain)
        opt = OptimizerConfig(learning_rate=1e-3)
        graphdef, state = create_train_state(model, opt, seed=0)
        kw = {} if mesh is None else dict(mesh=mesh, param_shardings=param_shardings(mesh, state.params))
        step = make_grpo_step(graphdef, optimizer=opt, loss=GRPOLossConfig(group_size=2), **kw)
        update = GRPOUpdate(graphdef, tok, items, step, state.params,
                            GRPOConfig(prompts_per_step=3, loss=GRPOLossConfig(group_size=2), rollout=cfg),
                            template="toy")
        r["grpo"] = ids(update.rollouts(state.params, items, salt=1000))
        r["metarm"] = ids(grm.trajectories(items, 2, seed=3, cfg=cfg, salt=METARM_SALT))
        out[name] = r
        print(name, "done", flush=True, file=sys.stderr)
    print(json.dumps(out))
""")


@pytest.mark.timeout(600)
def test_every_caller_on_8_devices_returns_the_one_device_trajectories():
    meshes = ["one", json.dumps({"fsdp": 8}), json.dumps({"data": 2, "fsdp": 4})]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", SHARDED, *meshes], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=570)
    assert proc.returncode == 0, proc.stderr[-5000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in meshes[1:]:
        for caller in got["one"]:
            assert got[name][caller] == got["one"][caller], (name, caller)
    # The draws are real: sampled scores differ from greedy ones, and RFT's rows are not all alike.
    assert got["one"]["score@0.5"] != got["one"]["score@0.0"]


# -- memory divides ----------------------------------------------------------------------------------------------
MEMORY = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from spct_jax import sampling
    from spct_jax.models import ModelConfig, init_model
    from spct_jax.parallel.mesh import MeshConfig, make_mesh
    from spct_jax.parallel.rules import param_shardings
    from flax import nnx

    cfg = ModelConfig(family="gemma2", vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=32, query_pre_attn_scalar=32, attn_logit_softcap=50.0,
                      final_logit_softcap=30.0, sliding_window=64, layer_types=("sliding", "full"),
                      max_position_embeddings=4096)
    rng = np.random.default_rng(0)
    calls = {"cache": ([rng.integers(3, 500, 16).tolist() for _ in range(256)], 512),
             "prefill": ([rng.integers(3, 500, 2000).tolist() for _ in range(64)], 8)}
    out = {}
    for name in sys.argv[1:]:
        model = init_model(cfg, seed=0)
        mesh = None
        if name != "one":
            mesh = make_mesh(MeshConfig.from_mapping(json.loads(name)))
            graphdef, state = nnx.split(model)
            model = nnx.merge(graphdef, jax.device_put(state, param_shardings(mesh, state)))
        for call, (prompts, new) in calls.items():
            # one phase everywhere: the same program on every mesh (a mesh never grows its cache in phases)
            m = sampling.compile_call(model, prompts, max_new_tokens=new, mesh=mesh,
                                      decode_phases=False).memory_analysis()
            total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
            out[f"{name} {call}"] = total
    print(json.dumps(out))
""")


@pytest.mark.timeout(600)
def test_sampler_memory_per_device_divides_over_8_devices():
    """XLA's own per-device account of a cache-dominated call (256 rows, 512 new tokens) and a prefill-dominated one
    (64 distinct 2000-token prompts, 8 new tokens), weights in the partition rules' layout: with the rows over 8
    shards, at most 1/6 of one device's (measured ~0.13); with fsdp=4 x tensor=2 the rows split 4 ways and the KV
    heads 2 ways, so at most 1/4 (measured ~0.21 and ~0.18)."""
    bounds = {json.dumps({"fsdp": 8}): 1 / 6, json.dumps({"data": 2, "fsdp": 4}): 1 / 6,
              json.dumps({"fsdp": 4, "tensor": 2}): 1 / 4}
    meshes = ["one", *bounds]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", MEMORY, *meshes], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=570)
    assert proc.returncode == 0, proc.stderr[-5000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for call in ("cache", "prefill"):
        one = got[f"one {call}"]
        for name, bound in bounds.items():
            assert got[f"{name} {call}"] <= one * bound, (call, name, got[f"{name} {call}"] / one)
