"""Train steps: exact gradient accumulation, learning, GRPO/BCE steps, the optimizer, and 8-device sharding."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax.models import ModelConfig, init_model
from spct_jax.train.config import GRPOLossConfig, OptimizerConfig
from spct_jax.train.losses import group_advantages
from spct_jax.train.state import create_train_state, learning_rate_schedule, make_optimizer
from spct_jax.train.steps import (accumulate_gradients, make_bce_step, make_grpo_step,
                                  make_logprob_fn, make_sft_step, sft_loss_fn)

TINY = ModelConfig(family="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16)


def lm_batch(rng, b, t, vocab=256):
    """Right-padded rows of varying length; the first 3 tokens are prompt (not targets)."""
    ids = rng.integers(0, vocab, (b, t)).astype(np.int32)
    lengths = rng.integers(t // 2, t + 1, b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    loss_mask = mask.astype(np.float32)
    loss_mask[:, :3] = 0
    return {"input_ids": ids * mask, "attention_mask": mask, "loss_mask": loss_mask}


def test_grad_accumulation_equals_one_big_batch():
    graphdef, params = nnx.split(init_model(TINY, seed=0))
    batch = lm_batch(np.random.default_rng(0), 8, 16)  # unequal token counts per micro-batch
    loss_fn = sft_loss_fn(chunk=8)

    def mean_grads(p, m):
        g, s, d, _ = accumulate_gradients(graphdef, p, batch, loss_fn, num_microbatches=m)
        return jax.tree.map(lambda x: x / d, g), s / d

    g1, l1 = jax.jit(lambda p: mean_grads(p, 1))(params)
    g4, l4 = jax.jit(lambda p: mean_grads(p, 4))(params)
    np.testing.assert_allclose(float(l4), float(l1), rtol=1e-6)
    flat1 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g1)])
    flat4 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g4)])
    assert np.linalg.norm(flat4 - flat1) <= 1e-6 * np.linalg.norm(flat1)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        assert np.linalg.norm(np.asarray(a) - np.asarray(b)) <= 1e-6 * max(np.linalg.norm(np.asarray(a)), 1e-12)


def test_length_segments_give_the_update_of_the_padded_batch():
    """A batch cut into length segments, each padded to its own longest row, makes the same update (and metrics) as
    the whole batch padded to one length: padding never enters the loss."""
    opt = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, total_steps=4)
    rng = np.random.default_rng(1)
    batch = lm_batch(rng, 8, 24)
    short = lm_batch(rng, 4, 8)  # rows 4-7 are short: padded to 24 in the whole batch, to 8 in their segment
    for k in batch:
        batch[k][4:] = 0
        batch[k][4:, :8] = short[k]
    order = np.argsort(batch["attention_mask"].sum(1), kind="stable")
    segments = ({k: v[order[:4], :8] for k, v in batch.items()}, {k: v[order[4:]] for k, v in batch.items()})
    assert segments[0]["attention_mask"].sum() == batch["attention_mask"][order[:4]].sum()  # nothing cut off
    out = {}
    for name, b in (("whole", batch), ("segments", segments)):
        graphdef, state = create_train_state(init_model(TINY, seed=0), opt, seed=0)
        step = make_sft_step(graphdef, optimizer=opt, chunk=8)
        state, metrics = step(state, b)
        out[name] = (jax.tree.leaves(nnx.to_pure_dict(state.params)), jax.device_get(metrics))
    (p1, m1), (p2, m2) = out["whole"], out["segments"]
    for k in ("loss", "grad_norm", "tokens", "loss_denominator"):
        np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5)
    for a, b in zip(p1, p2):
        # Adam moves every param by ~lr = 1e-2 on step 1; float reassociation shows up at ~1e-6.
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_tiny_model_learns_a_fixed_dataset():
    # 32 counting sequences (a, a+1, a+2, ... mod V): learnable from context, hopeless without training.
    rng = np.random.default_rng(0)
    starts = rng.integers(0, TINY.vocab_size, 32)
    ids = ((starts[:, None] + np.arange(16)[None, :]) % TINY.vocab_size).astype(np.int32)
    data = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones(ids.shape, np.float32)}
    data["loss_mask"][:, 0] = 0
    opt = OptimizerConfig(learning_rate=3e-3, warmup_steps=5, schedule="cosine", total_steps=60, clip_norm=1.0)
    graphdef, state = create_train_state(init_model(TINY, seed=0), opt, seed=0)
    step = make_sft_step(graphdef, optimizer=opt, num_microbatches=2)
    state = step.place(state)
    losses = []
    for i in range(60):
        idx = np.arange(i * 8, i * 8 + 8) % 32
        state, metrics = step(state, {k: v[idx] for k, v in data.items()})
        losses.append(float(jax.device_get(metrics["loss"])))
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert first > 5.0  # ~log(256) at init
    assert last < 0.4 * first, (first, last)
    assert int(state.step) == 60


@pytest.fixture(scope="module")
def grpo_setup():
    graphdef, state = create_train_state(init_model(TINY, seed=0), OptimizerConfig(learning_rate=1e-3), seed=0)
    logprobs = make_logprob_fn(graphdef, chunk=8)
    rng = np.random.default_rng(1)
    batch = lm_batch(rng, 8, 16)
    batch["loss_mask"][:, :6] = 0  # completion = tokens from 6 on
    policy_logp = np.asarray(logprobs(state.params, batch))
    return graphdef, state, batch, policy_logp


def test_logprob_fn_matches_sequence_logprobs(grpo_setup):
    graphdef, state, batch, policy_logp = grpo_setup
    logits = nnx.merge(graphdef, state.params)(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
    lsm = jax.nn.log_softmax(logits, axis=-1)
    want = np.take_along_axis(np.asarray(lsm)[:, :-1], batch["input_ids"][:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(policy_logp[:, 1:], want, rtol=1e-5, atol=1e-5)


def test_grpo_step(grpo_setup):
    graphdef, state0, batch, policy_logp = grpo_setup
    opt = OptimizerConfig(learning_rate=1e-3)
    step = make_grpo_step(graphdef, optimizer=opt, loss=GRPOLossConfig(beta=0.08), chunk=8, num_microbatches=2)
    fresh = lambda: step.place(jax.tree.map(jnp.copy, state0))

    # All-equal rewards and policy == reference: no policy gradient, and the KL term's gradient 1 - exp(ref - logp)
    # vanishes too (up to the float32 difference between the forward-only and the training log-probs).
    flat = {**batch, "ref_logp": policy_logp, "advantages": np.asarray(group_advantages(jnp.ones(8), 4))}
    _, metrics = step(fresh(), flat)
    assert float(metrics["grad_norm"]) < 1e-6 and float(metrics["kl_mean"]) < 1e-10

    # Without old_logp the step uses the policy's own (stopped) log-probs: same as passing them explicitly.
    rewards = jnp.array([1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    ref = policy_logp + np.random.default_rng(2).normal(0, 0.1, policy_logp.shape).astype(np.float32)
    rl = {**batch, "ref_logp": ref, "advantages": np.asarray(group_advantages(rewards, 4))}
    s_a, m_a = step(fresh(), rl)
    s_b, m_b = step(fresh(), {**rl, "old_logp": policy_logp})
    for k in ("loss", "grad_norm", "kl_mean", "clip_fraction"):
        np.testing.assert_allclose(float(m_a[k]), float(m_b[k]), rtol=1e-5, atol=1e-7)
    assert float(m_a["grad_norm"]) > 1e-2 and float(m_a["clip_fraction"]) == 0.0  # on-policy: nothing clipped
    for a, b in zip(jax.tree.leaves(s_a.params), jax.tree.leaves(s_b.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


class TinyScorer(nnx.Module):
    """A scalar head over mean-pooled embeddings: enough to exercise the BCE step."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(32, 16, rngs=rngs)
        self.head = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, ids, mask):
        m = mask[..., None].astype(jnp.float32)
        pooled = jnp.sum(self.embed(ids) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)  # [B, 16]
        return self.head(pooled)[:, 0]  # [B]


