"""The micro-batcher: concurrent scoring jobs become one `score` call, run on ONE worker thread.

Why one thread: sampling is a blocking jitted JAX call that takes seconds; it must never run on the event loop, and
two concurrent calls would only fight over the same cores and compile caches. So every call goes through a single
worker, and batching is how concurrent requests share it.

Rules:
  * A job is one HTTP request's items (1 for /v1/score, one per distinct prompt for /get_reward) plus the sampling
    parameters (k, k_meta, temperature). Only jobs with equal parameters share a call, because `score` takes one k.
  * When the worker is idle it takes the oldest job and waits up to `batch_wait_s` for more to arrive; while it is
    busy, new jobs queue up and the next call takes them at once. A call holds at most `max_batch` items, filled
    in queue order; a job larger than the room left is split, and what remains of it goes back in the queue once
    that call is done, behind the jobs that arrived meanwhile: jobs take turns a call at a time, so a small
    request behind a big one waits for the call in flight, not for all of the big one.
  * `max_queue` bounds the ITEMS waiting for the scorer (those of queued jobs, and the chunks of a big job not yet
    taken), not the requests: a request of 120 prompts costs 120 times one of 1, so counting requests would let
    one request walk around the bound. `submit` raises `QueueFull` when the job does not fit now, `JobTooLarge`
    when it never could (more items than `max_queue`).
  * A job is dropped, unscored, at the next chunk boundary once its deadline has passed (`DeadlineExceeded`) or
    once its future is cancelled (its HTTP request timed out or its client went away: `JobFuture.cancel`). Only
    the chunk already inside the scorer finishes; the rest of the job never reaches it, so abandoned work stops
    holding the worker within one call.
  * If a call with several jobs fails, each job's part is retried alone, so one bad item cannot fail its
    neighbours.
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


class JobTooLarge(ValueError):
    """A job with more items than the whole queue may hold: it can never be accepted, so answer 413, not 503."""


class BatcherClosed(RuntimeError):
    """The batcher is shutting down and takes no new jobs: answer 503."""


class DeadlineExceeded(TimeoutError):
    """The job's deadline passed before the worker reached (the rest of) it: answer 504."""


class Abandoned(RuntimeError):
    """The job's future was cancelled while it was being scored; the rest of it was dropped. Nobody waits for it."""


