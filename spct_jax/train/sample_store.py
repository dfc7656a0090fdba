"""Sampling that survives preemption: trajectories written chunk by chunk as they are sampled, resumed by chunk.

RFT's rejective sampling and the meta RM's data sampling run for hours at 27B scale on preemptible TPU VMs. The
items are cut into chunks of a fixed number of items (`rft.chunk_items`, `metarm.chunk_items`); after each chunk,
process 0 writes it as one JSONL shard and then records it in the manifest:

    <dir>/manifest.json       {"version", "fingerprint": {...}, "num_chunks", "done": {"<k>": entry}}
    <dir>/chunk-00000.jsonl   one line per item of chunk 0 (what the stage keeps of it), in item order
    ...

A shard and the manifest each appear whole (a fixed hidden temp name, then a rename; an object store publishes an
object when its upload completes), the shard first: a kill between the two leaves a shard the manifest does not
list, which the rerun samples again and overwrites with the same bytes. A chunk is done when the manifest lists
it; a rerun resumes at the first chunk that is not and never samples a listed one again (`write` refuses to).

Fingerprint: the stage's settings (model, seed, sampling settings), the item count, `chunk_items` and a hash of
every item (uid, conversation, responses, ground truth), in order; each manifest entry also holds the hash of its
own chunk's items. A rerun whose fingerprint differs refuses to mix (`StoreMismatch`, naming the manifest and the
fields that differ): delete the folder to sample again.

Stopping: the SIGTERM flag and the per-step agreement are the training loop's (`train/checkpoint.py`:
`install_sigterm_handler`, `agree_to_stop`), called once per chunk instead of once per step. After a chunk is
written every process calls `agree_to_stop`, so a SIGTERM on any host stops every host after the same chunk, with
that chunk on disk and nothing partial visible; the process then exits 0. The same all-gather orders process 0's
write before any other process reads the shard (a shared run dir is assumed, as for every stage output).

Results do not depend on chunking: every trajectory is seeded per (item, sample, seed, salt)
(`grm/trajectories.py`, "One seed scheme"), so sampling a chunk's items alone gives the trajectories sampling
them among all items would, and the stages assemble their outputs in item order.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from spct_jax import paths
from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.parse import split_sections
from spct_jax.grm.trajectories import Trajectory

log = logging.getLogger("spct.samples")

MANIFEST = "manifest.json"
VERSION = 1
TEMP_SUFFIX = ".partial"  # `.<name>.partial`: a fixed name, so a killed run's leftover is replaced, never read


class StoreMismatch(ValueError):
    """The folder holds chunks sampled from other items or with other settings; the message names both."""


class StoreError(OSError):
    """A shard or manifest that cannot be used (missing, altered); the message names the file."""


# -- what a shard line holds ---------------------------------------------------------------------------------------
def item_key(item: PreferenceItem) -> str:
    """A hash of everything about an item that sampling or Eq. 10 reads (not `source` / `meta`)."""
    d = {"uid": item.uid, "context": [dict(t) for t in item.context], "responses": list(item.responses),
         "rewards": item.rewards, "best": item.best}
    return hashlib.sha256(json.dumps(d, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def trajectory_record(t: Trajectory) -> dict[str, Any]:
    """What a shard keeps of a trajectory: enough for the SFT example, Eq. 10 and the meta RM. Token ids and
    log-probs are left out (the prompt is rebuilt from the item; a 27B run would store gigabytes of them)."""
    return {"perm": list(t.perm), "template": t.template, "hinted": t.hinted, "text": t.text,
            "scores": None if t.scores is None else list(t.scores), "error": t.error, "correct": t.correct}


def trajectory_from_record(uid: str, d: Mapping[str, Any]) -> Trajectory:
    """The inverse of `trajectory_record`; ids and log-probs are empty (not stored)."""
    principles, critique = split_sections(d["text"])
    return Trajectory(uid=uid, perm=tuple(d["perm"]), template=d["template"], hinted=bool(d["hinted"]),
                      prompt_ids=(), completion_ids=(), logprobs=(), text=d["text"], principles=principles,
                      critique=critique, scores=None if d["scores"] is None else tuple(d["scores"]),
                      error=d["error"], correct=d["correct"])


def jsonl_bytes(lines: Sequence[Mapping[str, Any]]) -> bytes:
    """One JSON object per line, keys in insertion order: the same lines give the same bytes."""
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()


# -- atomic files --------------------------------------------------------------------------------------------------
def write_bytes_atomic(path: paths.PathLike, data: bytes) -> None:
    """Readers see the old file or the new one, never part of one; a kill leaves at most a hidden temp file."""
    p = paths.as_path(path)
    if paths.is_remote(p):  # an object is published only when its upload completes
        p.write_bytes(data)
        return
    tmp = p.parent / f".{p.name}{TEMP_SUFFIX}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, p)


@contextlib.contextmanager
def atomic_text_writer(path: paths.PathLike) -> Iterator[Any]:
    """A text file to stream into that appears at `path` only when the block ends without an error (a large
    assembled file need not be held in memory). Remote: written to a local temp file, then uploaded."""
    p = paths.as_path(path)
    if paths.is_remote(p):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            local = os.path.join(d, p.name)
            with open(local, "w", encoding="utf-8") as f:
                yield f
            paths.copy_file(local, p)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}{TEMP_SUFFIX}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


# -- collectives (all no-ops on one process) -----------------------------------------------------------------------
def _process_count() -> int:
    import jax

    return jax.process_count()


def is_main() -> bool:
    import jax

    return jax.process_index() == 0


def _any_process(flag: bool) -> bool:
    """True on every process when `flag` is set on any. Every process must call it."""
    if _process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def on_main(fn: Callable[[], None], what: str) -> None:
    """Run `fn` on process 0 while the others wait; every process returns after it, or raises if it failed.
    Every process must call it (the others learn the outcome from one all-gather)."""
    error: BaseException | None = None
    if is_main():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every process
            error = e
    if _any_process(error is not None):
        raise error or StoreError(f"{what} failed on process 0 (see its log)")


# -- the store -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ChunkRun:
    sampled: list[int]  # chunks sampled by this run, in order
    reused: list[int]  # chunks a previous run had finished
    preempted: bool  # stopped by SIGTERM after the last chunk in `sampled`
    num_chunks: int

    @property
    def complete(self) -> bool:
        return len(self.sampled) + len(self.reused) == self.num_chunks

    def as_dict(self) -> dict[str, Any]:
        return {"chunks": self.num_chunks, "sampled": self.sampled, "reused": self.reused,
                "complete": self.complete}


class ChunkStore:
    """Shards and manifest of one sampling phase in `directory` (module docstring).

    Every process constructs it and calls `open()` (a collective); process 0 alone writes. `fingerprint` is the
    stage's settings as plain JSON values; `keys` are the items' `item_key`s in sampling order.
    """

    def __init__(self, directory: paths.PathLike, *, fingerprint: Mapping[str, Any], keys: Sequence[str],
                 chunk_items: int):
        if chunk_items < 1:
            raise ValueError(f"chunk_items must be >= 1, got {chunk_items}")
        self.directory = paths.as_path(directory)
        self.keys = list(keys)
        self.chunk_items = int(chunk_items)
        self.num_chunks = -(-len(self.keys) // self.chunk_items)
        self.fingerprint = {**json.loads(json.dumps(dict(fingerprint))), "num_items": len(self.keys),
                            "chunk_items": self.chunk_items, "items_sha256": self._keys_sha(self.keys)}
        self.done: dict[int, dict[str, Any]] = {}
        self.run_id = uuid.uuid4().hex[:12]  # names this run in the manifest entries it writes

    @property
    def manifest_path(self) -> paths.Path:
        return self.directory / MANIFEST

    def bounds(self, k: int) -> tuple[int, int]:
        return k * self.chunk_items, min(len(self.keys), (k + 1) * self.chunk_items)

    def shard_path(self, k: int) -> paths.Path:
        return self.directory / f"chunk-{k:05d}.jsonl"

    def pending(self) -> list[int]:
        return [k for k in range(self.num_chunks) if k not in self.done]

    @staticmethod
    def _keys_sha(keys: Sequence[str]) -> str:
        return hashlib.sha256("\n".join(keys).encode()).hexdigest()

    # -- opening: every process agrees on the manifest and on which chunks are done --------------------------------
    def open(self) -> "ChunkStore":
        """Read and check the manifest (every process), then take process 0's list of done chunks, so that all
        processes sample the same chunks even if their views of the folder differ. A collective."""
        error: Exception | None = None
        done: dict[int, dict[str, Any]] = {}
        try:
            done = self._read_manifest()
            if is_main():
                self._clean_leftovers()
        except (StoreMismatch, StoreError, OSError, ValueError) as e:
            error = e
        if _any_process(error is not None):
            raise error or StoreError(f"{self.manifest_path}: refused on another process (see its log)")
        mask = np.zeros(max(1, self.num_chunks), np.int32)
        mask[list(done)] = 1
        if _process_count() > 1:
            from jax.experimental import multihost_utils

            mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
        agreed = [k for k in range(self.num_chunks) if mask[k]]
        if _any_process(any(k not in done for k in agreed)):  # a stale view of the folder on some host
            raise StoreError(f"{self.manifest_path}: the processes read different manifests; is {self.directory} "
                             "on a file system every host shares?")
        self.done = {k: done[k] for k in agreed}
        return self

    def _read_manifest(self) -> dict[int, dict[str, Any]]:
        path = self.manifest_path
        if not path.exists():
            return {}
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise StoreError(f"{path}: unreadable manifest ({e}); delete {self.directory} to sample again") from None
        if manifest.get("version") != VERSION:
            raise StoreError(f"{path}: manifest version {manifest.get('version')!r}, expected {VERSION}")
        theirs = manifest.get("fingerprint", {})
        if theirs != self.fingerprint:
            diff = sorted(k for k in set(theirs) | set(self.fingerprint) if theirs.get(k) != self.fingerprint.get(k))
            shown = "; ".join(f"{k}: {theirs.get(k)!r} there, {self.fingerprint.get(k)!r} now" for k in diff)
            raise StoreMismatch(f"{path}: these chunks were sampled from other items or with other settings "
                                f"({shown}); rerun with the settings they were sampled with, or delete "
                                f"{self.directory} to sample again")
        done = {int(k): v for k, v in manifest.get("done", {}).items()}
        for k, entry in done.items():
            start, stop = self.bounds(k)
            if entry.get("items_sha256") != self._keys_sha(self.keys[start:stop]):  # implied by the fingerprint
                raise StoreMismatch(f"{path}: chunk {k} was sampled from other items")
            shard = self.shard_path(k)
            if not shard.exists():
                raise StoreError(f"{shard}: missing, yet {path} lists chunk {k} as done; delete {self.directory} "
                                 "to sample again")
        return done

    def _clean_leftovers(self) -> None:
        if paths.is_remote(self.directory) or not self.directory.exists():
            return
        for p in self.directory.iterdir():
            if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX):  # a write a kill interrupted
                p.unlink()

    # -- writing (process 0) and reading (every process) ------------------------------------------------------------
    def write(self, k: int, lines: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None,
              seconds: float | None = None) -> None:
        """Record chunk k: its shard (one line per item), then its manifest entry. Every process calls it with the
        same lines (every process samples the whole chunk) and keeps the entry; process 0 alone writes. A
        collective on several processes (`on_main`)."""
        if k in self.done:
            raise StoreError(f"{self.shard_path(k)}: chunk {k} is already done; it is never sampled twice")
        start, stop = self.bounds(k)
        if len(lines) != stop - start:
            raise ValueError(f"chunk {k}: {len(lines)} lines for {stop - start} items")
        data = jsonl_bytes(lines)
        entry = {"items": stop - start, "first_item": start, "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(),
                 "items_sha256": self._keys_sha(self.keys[start:stop]), "meta": json.loads(json.dumps(meta or {})),
                 "run": self.run_id, "seconds": None if seconds is None else round(seconds, 3)}

        def publish() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.shard_path(k), data)
            self._write_manifest({**self.done, k: entry})

        on_main(publish, f"writing {self.shard_path(k)}")  # a failed write fails every process, not process 0 alone
        self.done[k] = entry

    def _write_manifest(self, done: Mapping[int, dict[str, Any]]) -> None:
        manifest = {"version": VERSION, "fingerprint": self.fingerprint, "num_chunks": self.num_chunks,
                    "done": {str(k): done[k] for k in sorted(done)}}
        write_bytes_atomic(self.manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())

    def read(self, k: int) -> list[dict[str, Any]]:
        """Chunk k's lines, checked against the manifest's size and hash."""
        entry, path = self.done.get(k), self.shard_path(k)
        if entry is None:
            raise StoreError(f"{path}: chunk {k} is not done")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise StoreError(f"{path}: cannot read ({e})") from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StoreError(f"{path}: differs from what {self.manifest_path} recorded (altered or truncated); "
                             f"delete {self.directory} to sample again")
        return [json.loads(line) for line in data.decode().splitlines()]

    def lines(self) -> Iterator[dict[str, Any]]:
        """Every item's line, in item order (every chunk must be done)."""
        for k in range(self.num_chunks):
            yield from self.read(k)

    def metas(self) -> list[dict[str, Any]]:
        return [self.done[k]["meta"] for k in sorted(self.done)]