def test_bce_step_trains_a_scalar_head():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 32, (64, 8)).astype(np.int32)
    labels = (ids < 16).mean(1) > 0.5  # "mostly small tokens"
    opt = OptimizerConfig(learning_rate=3e-2)
    graphdef, state = create_train_state(TinyScorer(nnx.Rngs(0)), opt, seed=0)
    step = make_bce_step(graphdef, optimizer=opt, num_microbatches=2)
    state = step.place(state)
    hist = []
    for i in range(40):
        idx = np.arange(i * 16, i * 16 + 16) % 64
        batch = {"input_ids": ids[idx], "attention_mask": np.ones((16, 8), np.int32),
                 "labels": labels[idx].astype(np.float32)}
        state, m = step(state, batch)
        hist.append(jax.device_get(m))
    assert np.mean([h["loss"] for h in hist[-4:]]) < 0.5 * np.mean([h["loss"] for h in hist[:4]])
    assert np.mean([h["accuracy"] for h in hist[-4:]]) > 0.9


def test_optimizer_schedule_and_decay_mask():
    cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=10, schedule="cosine", total_steps=110, end_lr_ratio=0.1)
    sched = learning_rate_schedule(cfg)
    np.testing.assert_allclose([float(sched(s)) for s in (0, 5, 10, 60, 110)], [0.0, 0.5, 1.0, 0.55, 0.1],
                               rtol=1e-5, atol=1e-6)
    assert float(learning_rate_schedule(OptimizerConfig(learning_rate=2.0))(500)) == 2.0
    # Weight decay touches matrices only; clipping bounds the update's input norm.
    params = {"w": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    tx = make_optimizer(OptimizerConfig(learning_rate=0.1, weight_decay=0.5, clip_norm=1.0))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * 0.5, rtol=1e-6)
    assert np.all(np.asarray(updates["scale"]) == 0.0)
    with pytest.raises(ValueError):
        OptimizerConfig(schedule="linear")


