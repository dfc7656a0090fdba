"""The caller's side of `spct serve`: a sync + asyncio HTTP client for `/v1/score` and `/get_reward`.

    from spct_jax.serve.client import RewardClient

    with RewardClient("http://127.0.0.1:8000", token=TOKEN, max_concurrency=16, timeout=180) as rm:
        r = rm.score("What is 2+2?", ["4", "5"])            # one item (a group of responses), one GRM call
        rs = rm.score_groups([(ctx, responses), ...])         # many items, max_concurrency requests at a time
        rewards = rm.get_reward(queries, prompts)             # OpenRLHF's protocol (pointwise, grouped by prompt)
    # asyncio: await rm.ascore(...), rm.ascore_groups(...), rm.aget_reward(...); `async with` closes it.

Guarantees (why each exists):
  * No hang. `timeout` is the budget of one call from the moment it is made until it returns or raises: waiting for
    a free slot under `max_concurrency`, every attempt, every backoff and every Retry-After wait all count. A
    batch call (`score_groups`) gives every request the same deadline, so the batch also ends within `timeout`.
    An RL step must never stall on a sick reward server, so a call that cannot finish in time raises
    `RewardTimeout` instead of waiting longer.
  * Retries only where they can help, with exponential backoff and jitter (many trainer workers must not retry in
    lock step): connection failures (a server that is restarting), 408/502/504, and 503 after the server's
    `Retry-After`. A Retry-After longer than the budget left fails at once with `ServerBusy` (waiting it out would
    overrun the budget anyway). Scoring is deterministic and side-effect free, so a retry cannot double-count.
  * Never retried: 400/413/415 (`BadRequest`, naming the server's `field`), 401/403 (`Unauthorized`: a wrong
    token stays wrong), 404, 500 (`ServerError`: a crash on an item crashes again).
  * `max_concurrency` bounds requests in flight per client (a threading semaphore for sync calls, an asyncio one per
    event loop for async calls): size it at or below the server's --max-queue, or the surplus is answered 503.

Rewards in `ScoreResult.rewards` are the server's summed votes (Eq. 14); `pointwise` divides by the samples summed,
which is what `/get_reward` returns. The server does not report that count on /v1/score, so `pointwise` needs the
samples (`return_samples=True`) unless a future server adds `num_summed`.
"""
from __future__ import annotations

import contextlib
import asyncio
import concurrent.futures
import dataclasses
import email.utils
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

Context = str | list[dict[str, str]]

__all__ = ["BadRequest", "RewardClient", "wait_for_server", "RewardClientError", "RewardTimeout", "ScoreResult", "ServerBusy",
           "ServerError", "ServerUnavailable", "Unauthorized"]


class RewardClientError(Exception):
    """Base of every error this client raises; `url` is the endpoint, `status` the HTTP status (None: no answer)."""

    def __init__(self, message: str, *, url: str, status: int | None = None):
        super().__init__(message)
        self.url, self.status = url, status


class ServerUnavailable(RewardClientError):
    """No connection could be made (server down, wrong host/port), after the retries the budget allowed."""


class Unauthorized(RewardClientError):
    """401/403: the bearer token is missing or wrong. Not retried."""


class BadRequest(RewardClientError):
    """400/413/415: the server refused the body; `field` names where (e.g. "responses[2]", "query[0]", "k")."""

    def __init__(self, message: str, *, url: str, status: int, field: str | None):
        super().__init__(message, url=url, status=status)
        self.field = field


class ServerBusy(RewardClientError):
    """503 and no retry left within the budget; `retry_after` is the server's last hint in seconds."""

    def __init__(self, message: str, *, url: str, retry_after: float | None):
        super().__init__(message, url=url, status=503)
        self.retry_after = retry_after


class ServerError(RewardClientError):
    """500, or any other answer this client does not understand."""


class RewardTimeout(RewardClientError, TimeoutError):
    """The call's `timeout` budget ran out (slot wait, attempts and waits included)."""


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """One /v1/score answer. rewards: summed votes per response, in the order sent; uncertainty: per-response
    variance of the summed samples' scores (None when none parsed); samples: the k trajectories when asked for."""

    rewards: list[float]
    best: int | None
    num_valid: int
    num_failed: int
    uncertainty: list[float] | None
    samples: list[dict[str, Any]] | None = None
    num_summed: int | None = None  # samples whose votes make up `rewards`; None when the answer cannot tell

    @classmethod
    def from_json(cls, d: dict[str, Any], num_responses: int) -> "ScoreResult":
        rewards = [float(x) for x in d["rewards"]]
        if len(rewards) != num_responses:
            raise ValueError(f"{len(rewards)} rewards for {num_responses} responses")
        samples = d.get("samples")
        n = d.get("num_summed")
        if n is None and samples is not None:
            n = sum(bool(s.get("kept")) for s in samples)  # exactly schema.num_summed on the server
        unc = d.get("uncertainty")
        return cls(rewards=rewards, best=d.get("best"), num_valid=int(d["num_valid"]), num_failed=int(d["num_failed"]),
                   uncertainty=None if unc is None else [float(x) for x in unc], samples=samples,
                   num_summed=None if n is None else int(n))

    @property
    def pointwise(self) -> list[float] | None:
        """Mean score per response (summed votes / samples summed), as /get_reward computes it; None when no sample
        was summed or the count is unknown."""
        if not self.num_summed:
            return None
        return [r / self.num_summed for r in self.rewards]


