"""The micro-batcher: concurrent scoring jobs become one `score` call, run on ONE worker thread.

Why one thread: sampling is a blocking jitted JAX call that takes seconds; it must never run on the event loop, and
two concurrent calls would only fight over the same cores and compile caches. So every call goes through a single
worker, and batching is how concurrent requests share it.

Rules:
  * A job is one HTTP request's items (1 for /v1/score, one per distinct prompt for /get_reward) plus the sampling
    parameters (k, k_meta, temperature). Only jobs with equal parameters share a call, because `score` takes one k.
  * When the worker is idle it takes the oldest job and waits up to `batch_wait_s` for more to arrive; while it is
    busy, new jobs queue up and the next call takes them at once. A call holds at most `max_batch` items; a single
    job larger than that is scored in chunks of `max_batch`, one call after another.
  * `max_queue` bounds the jobs waiting (not the ones being scored): `submit` raises `QueueFull` beyond it.
  * A job past its deadline is dropped unscored (`DeadlineExceeded`); a job whose future was cancelled (its HTTP
    request timed out) is skipped. A job already being scored cannot be cancelled: its result is simply discarded.
  * If a call with several jobs fails, each job is retried alone, so one bad item cannot fail its neighbours.
  * `close(drain=True)` refuses new jobs, finishes every queued one, then stops the worker.

Testable without HTTP: give it any object with a `score(items, *, k, k_meta, temperature, max_new_tokens, seed,
progress)` method returning one Judgement per item.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from spct_jax.grm.scorer import Judgement
from spct_jax.serve.metrics import Metrics


class Scorer(Protocol):
    def score(self, items: Sequence[Mapping[str, Any]], *, k: int, k_meta: int | None, temperature: float,
              max_new_tokens: int, seed: int, progress: bool | None) -> list[Judgement]: ...


class QueueFull(RuntimeError):
    """The bounded queue is full: answer 503."""


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new jobs: answer 503."""


class DeadlineExceeded(TimeoutError):
    """The job's deadline passed before the worker reached it: answer 504."""


@dataclasses.dataclass(frozen=True)
class ScoreParams:
    """Sampling parameters; jobs share a scorer call only when these are equal."""

    k: int
    k_meta: int | None
    temperature: float


@dataclasses.dataclass(eq=False)
class Job:
    items: list[dict[str, Any]]
    params: ScoreParams
    deadline: float | None  # time.monotonic() value
    future: concurrent.futures.Future[list[Judgement]] = dataclasses.field(
        default_factory=concurrent.futures.Future)


class Batcher:
    def __init__(self, scorer: Scorer, *, max_batch: int = 8, max_queue: int = 256, batch_wait_s: float = 0.005,
                 max_new_tokens: int = 512, seed: int = 0, metrics: Metrics | None = None):
        if max_batch < 1 or max_queue < 1 or batch_wait_s < 0:
            raise ValueError("need max_batch >= 1, max_queue >= 1 and batch_wait_s >= 0")
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.metrics = metrics or Metrics()
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- producer side (any thread) ---------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="spct-serve-scorer", daemon=True)
            self._thread.start()

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return sum(not j.future.cancelled() for j in self._queue)

    def submit(self, items: list[dict[str, Any]], params: ScoreParams, *,
               deadline: float | None = None) -> concurrent.futures.Future[list[Judgement]]:
        """Queue one job; its future resolves to one Judgement per item, in order."""
        if not items:
            raise ValueError("a job needs at least one item")
        job = Job(items=list(items), params=params, deadline=deadline)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                # Jobs whose requests already timed out still sit in the deque; they should not cost a slot.
                self._queue = collections.deque(j for j in self._queue if not j.future.cancelled())
                if len(self._queue) >= self.max_queue:
                    raise QueueFull(f"{len(self._queue)} jobs queued (--max-queue {self.max_queue})")
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs; with drain, finish the queued ones first, else fail them with BatcherClosed."""
        with self._cond:
            self._closed = True
            if not drain:
                while self._queue:
                    job = self._queue.popleft()
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(BatcherClosed("the server shut down before scoring this job"))
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- worker side ------------------------------------------------------------------------------------------------
    def _claim(self, job: Job) -> bool:
        """Move a job from queued to running; False when it was cancelled or has expired (then it is settled)."""
        if not job.future.set_running_or_notify_cancel():
            return False
        if job.deadline is not None and time.monotonic() >= job.deadline:
            job.future.set_exception(DeadlineExceeded("the request timed out while queued"))
            return False
        return True

    def _next_batch(self) -> list[Job] | None:
        """Block for the oldest live job, then gather compatible jobs for up to batch_wait_s; None once closed."""
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None  # closed and drained
                first = self._queue.popleft()
                if self._claim(first):
                    break
            batch, size = [first], len(first.items)
            until = time.monotonic() + self.batch_wait_s
            while size < self.max_batch:
                picked = None
                for job in self._queue:
                    if job.params == first.params and size + len(job.items) <= self.max_batch:
                        picked = job
                        break
                if picked is not None:
                    self._queue.remove(picked)
                    if self._claim(picked):
                        batch.append(picked)
                        size += len(picked.items)
                    continue
                left = until - time.monotonic()
                if left <= 0 or self._closed:  # when closing, do not linger: the queue is all there is
                    break
                self._cond.wait(left)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._score_batch(batch)
            except BaseException as e:  # never let the worker die with futures pending
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)

    def _call(self, items: list[dict[str, Any]], params: ScoreParams, jobs: int) -> list[Judgement]:
        """One scorer call of at most max_batch items, recorded in the metrics."""
        t0 = time.perf_counter()
        out = self.scorer.score(items, k=params.k, k_meta=params.k_meta, temperature=params.temperature,
                                max_new_tokens=self.max_new_tokens, seed=self.seed, progress=False)
        if len(out) != len(items):
            raise RuntimeError(f"scorer returned {len(out)} judgements for {len(items)} items")
        self.metrics.record_batch(requests=jobs, items=len(items), seconds=time.perf_counter() - t0,
                                  samples=sum(j.num_valid + j.num_failed for j in out),
                                  failed=sum(j.num_failed for j in out))
        return list(out)

    def _score_job_alone(self, job: Job) -> None:
        try:
            out: list[Judgement] = []
            for start in range(0, len(job.items), self.max_batch):
                out += self._call(job.items[start:start + self.max_batch], job.params, 1)
        except Exception as e:
            job.future.set_exception(e)
        else:
            job.future.set_result(out)

    def _score_batch(self, batch: list[Job]) -> None:
        if len(batch) == 1:
            self._score_job_alone(batch[0])
            return
        items = [it for job in batch for it in job.items]
        try:
            out = self._call(items, batch[0].params, len(batch))
        except Exception:
            for job in batch:  # isolate the failing job: everyone else still gets an answer
                self._score_job_alone(job)
            return
        r = 0
        for job in batch:
            job.future.set_result(out[r:r + len(job.items)])
            r += len(job.items)
