"""The HTTP layer: a Starlette app over a `Batcher`. Endpoints and status codes:

    POST /v1/score    one item, the GRM's judgement (schema.py)           200 | 400 | 401 | 413 | 503 | 504 | 500
    POST /get_reward  OpenRLHF remote-RM protocol (schema.py)             same
    GET  /healthz     {"status": "ok"}; never needs the token (liveness probes carry none, and it
                      reveals nothing but that the process is up)
    GET  /metrics     JSON counters (metrics.py); needs the token when one is set

Errors are JSON: {"error": message, "field": name or null}. 503 carries Retry-After (seconds). A request that
is not answered within --timeout seconds (queueing included) gets 504; its job is cancelled if still queued, its
result discarded if already being scored, so a slow model never holds a client forever.

With a token, every endpoint but /healthz requires `Authorization: Bearer <token>` (compared in constant time);
anything else gets 401 before the body is read.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from spct_jax.grm.scorer import PAPER_TEMPERATURE, Judgement
from spct_jax.serve.batcher import Batcher, BatcherClosed, QueueFull, ScoreParams
from spct_jax.serve.metrics import Metrics
from spct_jax.serve.schema import (Limits, SchemaError, parse_reward_request, parse_score_request,
                                   pointwise_rewards, score_response)

OPEN_PATHS = frozenset({"/healthz"})
log = logging.getLogger("spct_jax.serve")


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    limits: Limits
    timeout_s: float = 120.0
    temperature: float | None = None  # None: the paper's 0.5 when k > 1, greedy when k == 1 (as `spct score`)
    fallback_reward: float = 0.0  # /get_reward value for a response no sample could judge
    max_body_bytes: int = 32 << 20
    token: str | None = None

    def temperature_for(self, k: int) -> float:
        if self.temperature is not None:
            return self.temperature
        return PAPER_TEMPERATURE if k > 1 else 0.0


class HTTPError(Exception):
    def __init__(self, status: int, outcome: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.outcome, self.message, self.field = status, outcome, message, field
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "field": self.field}, status_code=self.status,
                            headers=self.headers)


class BearerAuth:
    """ASGI middleware: refuse HTTP requests without the bearer token (except OPEN_PATHS)."""

    def __init__(self, app: ASGIApp, token: str, metrics: Metrics):
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            got = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(got, self.expected):
                self.metrics.refused("unauthorized")
                resp = JSONResponse({"error": "missing or wrong bearer token", "field": "Authorization"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_json(request: Request, max_bytes: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, "bad_request", f"body over {max_bytes} bytes", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:  # bodies without Content-Length are cut off as soon as they pass the limit
            raise HTTPError(413, "bad_request", f"body over {max_bytes} bytes", "body")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPError(400, "bad_request", f"invalid JSON: {e}", "body") from None


def create_app(batcher: Batcher, options: ServeOptions) -> Starlette:
    metrics = batcher.metrics

    async def judge(items: list[dict[str, Any]], params: ScoreParams, deadline: float) -> list[Judgement]:
        try:
            fut = batcher.submit(items, params, deadline=deadline)
        except (QueueFull, BatcherClosed) as e:
            retry = metrics.retry_after_s(batcher.queue_depth, batcher.max_batch)
            raise HTTPError(503, "rejected", str(e), None, {"Retry-After": str(retry)}) from None
        try:
            # wait_for cancels the wrapped future on timeout, which cancels the job if it is still queued.
            return await asyncio.wait_for(asyncio.wrap_future(fut), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise HTTPError(504, "timeouts", f"not scored within {options.timeout_s:g} s (--timeout)") from None
        except ValueError as e:  # the scorer's refusals of an item (DataError, prompt over max_prompt_tokens)
            raise HTTPError(400, "bad_request", str(e), "body") from None

    def endpoint(handle: Callable[[Any, float], Awaitable[dict[str, Any]]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            t0 = time.monotonic()
            deadline = t0 + options.timeout_s
            metrics.request_started()
            outcome = "errors"
            try:
                body = await read_json(request, options.max_body_bytes)
                result = await handle(body, deadline)
                outcome = "ok"
                return JSONResponse(result)
            except SchemaError as e:
                outcome = "bad_request"
                return JSONResponse({"error": str(e), "field": e.field}, status_code=400)
            except HTTPError as e:
                outcome = e.outcome
                return e.response()
            except Exception as e:  # noqa: BLE001 - a crash must still answer, be counted, and be logged
                log.exception("%s failed", request.url.path)
                return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}", "field": None},
                                    status_code=500)
            finally:
                metrics.request_finished(outcome, time.monotonic() - t0)
        return run

    async def v1_score(body: Any, deadline: float) -> dict[str, Any]:
        req = parse_score_request(body, options.limits)
        params = ScoreParams(k=req.k, k_meta=req.k_meta, temperature=options.temperature_for(req.k))
        (j,) = await judge([req.item], params, deadline)
        return score_response(j, with_samples=req.return_samples)

    async def get_reward(body: Any, deadline: float) -> dict[str, Any]:
        req = parse_reward_request(body)
        if not req.groups:
            return {"rewards": []}
        k = options.limits.default_k
        params = ScoreParams(k=k, k_meta=options.limits.k_meta_for(k), temperature=options.temperature_for(k))
        judgements = await judge(req.items, params, deadline)
        return {"rewards": pointwise_rewards(req, judgements, options.fallback_reward)}

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_endpoint(request: Request) -> Response:
        return JSONResponse(metrics.snapshot(queue_depth=batcher.queue_depth))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        yield
        # uvicorn runs this after the in-flight requests have been answered; drain whatever is still queued
        # (off the event loop: joining the worker blocks).
        await asyncio.to_thread(batcher.close, drain=True)

    middleware = [Middleware(BearerAuth, token=options.token, metrics=metrics)] if options.token else []
    routes = [Route("/v1/score", endpoint(v1_score), methods=["POST"]),
              Route("/get_reward", endpoint(get_reward), methods=["POST"]),
              Route("/healthz", healthz, methods=["GET"]),
              Route("/metrics", metrics_endpoint, methods=["GET"])]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
