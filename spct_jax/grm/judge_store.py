"""Judging that survives preemption: `spct score` and `spct eval run` keep every finished chunk of items, and a
rerun with the same output picks up the items not yet judged.

    <dir>/manifest.json       {"version", "fingerprint": {...}, "done": {"<n>": {"items": [i, ...], "bytes", "sha256"}}}
    <dir>/chunk-00000.jsonl   one line per item of chunk 0 (what the command keeps of it), in its "items" order

(<dir> is `<out>/.judging` for `spct eval run`, `.<name>.judging` beside `spct score --output <name>`.) The same
design as the training stages' sample store (`train/sample_store.py`), which grm may not import: a shard appears
whole (a hidden temp name, then a rename; an object store publishes an object when its upload completes), then the
manifest lists it; a kill between the two leaves a shard the manifest does not list, which the rerun judges again.
Items already listed are never judged twice. The folder is removed once the command has written its outputs.

Fingerprint: the settings that decide a judgement (model, meta RM, dtype, k, temperature, seed, ...) and a hash
of every item, in order. A rerun whose fingerprint differs refuses to mix (exit 2, naming the fields that differ).
The mesh and the chunk size are not in it: a judgement does not depend on either (every sample is seeded by its
item, `grm/trajectories.py`), so a run may resume on another slice or with another `--batch-items`.

Processes. Every process judges every chunk (the sampler is a collective over the mesh); process 0 alone reads
and writes the folder, so it need not be shared storage: the others learn which items are done from process 0
(a broadcast) and wait for each write at the same all-gather that carries the SIGTERM flags. A SIGTERM reaching
any process stops every process after the same chunk, that chunk written; the command then exits 0 and the same
command line resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from spct_jax import paths
from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.judge import JudgeError

MANIFEST = "manifest.json"
VERSION = 1


# -- collectives (no-ops on one process) ----------------------------------------------------------------------------
def process_index() -> int:
    import jax

    return jax.process_index()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is set on any; every process must call it (it is also a barrier)."""
    import jax

    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def on_main(fn: Callable[[], Any], what: str) -> Any:
    """Run `fn` on process 0 while the others wait; every process returns after it (process 0 with fn's result,
    the others with None), or raises if it failed. Every process must call it."""
    error: BaseException | None = None
    result = None
    if process_index() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every process
            error = e
    if any_process(error is not None):
        raise error or OSError(f"{what} failed on process 0 (see its log)")
    return result


def _broadcast_mask(mask: np.ndarray) -> np.ndarray:
    import jax

    if jax.process_count() == 1:
        return mask
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(mask))


# -- files ---------------------------------------------------------------------------------------------------------
def write_bytes_atomic(path: paths.PathLike, data: bytes) -> None:
    """Readers see the old file or the new one: local = hidden temp file + rename; remote = one upload."""
    p = paths.as_path(path)
    if paths.is_remote(p):
        p.write_bytes(data)
        return
    tmp = p.parent / f".{p.name}.partial"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def jsonl_bytes(lines: Sequence[Mapping[str, Any]]) -> bytes:
    # ensure_ascii: generations can hold lone surrogates, which only an escaped form survives UTF-8 with.
    # default=str: a reader's meta may hold a value JSON lacks (a date); losing its type beats losing the run.
    return "".join(json.dumps(x, default=str) + "\n" for x in lines).encode("ascii")


def item_key(item: PreferenceItem) -> str:
    """A hash of everything a judged line holds of its item."""
    d = {"uid": item.uid, "context": [dict(t) for t in item.context], "responses": list(item.responses),
         "rewards": item.rewards, "best": item.best, "source": item.source, "meta": item.meta}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