SHARDED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from spct_jax.models import ModelConfig, init_model
    from spct_jax.train.config import OptimizerConfig
    from spct_jax.train.state import create_train_state
    from spct_jax.train.steps import make_sft_step
    from tests.test_train_steps import TINY, lm_batch

    assert len(jax.devices()) == 8
    opt = OptimizerConfig(learning_rate=1e-3)
    graphdef, state0 = create_train_state(init_model(TINY, seed=0), opt, seed=0)
    batch = lm_batch(np.random.default_rng(0), 16, 16)

    def run(mesh, param_shardings, micro):
        step = make_sft_step(graphdef, optimizer=opt, chunk=8, num_microbatches=micro, mesh=mesh,
                             param_shardings=param_shardings)
        state = step.place(jax.tree.map(jnp.copy, state0))
        metrics = []
        for _ in range(3):
            state, m = step(state, batch)
            metrics.append(jax.device_get(m))  # block every step: the CPU all-reduce deadlock trap
        return jax.device_get(state.params), metrics

    ref_params, ref_metrics = run(None, None, 1)
    auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(auto, auto))
    # FSDP-style: shard each matrix's first dim over "fsdp" (params and Adam moments), vectors replicated.
    shard = lambda p: NamedSharding(mesh, P("fsdp", None) if p.ndim == 2 else P())
    params, metrics = run(mesh, jax.tree.map(shard, state0.params), 2)
    for a, b in zip(ref_metrics, metrics):
        for k in ("loss", "grad_norm", "tokens"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5)
    worst = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)))
    assert worst <= 1e-5, worst
    print("SHARDED_OK", worst)
""")


@pytest.mark.timeout(300)
def test_sharded_step_equals_single_device():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": root}
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0 and "SHARDED_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
