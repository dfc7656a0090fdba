"""Checkpoints that resume exactly, and SIGTERM (TPU VM preemption) handling.

A checkpoint is one orbax step directory with two items:
  state  the whole `TrainState` (params, optimizer state, step, rng), restored bit-exact onto the template's
         shardings;
  data   a JSON "data position" (e.g. {"epoch": 2, "index": 17}), the batch iterator's place *after* the last
         batch the saved state has consumed, so a resumed run reads exactly the batches it has not trained on.
Saves are asynchronous (orbax copies the arrays to host before `save` returns, then writes in the background);
an interrupted save stays an invisible `*.orbax-checkpoint-tmp` and the previous step remains the latest.

SIGTERM is turned into a flag (`install_sigterm_handler`), never into work done inside the signal handler: the
handler can run between any two bytecodes, including inside the dispatch of a step whose input state is already
donated. The training loop checks the flag between steps, saves, waits for the write and returns, so the process
exits 0.

Multi-host: a preempted slice may signal one host, or signal hosts at different moments, yet a checkpoint is a
collective (every process writes its shards of the same step) and so is every later train step. After each step
every process calls `agree_to_stop` with its own flag; it all-gathers the flags, so all processes see the same
answer at the same step and stop together, and the SIGTERM of any one host saves the whole state. On one process
it is the flag itself, with no communication.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from spct_jax.train.state import TrainState

log = logging.getLogger(__name__)


class Checkpointer:
    """orbax `CheckpointManager` keeping the newest `keep` steps; `save`/`restore` a TrainState + data position."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.directory = os.path.abspath(os.fspath(directory))
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def save(self, step: int, state: TrainState, data_position: dict[str, Any] | None) -> None:
        """Start saving `state` as step `step` (a re-save of an existing step is skipped)."""
        if step in self.manager.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(dict(data_position or {})))
        self.manager.save(step, args=args, force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """Restore step `step` (default: latest) with the shapes, dtypes and shardings of `template`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 data=ocp.args.JsonRestore()))
        return out["state"], dict(out["data"] or {})

    def wait(self) -> None:
        """Block until the in-flight save (if any) is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()  # waits for in-flight saves

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def install_sigterm_handler(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback()` on SIGTERM instead of dying; returns a function that restores the previous handler.

    Keep `callback` to setting a flag (see the module docstring). Signal handlers can only be installed from the
    main thread; elsewhere this logs a warning and installs nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        log.warning("not on the main thread: SIGTERM will not trigger a checkpoint")
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        callback()

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def agree_to_stop(requested: bool) -> bool:
    """True on every process when any process has a stop request; every process must call it at the same step.

    One tiny all-gather per call (an int32 per process), negligible next to a train step's own collectives.
    """
    if jax.process_count() == 1:
        return requested
    flags = multihost_utils.process_allgather(np.asarray(requested, np.int32))  # [num_processes]
    return bool(np.any(flags))
