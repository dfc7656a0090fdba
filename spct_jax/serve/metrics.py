"""Counters behind `GET /metrics`: request outcomes, batch sizes, latency percentiles, parse-failure rate, items
dropped unscored, and the connection guards' refusals.

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
#   forbidden      a Host / Origin outside the allow-list (403: a browser page or a DNS-rebinding attack)
#   rejected       503: queue full or shutting down
#   timeouts       504: not scored within --timeout
#   aborted        the client went away (mid-body or while scored), or sent its body too slowly (408)
OUTCOMES = ("ok", "bad_request", "unauthorized", "forbidden", "rejected", "timeouts", "aborted", "errors")
# What the connection guard (server.py) did to connections that never became requests.
CONNECTION_EVENTS = ("refused", "header_timeouts")


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
        self._dropped_items = 0  # items never scored: their request timed out or its client went away
        self._connections = dict.fromkeys(CONNECTION_EVENTS, 0)
        self._open_connections = 0

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

    def connection(self, event: str) -> None:
        """A connection the guard closed before it made a request (refused over the cap, or too slow to send
        its headers)."""
        if event not in self._connections:
            raise ValueError(f"unknown connection event {event!r}")
        with self._lock:
            self._connections[event] += 1

    def connections_open(self, delta: int) -> None:
        with self._lock:
            self._open_connections += delta

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

    def record_dropped(self, items: int) -> None:
        """Items of an abandoned job (timed out, or its client gone) that were never handed to the scorer."""
        with self._lock:
            self._dropped_items += items

    # -- read ---------------------------------------------------------------------------------------------------------
    def retry_after_s(self, queue_depth: int, max_batch: int) -> int:
        """Seconds a refused client should wait: the queued batches ahead of it (queue_depth items, max_batch
        per call) at the recent mean batch time."""
        with self._lock:
            mean = sum(self._batch_seconds) / len(self._batch_seconds) if self._batch_seconds else 1.0
        return int(min(60, max(1, math.ceil(mean * (queue_depth / max(max_batch, 1) + 1)))))

    def snapshot(self, *, queue_depth: int, queued_requests: int | None = None) -> dict[str, Any]:
        """queue_depth: items waiting for the scorer (what --max-queue bounds); queued_requests: their requests."""
        with self._lock:
            lat = sorted(self._latencies)
            total = sum(self._outcomes.values())
            return {
                "uptime_s": round(time.monotonic() - self._started, 3),
                "queue_depth": queue_depth,
                "queued_requests": queued_requests,
                "in_flight": self._in_flight,
                "dropped_items": self._dropped_items,
                "connections": {"open": self._open_connections, **self._connections},
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
