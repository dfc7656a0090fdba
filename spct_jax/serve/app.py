"""The HTTP layer: a Starlette app over a `Batcher`. Endpoints and status codes:

    POST /v1/score    one item, the GRM's judgement (schema.py)   200 | 400 401 403 408 413 415 | 503 504 | 500
    POST /get_reward  OpenRLHF remote-RM protocol (schema.py)     same
    GET  /healthz     {"status": "ok"}; never needs the token (liveness probes carry none, and it
                      reveals nothing but that the process is up)
    GET  /metrics     JSON counters (metrics.py); needs the token when one is set

Errors are JSON: {"error": message, "field": name or null}. 503 carries Retry-After (seconds). A request that
is not answered within --timeout seconds (queueing included) gets 504, and its job is dropped: unscored if still
queued, and a big job's chunks not yet handed to the scorer are never scored (batcher.py). A client that goes
away while its request is queued or scored drops its job the same way; that, and a client that vanishes while
sending its body, is logged as one line and counted as "aborted", not as an error.

Guards, in the order they run:
  * Host / Origin (403): on a loopback bind only requests addressed to the loopback names are answered (and,
    when a browser sends an Origin, only from those names), so a web page, including one that rebinds its own
    DNS name to 127.0.0.1, cannot drive the server. --allowed-hosts sets the list.
  * Bearer token (401), when one is set: every endpoint but /healthz requires `Authorization: Bearer <token>`
    (the scheme case-insensitive, RFC 7235; the token compared in constant time), before the body is read.
  * Content-Type (415): the POST endpoints take `application/json` only. A browser can send a cross-site
    `text/plain` or form POST without asking first; it must ask (a CORS preflight, which this server never
    grants) before sending JSON.
  * Body (413 over --max-body-mb; 408 when not received within --body-timeout) and per-request items (413 over
    --max-request-items or --max-queue). Every refusal made before the body was read closes the connection.
Slow or stalled connections that never finish their headers, and connections over --max-connections, are
handled below the app, in server.py's protocol.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from spct_jax.grm.scorer import PAPER_TEMPERATURE, Judgement
from spct_jax.serve.batcher import (Batcher, BatcherClosed, DeadlineExceeded, JobTooLarge, QueueFull,
                                    ScoreParams)
from spct_jax.serve.metrics import Metrics
from spct_jax.serve.schema import (Limits, SchemaError, parse_reward_request, parse_score_request,
                                   pointwise_rewards, score_response)

OPEN_PATHS = frozenset({"/healthz"})
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
log = logging.getLogger("spct_jax.serve")


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    limits: Limits
    timeout_s: float = 120.0
    temperature: float | None = None  # None: the paper's 0.5 when k > 1, greedy when k == 1 (as `spct score`)
    fallback_reward: float = 0.0  # /get_reward value for a response no sample could judge
    max_body_bytes: int = 32 << 20
    token: str | None = None
    body_timeout_s: float = 30.0  # the whole body, from the end of the headers
    header_timeout_s: float = 10.0  # server.py: a connection's request headers, from its opening or last answer
    max_connections: int = 256  # server.py: open connections; one more is answered 503 and closed
    allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES  # Host / Origin names answered; None = any
    # The GRM prompt's token count check of one item (raises ValueError naming the limit), run before queueing so
    # an over-long item of a big request is refused before the others are scored; None = the scorer's own check.
    prompt_check: Callable[[dict[str, Any]], None] | None = None

    def temperature_for(self, k: int) -> float:
        if self.temperature is not None:
            return self.temperature
        return PAPER_TEMPERATURE if k > 1 else 0.0


class HTTPError(Exception):
    def __init__(self, status: int, outcome: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None, *, close: bool = False):
        super().__init__(message)
        self.status, self.outcome, self.message, self.field = status, outcome, message, field
        # close: the request's body was not (all) read, so the connection cannot carry another request
        self.headers = {**(headers or {}), **({"Connection": "close"} if close else {})}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "field": self.field}, status_code=self.status,
                            headers=self.headers)


class ClientGone(Exception):
    """The client closed its connection while its request was queued or being scored."""


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == name), None)


def host_name(value: str) -> str:
    """The name of a Host header: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "::1", case folded."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:v.index("]")] if "]" in v else v
    name, sep, port = v.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else v


