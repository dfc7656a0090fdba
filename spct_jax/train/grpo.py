"""Stage 2 of SPCT: rule-based online RL with the original GRPO ([P] §3.2, Eq. 11; App. C.1, Eq. 15).

One update = sample G rollouts per prompt with the current policy (responses shuffled per rollout), reward each
+1/-1 by Eq. 10 (no format reward), normalise rewards within each group, compute the frozen RFT reference's
per-token log-probs outside the update (chunked, never [B, T, V] at once), then take the GRPO step.

Temperature. Rollouts sampled at T != 1 come from softmax(logits / T), so every log-prob of Eq. 15 (the policy's,
the old policy's and the reference's) is taken at the same T: the ratio is then the one of the distribution the
rollouts were drawn from (on-policy), and the k3 KL compares the tempered policy with the tempered reference (the
choice verl makes too). Top-p / top-k truncation is refused: the truncated distribution's log-probs are not a
smooth function of the logits, and the paper's GRPO samples plainly.

RL data ([P] App. C.1): "We also remove the samples that are viewed too easy for DeepSeek-V2-Lite-Chat, i.e. all
generated rewards are correct for three times according to Equation 10". `filter_too_easy` does that with a
given (smaller) GRM before training; all-correct groups would get advantage 0 anyway, but they cost rollouts and
still count in the loss's denominator and its KL term.

The rollout lives inside the step function handed to `run_training`, so the shared loop's resume, checkpoint,
SIGTERM and metrics machinery applies unchanged: the data source only yields which prompts to use, and every
random draw is seeded by (seed, update number), so a resumed run replays exactly.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.data.batching import round_up
from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.scorer import GenerativeRewardModel
from spct_jax.models.padding import pad_rows
from spct_jax.parallel.compilation import compile_phase
from spct_jax.parallel.mesh import HostFeed
from spct_jax.sampling import bucket
from spct_jax.tokenizer import Tokenizer
from spct_jax.train.config import GRPOLossConfig
from spct_jax.train.losses import group_advantages
from spct_jax.grm.trajectories import RolloutConfig, Trajectory, sampling_copy
from spct_jax.train.state import TrainState
from spct_jax.train.steps import TrainStep, make_logprob_fn


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    prompts_per_step: int = 128  # ours; [P] batch 512 without saying prompts or rollouts (App. C.1): 128 x G=4 = 512
    loss: GRPOLossConfig = dataclasses.field(default_factory=GRPOLossConfig)  # G=4, beta=0.08, eps=0.2
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)  # T=1.0 (ours, GRPO practice)
    inner_epochs: int = 1  # "original GRPO" (DeepSeekMath): one update per rollout batch
    seed: int = 0
    logprob_chunk: int = 512  # positions per logits chunk in the log-prob pass
    logprob_rows: int | None = None  # rows per reference / old-policy log-prob call (bounds it); None = all at once
    rollout_batch_prompts: int | None = None  # prompts per sampler call (x G rows, bounds the KV cache); None = all
    reference_dtype: str | None = None  # the frozen reference's params ("bfloat16" halves them); None = the policy's

    def __post_init__(self):
        if self.rollout_batch_prompts is not None and self.rollout_batch_prompts < 1:
            raise ValueError(f"rollout_batch_prompts must be >= 1 or None, got {self.rollout_batch_prompts}")
        if self.logprob_rows is not None and self.logprob_rows < 1:
            raise ValueError(f"logprob_rows must be >= 1 or None, got {self.logprob_rows}")
        if self.rollout.temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0 (GRPO samples), got {self.rollout.temperature}")
        if self.rollout.top_p not in (None, 1.0):
            raise ValueError(f"rollout.top_p={self.rollout.top_p}: GRPO's ratios need the untruncated sampling "
                             "distribution (module docstring); use top_p=None")

    @property
    def group_size(self) -> int:
        return self.loss.group_size


BUCKETS_PER_OCTAVE = 4  # GRPO's update lengths: 4 buckets per doubling, at most 25% padding


def length_bucket(n: int, *, multiple: int, per_octave: int = BUCKETS_PER_OCTAVE) -> int:
    """The smallest length of a fixed geometric set that is >= n: per doubling [m, 2m) (m = multiple * 2^k) the
    `per_octave` points m * (1 + i / per_octave), each rounded up to `multiple`. With multiple 64 and 4 per octave:

        64 128 192 256 320 384 448 512 640 768 896 1024 1280 1536 1792 2048 2560 3072 3584 4096 ...

    So a run whose rollouts may be anything up to max_prompt_len + max_new_tokens (27B: 4096) compiles its update
    and its log-prob program for at most 20 lengths (multiples of 64: up to 64), padding less than 25% or one
    multiple (1025 -> 1280) where a multiple would pad < 64 tokens: the padding is computed, never in a loss."""
    if n <= multiple:
        return multiple
    base = multiple
    while 2 * base < n:  # base < n <= 2 * base
        base *= 2
    return next(point for point in (round_up(base + base * i // per_octave, multiple) for i in range(1, per_octave + 1))
                if point >= n)  # the last point is 2 * base


def rollout_batch(trajs: Sequence[Sequence[Trajectory]], pad_id: int, *, length_multiple: int | None = None,
                  per_octave: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Right-padded [B, T] arrays for B = prompts x G rollouts, and the rewards [B].

    loss_mask[t] = 1 where token t is a generated token (the convention of data/batching.py), so only the
    completion is trained. T is bucketed to bound recompiles: the next power of two; with `length_multiple` the
    next multiple of it (less padding: ~140-token rollouts pad to 144, not 256; padding never enters the loss);
    with `per_octave` too, the next `length_bucket` (a fixed geometric set: what GRPOUpdate uses).
    """
    flat = [t for group in trajs for t in group]
    longest = max(len(t.prompt_ids) + len(t.completion_ids) for t in flat)
    if length_multiple is None:
        length = bucket(longest)
    elif per_octave is None:
        length = round_up(longest, length_multiple)
    else:
        length = length_bucket(longest, multiple=length_multiple, per_octave=per_octave)
    ids, attn = pad_rows([list(t.prompt_ids) + list(t.completion_ids) for t in flat], pad_id=pad_id, length=length)
    loss = np.zeros(ids.shape, np.float32)  # [B, T]
    for r, t in enumerate(flat):
        p, c = len(t.prompt_ids), len(t.completion_ids)
        loss[r, p:p + c] = 1.0
    rewards = np.asarray([t.reward for t in flat], np.float32)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}, rewards


