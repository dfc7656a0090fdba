"""What the stage commands read from a run config beyond the stage's own numbers: sharded checkpoint loading
(model.init_checkpoint placed by the partition rules), model.compute_dtype and model.remat, checkpoint.keep and
checkpoint.log_every, grpo.rollout_batch_prompts, grpo.ref_dtype, and the check that grpo.kv_dtype can be honoured.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from spct_jax.config_files import load_config
from spct_jax.data.batching import SFTRecord, round_up, tokenize_all
from spct_jax.demo.toy import ToyConfig, toy_splits
from spct_jax.models.registry import load_model
from spct_jax.models.scalar_head import ScalarRM
from spct_jax.parallel import MeshConfig, make_mesh
from spct_jax.train import grpo_cli
from spct_jax.train.config import GRPOLossConfig, OptimizerConfig
from spct_jax.train.grpo import GRPOConfig, GRPOUpdate, sampler_calls
from spct_jax.train.metrics import read_jsonl_metrics
from spct_jax.grm.trajectories import RolloutConfig
from spct_jax.train.stage_common import load_checkpoint, stage_run
from spct_jax.train.stages import StageRun, _remat_graphdef, grpo, length_blocks, sft
from spct_jax.train.state import create_train_state, split_params
from spct_jax.train.steps import make_grpo_step

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.py")


def model_section(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"param_dtype": "float32", "compute_dtype": "float32", **kw})


# -- model.init_checkpoint, sharded ---------------------------------------------------------------------------------
SHARDED_LOAD = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    from pathlib import Path
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from spct_jax.models import ModelConfig, init_model
    from spct_jax.models.scalar_head import ScalarRM
    from spct_jax.models.weights import save_pretrained
    from spct_jax.parallel import MeshConfig, make_mesh, param_shardings
    from spct_jax.parallel.rules import named_leaves
    from spct_jax.tokenizer import ByteTokenizer
    from spct_jax.tokenizers.save import save_tokenizer
    from spct_jax.train.stage_common import load_checkpoint

    assert jax.device_count() == 8
    folder = Path(sys.argv[1])
    # vocab 264 (the byte tokenizer's 263, padded) so that the (2, 2, 2) mesh splits the embedding over "tensor";
    # untied, so the lm_head rule is exercised too.
    cfg = ModelConfig(family="llama", vocab_size=264, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, tie_embeddings=False)
    save_pretrained(init_model(cfg, seed=3), folder)
    save_tokenizer(ByteTokenizer(), "tiny-random", folder)
    section = ml_collections.ConfigDict({"param_dtype": "float32", "compute_dtype": "bfloat16"})

    def check(spec, mesh, expect):
        ref, _ = load_checkpoint(spec, "model.init_checkpoint", section)  # unsharded: one device
        got, _ = load_checkpoint(spec, "model.init_checkpoint", section, mesh)
        p_ref, p_got = nnx.state(ref, nnx.Param), nnx.state(got, nnx.Param)
        rules = dict(named_leaves(param_shardings(mesh, p_got)))
        ref_leaves = dict(named_leaves(p_ref))
        got_leaves = named_leaves(p_got)
        assert len(got_leaves) == len(ref_leaves) > 10
        for name, arr in got_leaves:
            assert arr.sharding.mesh == mesh and arr.sharding.spec == rules[name].spec, (name, arr.sharding)
            assert arr.dtype == jnp.float32, (name, arr.dtype)
            np.testing.assert_array_equal(np.asarray(arr), np.asarray(ref_leaves[name]), err_msg=name)
        for name, spec_ in expect.items():
            assert dict(got_leaves)[name].sharding.spec == spec_, (name, dict(got_leaves)[name].sharding.spec)
        assert jnp.dtype(got.dtype) == jnp.bfloat16
        rm = ScalarRM.from_decoder(got)  # the meta RM built on a sharded backbone keeps its layout and dtype
        assert jnp.dtype(rm.backbone.dtype) == jnp.bfloat16
        assert rm.backbone.embed[...].sharding.spec == rules["embed"].spec
        print(spec, "OK", len(got_leaves), flush=True)

    check(str(folder), make_mesh(MeshConfig(2, 2, 2)),
          {"embed": P("tensor", "fsdp"), "lm_head/kernel": P("fsdp", "tensor"),
           "layers/attn/o_proj/kernel": P(None, "tensor", "fsdp"), "layers/input_norm/scale": P()})
    check("tiny-random", make_mesh(MeshConfig(2, 4, 1)), {"embed": P("tensor", "fsdp")})  # tensor=1: 263 rows
    print("SHARDED_LOAD_OK")
""")