class HostGuard:
    """ASGI middleware: answer only requests whose Host, and Origin when present, name an allowed host (403)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str], metrics: Metrics):
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed)
        self.metrics = metrics

    def _refusal(self, scope: Scope) -> tuple[str, str] | None:
        host = _header(scope, b"host")
        if host is None or host_name(host.decode("latin-1")) not in self.allowed:
            return "Host", (host or b"").decode("latin-1")
        origin = _header(scope, b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            try:
                name = urllib.parse.urlsplit(text).hostname
            except ValueError:
                name = None
            if name not in self.allowed:  # "null" (a sandboxed page, a file://) has no host name at all
                return "Origin", text
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (bad := self._refusal(scope)) is not None:
            name, value = bad
            self.metrics.refused("forbidden")
            resp = JSONResponse({"error": f"{name} {value[:100]!r} is not one this server answers (allowed: "
                                          f"{', '.join(sorted(self.allowed))}; --allowed-hosts)", "field": name},
                                status_code=403, headers={"Connection": "close"})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BearerAuth:
    """ASGI middleware: refuse HTTP requests without the bearer token (except OPEN_PATHS)."""

    def __init__(self, app: ASGIApp, token: str, metrics: Metrics):
        self.app = app
        self.token = token.encode()
        self.metrics = metrics

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, credentials = (_header(scope, b"authorization") or b"").strip().partition(b" ")
        # The scheme is case-insensitive (RFC 7235 section 2.1): "bearer x" is "Bearer x".
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(b" "), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            self.metrics.refused("unauthorized")
            resp = JSONResponse({"error": "missing or wrong bearer token", "field": "Authorization"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


def is_json_media_type(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "application/json"


async def read_json(request: Request, max_bytes: int, timeout_s: float) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, "bad_request", f"body over {max_bytes} bytes", "body", close=True)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:  # bodies without Content-Length are cut off as soon as they pass the limit
                    raise HTTPError(413, "bad_request", f"body over {max_bytes} bytes", "body", close=True)
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPError(408, "aborted", f"body not received within {timeout_s:g} s (--body-timeout); got {size} "
                        "bytes", "body", close=True) from None
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPError(400, "bad_request", f"invalid JSON: {e}", "body") from None


async def _client_gone(receive: Receive) -> None:
    """Return once the client has closed the connection (the body is already read, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(batcher: Batcher, options: ServeOptions) -> Starlette:
    metrics = batcher.metrics
    item_cap = min(options.limits.max_request_items, batcher.max_queue)

    def rejected(e: Exception) -> HTTPError:
        retry = metrics.retry_after_s(batcher.queue_depth, batcher.max_batch)
        return HTTPError(503, "rejected", str(e), None, {"Retry-After": str(retry)})

    async def judge(items: list[dict[str, Any]], params: ScoreParams, deadline: float,
                    request: Request) -> list[Judgement]:
        try:
            fut = batcher.submit(items, params, deadline=deadline)
        except JobTooLarge as e:
            raise HTTPError(413, "bad_request", str(e), "query") from None
        except (QueueFull, BatcherClosed) as e:
            raise rejected(e) from None
        scored = asyncio.wrap_future(fut)
        gone = asyncio.ensure_future(_client_gone(request.receive))
        try:
            done, _ = await asyncio.wait((scored, gone), timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            # Cancelling the wrapper cancels the job (JobFuture.cancel): dropped if queued, and the chunks of a big
            # job not yet handed to the scorer are never scored.
            scored.cancel()
        if scored not in done:
            if gone in done:
                raise ClientGone()
            raise HTTPError(504, "timeouts", f"not scored within {options.timeout_s:g} s (--timeout)")
        try:
            return scored.result()
        except DeadlineExceeded:
            raise HTTPError(504, "timeouts", f"not scored within {options.timeout_s:g} s (--timeout)") from None
        except BatcherClosed as e:
            raise rejected(e) from None
        except ValueError as e:  # the scorer's refusals of an item (DataError, prompt over max_prompt_tokens)
            raise HTTPError(400, "bad_request", str(e), "body") from None

    async def check_prompts(items: list[dict[str, Any]], fields: list[str]) -> None:
        if options.prompt_check is None:
            return

        def check() -> None:
            for item, field in zip(items, fields):
                try:
                    options.prompt_check(item)
                except ValueError as e:
                    raise HTTPError(400, "bad_request", str(e), field) from None

        await asyncio.to_thread(check)  # tokenizing a big request must not stall the event loop

    def endpoint(handle: Callable[[Any, float, Request], Awaitable[dict[str, Any]]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            t0 = time.monotonic()
            deadline = t0 + options.timeout_s
            metrics.request_started()
            outcome = "errors"
            try:
                if not is_json_media_type(request.headers.get("content-type")):
                    raise HTTPError(415, "bad_request", "Content-Type must be application/json",
                                    "Content-Type", close=True)
                body = await read_json(request, options.max_body_bytes, min(options.body_timeout_s,
                                                                            options.timeout_s))
                result = await handle(body, deadline, request)
                outcome = "ok"
                return JSONResponse(result)
            except SchemaError as e:
                outcome = "bad_request"
                return JSONResponse({"error": str(e), "field": e.field}, status_code=400)
            except HTTPError as e:
                outcome = e.outcome
                if e.status == 408:
                    log.info("%s from %s: %s", request.url.path, _client(request), e.message)
                return e.response()
            except (ClientDisconnect, ClientGone) as e:
                # Expected traffic, not a fault of ours: one line, and no traceback to flood the log with.
                outcome = "aborted"
                log.info("%s from %s: client went away %s", request.url.path, _client(request),
                         "while sending its body" if isinstance(e, ClientDisconnect)
                         else "before its answer; the unscored rest of its job is dropped")
                return Response(status_code=499, headers={"Connection": "close"})  # never delivered
            except Exception as e:  # noqa: BLE001 - a crash must still answer, be counted, and be logged
                log.exception("%s failed", request.url.path)
                return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}", "field": None},
                                    status_code=500)
            finally:
                metrics.request_finished(outcome, time.monotonic() - t0)
        return run

    async def v1_score(body: Any, deadline: float, request: Request) -> dict[str, Any]:
        req = parse_score_request(body, options.limits)
        await check_prompts([req.item], ["body"])
        params = ScoreParams(k=req.k, k_meta=req.k_meta, temperature=options.temperature_for(req.k))
        (j,) = await judge([req.item], params, deadline, request)
        return score_response(j, with_samples=req.return_samples)

    async def get_reward(body: Any, deadline: float, request: Request) -> dict[str, Any]:
        req = parse_reward_request(body)
        if not req.groups:
            return {"rewards": []}
        if len(req.groups) > item_cap:
            raise HTTPError(413, "bad_request", f"{len(req.groups)} distinct prompts (GRM items) in one request; "
                            f"this server takes at most {item_cap} (--max-request-items "
                            f"{options.limits.max_request_items}, --max-queue {batcher.max_queue}): split it",
                            "query")
        first_query = {g: i for i, (g, _) in reversed(list(enumerate(req.where)))}
        await check_prompts(req.items, [f"prompts[{first_query[g]}]" for g in range(len(req.groups))])
        k = options.limits.default_k
        params = ScoreParams(k=k, k_meta=options.limits.k_meta_for(k), temperature=options.temperature_for(k))
        judgements = await judge(req.items, params, deadline, request)
        return {"rewards": pointwise_rewards(req, judgements, options.fallback_reward)}

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_endpoint(request: Request) -> Response:
        return JSONResponse(metrics.snapshot(queue_depth=batcher.queue_depth,
                                             queued_requests=batcher.queued_requests))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        yield
        # uvicorn runs this after the in-flight requests have been answered; drain whatever is still queued
        # (off the event loop: joining the worker blocks).
        await asyncio.to_thread(batcher.close, drain=True)

    middleware = []
    if options.allowed_hosts is not None:
        middleware.append(Middleware(HostGuard, allowed=options.allowed_hosts, metrics=metrics))
    if options.token:
        middleware.append(Middleware(BearerAuth, token=options.token, metrics=metrics))
    routes = [Route("/v1/score", endpoint(v1_score), methods=["POST"]),
              Route("/get_reward", endpoint(get_reward), methods=["POST"]),
              Route("/healthz", healthz, methods=["GET"]),
              Route("/metrics", metrics_endpoint, methods=["GET"])]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.serve_options = options  # server.py's connection guard reads its limits from here
    app.state.metrics = metrics
    return app


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"