@dataclasses.dataclass
class _Call:
    """The retry/timeout policy of one call, without I/O, so the sync and async paths share it exactly."""

    client: "RewardClient"
    url: str
    deadline: float
    attempts: int = 0
    last: str = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def attempt_timeout(self) -> httpx.Timeout:
        left = self.left()
        if left <= 0:
            raise self.timed_out()
        self.attempts += 1
        return httpx.Timeout(left, connect=min(left, self.client.connect_timeout))

    def timed_out(self) -> RewardTimeout:
        detail = f"; last: {self.last}" if self.last else ""
        return RewardTimeout(f"{self.url}: no answer within the {self.client.timeout:g} s budget "
                             f"({self.attempts} attempt(s){detail})", url=self.url)

    def _wait(self, seconds: float, error: RewardClientError) -> float:
        """Seconds to sleep before the next attempt, or raise `error` if no attempt fits in the budget."""
        if self.attempts > self.client.retries or seconds >= self.left():
            raise error
        return seconds

    def backoff(self) -> float:
        base = min(self.client.max_backoff, self.client.backoff * 2 ** (self.attempts - 1))
        return base * (0.5 + random.random() / 2)

    def on_transport_error(self, e: httpx.TransportError) -> float:
        self.last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
            raise self.timed_out() from e  # the attempt had the whole remaining budget
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
            err: RewardClientError = ServerUnavailable(
                f"cannot connect to {self.url} ({self.last}); is `spct serve` running there? "
                f"{self.attempts} attempt(s)", url=self.url)
        else:  # the connection broke mid-request (server restarted); the request is safe to repeat
            err = ServerError(f"{self.url}: connection failed ({self.last}) after {self.attempts} attempt(s)",
                              url=self.url)
        return self._wait(self.backoff(), err)

    def on_response(self, r: httpx.Response) -> float | None:
        """None when `r` is a success; else seconds to wait before retrying, or raise the matching error."""
        if r.status_code == 200:
            return None
        body = _json_or_none(r)
        message = body.get("error") if isinstance(body, dict) else None
        message = message or r.text[:200] or r.reason_phrase
        self.last = f"HTTP {r.status_code}: {message}"
        if r.status_code in (400, 413, 415, 422):
            field = body.get("field") if isinstance(body, dict) else None
            raise BadRequest(f"{self.url} refused the request (HTTP {r.status_code}, field {field!r}): {message}",
                             url=self.url, status=r.status_code, field=field)
        if r.status_code in (401, 403):
            if r.status_code == 403:  # not the token: e.g. a loopback server refusing this Host / Origin
                hint = "refused"
            else:
                hint = "wrong token" if self.client.token else "the server needs a token (RewardClient(token=...))"
            raise Unauthorized(f"{self.url}: HTTP {r.status_code} ({hint}): {message}", url=self.url,
                               status=r.status_code)
        if r.status_code == 503:
            hint = parse_retry_after(r.headers.get("Retry-After"))
            wait = hint if hint is not None else self.backoff()
            wait += random.random() * min(1.0, 0.1 * wait)  # jitter: refused clients should not return together
            left = self.left()
            return self._wait(wait, ServerBusy(
                f"{self.url} is busy (HTTP 503, Retry-After {hint}); {self.attempts} attempt(s), "
                f"{max(left, 0):.1f} s of the {self.client.timeout:g} s budget left: {message}",
                url=self.url, retry_after=hint))
        if r.status_code in (408, 502, 504):  # the body was too slow to arrive / the scoring timed out
            return self._wait(self.backoff(), ServerError(
                f"{self.url}: HTTP {r.status_code} after {self.attempts} attempt(s): {message}", url=self.url,
                status=r.status_code))
        if r.status_code == 404:
            raise ServerError(f"{self.url}: HTTP 404; is this a `spct serve` URL (scheme://host:port)?",
                              url=self.url, status=404)
        raise ServerError(f"{self.url}: HTTP {r.status_code}: {message}", url=self.url, status=r.status_code)


