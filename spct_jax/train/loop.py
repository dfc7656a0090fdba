"""`run_training`: the loop the RFT, GRPO and meta-RM stages share (resume, checkpoints, metrics, SIGTERM).

Resumability rests on one contract with the caller's data: a `BatchSource` is a function
`source(position) -> iterator of (batch, position_after)`. `position` is a JSON-able dict (None = the start), and
`position_after` is where the source must start to yield the batch after this one. The loop saves the position
after the last batch the checkpointed state has trained on; resuming calls `source(saved_position)`. A source
must be deterministic in its position (seeded shuffles, no wall-clock randomness); `epoch_batches` is one.
The workdir may be local, gcsfuse or `gs://...` (spct_jax.paths): checkpoints and metrics both accept it.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from spct_jax import paths
from spct_jax.train.checkpoint import Checkpointer, agree_to_stop, install_sigterm_handler
from spct_jax.train.config import LoopConfig
from spct_jax.train.metrics import MetricsLogger
from spct_jax.train.state import TrainState

Position = dict[str, Any]
BatchSource = Callable[[Position | None], Iterator[tuple[Any, Position]]]
StepFn = Callable[[TrainState, Any], tuple[TrainState, dict[str, Any]]]


@dataclasses.dataclass
class LoopResult:
    state: TrainState
    step: int  # updates done (== state.step)
    preempted: bool  # stopped by SIGTERM after saving
    data_position: Position | None


def epoch_batches(num_examples: int, batch_size: int, *, seed: int,
                  get_batch: Callable[[np.ndarray], Any]) -> BatchSource:
    """Shuffled epochs over `num_examples` items, `batch_size` at a time (the ragged tail of an epoch is dropped so
    shapes stay static). Epoch e's order is a permutation drawn from (seed, e) alone, so any position is
    reproducible. Position: {"epoch": e, "index": i} = batch i of epoch e is next."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} examples")

    def source(position: Position | None) -> Iterator[tuple[Any, Position]]:
        epoch, index = (0, 0) if not position else (int(position["epoch"]), int(position["index"]))
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(num_examples)
            for i in range(index, per_epoch):
                nxt = {"epoch": epoch, "index": i + 1} if i + 1 < per_epoch else {"epoch": epoch + 1, "index": 0}
                yield get_batch(order[i * batch_size:(i + 1) * batch_size]), nxt
            epoch, index = epoch + 1, 0

    return source


def run_training(step_fn: StepFn, state: TrainState, batches: BatchSource, *, config: LoopConfig) -> LoopResult:
    """Train until `config.total_steps` updates, resuming from `workdir/checkpoints` if it holds a checkpoint.

    `state` is the fresh initial state (placed on the step's shardings); when resuming it serves as the restore
    template and is replaced. Every step's metrics are fetched to host before the next step is dispatched: that
    bounds the dispatch queue (multi-device CPU collectives can deadlock otherwise) and makes the timing honest.
    Metrics are logged every `config.log_every` steps and at the last step (the summary's final metrics).
    On SIGTERM: finish the current step, save, wait for the write, return with `preempted=True`; with several
    processes, a SIGTERM on any of them stops all of them after the same step (`agree_to_stop`), and only
    process 0 writes the metrics files.
    """
    ckpt = Checkpointer(paths.join(config.workdir, "checkpoints"), keep=config.keep_checkpoints,
                        async_save=config.async_checkpointing)
    position: Position | None = None
    if ckpt.latest_step() is not None:
        state, position = ckpt.restore(state)
    step = int(jax.device_get(state.step))
    last_saved = step
    stop = threading.Event()
    stopping = False  # agreed by every process after each step
    uninstall = install_sigterm_handler(stop.set)
    logger = MetricsLogger(config.workdir, total_steps=config.total_steps, initial_step=step,
                           progress_bar=config.progress_bar, write=jax.process_index() == 0)
    try:
        it = batches(position)
        while step < config.total_steps and not stopping:
            try:
                batch, next_position = next(it)
            except StopIteration:
                break
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch)
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - t0
            if step % config.log_every == 0 or step + 1 == config.total_steps:
                logger.log(step, metrics, seconds=seconds)
            step, position = step + 1, next_position
            stopping = agree_to_stop(stop.is_set())
            if step % config.checkpoint_every == 0 or step == config.total_steps or stopping:
                ckpt.save(step, state, position)
                last_saved = step
        if step != last_saved:  # ran out of data between checkpoints
            ckpt.save(step, state, position)
    finally:
        ckpt.close()  # waits for the last write: a preempted process only exits after it is on disk
        logger.close()
        uninstall()
    return LoopResult(state=state, step=step, preempted=stopping, data_position=position)
