"""spct_jax.serve.client.RewardClient against failing and busy servers: every call ends within its budget.

The real command (`spct serve --model tiny-random`, toy template, k=2, 8 new tokens) answers the auth, 400 and
200-concurrent-calls tests; a small in-process app answers 503 + Retry-After, 502, slow and garbled replies on cue.
`spct_server` is shared with tests/test_integrations.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spct_jax.serve.client import (BadRequest, RewardClient, RewardTimeout, ScoreResult, ServerBusy, ServerError,
                                   ServerUnavailable, Unauthorized, parse_retry_after, wait_for_server)
from spct_jax.serve.server import serve_in_thread

REPO = Path(__file__).resolve().parents[1]
TOKEN = "client-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def spct_server(tmp_path: Path, *flags: str, token: str | None = None) -> Iterator[str]:
    """`spct serve --model tiny-random` on a free loopback port (k=2, 8 new tokens, toy template: fast on CPU);
    yields its base URL and stops it with SIGTERM (then SIGKILL) whatever happens."""
    port = free_port()
    cmd = [sys.executable, "-m", "spct_jax.cli", "serve", "--model", "tiny-random", "--host", "127.0.0.1",
           "--port", str(port), "--k", "2", "--max-new-tokens", "8", "--template", "toy", *flags]
    if token:
        tf = tmp_path / "token"
        tf.write_text(token)
        tf.chmod(0o600)
        cmd += ["--token-file", str(tf)]
    log_path = tmp_path / f"serve-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_server(base, timeout_s=120, alive=lambda: proc.poll() is None)
        except ServerUnavailable as e:
            raise AssertionError(log_path.read_text()) from e
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def metrics(base: str, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{base}/metrics", headers=headers, timeout=10).json()


# -- scripted in-process server ------------------------------------------------------------------------------------
class Script:
    """Answers POST /v1/score from a list of (status, headers, delay_s) steps, then 200 with len-based rewards."""

    def __init__(self, steps: list[tuple[int, dict[str, str], float]]):
        self.steps = list(steps)
        self.times: list[float] = []
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        async def score(request: Request) -> Response:
            body = await request.json()
            with self.lock:
                self.times.append(time.monotonic())
                step = self.steps.pop(0) if self.steps else (200, {}, 0.0)
            status, headers, delay = step
            await asyncio.sleep(delay)
            if status == 200:
                n = [len(r) for r in body["responses"]]
                return JSONResponse({"rewards": [2.0 * x for x in n], "best": 0, "num_valid": 2, "num_failed": 0,
                                     "uncertainty": [0.0] * len(n)}, headers=headers)
            if status == 299:  # a 200 whose body is not what /v1/score answers
                return Response("not json", status_code=200)
            return JSONResponse({"error": f"scripted {status}", "field": None}, status_code=status, headers=headers)

        return Starlette(routes=[Route("/v1/score", score, methods=["POST"])])


@contextlib.contextmanager
def scripted(steps: list[tuple[int, dict[str, str], float]]) -> Iterator[tuple[str, Script]]:
    script = Script(steps)
    with serve_in_thread(script.app(), graceful_s=1) as (base, _):
        yield base, script


def test_503_with_retry_after_waits_then_succeeds():
    with scripted([(503, {"Retry-After": "1"}, 0.0), (503, {"Retry-After": "1"}, 0.0)]) as (base, script):
        with RewardClient(base, timeout=10, backoff=0.01) as c:
            t0 = time.monotonic()
            r = c.score("q", ["aa", "b"])
            elapsed = time.monotonic() - t0
    assert r.rewards == [4.0, 2.0] and r.num_valid == 2
    gaps = [b - a for a, b in zip(script.times, script.times[1:])]
    assert len(script.times) == 3 and all(g >= 1.0 for g in gaps), gaps  # Retry-After honoured, not the 10 ms backoff
    assert elapsed < 4.0


def test_503_async_path_and_http_date_retry_after():
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    assert 0.5 < parse_retry_after(date) <= 2.0 and parse_retry_after("3") == 3.0 and parse_retry_after("x") is None

    async def go(base: str) -> ScoreResult:
        async with RewardClient(base, timeout=10, backoff=0.01) as c:
            return await c.ascore("q", ["abc"])

    with scripted([(503, {"Retry-After": "1"}, 0.0)]) as (base, script):
        r = asyncio.run(go(base))
    assert r.rewards == [6.0] and len(script.times) == 2 and script.times[1] - script.times[0] >= 1.0


def test_retry_after_beyond_the_budget_fails_at_once():
    with scripted([(503, {"Retry-After": "30"}, 0.0)]) as (base, script):
        with RewardClient(base, timeout=3) as c:
            t0 = time.monotonic()
            with pytest.raises(ServerBusy, match="Retry-After 30") as e:
                c.score("q", ["a"])
    assert time.monotonic() - t0 < 1.0 and e.value.retry_after == 30 and len(script.times) == 1


def test_502_is_retried_500_is_not():
    with scripted([(502, {}, 0.0)]) as (base, script):
        with RewardClient(base, timeout=5, backoff=0.05) as c:
            assert c.score("q", ["a"]).rewards == [2.0]
        assert len(script.times) == 2
    with scripted([(500, {}, 0.0)]) as (base, script):
        with RewardClient(base, timeout=5, backoff=0.05) as c, pytest.raises(ServerError, match="HTTP 500"):
            c.score("q", ["a"])
        assert len(script.times) == 1


def test_garbled_answer_is_a_clear_error():
    with scripted([(299, {}, 0.0)]) as (base, _):
        with RewardClient(base, timeout=5) as c, pytest.raises(ServerError, match="without a JSON object"):
            c.score("q", ["a"])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_slow_server_times_out_within_the_budget(mode):
    with scripted([(200, {}, 5.0)]) as (base, _):
        c = RewardClient(base, timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(RewardTimeout, match="1 s budget"):
            if mode == "sync":
                c.score("q", ["a"])
            else:
                asyncio.run(c.ascore("q", ["a"]))
        assert time.monotonic() - t0 < 1.5
        c.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_server_down_is_a_clear_error_within_the_timeout(mode):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    c = RewardClient(url, timeout=2.0, backoff=0.1)
    t0 = time.monotonic()
    with pytest.raises((ServerUnavailable, RewardTimeout)) as e:
        if mode == "sync":
            c.get_reward(["pa"], ["p"])
        else:
            asyncio.run(c.aget_reward(["pa"], ["p"]))
    elapsed = time.monotonic() - t0
    assert elapsed < 2.2, elapsed
    assert isinstance(e.value, ServerUnavailable) and "cannot connect" in str(e.value) and url in str(e.value)
    c.close()


def test_slot_wait_counts_against_the_budget():
    with scripted([(200, {}, 1.5), (200, {}, 1.5)]) as (base, _):
        with RewardClient(base, max_concurrency=1, timeout=0.7) as c:
            slow = threading.Thread(target=lambda: pytest.raises(RewardTimeout, c.score, "q", ["a"]))
            slow.start()
            time.sleep(0.1)
            t0 = time.monotonic()
            with pytest.raises(RewardTimeout):
                c.score("q", ["b"])  # waits ~0.6 s for the only slot, then has ~0.1 s for its own attempt
            assert time.monotonic() - t0 < 0.9
            slow.join(5)


# -- the real server ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[str]:
    """A token-protected `spct serve` with a small queue (4) and no batching (each item scored alone)."""
    with spct_server(tmp_path_factory.mktemp("guarded"), "--max-queue", "4", "--max-batch", "1",
                     token=TOKEN) as base:
        yield base


def test_wrong_or_missing_token_is_a_clear_401_without_retries(guarded):
    before = metrics(guarded, TOKEN)["requests"]["unauthorized"]
    with RewardClient(guarded, token="not-the-token", timeout=10) as c:
        t0 = time.monotonic()
        with pytest.raises(Unauthorized, match="wrong token") as e:
            c.score("q", ["a"])
        assert e.value.status == 401 and time.monotonic() - t0 < 2
        with pytest.raises(Unauthorized):
            c.metrics()
    with RewardClient(guarded, timeout=10) as c, pytest.raises(Unauthorized, match="needs a token"):
        c.get_reward(["pa"], ["p"])
    # score, metrics and get_reward: one request each, never retried
    assert metrics(guarded, TOKEN)["requests"]["unauthorized"] == before + 3


def test_bad_requests_name_the_field(guarded):
    with RewardClient(guarded, token=TOKEN, timeout=30) as c:
        with pytest.raises(BadRequest) as e:
            c.score("q", [])
        assert e.value.field == "responses" and e.value.status == 400
        with pytest.raises(BadRequest) as e:
            c.score("q", ["a"], k=999)
        assert e.value.field == "k"
        with pytest.raises(BadRequest) as e:
            c.get_reward(["Q1 a", "other"], ["Q1 ", "Q2 "])
        assert e.value.field == "query[1]" and "query[1]" in str(e.value)


def item(i: int) -> tuple[str, list[str]]:
    # Same length for every i: one prompt-length bucket, so the server compiles once.
    return f"Which reply to question {i:03d} is better?", [f"reply {i:03d}", f"other {i:03d}"]


def test_200_concurrent_calls_each_answered_once_with_their_own_rewards(guarded):
    """200 coroutines, one client (32 in flight) and a server that queues 4: the surplus gets 503 + Retry-After and
    retries. Each answer must be the one its own input gets alone: the full judgement (rewards, parse counts and
    the k sampled texts, which the tiny random GRM draws from a seed of the item's content)."""
    with RewardClient(guarded, token=TOKEN, timeout=60) as c:
        alone = {i: c.score(*item(i), return_samples=True) for i in range(0, 200, 8)}  # references, one at a time
    m0 = metrics(guarded, TOKEN)

    async def burst() -> list[ScoreResult]:
        async with RewardClient(guarded, token=TOKEN, max_concurrency=32, timeout=150, retries=100) as c:
            return await asyncio.gather(*(c.ascore(*item(i), return_samples=True) for i in range(200)))

    t0 = time.monotonic()
    answers = asyncio.run(burst())
    elapsed = time.monotonic() - t0
    m1 = metrics(guarded, TOKEN)
    assert len(answers) == 200 and elapsed < 150
    for i, r in enumerate(answers):
        assert len(r.rewards) == 2 and len(r.samples) == 2
        assert r.samples[0]["permutation"] in ([0, 1], [1, 0])
        if i in alone:
            assert r == alone[i], i
    # Texts differ between inputs, so a swapped answer would show: every answer is distinct.
    assert len({tuple(s["text"] for s in r.samples) for r in answers}) == 200
    ok = m1["requests"]["ok"] - m0["requests"]["ok"]
    scored = m1["batches"]["count"] - m0["batches"]["count"]
    assert ok == 200 and scored == 200  # each call scored exactly once: no lost and no duplicate request
    assert m1["requests"]["rejected"] - m0["requests"]["rejected"] > 0  # the small queue did push back
    assert m1["requests"]["errors"] == m0["requests"]["errors"]
