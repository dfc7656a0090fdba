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

Directories may be local, gcsfuse or `gs://bucket/...` (spct_jax.paths; orbax writes gs:// through tensorstore).
`ParamsReader` reads a saved step's params alone, one tensor at a time (no optimizer state, no template), which is
what `spct export` needs to turn a checkpoint into an HF folder offline.

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

from spct_jax import paths
from spct_jax.train.errors import StageError
from spct_jax.train.state import TrainState

log = logging.getLogger(__name__)


class CheckpointError(StageError):
    """A saved step that cannot be restored (truncated or damaged files). A StageError, so the stage commands print
    it as one line (exit 1: an input that cannot be read) instead of orbax's / tensorstore's traceback."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=1)


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = text.split(" See full TensorStore details")[0]  # the rest is a repr of the whole store spec
    return text if len(text) <= limit else text[:limit] + "..."


class Checkpointer:
    """orbax `CheckpointManager` keeping the newest `keep` steps; `save`/`restore` a TrainState + data position."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.directory = paths.as_path(directory)  # orbax needs an absolute path; a gs:// URI stays as written
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
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     data=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - tensorstore raises bare Exceptions; any failure means this step
            raise self._restore_error(step, e) from e
        return out["state"], dict(out["data"] or {})

    def _restore_error(self, step: int, e: Exception) -> CheckpointError:
        """Name the step folder and what remains: never fall back silently, since resuming from an older step
        repeats training the user may not want to pay for twice."""
        older = sorted(s for s in self.manager.all_steps() if s < step)
        folder = self.directory / str(step)
        if older:
            todo = (f"the older steps {older} remain: move {folder} away (or delete it) and rerun to resume from step "
                    f"{older[-1]}")
        else:
            todo = f"no older step remains: delete {self.directory} to start this stage over"
        return CheckpointError(f"{folder}: checkpoint step {step} cannot be restored ({_first_line(e)}); {todo}")

    def wait(self) -> None:
        """Block until the in-flight save (if any) is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()  # waits for in-flight saves

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ParamsReader:
    """The params of one saved step, read a tensor at a time: `shapes()` lists them, `read(path, sharding)`
    restores one (orbax partial restore; with a NamedSharding over several processes each reads its shards).

    Params live in the step's "state" item under "params", each nnx Variable as {"value": array}; a param path is
    the nnx state path, e.g. ("layers", "attn", "q_proj", "kernel") or ("backbone", "embed"). The decoder's block
    params are stacked [L, ...]: `read` returns all layers of one (its shards of them, with a sharding over
    several processes); `weights.tensor_blocks(..., layer=l)` cuts one layer out on device.
    """

    def __init__(self, directory: paths.PathLike, step: int | None = None):
        self.directory = paths.as_path(directory)
        if not self.directory.exists():
            raise FileNotFoundError(f"no checkpoint directory {self.directory}")
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})
        self.step = self.manager.latest_step() if step is None else step
        if self.step is None or self.step not in self.manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint step {step if step is not None else ''}".strip()
                                    + f" (steps: {sorted(self.manager.all_steps())})")
        tree = self.manager.item_metadata(self.step)["state"]
        tree = getattr(tree, "tree", tree)
        if not isinstance(tree, dict) or "params" not in tree:
            raise ValueError(f"{self.directory}/{self.step}: the state item holds no params")
        self._meta: dict[tuple[Any, ...], Any] = {}

        def walk(node: Any, path: tuple[Any, ...]) -> None:
            if isinstance(node, dict) and set(node) == {"value"} and not isinstance(node["value"], dict):
                self._meta[path] = node["value"]
            elif isinstance(node, dict):
                for k, v in node.items():
                    walk(v, path + (int(k) if str(k).isdigit() else k,))

        walk(tree["params"], ())

    def shapes(self) -> dict[tuple[Any, ...], tuple[tuple[int, ...], np.dtype]]:
        return {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in self._meta.items()}

    def read(self, path: tuple[Any, ...], sharding: jax.sharding.Sharding | None = None) -> jax.Array:
        if path not in self._meta:
            raise KeyError(f"{self.directory}/{self.step}: no param {'/'.join(map(str, path))}")
        meta = self._meta[path]
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        item: Any = {"value": jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=sharding)}
        for key in reversed(path):
            item = {str(key): item}
        item = {"params": item}
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape,
                                                                   dtype=s.dtype), item)
        out = self.manager.restore(self.step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)))["state"]
        out = out["params"]
        for key in path:
            out = out[str(key)]
        return out["value"]

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> "ParamsReader":
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