def wait_for_server(url: str, *, timeout_s: float = 120.0, alive: Callable[[], bool] | None = None,
                    poll_s: float = 0.2) -> None:
    """Block until `url`/healthz answers 200 (a server just started: it loads its model first). ServerUnavailable
    when `alive()` turns False (the server process exited) or `timeout_s` passes."""
    t0 = time.monotonic()
    while True:
        if alive is not None and not alive():
            raise ServerUnavailable(f"{url}: the server exited before it answered /healthz")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        if time.monotonic() - t0 > timeout_s:
            raise ServerUnavailable(f"{url}: no answer from /healthz within {timeout_s:g} s")
        time.sleep(poll_s)


def _json_or_none(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclasses.dataclass
class _LoopState:
    loop: asyncio.AbstractEventLoop
    http: httpx.AsyncClient
    slots: asyncio.Semaphore


class RewardClient:
    """A client for one `spct serve` base URL (e.g. "http://127.0.0.1:8000"). Thread-safe; its async methods may
    be used from any one event loop at a time (a new loop gets its own connection pool)."""

    def __init__(self, url: str, *, token: str | None = None, max_concurrency: int = 16, timeout: float = 180.0,
                 connect_timeout: float = 5.0, retries: int = 8, backoff: float = 0.25, max_backoff: float = 10.0,
                 transport: httpx.BaseTransport | None = None,
                 async_transport: httpx.AsyncBaseTransport | None = None):
        """timeout: seconds per call, all included (module docstring). retries: further attempts after the first
        (connection failures, 502/503/504). transport/async_transport: httpx transports (tests, proxies)."""
        if max_concurrency < 1 or timeout <= 0 or connect_timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("need max_concurrency >= 1, timeout > 0, connect_timeout > 0, retries >= 0, backoff >= 0")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.token = token
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        self._headers, self._limits, self._async_transport = headers, limits, async_transport
        self._http = httpx.Client(headers=headers, limits=limits, transport=transport)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._astate: _LoopState | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the sync connection pool and the worker threads (async pools: `aclose`)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._http.close()

    async def aclose(self) -> None:
        state, self._astate = self._astate, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.http.aclose()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "RewardClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        self.close()

    # -- the request loop, sync and async -----------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any], deadline: float | None = None) -> Any:
        call = _Call(self, self.url + path, time.monotonic() + self.timeout if deadline is None else deadline)
        if not self._slots.acquire(timeout=max(0.0, call.left())):
            raise call.timed_out()
        try:
            while True:
                timeout = call.attempt_timeout()
                try:
                    r = self._http.post(call.url, json=body, timeout=timeout)
                except httpx.TransportError as e:
                    wait = call.on_transport_error(e)
                else:
                    wait = call.on_response(r)
                    if wait is None:
                        return _answer(r, call.url)
                time.sleep(wait)
        finally:
            self._slots.release()

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._astate
        if state is None or state.loop is not loop:
            # httpx.AsyncClient and asyncio.Semaphore belong to the loop that first uses them; a new loop (each
            # asyncio.run) gets new ones. The old pool's sockets are closed when it is collected.
            state = _LoopState(loop, httpx.AsyncClient(headers=self._headers, limits=self._limits,
                                                       transport=self._async_transport),
                               asyncio.Semaphore(self.max_concurrency))
            self._astate = state
        return state

    async def _apost(self, path: str, body: dict[str, Any], deadline: float | None = None) -> Any:
        call = _Call(self, self.url + path, time.monotonic() + self.timeout if deadline is None else deadline)
        state = self._loop_state()
        try:
            async with asyncio.timeout(max(0.0, call.left())):
                await state.slots.acquire()
        except TimeoutError:
            raise call.timed_out() from None
        try:
            while True:
                timeout = call.attempt_timeout()
                try:
                    # httpx's timeouts are per phase (connect, each read); this one bounds the attempt as a whole
                    async with asyncio.timeout(timeout.read):
                        r = await state.http.post(call.url, json=body, timeout=timeout)
                except TimeoutError:
                    call.last = "no answer before the deadline"
                    raise call.timed_out() from None
                except httpx.TransportError as e:
                    wait = call.on_transport_error(e)
                else:
                    wait = call.on_response(r)
                    if wait is None:
                        return _answer(r, call.url)
                await asyncio.sleep(wait)
        finally:
            state.slots.release()

    # -- /v1/score ----------------------------------------------------------------------------------------------
    @staticmethod
    def _score_body(context: Context, responses: Sequence[str], k: int | None, k_meta: int | None,
                    return_samples: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"context": context, "responses": list(responses)}
        if k is not None:
            body["k"] = k
        if k_meta is not None:
            body["k_meta"] = k_meta
        if return_samples:
            body["return_samples"] = True
        return body

    def score(self, context: Context, responses: Sequence[str], *, k: int | None = None, k_meta: int | None = None,
              return_samples: bool = False, _deadline: float | None = None) -> ScoreResult:
        """Judge `responses` to `context` (a string or [{"role", "content"}, ...]) together: one GRM item."""
        body = self._score_body(context, responses, k, k_meta, return_samples)
        return _result(self._post("/v1/score", body, _deadline), len(body["responses"]), self.url)

    async def ascore(self, context: Context, responses: Sequence[str], *, k: int | None = None,
                     k_meta: int | None = None, return_samples: bool = False,
                     _deadline: float | None = None) -> ScoreResult:
        body = self._score_body(context, responses, k, k_meta, return_samples)
        return _result(await self._apost("/v1/score", body, _deadline), len(body["responses"]), self.url)

    def score_groups(self, groups: Sequence[tuple[Context, Sequence[str]]], **kw: Any) -> list[ScoreResult]:
        """One /v1/score request per (context, responses) group, up to max_concurrency at a time, so the server can
        batch them; results in order. All share one deadline: the whole batch ends within `timeout`."""
        deadline = time.monotonic() + self.timeout
        if len(groups) == 1:
            return [self.score(*groups[0], _deadline=deadline, **kw)]
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.max_concurrency,
                                                                   thread_name_prefix="spct-reward-client")
            pool = self._pool
        futures = [pool.submit(self.score, c, r, _deadline=deadline, **kw) for c, r in groups]
        return [f.result() for f in futures]  # each ends by the deadline, so this cannot hang

    async def ascore_groups(self, groups: Sequence[tuple[Context, Sequence[str]]], **kw: Any) -> list[ScoreResult]:
        deadline = time.monotonic() + self.timeout
        return list(await asyncio.gather(*(self.ascore(c, r, _deadline=deadline, **kw) for c, r in groups)))

    # -- /get_reward (OpenRLHF) ---------------------------------------------------------------------------------
    @staticmethod
    def _reward_body(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"query": list(queries), "prompts": list(prompts)}
        if labels is not None:
            body["labels"] = list(labels)
        return body

    def get_reward(self, queries: Sequence[str], prompts: Sequence[str],
                   labels: Sequence[Any] | None = None) -> list[float]:
        """OpenRLHF's protocol: queries[i] = prompts[i] + response i; one pointwise reward per query."""
        return _rewards(self._post("/get_reward", self._reward_body(queries, prompts, labels)), len(queries), self.url)

    async def aget_reward(self, queries: Sequence[str], prompts: Sequence[str],
                          labels: Sequence[Any] | None = None) -> list[float]:
        body = self._reward_body(queries, prompts, labels)
        return _rewards(await self._apost("/get_reward", body), len(queries), self.url)

    # -- probes -------------------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """GET /healthz within connect_timeout; False when the server does not answer ok."""
        try:
            return self._http.get(self.url + "/healthz", timeout=self.connect_timeout).status_code == 200
        except httpx.TransportError:
            return False

    def metrics(self) -> dict[str, Any]:
        """GET /metrics (needs the token when the server has one)."""
        url = self.url + "/metrics"
        r = self._http.get(url, timeout=self.connect_timeout)
        if r.status_code in (401, 403):
            raise Unauthorized(f"{url}: HTTP {r.status_code} (missing or wrong token)", url=url, status=r.status_code)
        if r.status_code != 200:
            raise ServerError(f"{url}: HTTP {r.status_code}", url=url, status=r.status_code)
        return _answer(r, url)


def _answer(r: httpx.Response, url: str) -> Any:
    body = _json_or_none(r)
    if not isinstance(body, dict):
        raise ServerError(f"{url}: HTTP 200 without a JSON object: {r.text[:200]!r}", url=url, status=200)
    return body


def _result(body: dict[str, Any], n: int, url: str) -> ScoreResult:
    try:
        return ScoreResult.from_json(body, n)
    except (KeyError, TypeError, ValueError) as e:
        raise ServerError(f"{url}/v1/score: unexpected answer ({e}): {str(body)[:200]}", url=url, status=200) from None


def _rewards(body: dict[str, Any], n: int, url: str) -> list[float]:
    rewards = body.get("rewards")
    if not isinstance(rewards, list) or len(rewards) != n:
        raise ServerError(f"{url}/get_reward: expected {n} rewards, got {str(body)[:200]}", url=url, status=200)
    return [float(x) for x in rewards]