def run_chunks(store: ChunkStore, sample: Callable[[int, int], tuple[list[dict[str, Any]], dict[str, Any]]], *,
               what: str = "sampling") -> ChunkRun:
    """Sample and write every chunk the store lacks, in order, stopping every process after the same chunk when any
    of them got a SIGTERM (module docstring). `sample(start, stop)` -> (one line per item, the chunk's meta); it
    is called on every process with the same arguments (it may be a collective)."""
    from spct_jax.train.checkpoint import agree_to_stop, install_sigterm_handler

    reused = sorted(store.done)
    if reused:
        log.info("%s: %d of %d chunks already done in %s; resuming at chunk %d", what, len(reused), store.num_chunks,
                 store.directory, (store.pending() or [store.num_chunks])[0])
    sampled: list[int] = []
    stopping = False
    flag = threading.Event()
    uninstall = install_sigterm_handler(flag.set)  # a flag only: the chunk in flight finishes and is written
    try:
        for k in store.pending():
            start, stop = store.bounds(k)
            log.info("%s: chunk %d of %d (items %d-%d)", what, k, store.num_chunks, start, stop - 1)
            t0 = time.perf_counter()
            lines, meta = sample(start, stop)
            store.write(k, lines, meta, seconds=time.perf_counter() - t0)
            sampled.append(k)
            log.info("%s: chunk %d written (%s)", what, k, store.shard_path(k).name)
            stopping = agree_to_stop(flag.is_set())  # also the barrier after process 0's write
            if stopping:
                break
    finally:
        uninstall()
    run = ChunkRun(sampled=sampled, reused=reused, preempted=stopping, num_chunks=store.num_chunks)
    if stopping:
        log.warning("%s: SIGTERM; stopped after chunk %d with %d of %d chunks done; the same command resumes",
                    what, sampled[-1], len(sampled) + len(reused), store.num_chunks)
    return run