@pytest.mark.timeout(300)
def test_sharded_checkpoint_load_equals_unsharded_and_uses_the_rule_shardings(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SHARDED_LOAD, str(tmp_path / "hf")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0 and "SHARDED_LOAD_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]


# -- model.compute_dtype and model.remat ------------------------------------------------------------------------------
def _grad_jaxpr(graphdef: nnx.GraphDef, params: nnx.State) -> str:
    ids = jnp.ones((1, 4), jnp.int32)
    loss = lambda p: nnx.merge(graphdef, p)(ids).astype(jnp.float32).sum()
    return str(jax.make_jaxpr(jax.grad(loss))(params))


def test_load_checkpoint_applies_compute_dtype():
    plain, _ = load_checkpoint("tiny-random", "model.init_checkpoint", model_section())
    fast, _ = load_checkpoint("tiny-random", "model.init_checkpoint", model_section(compute_dtype="bfloat16"))
    assert jnp.dtype(plain.dtype) == jnp.float32 and jnp.dtype(fast.dtype) == jnp.bfloat16
    # Master weights stay in param_dtype (the same values); activations are in the compute dtype.
    assert {x.dtype for x in jax.tree.leaves(nnx.state(fast, nnx.Param))} == {jnp.dtype(jnp.float32)}
    for a, b in zip(jax.tree.leaves(nnx.state(plain)), jax.tree.leaves(nnx.state(fast))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ids = jnp.ones((1, 4), jnp.int32)
    assert fast.hidden_states(ids)[0].dtype == jnp.bfloat16 and plain.hidden_states(ids)[0].dtype == jnp.float32


def test_model_remat_rematerialises_the_train_step_only(tmp_path):
    for name in ("full", "none", "save_dots"):  # the config's policy name reaches the step as is
        config = load_config(TINY, [f"--config.model.remat={name}"])
        assert stage_run(config, "rft", make_mesh(MeshConfig(1, 1, 1)), tmp_path).remat == name
    with pytest.raises(ValueError, match="model.remat"):
        load_config(TINY, ["--config.model.remat=dots"])
    assert stage_run(load_config(TINY, []), "rft", make_mesh(MeshConfig(1, 1, 1)), tmp_path).remat == "full"
    model, tok = load_model("tiny-random")
    plain_def, params = split_params(model)
    rm = ScalarRM.from_decoder(model)
    assert "remat" in _grad_jaxpr(_remat_graphdef(model), params) and "remat" not in _grad_jaxpr(plain_def, params)
    assert "remat" in _grad_jaxpr(_remat_graphdef(rm), split_params(rm)[1])  # a meta RM's backbone too
    assert model.remat == rm.backbone.remat == "none"  # the caller's modules are left as they were

    records = [SFTRecord(uid=str(i), messages=[{"role": "user", "content": "q" * (3 + i)}], target="a" * (2 + i))
               for i in range(4)]
    trained = {}
    for remat in (False, True):  # recomputing activations changes memory, not the update
        run = StageRun(workdir=str(tmp_path / f"remat{remat}"), steps=2, batch_size=2, progress_bar=False,
                       optimizer=OptimizerConfig(learning_rate=1e-3, total_steps=2), remat=remat)
        trained[remat], _ = sft(load_model("tiny-random")[0], tok, records, run, max_len=128)
    assert trained[True].remat == "none"  # the returned model is the plain one (a forward needs no remat)
    for a, b in zip(jax.tree.leaves(nnx.state(trained[False])), jax.tree.leaves(nnx.state(trained[True]))):
        # XLA may fuse the recomputed forward differently (float rounding); Adam's steps here are 1e-3 each.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=5e-6)


# -- checkpoint.keep and checkpoint.log_every -------------------------------------------------------------------------
def test_stage_run_reads_checkpoint_keep_and_log_every(tmp_path):
    config = load_config(TINY, ["--config.checkpoint.keep=2", "--config.checkpoint.log_every=2",
                                "--config.checkpoint.every=1", "--config.rft.steps=4"])
    run = stage_run(config, "rft", make_mesh(MeshConfig(1, 1, 1)), tmp_path / "train")
    assert (run.keep_checkpoints, run.log_every, run.checkpoint_every) == (2, 2, 1)
    model, tok = load_model("tiny-random")
    records = [SFTRecord(uid=str(i), messages=[{"role": "user", "content": "q" * (3 + i)}], target="a" * (2 + i))
               for i in range(6)]
    _, info = sft(model, tok, records, run, max_len=128)
    assert info["steps"] == 4
    saved = sorted(int(n) for n in os.listdir(tmp_path / "train" / "checkpoints") if n.isdigit())
    assert saved == [3, 4]  # a save every step, the newest 2 kept
    assert sorted(read_jsonl_metrics(tmp_path / "train" / "metrics.jsonl")) == [0, 2, 3]  # every 2nd, and the last


# -- grpo.rollout_batch_prompts, grpo.ref_dtype, grpo.kv_dtype ------------------------------------------------------
def test_grpo_config_reads_rollout_batch_prompts_and_ref_dtype():
    config = load_config(TINY, ["--config.grpo.rollout_batch_prompts=1"])
    cfg = grpo_cli.grpo_config(config)
    assert cfg.rollout_batch_prompts == 1 and cfg.reference_dtype == "bfloat16"  # params float32: a cast copy
    same = grpo_cli.grpo_config(load_config(TINY, ["--config.grpo.ref_dtype=float32"]))
    assert same.reference_dtype is None  # the policy's own dtype: the reference shares the loaded arrays


def test_kv_dtype_other_than_the_compute_dtype_is_a_config_error():
    with pytest.raises(ValueError, match="grpo.kv_dtype.*compute dtype"):
        load_config(TINY, ["--config.grpo.kv_dtype=bfloat16"])  # tiny_cpu computes in float32
    load_config(TINY, ["--config.grpo.kv_dtype=bfloat16", "--config.model.compute_dtype=bfloat16"])  # consistent


TOY = toy_splits(0, {"rl": 3}, ToyConfig(num_responses=(2, 2)))["rl"]
ROLLOUT = RolloutConfig(max_new_tokens=4, template="toy")


def test_rollout_batch_prompts_sets_the_sampler_calls_not_the_trajectories():
    def sizes(n, per_call):
        return [len(range(n)[part]) for part in sampler_calls(n, per_call)]

    # Every prompt once, in order, at most per_call a call.
    assert sizes(3, None) == [3] and sizes(3, 2) == [2, 1] and sizes(3, 1) == [1, 1, 1] and sizes(4, 2) == [2, 2]
    assert [i for part in sampler_calls(7, 3) for i in range(7)[part]] == list(range(7))
    assert sampler_calls(0, 2) == []

    model, tok = load_model("tiny-random")
    opt = OptimizerConfig(learning_rate=1e-3)
    graphdef, state = create_train_state(model, opt, seed=0)
    step = make_grpo_step(graphdef, optimizer=opt, loss=GRPOLossConfig(group_size=2))
    got = {}
    for per_call in (None, 2, 1):
        cfg = GRPOConfig(prompts_per_step=3, loss=GRPOLossConfig(group_size=2), rollout=ROLLOUT,
                         rollout_batch_prompts=per_call)
        update = GRPOUpdate(graphdef, tok, TOY, step, state.params, cfg, template="toy")
        trajs = update.rollouts(state.params, TOY, salt=1_000)
        got[per_call] = [[(t.perm, t.completion_ids) for t in group] for group in trajs]
    # The grouping changes the sampler's batch, not a single trajectory.
    assert got[None] == got[2] == got[1]
    assert [len(group) for group in got[None]] == [2, 2, 2]


def test_grpo_reference_dtype_is_the_frozen_reference_precision(tmp_path):
    def first_kl(name: str, reference_dtype: str | None) -> float:
        model, tok = load_model("tiny-random")  # a fresh copy: with a cast reference, grpo() consumes the model
        run = StageRun(workdir=str(tmp_path / name), steps=1, batch_size=4, progress_bar=False,
                       optimizer=OptimizerConfig(learning_rate=1e-3, total_steps=1))
        cfg = GRPOConfig(prompts_per_step=2, loss=GRPOLossConfig(group_size=2), rollout=ROLLOUT,
                         reference_dtype=reference_dtype)
        grpo(model, tok, TOY, run, cfg, template="toy")
        return read_jsonl_metrics(tmp_path / name / "metrics.jsonl")[0]["kl_mean"]

    # The reference is the initial policy itself: in its own dtype the first update's KL is exactly 0; rounded
    # to bfloat16 its log-probs differ from the float32 policy's, and the KL says so.
    assert first_kl("f32", None) == 0.0
    assert first_kl("bf16", "bfloat16") > 0.0
    with pytest.raises(ValueError, match="rollout_batch_prompts"):
        GRPOConfig(rollout_batch_prompts=0)


def test_a_short_dataset_shrinks_the_batch_to_what_still_splits(tmp_path):
    from spct_jax.train.stages import _batch_size

    opt = OptimizerConfig()
    run = StageRun(workdir=str(tmp_path), steps=1, batch_size=8, optimizer=opt, num_microbatches=2)
    assert _batch_size(run, 20) == 8 and _batch_size(run, 5) == 4  # 2 micro-batches: an even number of rows
    one_device = StageRun(workdir=str(tmp_path), steps=1, batch_size=16, optimizer=opt,
                     mesh=make_mesh(MeshConfig(1, 1, 1)))
    assert _batch_size(one_device, 5) == 5
    with pytest.raises(ValueError, match="cannot fill one batch"):
        _batch_size(run, 1)


# -- length_multiple ---------------------------------------------------------------------------------------------------
def test_padding_granularity_changes_shapes_not_the_update(tmp_path):
    """`StageRun.length_multiple` pads batches to a multiple of 16 instead of 64: less padding to compute, and since
    padding is masked out of the loss and attention the trained params are the same."""
    with pytest.raises(ValueError, match="length_multiple"):
        StageRun(workdir=str(tmp_path), steps=1, batch_size=1, optimizer=OptimizerConfig(learning_rate=1e-3),
                 length_multiple=0)
    model, tok = load_model("tiny-random")
    records = [SFTRecord(uid=str(i), messages=[{"role": "user", "content": "q" * (3 + i)}], target="a" * (2 + i))
               for i in range(4)]
    trained = {}
    for multiple in (16, 64):
        run = StageRun(workdir=str(tmp_path / f"m{multiple}"), steps=2, batch_size=2, progress_bar=False,
                       optimizer=OptimizerConfig(learning_rate=1e-3, total_steps=2), length_multiple=multiple)
        trained[multiple], _ = sft(load_model("tiny-random")[0], tok, records, run, max_len=128)
    for a, b in zip(jax.tree.leaves(nnx.state(trained[16])), jax.tree.leaves(nnx.state(trained[64]))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-6)


def test_length_segments_change_shapes_not_the_update(tmp_path):
    """`StageRun.length_segments` = 2 pads the short and the long half of each sorted batch to their own lengths
    (the demo's cold start: short drills beside long trajectories); the loss sums add up before one division, so
    the losses and trained params are those of one padded block."""
    with pytest.raises(ValueError, match="length_segments"):
        StageRun(workdir=str(tmp_path), steps=1, batch_size=1, optimizer=OptimizerConfig(learning_rate=1e-3),
                 length_segments=0)
    model, tok = load_model("tiny-random")
    records = [SFTRecord(uid=str(i), messages=[{"role": "user", "content": "q" * (3 + 40 * (i % 2))}],
                         target="a" * (2 + 30 * (i % 2))) for i in range(8)]
    # The blocks one mixed batch becomes: one of 4 rows padded to the longest, or a short and a long pair.
    lengths = [len(e) for e in tokenize_all(records, tok, max_len=256)[0]]
    idx = np.array([0, 1, 2, 3])
    (whole,) = length_blocks(idx, lengths, segments=1, multiple=16)
    assert whole[0].tolist() == [0, 1, 2, 3] and whole[1] == round_up(max(lengths[:4]), 16)
    short, long_ = length_blocks(idx, lengths, segments=2, multiple=16)
    assert sorted(short[0].tolist()) == [0, 2] and sorted(long_[0].tolist()) == [1, 3]
    assert short[1] == round_up(max(lengths[0], lengths[2]), 16) < long_[1] == whole[1]

    trained, losses = {}, {}
    for segments in (1, 2):
        run = StageRun(workdir=str(tmp_path / f"s{segments}"), steps=3, batch_size=4, progress_bar=False,
                       optimizer=OptimizerConfig(learning_rate=1e-3, total_steps=3), length_multiple=16,
                       length_segments=segments)
        trained[segments], _ = sft(load_model("tiny-random")[0], tok, records, run, max_len=256)
        rows = read_jsonl_metrics(str(tmp_path / f"s{segments}" / "metrics.jsonl"))
        losses[segments] = [rows[step]["loss"] for step in sorted(rows)]
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(nnx.state(trained[1])), jax.tree.leaves(nnx.state(trained[2]))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-6)
