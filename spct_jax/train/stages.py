"""Stage drivers: SFT (cold start and RFT), GRPO and meta-RM training on top of `run_training`.

Each takes a model and data, builds the pure step, runs the shared resumable loop in `workdir`, and returns the
trained model. They are what `spct rft|grpo|metarm` and the demo call; nothing here is demo-specific.

With a mesh, every process draws the same seeded global batch (the same example indices, the same padded length)
but builds only its own rows of it (`HostFeed`), which become global arrays; the result is the single-process
run's, whatever the number of processes.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.data.batching import SFTRecord, collate, round_up, tokenize_all
from spct_jax.data.schema import PreferenceItem
from spct_jax.models.transformer import Decoder, remat_name
from spct_jax.parallel.compilation import compile_phase
from spct_jax.parallel.mesh import HostFeed, batch_shards
from spct_jax.tokenizer import Tokenizer
from spct_jax.train.config import LoopConfig, OptimizerConfig
from spct_jax.train.grpo import GRPOConfig, GRPOUpdate
from spct_jax.train.loop import epoch_batches, run_training
from spct_jax.train.metarm import MetaRMExample, metarm_batch
from spct_jax.train.state import create_train_state, split_params
from spct_jax.train.steps import make_bce_step, make_grpo_step, make_sft_step


@dataclasses.dataclass(frozen=True)
class StageRun:
    """How long and where: steps, batch size, optimizer, and the loop's bookkeeping."""

    workdir: str
    steps: int
    batch_size: int
    optimizer: OptimizerConfig
    seed: int = 0
    checkpoint_every: int | None = None  # default: only at the end
    progress_bar: bool = True
    num_microbatches: int = 1
    mesh: object | None = None
    keep_checkpoints: int = 3
    log_every: int = 1  # metrics every N steps (and at the last)
    # What each decoder block keeps for the backward pass (transformer.REMAT_POLICIES): "none", "full" (block inputs
    # only, the block recomputed) or "save_dots" (the weight matmuls' outputs too); True / False = "full" / "none".
    remat: str | bool = "none"
    # Training batches (SFT, meta RM, GRPO's update) are padded to a multiple of this: fewer distinct shapes
    # (compiles) against less padding to compute.
    length_multiple: int = 64
    # SFT batches are sorted by length and cut into this many equal row blocks, each padded to its own longest row
    # (steps.py, "Length segments"): the same update with less padding computed. Worth it when lengths are mixed,
    # as in the demo's cold start (~50-token drills beside ~125-token trajectories); 1 = one block.
    length_segments: int = 1

    def __post_init__(self):
        object.__setattr__(self, "remat", remat_name(self.remat))  # validated; a bad name raises ValueError
        if self.length_multiple < 1:
            raise ValueError(f"length_multiple must be >= 1, got {self.length_multiple}")
        if self.length_segments < 1:
            raise ValueError(f"length_segments must be >= 1, got {self.length_segments}")

    def shardings(self, params):
        """Param shardings from the partition rules when a mesh is given (FSDP/tensor), else None (replicated)."""
        if self.mesh is None:
            return None
        from spct_jax.parallel.rules import param_shardings

        return param_shardings(self.mesh, params)

    def feed(self) -> HostFeed:
        return HostFeed(self.mesh)

    def loop(self) -> LoopConfig:
        return LoopConfig(workdir=self.workdir, total_steps=self.steps,
                          checkpoint_every=self.checkpoint_every or self.steps, progress_bar=self.progress_bar,
                          keep_checkpoints=self.keep_checkpoints, log_every=self.log_every)


def _remat_graphdef(model: nnx.Module, policy: str = "full") -> nnx.GraphDef:
    """The graphdef of `model` with every `Decoder` in it (a meta RM's backbone too) set to rematerialise its
    blocks by `policy` (transformer.REMAT_POLICIES). Only the train step merges params into it: the sampler and the
    forward-only log-probs keep the plain graphdef (a forward pass has no backward to save memory for)."""
    view = nnx.merge(*nnx.split(model))  # new module objects over the same arrays; `model` itself is unchanged
    for _, module in nnx.iter_modules(view):
        if isinstance(module, Decoder):
            module.remat = remat_name(policy)
    return split_params(view)[0]


def _batch_size(run: StageRun, num_examples: int) -> int:
    """`run.batch_size`, or with fewer examples than that, the most rows that still split evenly into the
    micro-batches and over the mesh's batch shards (the step's shapes must divide)."""
    if num_examples >= run.batch_size:
        return run.batch_size
    ways = run.num_microbatches * (1 if run.mesh is None else batch_shards(run.mesh))
    if num_examples < ways:
        raise ValueError(f"{num_examples} examples cannot fill one batch: it needs a multiple of {ways} rows "
                         f"({run.num_microbatches} micro-batches x the mesh's batch shards)")
    return num_examples // ways * ways


def _start(model: nnx.Module, run: StageRun, make_step, *, copy_params: bool = True, **step_kw):
    """(plain graphdef, placed initial state, step): the set-up every stage shares, params sharded by the rules,
    blocks rematerialised in the step's backward pass by the policy `run.remat`."""
    graphdef, state = create_train_state(model, run.optimizer, run.seed, copy_params=copy_params)
    step = make_step(graphdef if run.remat == "none" else _remat_graphdef(model, run.remat), optimizer=run.optimizer,
                     num_microbatches=run.num_microbatches, mesh=run.mesh,
                     param_shardings=run.shardings(state.params), **step_kw)
    return graphdef, step.place(state), step