# -- for the stage commands ----------------------------------------------------------------------------------------
def open_stage_store(directory: paths.PathLike, fingerprint: Mapping[str, Any], items: Sequence[PreferenceItem],
                     chunk_items: int) -> ChunkStore:
    """A stage's store, opened on every process; a mismatch (exit 2) or a damaged folder (exit 1) is a StageError."""
    from spct_jax.train.errors import StageError

    try:
        return ChunkStore(directory, fingerprint=fingerprint, keys=[item_key(i) for i in items],
                          chunk_items=chunk_items).open()
    except StoreMismatch as e:
        raise StageError(str(e)) from None
    except (StoreError, OSError) as e:
        raise StageError(str(e), exit_code=1) from None


def chunked_trajectories(grm: Any, items: Sequence[PreferenceItem], store: ChunkStore, num: int, *, seed: int,
                         cfg: Any, salt: int = 0, max_batch_rows: int = 256) -> ChunkRun:
    """`grm.trajectories(items, num, ...)` one chunk of `store` at a time, each chunk's lines
    {"index", "uid", "trajectories"} written as it is done (`run_chunks`); `stored_trajectories` reads them back."""
    if store.keys != [item_key(item) for item in items]:
        raise ValueError("the store was opened for other items")

    def sample(start: int, stop: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        trajs = grm.trajectories(items[start:stop], num, seed=seed, cfg=cfg, salt=salt, max_batch_rows=max_batch_rows)
        lines = [{"index": start + i, "uid": item.uid, "trajectories": [trajectory_record(t) for t in ts]}
                 for i, (item, ts) in enumerate(zip(items[start:stop], trajs))]
        return lines, {"trajectories": sum(map(len, trajs))}

    return run_chunks(store, sample)


def stored_trajectories(store: ChunkStore) -> list[list[Trajectory]]:
    """Every item's trajectories from a finished store of `chunked_trajectories`, in item order."""
    return [[trajectory_from_record(line["uid"], t) for t in line["trajectories"]] for line in store.lines()]


__all__ = ["ChunkRun", "ChunkStore", "StoreError", "StoreMismatch", "atomic_text_writer", "chunked_trajectories",
           "item_key", "jsonl_bytes", "on_main", "open_stage_store", "run_chunks", "stored_trajectories",
           "trajectory_from_record", "trajectory_record", "write_bytes_atomic"]