# -- the store -----------------------------------------------------------------------------------------------------
class JudgeStore:
    """Finished chunks of one judging run in `directory` (module docstring). Every process constructs it and calls
    `open()`, `write()` and `finish()` (collectives); `lines()` is for process 0."""

    def __init__(self, directory: paths.PathLike, *, fingerprint: Mapping[str, Any], items: Sequence[PreferenceItem]):
        self.directory = paths.as_path(directory)
        keys = [item_key(it) for it in items]
        self.num_items = len(keys)
        self.fingerprint = {**json.loads(json.dumps(dict(fingerprint), default=str)), "num_items": len(keys),
                            "items_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()}
        self.done: dict[int, dict[str, Any]] = {}  # chunk number -> manifest entry (process 0)
        self.done_items: set[int] = set()  # item indices already judged (every process)

    @property
    def manifest_path(self):
        return self.directory / MANIFEST

    def shard_path(self, n: int):
        return self.directory / f"chunk-{n:05d}.jsonl"

    def open(self) -> "JudgeStore":
        """Process 0 reads and checks the manifest; every process then takes its list of judged items. A mismatch
        raises JudgeError (exit 2) on every process, a damaged folder exit 1."""
        def read() -> None:
            self.done = self._read_manifest()

        try:
            on_main(read, f"reading {self.manifest_path}")
        except JudgeError:
            raise
        except (OSError, ValueError) as e:
            raise JudgeError(str(e), exit_code=1) from None
        mask = np.zeros(max(1, self.num_items), np.int32)
        for entry in self.done.values():
            mask[entry["items"]] = 1
        mask = _broadcast_mask(mask)
        self.done_items = {int(i) for i in np.flatnonzero(mask[:self.num_items])}
        return self

    def _read_manifest(self) -> dict[int, dict[str, Any]]:
        path = self.manifest_path
        if not path.exists():
            return {}
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise JudgeError(f"{path}: unreadable ({e}); delete {self.directory} to judge again", 1) from None
        theirs = manifest.get("fingerprint", {})
        if manifest.get("version") != VERSION or theirs != self.fingerprint:
            diff = sorted(k for k in set(theirs) | set(self.fingerprint) if theirs.get(k) != self.fingerprint.get(k))
            shown = "; ".join(f"{k}: {theirs.get(k)!r} there, {self.fingerprint.get(k)!r} now" for k in diff)
            raise JudgeError(f"{self.directory} holds items judged with other settings or from other items ({shown}); "
                             f"rerun with the settings it was started with, or delete it to judge again")
        done = {int(n): entry for n, entry in manifest.get("done", {}).items()}
        for n in done:
            if not self.shard_path(n).exists():
                raise JudgeError(f"{self.shard_path(n)}: missing, yet {path} lists it; delete {self.directory} to "
                                 "judge again", 1)
        return done

    def write(self, indices: Sequence[int], lines: Sequence[Mapping[str, Any]]) -> None:
        """Record one chunk: process 0 writes its shard, then the manifest; every process calls it with the same
        indices and learns the outcome (a failed write fails every process)."""
        if len(indices) != len(lines):
            raise ValueError(f"{len(lines)} lines for {len(indices)} items")
        if self.done_items.intersection(indices):
            raise ValueError(f"items {sorted(self.done_items.intersection(indices))} are already judged")
        n = max(self.done, default=-1) + 1 if process_index() == 0 else None

        def publish() -> None:
            data = jsonl_bytes(lines)
            entry = {"items": [int(i) for i in indices], "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()}
            self.directory.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.shard_path(n), data)
            manifest = {"version": VERSION, "fingerprint": self.fingerprint,
                        "done": {str(k): v for k, v in sorted({**self.done, n: entry}.items())}}
            write_bytes_atomic(self.manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
            self.done[n] = entry

        on_main(publish, f"writing {self.directory}")
        self.done_items.update(int(i) for i in indices)

    def lines(self) -> list[dict[str, Any]]:
        """Process 0: every item's line, in item order (every item must be judged); checked against the manifest."""
        out: list[dict[str, Any] | None] = [None] * self.num_items
        for n, entry in sorted(self.done.items()):
            path = self.shard_path(n)
            data = path.read_bytes()
            if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise JudgeError(f"{path}: differs from what {self.manifest_path} recorded (altered or truncated); "
                                 f"delete {self.directory} to judge again", 1)
            for i, line in zip(entry["items"], data.decode().splitlines(), strict=True):
                out[i] = json.loads(line)
        missing = [i for i, x in enumerate(out) if x is None]
        if missing:
            raise JudgeError(f"{self.directory}: items {missing[:5]} are not judged yet", 1)
        return out  # type: ignore[return-value]

    def remove(self) -> None:
        """Process 0: delete the folder once the outputs are written."""
        paths.rmtree(self.directory)


@dataclasses.dataclass(frozen=True)
class Progress:
    judged: int  # items judged by this run
    reused: int  # items a previous run had judged
    total: int
    preempted: bool  # stopped by SIGTERM before every item was judged

    @property
    def complete(self) -> bool:
        return self.judged + self.reused == self.total


class _SigtermFlag:
    """SIGTERM sets a flag instead of killing the process (main thread only; elsewhere nothing is installed)."""

    def __init__(self):
        self.event = threading.Event()
        self.previous = None

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.event.set())
        return self.event

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def chunks(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start:start + size])


def judge_in_chunks(store: JudgeStore, judge: Callable[[list[int]], list[dict[str, Any]]], *, chunk_items: int,
                    progress: Callable[[int], None] | None = None) -> Progress:
    """Judge every item the store lacks, `chunk_items` at a time, writing each chunk as it is done; stop every
    process after the same chunk when any got a SIGTERM. judge(indices) -> one line per item (a collective: every
    process calls it with the same indices)."""
    if chunk_items < 1:
        raise ValueError(f"chunk_items must be >= 1, got {chunk_items}")
    pending = [i for i in range(store.num_items) if i not in store.done_items]
    reused = store.num_items - len(pending)
    if progress is not None and reused:
        progress(reused)
    judged, stopping = 0, False
    with _SigtermFlag() as sigterm:
        for chunk in chunks(pending, chunk_items):
            store.write(chunk, judge(chunk))
            judged += len(chunk)
            if progress is not None:
                progress(len(chunk))
            stopping = any_process(sigterm.is_set())  # also orders process 0's write before the next chunk
            if stopping:
                break
    return Progress(judged=judged, reused=reused, total=store.num_items,
                    preempted=stopping and judged + reused < store.num_items)


__all__ = ["JudgeStore", "Progress", "any_process", "item_key", "judge_in_chunks", "jsonl_bytes", "on_main",
           "write_bytes_atomic"]