def sampler_calls(num_prompts: int, per_call: int | None) -> list[slice]:
    """The prompts of each rollout sampler call, in order: `per_call` at a time (None: all in one call)."""
    step = per_call or num_prompts
    return [slice(start, min(start + step, num_prompts)) for start in range(0, num_prompts, step)]


class GRPOUpdate:
    """`update(state, prompt_indices) -> (state, metrics)`: rollout, rewards, reference log-probs, GRPO step(s).

    Multi-host: the sampler runs as one program over all devices, each device decoding its own rows, and every
    process gets all rollouts back (sampling/api.py); each then feeds only its own rows of the update batch (`feed`),
    and the log-probs stay on device, sharded like the batch, computed `cfg.logprob_rows` rows at a time.

    Compiles: the update batch's length is a `length_bucket` (of `length_multiple`, `per_octave` per doubling), so
    the update and the log-prob programs compile once per bucket a rollout length falls in, whatever the lengths
    (tests/test_train_grpo.py counts them); the phases' compile counts are logged as grpo_rollout,
    grpo_reference and grpo_update (parallel/compilation.py).
    """

    def __init__(self, graphdef: nnx.GraphDef, tokenizer: Tokenizer, items: Sequence[PreferenceItem],
                 step: TrainStep, reference_params: nnx.State, cfg: GRPOConfig, *, template: str = "default",
                 feed: HostFeed = HostFeed(), length_multiple: int | None = None,
                 per_octave: int | None = BUCKETS_PER_OCTAVE):
        self.graphdef, self.tokenizer, self.items, self.step, self.cfg = graphdef, tokenizer, list(items), step, cfg
        self.length_multiple = length_multiple  # the update batch's padding (rollout_batch)
        self.per_octave = per_octave
        self.reference_params = reference_params
        self.template = template
        self.feed = feed
        self.logprobs = make_logprob_fn(graphdef, chunk=cfg.logprob_chunk, mesh=step.mesh,
                                        param_shardings=step.param_shardings, temperature=cfg.rollout.temperature,
                                        rows=cfg.logprob_rows)

    def rollouts(self, params: nnx.State, prompts: Sequence[PreferenceItem], salt: int) -> list[list[Trajectory]]:
        """G trajectories per prompt, `cfg.rollout_batch_prompts` prompts per sampler call, rows split over the
        step's mesh, from a copy of the params in the compute dtype made once for the phase (never the fp32
        masters). Every draw is seeded per (item, salt, sample), so the grouping changes memory, not the
        trajectories."""
        policy = sampling_copy(nnx.merge(self.graphdef, params))
        grm = GenerativeRewardModel(policy, self.tokenizer, template=self.template, mesh=self.step.mesh)
        out: list[list[Trajectory]] = []
        for part in sampler_calls(len(prompts), self.cfg.rollout_batch_prompts):
            rows = (part.stop - part.start) * self.cfg.group_size  # the whole part in one sampler call
            out += grm.trajectories(prompts[part], self.cfg.group_size, seed=self.cfg.seed, cfg=self.cfg.rollout,
                                    salt=salt, max_batch_rows=rows, progress=False)
        return out

    def __call__(self, state: TrainState, prompt_indices: np.ndarray) -> tuple[TrainState, dict[str, float]]:
        update = int(jax.device_get(state.step))
        prompts = [self.items[int(i)] for i in prompt_indices]
        with compile_phase("grpo_rollout"):
            trajs = self.rollouts(state.params, prompts, salt=1_000 + update)
        full, rewards = rollout_batch(trajs, self.tokenizer.pad_id, length_multiple=self.length_multiple,
                                      per_octave=None if self.length_multiple is None else self.per_octave)  # [B, T]
        g = self.cfg.group_size
        full["advantages"] = np.asarray(group_advantages(jnp.asarray(rewards), g))
        rows = self.feed.rows(len(rewards))
        batch = self.feed.to_global({k: v[rows] for k, v in full.items()}, len(rewards))
        with compile_phase("grpo_reference"):
            batch["ref_logp"] = self.logprobs(self.reference_params, batch)  # [B, T], sharded like the batch
            if self.cfg.inner_epochs > 1:  # keep pi_old fixed across inner epochs; with one epoch pi_old = pi_theta
                batch["old_logp"] = self.logprobs(state.params, batch)
        metrics: dict[str, float] = {}
        with compile_phase("grpo_update"):
            for _ in range(self.cfg.inner_epochs):
                state, m = self.step(state, batch)
                m = jax.device_get(m)  # sync every step: see MACHINE-NOTES (CPU collectives deadlock trap)
                metrics.update({k: float(v) for k, v in m.items()})
        flat = [t for group in trajs for t in group]
        grouped = rewards.reshape(-1, g)
        metrics.update(
            reward_mean=float(rewards.mean()),
            accuracy=float(np.mean([t.correct for t in flat])),
            parse_failure_rate=float(np.mean([t.error is not None for t in flat])),
            rollout_length=float(np.mean([len(t.completion_ids) for t in flat])),
            zero_variance_groups=float(np.mean(grouped.std(axis=1) == 0)),
        )
        return state, metrics


