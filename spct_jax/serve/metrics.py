"""Counters behind `GET /metrics`: request outcomes, batch sizes, latency percentiles, parse-failure rate.

Written from two threads (the event loop records requests, the scoring worker records batches), hence the lock.
Recent windows are bounded deques, so a long-running server keeps constant memory; totals are plain counters.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any

# Outcomes a request can end in; each has a counter in the `requests` block of the snapshot.
OUTCOMES = ("ok", "bad_request", "unauthorized", "rejected", "timeouts", "errors")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]) of an ascending list; None for an empty one."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Metrics:
    def __init__(self, window: int = 2048, recent_batches: int = 100):
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._in_flight = 0
        self._latencies: collections.deque[float] = collections.deque(maxlen=window)
        self._batch_requests: collections.deque[int] = collections.deque(maxlen=recent_batches)
        self._batch_items: collections.deque[int] = collections.deque(maxlen=recent_batches)
        self._batch_seconds: collections.deque[float] = collections.deque(maxlen=recent_batches)
        self._histogram: collections.Counter[int] = collections.Counter()  # requests per batch -> batches
        self._num_batches = 0
        self._max_requests = 0
        self._max_items = 0
        self._samples = 0
        self._failed = 0

    # -- written by the HTTP layer --------------------------------------------------------------------------------
    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def request_finished(self, outcome: str, seconds: float) -> None:
        if outcome not in self._outcomes:
            raise ValueError(f"unknown outcome {outcome!r}")
        with self._lock:
            self._in_flight -= 1
            self._outcomes[outcome] += 1
            if outcome == "ok":  # percentiles describe served answers; refusals would drag them towards zero
                self._latencies.append(seconds)

    def refused(self, outcome: str) -> None:
        """A request refused before it started (auth), so it never counted as in flight."""
        with self._lock:
            self._outcomes[outcome] += 1

    # -- written by the scoring worker ----------------------------------------------------------------------------
    def record_batch(self, *, requests: int, items: int, seconds: float, samples: int, failed: int) -> None:
        with self._lock:
            self._num_batches += 1
            self._batch_requests.append(requests)
            self._batch_items.append(items)
            self._batch_seconds.append(seconds)
            self._histogram[requests] += 1
            self._max_requests = max(self._max_requests, requests)
            self._max_items = max(self._max_items, items)
            self._samples += samples
            self._failed += failed

    # -- read ---------------------------------------------------------------------------------------------------------
    def retry_after_s(self, queue_depth: int, max_batch: int) -> int:
        """Seconds a refused client should wait: the queued batches ahead of it at the recent mean batch time."""
        with self._lock:
            mean = sum(self._batch_seconds) / len(self._batch_seconds) if self._batch_seconds else 1.0
        return int(min(60, max(1, math.ceil(mean * (queue_depth / max(max_batch, 1) + 1)))))

    def snapshot(self, *, queue_depth: int) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self._latencies)
            total = sum(self._outcomes.values())
            return {
                "uptime_s": round(time.monotonic() - self._started, 3),
                "queue_depth": queue_depth,
                "in_flight": self._in_flight,
                "requests": {"total": total, **self._outcomes},
                "batches": {
                    "count": self._num_batches,
                    "max_requests": self._max_requests,
                    "max_items": self._max_items,
                    "histogram_requests": {str(k): v for k, v in sorted(self._histogram.items())},
                    "recent_requests": list(self._batch_requests),
                    "recent_items": list(self._batch_items),
                },
                "latency_ms": {
                    "count": len(lat),
                    **{f"p{q}": None if (v := percentile(lat, q)) is None else round(v * 1e3, 3) for q in (50, 90, 99)},
                },
                "samples": {
                    "total": self._samples,
                    "failed": self._failed,
                    "parse_failure_rate": self._failed / self._samples if self._samples else 0.0,
                },
            }
