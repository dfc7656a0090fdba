"""GRPO end to end: a rule reward climbs on CPU, and a resumed GRPO stage replays the uninterrupted one exactly."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spct_jax import sampling
from spct_jax.demo.toy import ToyConfig, toy_splits
from spct_jax.models import ModelConfig, init_model
from spct_jax.models.registry import load_model
from spct_jax.train.config import GRPOLossConfig, OptimizerConfig
from spct_jax.parallel.compilation import compile_counts, compile_delta
from spct_jax.train.grpo import BUCKETS_PER_OCTAVE, GRPOConfig, GRPOUpdate, length_bucket, rollout_batch, too_easy
from spct_jax.train.losses import group_advantages
from spct_jax.grm.trajectories import RolloutConfig, Trajectory
from spct_jax.train.stages import StageRun, grpo
from spct_jax.train.state import create_train_state
from spct_jax.train.steps import make_grpo_step, make_logprob_fn

TINY = ModelConfig(family="llama", vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                   num_kv_heads=1, head_dim=16)
G = 4


def test_rule_reward_climbs_under_grpo():
    """Toy rule: a rollout earns +1 when most of its 6 tokens are even ids, else -1 (no format term)."""
    model = init_model(TINY, seed=0)
    opt = OptimizerConfig(learning_rate=3e-2, total_steps=40, clip_norm=1.0)
    graphdef, state = create_train_state(model, opt, seed=0)
    step = make_grpo_step(graphdef, optimizer=opt, loss=GRPOLossConfig(beta=0.08, group_size=G), chunk=8)
    state = step.place(state)
    ref_params = nnx.state(model, nnx.Param)
    logprobs = make_logprob_fn(graphdef, chunk=8)
    prompts = [[1, 2 + i] for i in range(8)]
    means = []
    for it in range(25):
        out = sampling.sample(nnx.merge(graphdef, state.params), prompts, num_samples=G, max_new_tokens=6,
                              temperature=1.0, seed=it)
        rows = [(p, s) for p, ss in zip(prompts, out.tokens) for s in ss]
        rewards = np.asarray([1.0 if sum(t % 2 == 0 for t in s) > 3 else -1.0 for _, s in rows], np.float32)
        ids = np.asarray([p + s for p, s in rows], np.int32)
        loss_mask = np.zeros(ids.shape, np.float32)
        loss_mask[:, 2:] = 1.0
        batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss_mask,
                 "advantages": np.asarray(group_advantages(jnp.asarray(rewards), G))}
        batch["ref_logp"] = np.asarray(logprobs(ref_params, batch))
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        means.append(float(rewards.mean()))
    assert np.mean(means[-5:]) > np.mean(means[:5]) + 0.5, means


def _grpo_run(workdir, steps, model, tok, items, length_multiple=64):
    run = StageRun(workdir=str(workdir), steps=steps, batch_size=2, seed=0, checkpoint_every=1, progress_bar=False,
                   optimizer=OptimizerConfig(learning_rate=1e-3, total_steps=4), length_multiple=length_multiple)
    cfg = GRPOConfig(prompts_per_step=2, loss=GRPOLossConfig(group_size=2),
                     rollout=RolloutConfig(max_new_tokens=4, template="toy"))
    return grpo(model, tok, items, run, cfg, template="toy")


def test_resumed_grpo_stage_gives_the_same_metrics(tmp_path):
    model, tok = load_model("tiny-random")
    items = toy_splits(0, {"rl": 4}, ToyConfig(num_responses=(2, 2)))["rl"]
    _grpo_run(tmp_path / "straight", 3, model, tok, items)
    _grpo_run(tmp_path / "resumed", 2, model, tok, items)  # stops after 2 updates, as if preempted
    _grpo_run(tmp_path / "resumed", 3, model, tok, items)  # picks up from the checkpoint at step 2

    def rows(d):
        keep = ("loss", "kl_mean", "reward_mean", "rollout_length", "grad_norm", "parse_failure_rate")
        out = {}
        for line in (d / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            out[r["step"]] = {k: r[k] for k in keep}
        return out

    straight, resumed = rows(tmp_path / "straight"), rows(tmp_path / "resumed")
    assert sorted(straight) == sorted(resumed) == [0, 1, 2]
    assert straight == resumed


def test_update_padding_follows_length_multiple_and_leaves_the_update_alone(tmp_path):
    """The GRPO update batch pads to the run's length_multiple (a ~140-token rollout: 144, not the power of two 256);
    padding is masked out of every term, so the metrics of two updates are the same either way."""
    traj = lambda n_prompt, n_completion: Trajectory(  # noqa: E731
        uid="u", perm=(0, 1), template="toy", hinted=False, prompt_ids=(5,) * n_prompt,
        completion_ids=(6,) * n_completion, logprobs=(0.0,) * n_completion, text="", principles="", critique="",
        scores=None, error=None,
        correct=False)
    trajs = [[traj(80, 60), traj(80, 20)]]
    assert rollout_batch(trajs, 0)[0]["input_ids"].shape == (2, 256)
    fine, _ = rollout_batch(trajs, 0, length_multiple=16)
    assert fine["input_ids"].shape == (2, 144)
    assert fine["loss_mask"].sum() == 80 and fine["attention_mask"].sum() == 240

    model, tok = load_model("tiny-random")
    items = toy_splits(0, {"rl": 4}, ToyConfig(num_responses=(2, 2)))["rl"]
    rows = {}
    for multiple in (1, 64):
        _grpo_run(tmp_path / str(multiple), 1, load_model("tiny-random")[0], tok, items, length_multiple=multiple)
        rows[multiple] = [json.loads(line) for line in (tmp_path / str(multiple) / "metrics.jsonl").read_text().splitlines()]
    # The first update: the same rollouts, padded to 16 or 64 columns. (Later rollouts come from params that differ
    # by float rounding, and sampling may then draw other tokens.)
    a, b = rows[1][0], rows[64][0]
    for k in ("loss", "kl_mean", "reward_mean", "rollout_length", "grad_norm"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_update_lengths_fall_in_a_fixed_geometric_set():
    """Any rollout length up to 27B's max_prompt_len + max_new_tokens (4096) pads to one of 20 lengths (4 per
    doubling, multiples of 64), less than 25% or one multiple longer, where multiples of 64 alone would be 64 shapes."""
    buckets = {n: length_bucket(n, multiple=64) for n in range(1, 4097)}
    assert len(set(buckets.values())) == 20 and max(buckets.values()) == 4096
    assert all(n <= b < n + max(n / 4, 64) and b % 64 == 0 for n, b in buckets.items())
    assert [length_bucket(n, multiple=64) for n in (64, 65, 129, 700, 1025, 3000)] == [64, 128, 192, 768, 1280, 3072]


def test_grpo_compiles_the_update_and_reference_once_per_length_bucket(monkeypatch):
    """12 updates whose rollouts have 12 different lengths: the GRPO update and the reference log-prob programs
    compile once per length bucket (6 here), counted by the compile counter the stage commands log (jax.monitoring
    events under the grpo_update / grpo_reference phases)."""
    model = init_model(TINY, seed=0)
    opt = OptimizerConfig(learning_rate=1e-3)
    graphdef, state = create_train_state(model, opt, seed=0)
    step = make_grpo_step(graphdef, optimizer=opt, loss=GRPOLossConfig(group_size=2), chunk=16)
    state = step.place(state)
    cfg = GRPOConfig(prompts_per_step=2, loss=GRPOLossConfig(group_size=2))
    lengths = [9, 11, 14, 15, 21, 22, 23, 36, 39, 58, 66, 72]  # prompt + completion of the longest rollout
    pad = type("Tok", (), {"pad_id": 0})()
    update = GRPOUpdate(graphdef, pad, [None] * 4, step, nnx.state(model, nnx.Param), cfg, length_multiple=4)
    plan = iter(lengths)

    def rollouts(params, prompts, salt):  # 2 prompts x G=2 with one right and one wrong rollout per group
        n = next(plan)
        traj = lambda c, ok: Trajectory(  # noqa: E731
            uid="u", perm=(0, 1), template="toy", hinted=False, prompt_ids=(5,) * 4, completion_ids=(6,) * c,
            logprobs=(0.0,) * c, text="", principles="", critique="", scores=None, error=None, correct=ok)
        return [[traj(n - 4, True), traj(2, False)], [traj(3, False), traj(n - 5, True)]]

    monkeypatch.setattr(update, "rollouts", rollouts)
    buckets = {length_bucket(n, multiple=4, per_octave=BUCKETS_PER_OCTAVE) for n in lengths}
    assert buckets == {12, 16, 24, 40, 64, 80}
    before = compile_counts()
    for i in range(len(lengths)):
        state, metrics = update(state, np.asarray([i % 4, (i + 1) % 4]))
        assert np.isfinite(metrics["loss"])
    compiles = compile_delta(before)
    assert compiles["grpo_update"].programs == len(buckets), compiles  # not one per length (12)
    assert compiles["grpo_reference"].programs == len(buckets), compiles


def test_reference_in_the_policy_dtype_survives_donated_updates(tmp_path):
    """reference_dtype equal to the params' dtype: `astype` would hand back the policy's own arrays, and the first
    donated update would delete them under the reference. The Python API must copy; two updates then run."""
    model, tok = load_model("tiny-random")
    items = toy_splits(0, {"rl": 4}, ToyConfig(num_responses=(2, 2)))["rl"]
    run = StageRun(workdir=str(tmp_path), steps=2, batch_size=2, seed=0, progress_bar=False,
                   optimizer=OptimizerConfig(learning_rate=1e-3, total_steps=2))
    cfg = GRPOConfig(prompts_per_step=2, loss=GRPOLossConfig(group_size=2), reference_dtype="float32",
                     rollout=RolloutConfig(max_new_tokens=4, template="toy"))
    _, info = grpo(model, tok, items, run, cfg, template="toy")
    assert info["steps"] == 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]


def test_tempered_logprobs_are_the_sampling_distribution():
    """Rollouts at T = 0.5 come from softmax(logits / 0.5): the log-probs GRPO's ratio and KL use (LogprobFn and
    the loss at the rollout temperature) equal the sampler's own log-probs of the drawn tokens; at T = 1 they
    do not, which is what made T != 1 rollouts off-policy."""
    model = init_model(TINY, seed=3)
    prompts = [[1, 2, 3], [4, 5, 6]]
    out = sampling.sample(model, prompts, num_samples=2, max_new_tokens=6, temperature=0.5, seed=0)
    rows = [(p, s, lp) for p, ss, lps in zip(prompts, out.tokens, out.logprobs) for s, lp in zip(ss, lps)]
    ids = np.asarray([p + s for p, s, _ in rows], np.int32)
    sampled = np.asarray([lp for _, _, lp in rows], np.float32)  # [B, 6]
    params = nnx.state(model, nnx.Param)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    tempered = np.asarray(make_logprob_fn(nnx.graphdef(model), chunk=8, temperature=0.5)(params, batch))[:, 3:]
    plain = np.asarray(make_logprob_fn(nnx.graphdef(model), chunk=8)(params, batch))[:, 3:]
    np.testing.assert_allclose(tempered, sampled, atol=2e-5)
    assert np.abs(plain - sampled).max() > 1e-2


def test_grpo_refuses_truncated_rollouts():
    with pytest.raises(ValueError, match="top_p"):
        GRPOConfig(rollout=RolloutConfig(top_p=0.9))


def test_too_easy_marks_exactly_the_all_correct_items():
    """[P] App. C.1: an RL item is removed when all 3 samples are correct by Eq. 10; one wrong or unparsable
    sample keeps it."""
    t = lambda ok, error=None: Trajectory(  # noqa: E731
        uid="u", perm=(0, 1), template="default", hinted=False, prompt_ids=(1,), completion_ids=(2,), logprobs=(0.0,),
        text="", principles="", critique="", scores=None if error else (9, 1), error=error, correct=ok)
    groups = [[t(True)] * 3, [t(True), t(True), t(False)], [t(False)] * 3, [t(True), t(True), t(False, "no_boxed")]]
    assert too_easy(groups) == [True, False, False, False]