# -- RL data: the too-easy filter ([P] App. C.1) -------------------------------------------------------------------
FILTER_SALT = 31  # separates the filter's draws from RFT's (0, 1) and GRPO's (1000 + update)


@dataclasses.dataclass(frozen=True)
class TooEasyReport:
    """What `filter_too_easy` did: item counts and the filter GRM's own accuracy on the samples it drew."""

    items: int
    too_easy: int  # all `samples` trajectories correct by Eq. 10: removed
    kept: int
    samples: int  # per item
    sample_accuracy: float  # fraction of all drawn trajectories that were correct
    parse_failure_rate: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def too_easy(trajs: Sequence[Sequence[Trajectory]]) -> list[bool]:
    """Per item: are all of its trajectories correct by Eq. 10? (A parse failure is not correct.)"""
    return [bool(ts) and all(t.correct for t in ts) for ts in trajs]


def filter_too_easy(grm: GenerativeRewardModel, items: Sequence[PreferenceItem], *, samples: int = 3, seed: int,
                    cfg: RolloutConfig, max_batch_rows: int = 256,
                    progress: bool | None = None) -> tuple[list[int], TooEasyReport]:
    """(indices of the items to keep, report): an item is removed when its `samples` trajectories from `grm` are
    all correct ([P] App. C.1: three samples of DeepSeek-V2-Lite-Chat, a smaller model than the policy).
    Deterministic: seeded by (seed, item, sample), whatever `max_batch_rows` (rows per sampler call)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    trajs = grm.trajectories(items, samples, seed=seed, cfg=cfg, salt=FILTER_SALT, max_batch_rows=max_batch_rows,
                             progress=progress)
    kept = [i for i, easy in enumerate(too_easy(trajs)) if not easy]
    flat = [t for ts in trajs for t in ts]
    report = TooEasyReport(items=len(items), too_easy=len(items) - len(kept), kept=len(kept), samples=samples,
                           sample_accuracy=float(np.mean([t.correct for t in flat])) if flat else 0.0,
                           parse_failure_rate=float(np.mean([t.error is not None for t in flat])) if flat else 0.0)
    return kept, report