class JobFuture(concurrent.futures.Future):
    """A job's result. Unlike a plain Future, `cancel()` also works once scoring has started: it marks the job
    abandoned, and the worker drops what it has not yet handed to the scorer (it returns False then, as a plain
    Future's would). asyncio's `wrap_future` calls it when the awaiting task is cancelled or times out."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned = threading.Event()

    def cancel(self) -> bool:
        self.abandoned.set()
        return super().cancel()


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
    future: JobFuture = dataclasses.field(default_factory=JobFuture)
    taken: int = 0  # items handed to the scorer so far (changed under the batcher's lock)
    results: list[Judgement] = dataclasses.field(default_factory=list)  # in item order (worker thread only)

    @property
    def waiting(self) -> int:
        return len(self.items) - self.taken


Part = tuple[Job, int, int]  # (job, start, stop): the job's items [start, stop) in one scorer call


class Batcher:
    def __init__(self, scorer: Scorer, *, max_batch: int = 8, max_queue: int = 256, batch_wait_s: float = 0.005,
                 max_new_tokens: int = 512, seed: int = 0, metrics: Metrics | None = None):
        if max_batch < 1 or max_queue < 1 or batch_wait_s < 0:
            raise ValueError("need max_batch >= 1, max_queue >= 1 and batch_wait_s >= 0")
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_queue = max_queue  # items
        self.batch_wait_s = batch_wait_s
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.metrics = metrics or Metrics()
        self._queue: collections.deque[Job] = collections.deque()
        self._resting: list[Job] = []  # split jobs whose rest rejoins the queue when the call in flight is done
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
        """Items waiting for the scorer (what max_queue bounds)."""
        with self._cond:
            return self._waiting_items()

    @property
    def queued_requests(self) -> int:
        with self._cond:
            return sum(not j.future.abandoned.is_set() for j in (*self._queue, *self._resting))

    def _waiting_items(self) -> int:
        # Abandoned jobs still sit in the deque until the worker reaches them; they should not cost a slot.
        return sum(j.waiting for j in (*self._queue, *self._resting) if not j.future.abandoned.is_set())

    def submit(self, items: list[dict[str, Any]], params: ScoreParams, *,
               deadline: float | None = None) -> JobFuture:
        """Queue one job; its future resolves to one Judgement per item, in order."""
        if not items:
            raise ValueError("a job needs at least one item")
        if len(items) > self.max_queue:
            raise JobTooLarge(f"{len(items)} items in one request; the queue holds at most {self.max_queue} "
                              "(--max-queue)")
        job = Job(items=list(items), params=params, deadline=deadline)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            waiting = self._waiting_items()
            if waiting + len(items) > self.max_queue:
                raise QueueFull(f"{waiting} items queued, {len(items)} more would pass --max-queue {self.max_queue}")
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs; with drain, finish the queued ones first, else fail them with BatcherClosed."""
        with self._cond:
            self._closed = True
            if not drain:
                self._queue.extend(self._resting)
                self._resting.clear()
                while self._queue:
                    job = self._queue.popleft()
                    if job.taken == 0 and not job.future.set_running_or_notify_cancel():
                        continue
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed("the server shut down before scoring this job"))
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- worker side ------------------------------------------------------------------------------------------------
    def _live(self, job: Job) -> bool:
        """Whether the worker may hand (more of) `job` to the scorer; a job that may not is settled here (caller
        holds the lock). The first chunk moves the future from pending to running."""
        if job.taken == 0:
            if not job.future.set_running_or_notify_cancel():  # cancelled while queued: nobody waits
                self.metrics.record_dropped(len(job.items))
                return False
        elif job.future.done():  # an earlier chunk failed, and settled it
            return False
        if job.future.abandoned.is_set():
            job.future.set_exception(Abandoned("the request was abandoned while it was being scored"))
        elif job.deadline is not None and time.monotonic() >= job.deadline:
            job.future.set_exception(DeadlineExceeded("the request timed out before it was scored"))
        else:
            return True
        self.metrics.record_dropped(job.waiting)
        return False

    def _take(self, job: Job, room: int) -> Part:
        """Hand up to `room` of the job's waiting items to the batch being built; it leaves the queue, and rests
        until the next batch when items remain (caller holds the lock)."""
        self._queue.remove(job)
        start = job.taken
        job.taken = stop = min(len(job.items), start + room)
        if job.waiting:
            self._resting.append(job)
        return job, start, stop

    def _next_batch(self) -> list[Part] | None:
        """Block for the oldest live job, take what of it fits, then fill the call with compatible jobs, in queue
        order, for up to batch_wait_s; None once closed and drained."""
        with self._cond:
            self._queue.extend(self._resting)  # behind the jobs that arrived during the last call
            self._resting.clear()
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None  # closed and drained
                head = self._queue[0]
                if self._live(head):
                    break
                self._queue.popleft()
            batch: list[Part] = [self._take(head, self.max_batch)]
            size = batch[0][2] - batch[0][1]
            until = time.monotonic() + self.batch_wait_s
            while size < self.max_batch:
                picked = next((j for j in self._queue if j.params == head.params), None)
                if picked is not None:
                    if self._live(picked):
                        batch.append(self._take(picked, self.max_batch - size))
                        size += batch[-1][2] - batch[-1][1]
                    else:
                        self._queue.remove(picked)
                    continue
                left = until - time.monotonic()
                if left <= 0 or self._closed:  # when closing, do not linger: the queue is all there is
                    break
                self._cond.wait(left)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._score(batch)
            except BaseException as e:  # never let the worker die with futures pending
                for job, _, _ in batch:
                    self._fail(job, e)

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

    def _score(self, batch: list[Part]) -> None:
        items = [it for job, start, stop in batch for it in job.items[start:stop]]
        try:
            out = self._call(items, batch[0][0].params, len(batch))
        except Exception as e:
            if len(batch) == 1:
                self._fail(batch[0][0], e)
            else:
                for part in batch:  # isolate the failing job: everyone else still gets an answer
                    self._score([part])
            return
        r = 0
        for job, start, stop in batch:
            job.results += out[r:r + stop - start]
            r += stop - start
            if len(job.results) == len(job.items) and not job.future.done():
                job.future.set_result(job.results)

    def _fail(self, job: Job, error: BaseException) -> None:
        with self._cond:  # a split job whose part failed: its other parts are not scored
            if job in self._queue:
                self._queue.remove(job)
            if job in self._resting:
                self._resting.remove(job)
        if not job.future.done():
            job.future.set_exception(error)