def length_blocks(idx: np.ndarray, lengths: Sequence[int], *, segments: int,
                  multiple: int) -> list[tuple[np.ndarray, int]]:
    """One SFT batch (`idx` [B] into `lengths`) as `segments` row blocks of B / segments examples, each with the
    length it is padded to (its longest example, rounded up to `multiple`).

    With several segments the batch is sorted by length first (stable), so short examples share a block and pad
    short; the step adds the blocks' loss sums before one division, so the update is unchanged. The lengths are
    those of the global batch, so every process builds the same shapes."""
    parts = [idx] if segments == 1 else np.split(idx[np.argsort([lengths[int(i)] for i in idx], kind="stable")],
                                                 segments)
    return [(part, round_up(max(lengths[int(i)] for i in part), multiple)) for part in parts]


def sft(model: nnx.Module, tokenizer: Tokenizer, records: Sequence[SFTRecord], run: StageRun, *,
        max_len: int = 1024) -> tuple[nnx.Module, dict]:
    """Supervised fine-tuning on (prompt messages, target) records; loss on assistant tokens only."""
    examples, report = tokenize_all(records, tokenizer, max_len=max_len)
    if not examples:
        raise ValueError(f"no SFT example fits max_len={max_len} ({len(report.dropped)} dropped)")
    graphdef, state, step = _start(model, run, make_sft_step)
    batch_size = _batch_size(run, len(examples))
    feed = run.feed()

    # A batch shrunk for a short dataset (_batch_size) that no longer splits evenly keeps one block.
    ways = run.length_segments * run.num_microbatches * (1 if run.mesh is None else batch_shards(run.mesh))
    segments = run.length_segments if batch_size % ways == 0 else 1

    lengths = [len(e) for e in examples]

    def block(idx: np.ndarray, length: int):  # idx: the global block's examples, the same on every process
        mine = [examples[int(i)] for i in idx[feed.rows(len(idx))]]
        return feed.to_global(collate(mine, length, pad_id=tokenizer.pad_id), len(idx))

    def get_batch(idx: np.ndarray):  # idx: [B]
        blocks = [block(part, length) for part, length in
                  length_blocks(idx, lengths, segments=segments, multiple=run.length_multiple)]
        return blocks[0] if segments == 1 else tuple(blocks)

    with compile_phase("sft"):
        result = run_training(step, state, epoch_batches(len(examples), batch_size, seed=run.seed,
                                                         get_batch=get_batch), config=run.loop())
    info = {"examples": len(examples), "dropped": len(report.dropped), "truncated": len(report.truncated),
            "steps": result.step, "preempted": result.preempted}
    return nnx.merge(graphdef, result.state.params), info


def grpo(model: nnx.Module, tokenizer: Tokenizer, items: Sequence[PreferenceItem], run: StageRun, cfg: GRPOConfig,
         *, template: str = "default", reference: nnx.Module | None = None) -> tuple[nnx.Module, dict]:
    """GRPO from `model`; the KL reference is `reference` (default: `model` itself, i.e. the RFT checkpoint).

    With `cfg.reference_dtype` set, the reference is a copy cast to that dtype; when it is `model`'s own copy, the
    policy then trains on `model`'s arrays instead of a copy of them, so that only the reference copy is added
    to memory. The first update donates those arrays: `model` is consumed and must not be used afterwards.
    """
    own_reference = reference is None and cfg.reference_dtype is not None
    ref_params = nnx.state(reference if reference is not None else model, nnx.Param)
    if cfg.reference_dtype is not None:
        # An explicit copy even when the dtype is already the params' own: `astype` to the same dtype returns the
        # SAME array, which the policy's first (donated) update would then invalidate under the reference.
        ref_params = jax.tree.map(lambda x: jnp.astype(x, cfg.reference_dtype, copy=True), ref_params)  # sharding kept
    graphdef, state, step = _start(model, run, make_grpo_step, copy_params=not own_reference, loss=cfg.loss,
                                   chunk=cfg.logprob_chunk, temperature=cfg.rollout.temperature)
    if step.param_shardings is not None:  # the frozen reference lives on the same layout as the policy
        ref_params = jax.device_put(ref_params, step.param_shardings)
    # Update lengths: length_bucket(longest, multiple=run.length_multiple), a fixed geometric set (bounded compiles).
    update = GRPOUpdate(graphdef, tokenizer, items, step, ref_params, cfg, template=template, feed=run.feed(),
                        length_multiple=run.length_multiple)
    source = epoch_batches(len(items), cfg.prompts_per_step, seed=run.seed, get_batch=lambda idx: idx)
    result = run_training(update, state, source, config=run.loop())
    return nnx.merge(graphdef, result.state.params), {"steps": result.step, "preempted": result.preempted}


def train_metarm(rm: nnx.Module, examples: Sequence[MetaRMExample], run: StageRun, *, pad_id: int
                 ) -> tuple[nnx.Module, dict]:
    """BCE on correct/incorrect trajectories (label from Eq. 10)."""
    graphdef, state, step = _start(rm, run, make_bce_step)
    batch_size = _batch_size(run, len(examples))
    feed = run.feed()

    def get_batch(idx: np.ndarray):  # idx: [B] the global batch's examples, the same on every process
        # Of the global batch, so that every process builds the same shape.
        length = round_up(max(len(examples[int(i)].ids) for i in idx), run.length_multiple)
        return feed.to_global(metarm_batch(examples, idx[feed.rows(len(idx))], pad_id=pad_id, length=length),
                              len(idx))

    with compile_phase("bce"):
        result = run_training(step, state, epoch_batches(len(examples), batch_size, seed=run.seed,
                                                         get_batch=get_batch), config=run.loop())
    return nnx.merge(graphdef, result.state.params), {"steps": result.step, "preempted": result.preempted}
