"""Training metrics: TensorBoard event files (tensorboardX), a JSONL log, and a tqdm bar with loss and tokens/s.

The JSONL log is appended to, so a resumed run continues the same file; steps that ran after the last checkpoint
of an interrupted run appear twice, and the later record is the one that belongs to the finished run
(`read_jsonl_metrics` keeps the last record per step).

A workdir on an object store (`gs://...`, spct_jax.paths) cannot be appended to: the logger then writes both
files into a local mirror (seeded with the remote metrics.jsonl, so a resumed run still continues it) and uploads
them whole every `sync_every_s` seconds and on close. A gcsfuse path is local and written directly.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Mapping

import numpy as np
import tqdm

from spct_jax import paths


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _to_float(x: Any) -> float:
    return float(np.asarray(x))


class MetricsLogger:
    """`log(step, metrics, seconds)` writes one record; `close()` flushes. Files live under `workdir`:
    `metrics.jsonl` and `tensorboard/` (event files).

    write=False (every process but the first of a multi-host run: they all compute the same replicated metrics,
    and appending to one shared metrics.jsonl from several hosts would interleave records) keeps the records and
    the progress bar but opens no file.
    """

    def __init__(self, workdir: str | os.PathLike, *, total_steps: int, initial_step: int = 0,
                 progress_bar: bool = True, prefix: str = "train", write: bool = True, sync_every_s: float = 30.0):
        self.jsonl_path = str(paths.join(workdir, "metrics.jsonl")) if paths.is_remote(workdir) else \
            os.path.join(workdir, "metrics.jsonl")
        self._jsonl = self._tb = None
        self._remote = paths.as_path(workdir) if write and paths.is_remote(workdir) else None
        self._mirror: str | None = None
        self._sync_every_s, self._synced_at = sync_every_s, time.monotonic()
        if write:
            local = workdir
            if self._remote is not None:
                local = self._mirror = tempfile.mkdtemp(prefix="spct-metrics-")
                if (self._remote / "metrics.jsonl").exists():  # resuming: continue the same log
                    paths.copy_file(self._remote / "metrics.jsonl", os.path.join(local, "metrics.jsonl"))
            os.makedirs(local, exist_ok=True)
            local_jsonl = os.path.join(local, "metrics.jsonl")
            self._jsonl = open(local_jsonl, "a", encoding="utf-8")
            if self._jsonl.tell() > 0 and not _ends_with_newline(local_jsonl):
                self._jsonl.write("\n")  # a run killed mid-write left half a line: keep the next record whole
            from tensorboardX import SummaryWriter  # here, not at import: it pulls in torch when torch is installed

            self._tb = SummaryWriter(os.path.join(local, "tensorboard"))
        self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, disable=not progress_bar, dynamic_ncols=True)
        self.prefix = prefix

    def _sync(self) -> None:
        """Upload the mirror's files whole (an object is replaced at once: readers never see half a file)."""
        self._tb.flush()
        for root, _, files in os.walk(self._mirror):
            rel = os.path.relpath(root, self._mirror)
            dest = self._remote if rel == "." else self._remote / rel
            dest.mkdir(parents=True, exist_ok=True)
            for name in files:
                paths.copy_file(os.path.join(root, name), dest / name)
        self._synced_at = time.monotonic()

    def log(self, step: int, metrics: Mapping[str, Any], *, seconds: float | None = None) -> dict[str, float]:
        record = {k: _to_float(v) for k, v in metrics.items()}
        if seconds is not None and seconds > 0:
            record["step_seconds"] = seconds
            if "tokens" in record:
                record["tokens_per_s"] = record["tokens"] / seconds
        if self._jsonl is not None:
            for k, v in record.items():
                if math.isfinite(v):
                    self._tb.add_scalar(f"{self.prefix}/{k}", v, step)
            self._jsonl.write(json.dumps({"step": step, "time": time.time(), **record}) + "\n")
            self._jsonl.flush()
            if self._remote is not None and time.monotonic() - self._synced_at >= self._sync_every_s:
                self._sync()
        postfix = {k: f"{record[k]:.4g}" for k in ("loss", "tokens_per_s") if k in record}
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)
        return record

    def close(self) -> None:
        self._bar.close()
        if self._jsonl is not None:
            self._tb.close()
            self._jsonl.close()
            if self._remote is not None:
                self._sync()
                shutil.rmtree(self._mirror, ignore_errors=True)
            self._jsonl = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl_metrics(path: str | os.PathLike) -> dict[int, dict[str, float]]:
    """step -> record; for a step logged more than once (a resumed run), the last record wins."""
    out: dict[int, dict[str, float]] = {}
    with paths.as_path(path).open("r") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # blank, or the half line of a killed run
            out[int(rec["step"])] = rec
    return out
