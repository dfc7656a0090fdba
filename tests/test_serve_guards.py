"""`spct serve` under hostile or careless clients (issue 34), on loopback, each test bounded to seconds:

abandoned work stops holding the scorer (a timed-out or vanished request is dropped between chunks), the queue
bound counts items, slow and stalled connections are closed, cross-site requests are refused, the bearer scheme
is case-insensitive, aborts are one log line, and the README's serve line answers 200 (the real command).

The in-process tests serve test_serve.FakeScorer (a judgement of a response is its length; `delay` seconds per
scorer call), so the scorer's calls show exactly what was scored.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_serve import FakeScorer, free_port, item

from spct_jax.serve.client import ServerUnavailable, wait_for_server
from spct_jax.serve.app import LOOPBACK_NAMES, ServeOptions, create_app
from spct_jax.serve.batcher import Batcher, ScoreParams
from spct_jax.serve.schema import Limits
from spct_jax.serve.server import allowed_hosts, check_args, parse_args, serve_in_thread

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def live(scorer, *, max_batch: int = 8, max_queue: int = 256, k: int = 2, max_request_items: int = 256,
         **options) -> Iterator[tuple[str, Batcher]]:
    batcher = Batcher(scorer, max_batch=max_batch, max_queue=max_queue, batch_wait_s=0.005, max_new_tokens=4)
    opts = ServeOptions(limits=Limits(default_k=k, max_k=8, has_meta_rm=False, default_k_meta=None,
                                      max_request_items=max_request_items), **options)
    try:
        with serve_in_thread(create_app(batcher, opts), graceful_s=2) as (base, _):
            yield base, batcher
    finally:
        batcher.close(drain=False, timeout=5)


def rollouts(n: int, prompt_chars: int = 2500) -> dict:
    """A /get_reward body of n queries, each with its own prompt (n GRM items), as the red team sent."""
    prompts = [f"<user>rollout {i}: " + "x" * prompt_chars + "</user>" for i in range(n)]
    return {"query": [p + f" answer {i}" for i, p in enumerate(prompts)], "prompts": prompts}


def rollout_calls(fake: FakeScorer) -> list[list[dict]]:
    return [c for c in fake.calls if all(str(it["context"]).startswith("<user>rollout") for it in c)]


def metrics(base: str, token: str | None = None) -> dict:
    return httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"} if token else {}).json()


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def read_until_closed(s: socket.socket, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    return data


def post_head(path: str, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def wait_for(condition, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.02)


# -- abandoned work ------------------------------------------------------------------------------------------------
def test_a_timed_out_request_stops_holding_the_scorer():
    """120 prompts would take 15 calls (6 s); the request times out at 1.5 s and is dropped at the next chunk, so
    a small request sent 2 s after the 504 is answered at once (before: it waited out the rest, and got 504)."""
    fake = FakeScorer(delay=0.4)
    with live(fake, max_batch=8, timeout_s=1.5) as (base, batcher):
        t0 = time.monotonic()
        big = httpx.post(f"{base}/get_reward", json=rollouts(120), timeout=30)
        assert big.status_code == 504 and "--timeout" in big.json()["error"]
        assert time.monotonic() - t0 < 3.0
        time.sleep(2.0)
        t1 = time.monotonic()
        small = httpx.post(f"{base}/v1/score", json=item(5), timeout=30)
        small_s = time.monotonic() - t1
        calls = len(rollout_calls(fake))
        time.sleep(1.0)
        m = metrics(base)
    assert small.status_code == 200 and small.json()["rewards"] == [12.0, 2.0] and small_s < 1.4, small.text
    assert 1 <= calls <= 5, calls  # 1.5 s of 0.4 s calls, plus the one in flight at the deadline
    assert len(rollout_calls(fake)) == calls  # nothing of it was scored after that
    assert m["dropped_items"] == 120 - 8 * calls and m["queue_depth"] == 0 and m["in_flight"] == 0
    assert m["requests"]["timeouts"] == 1 and m["requests"]["ok"] == 1


def test_a_client_that_goes_away_drops_its_job_and_is_logged_as_one_line(caplog):
    caplog.set_level(logging.INFO, logger="spct_jax.serve")
    fake = FakeScorer(delay=0.3)
    with live(fake, max_batch=4, timeout_s=30) as (base, batcher):
        body = json.dumps(rollouts(40, 10)).encode()
        with socket.create_connection(("127.0.0.1", port_of(base))) as s:
            s.sendall(post_head("/get_reward", len(body)) + body)
            wait_for(lambda: len(fake.calls) >= 1)
        # Closed while chunk 1 or 2 of 10 is scored: at most the chunk in flight finishes.
        wait_for(lambda: metrics(base)["requests"]["aborted"] == 1)
        time.sleep(0.8)
        calls = len(fake.calls)
        time.sleep(0.7)
        m = metrics(base)
    assert calls == len(fake.calls) <= 3, calls
    assert m["requests"]["errors"] == 0 and m["dropped_items"] == 40 - 4 * calls
    logged = [r for r in caplog.records if r.name == "spct_jax.serve"]
    assert [r.levelname for r in logged] == ["INFO"], [r.getMessage() for r in logged]
    assert "client went away before its answer" in logged[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_a_client_that_disconnects_mid_body_is_an_abort_not_an_error(caplog):
    caplog.set_level(logging.INFO, logger="spct_jax.serve")
    fake = FakeScorer()
    with live(fake, token="tok") as (base, batcher):
        with socket.create_connection(("127.0.0.1", port_of(base))) as s:
            s.sendall(post_head("/v1/score", 1000, token="tok") + b'{"context": "q", ')
            time.sleep(0.2)
        wait_for(lambda: metrics(base, "tok")["requests"]["aborted"] == 1)
        m = metrics(base, "tok")
    assert m["requests"]["errors"] == 0 and fake.calls == []
    logged = [r for r in caplog.records if r.name == "spct_jax.serve"]
    assert len(logged) == 1 and logged[0].levelname == "INFO", [r.getMessage() for r in logged]
    assert "went away while sending its body" in logged[0].getMessage()
    assert not any(r.exc_info for r in caplog.records) and "Traceback" not in caplog.text


def test_a_small_request_behind_a_big_one_waits_for_one_call_not_all_of_it():
    fake = FakeScorer(delay=0.3)
    b = Batcher(fake, max_batch=4, max_queue=64, batch_wait_s=0)
    params = ScoreParams(2, None, 0.5)
    big = b.submit([item(i) for i in range(20)], params)  # 5 calls of 4
    b.start()
    try:
        wait_for(lambda: len(fake.calls) == 1)
        small = b.submit([item(99)], params)
        assert [j.rewards for j in small.result(5)] == [(2.0 * (99 % 13 + 1), 2.0 * (99 // 13 + 1))]
        assert [j.rewards[0] for j in big.result(10)] == [2.0 * (i % 13 + 1) for i in range(20)]
    finally:
        b.close(drain=False, timeout=5)
    contexts = [[it["context"] for it in call] for call in fake.calls]
    # The call in flight when it arrived, then its turn (filled up with big's next 3), then the rest of big.
    assert contexts[1] == ["question 99", "question 4", "question 5", "question 6"], contexts
    assert [len(c) for c in contexts] == [4, 4, 4, 4, 4, 1] and b.queue_depth == 0


# -- bounded queue and requests ------------------------------------------------------------------------------------
def test_the_queue_counts_items_so_one_request_cannot_walk_around_it():
    fake = FakeScorer(delay=0.5)

    async def client(base: str, batcher: Batcher) -> list[httpx.Response]:
        async def until(cond) -> None:
            t0 = time.monotonic()
            while not cond():
                assert time.monotonic() - t0 < 10
                await asyncio.sleep(0.01)

        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            big = await c.post("/get_reward", json=rollouts(120, 10))  # the red team's request: never queued
            a = asyncio.create_task(c.post("/v1/score", json=item(0)))
            await until(lambda: len(fake.calls) == 1)  # the worker holds it; the queue is empty
            b = asyncio.create_task(c.post("/get_reward", json=rollouts(3, 10)))
            await until(lambda: batcher.queue_depth == 3)
            full = await c.post("/get_reward", json=rollouts(2, 10))  # 3 + 2 items > 4
            d = asyncio.create_task(c.post("/v1/score", json=item(1)))  # 3 + 1 fits
            return [big, await a, await b, full, await d]

    with live(fake, max_batch=1, max_queue=4, timeout_s=20) as (base, batcher):
        big, a, b, full, d = asyncio.run(client(base, batcher))
        m = metrics(base)
    assert big.status_code == 413 and big.json()["field"] == "query", big.text
    assert "120 distinct prompts" in big.json()["error"] and "--max-queue 4" in big.json()["error"]
    assert [a.status_code, b.status_code, d.status_code] == [200, 200, 200]
    assert full.status_code == 503 and int(full.headers["Retry-After"]) >= 1 and "--max-queue 4" in full.text
    assert len(fake.calls) == 1 + 3 + 1  # the big one cost nothing
    assert m["requests"]["rejected"] == 1 and m["requests"]["bad_request"] == 1


def test_a_request_over_max_request_items_gets_413():
    fake = FakeScorer()
    with live(fake, max_request_items=2) as (base, _):
        over = httpx.post(f"{base}/get_reward", json=rollouts(3, 5))
        scored_before = list(fake.calls)
        grouped = httpx.post(f"{base}/get_reward", json={"query": ["pa", "pb", "pc"], "prompts": ["p"] * 3})
    assert over.status_code == 413 and "--max-request-items 2" in over.json()["error"] and scored_before == []
    assert grouped.status_code == 200  # 3 queries of one prompt are one GRM item


def test_an_over_long_prompt_is_refused_before_its_request_is_queued():
    def check(it: dict) -> None:
        if "LONG" in str(it["context"]):
            raise ValueError("the GRM prompt has 9000 tokens, over the 7680 a prompt may have")

    fake = FakeScorer()
    with live(fake, prompt_check=check) as (base, _):
        r = httpx.post(f"{base}/get_reward", json={"query": ["shorta", "LONGb", "LONGc"],
                                                   "prompts": ["short", "LONG", "LONG"]})
        one = httpx.post(f"{base}/v1/score", json={"context": "LONG", "responses": ["a"]})
    assert r.status_code == 400 and r.json()["field"] == "prompts[1]" and "9000 tokens" in r.json()["error"]
    assert one.status_code == 400 and one.json()["field"] == "body"
    assert fake.calls == []


# -- slow and many connections -------------------------------------------------------------------------------------
def test_stalled_connections_are_closed_within_the_header_timeout():
    with live(FakeScorer(), header_timeout_s=1.0, token="tok") as (base, _):
        addr = ("127.0.0.1", port_of(base))
        stalled = []
        for _ in range(50):  # unauthenticated, part of their headers sent
            s = socket.create_connection(addr)
            s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            stalled.append(s)
        keep_alive = socket.create_connection(addr)  # one answered request, then a stalled second one
        keep_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        keep_alive.settimeout(5)
        assert keep_alive.recv(65536).startswith(b"HTTP/1.1 200")
        keep_alive.sendall(b"GET /heal")
        t0 = time.monotonic()
        assert httpx.get(f"{base}/healthz").status_code == 200  # the others are not held up meanwhile
        answers = [read_until_closed(s) for s in [*stalled, keep_alive]]
        elapsed = time.monotonic() - t0
        m = metrics(base, "tok")
        for s in [*stalled, keep_alive]:
            s.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
    assert elapsed < 1.0 + 1.5, elapsed
    assert m["connections"]["header_timeouts"] == 51 and m["requests"]["total"] == 0


def test_a_body_that_stalls_gets_408_and_its_connection_closes():
    fake = FakeScorer()
    with live(fake, token="tok", body_timeout_s=1.0, timeout_s=20) as (base, _):
        with socket.create_connection(("127.0.0.1", port_of(base))) as s:
            s.sendall(post_head("/v1/score", 1000, token="tok") + b'{"context":')  # 11 of the 1,000 promised
            t0 = time.monotonic()
            answer = read_until_closed(s)
            elapsed = time.monotonic() - t0
        m = metrics(base, "tok")
    assert answer.startswith(b"HTTP/1.1 408") and b"--body-timeout" in answer, answer[:200]
    assert 0.9 < elapsed < 2.5, elapsed
    assert m["requests"]["aborted"] == 1 and m["requests"]["errors"] == 0 and fake.calls == []


def test_connections_over_the_cap_are_answered_503_and_closed():
    with live(FakeScorer(), max_connections=5) as (base, _):
        addr = ("127.0.0.1", port_of(base))
        idle = [socket.create_connection(addr) for _ in range(4)]
        wait_for(lambda: metrics(base)["connections"]["open"] == 5)  # 4 idle + /metrics' own
        idle.append(socket.create_connection(addr))
        time.sleep(0.2)
        with socket.create_connection(addr) as extra:
            refused = read_until_closed(extra)
        for s in idle:
            s.close()
        time.sleep(0.2)
        ok = httpx.get(f"{base}/healthz")
        m = metrics(base)
    assert refused.startswith(b"HTTP/1.1 503") and b"--max-connections" in refused, refused
    assert ok.status_code == 200 and m["connections"]["refused"] == 1


# -- cross-site requests and auth ----------------------------------------------------------------------------------
def test_cross_site_requests_are_refused():
    fake = FakeScorer()
    body = json.dumps(item(1)).encode()
    with live(fake) as (base, _):  # allowed_hosts: the loopback names, as on `spct serve`'s default bind
        url = f"{base}/v1/score"

        def post(**headers: str) -> httpx.Response:
            return httpx.post(url, content=body, headers=headers)

        plain = post(**{"Content-Type": "text/plain"})  # a cross-site "simple request": no preflight
        form = post(**{"Content-Type": "application/x-www-form-urlencoded"})
        bare = post()
        refused_before = list(fake.calls)
        foreign_host = post(**{"Content-Type": "application/json", "Host": "evil.example:8000"})
        foreign_origin = post(**{"Content-Type": "application/json", "Origin": "http://evil.example"})
        null_origin = post(**{"Content-Type": "application/json", "Origin": "null"})
        health = httpx.get(f"{base}/healthz", headers={"Host": "rebound.evil.example"})
        ok = [post(**{"Content-Type": "application/json; charset=utf-8"}),
              post(**{"Content-Type": "application/json", "Origin": f"http://localhost:{port_of(base)}"}),
              post(**{"Content-Type": "application/json", "Host": "LOCALHOST:1234"}),
              post(**{"Content-Type": "application/json", "Host": "[::1]:8000"})]
        m = metrics(base)
    for r in (plain, form, bare):
        assert r.status_code == 415 and r.json()["field"] == "Content-Type", r.text
    assert refused_before == []
    assert foreign_host.status_code == 403 and foreign_host.json()["field"] == "Host"
    assert foreign_origin.status_code == 403 and foreign_origin.json()["field"] == "Origin"
    assert null_origin.status_code == 403 and health.status_code == 403
    assert [r.status_code for r in ok] == [200] * 4
    assert m["requests"]["forbidden"] == 4 and len(fake.calls) == 4


def test_allowed_hosts_flag():
    def hosts(*argv: str):
        args = parse_args(["--model", "tiny-random", *argv])
        assert check_args(args) is None
        return allowed_hosts(args)

    assert hosts() == LOOPBACK_NAMES  # 127.0.0.1 is one of them
    assert hosts("--host", "127.0.0.2") == LOOPBACK_NAMES | {"127.0.0.2"}
    assert hosts("--host", "0.0.0.0") is None  # a network bind: any Host (and a token is due: main warns)
    assert hosts("--allowed-hosts", "*") is None
    assert hosts("--allowed-hosts", "My-Box, [::1]") == {"my-box", "::1"}
    assert "--allowed-hosts" in check_args(parse_args(["--model", "tiny-random", "--allowed-hosts", " , "]))
    with live(FakeScorer(), allowed_hosts=None) as (base, _):
        r = httpx.post(f"{base}/v1/score", json=item(1), headers={"Host": "my-box.lan:8000"})
    assert r.status_code == 200


def test_the_bearer_scheme_is_case_insensitive():
    with live(FakeScorer(), token="s3cret") as (base, _):
        def code(auth: str) -> int:
            return httpx.post(f"{base}/v1/score", json=item(0), headers={"Authorization": auth}).status_code

        good = [code(a) for a in ("Bearer s3cret", "bearer s3cret", "BEARER s3cret", "Bearer   s3cret")]
        bad = [code(a) for a in ("Basic s3cret", "Bearers3cret", "bearer S3CRET", "s3cret", "Bearer s3cret x",
                                 "Bearer")]
    assert good == [200] * 4 and bad == [401] * 6


# -- the README's command --------------------------------------------------------------------------------------------
def readme_serve_line() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    [line] = [x for x in lines if x.startswith("spct serve --model tiny-random")]
    return shlex.split(line.split("#", 1)[0])


@pytest.mark.timeout(150)
def test_the_readmes_serve_line_answers_200(tmp_path):
    """README: `spct serve --model tiny-random --k 8` (the default template, 512 new tokens). It refused every
    request (prompt 3912 > 3584 tokens) when tiny-random had 4,096 positions. Only --port is added: the README's
    8000 may be taken on a shared machine."""
    argv = readme_serve_line()
    assert argv[:2] == ["spct", "serve"] and "--port" not in argv, argv
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "spct_jax.cli", *argv[1:], "--port", str(port)], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_server(base, timeout_s=90, alive=lambda: proc.poll() is None)
        except ServerUnavailable as e:
            raise AssertionError(log_path.read_text()) from e
        score = httpx.post(f"{base}/v1/score", json={"context": "What is 2+2?", "responses": ["4", "5"]},
                           timeout=120)
        reward = httpx.post(f"{base}/get_reward", json={"query": ["Q: 2+2?\nA: 4", "Q: 2+2?\nA: 5"],
                                                        "prompts": ["Q: 2+2?\nA: "] * 2}, timeout=120)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert score.status_code == 200, score.text
    assert reward.status_code == 200 and len(reward.json()["rewards"]) == 2, reward.text
    s = score.json()
    assert s["num_valid"] + s["num_failed"] == 8  # --k 8
    assert rc == 0, log_path.read_text()


def test_settings_that_leave_no_room_for_a_prompt_are_refused_at_start(capsys):
    from spct_jax.cli import main as spct

    t0 = time.monotonic()
    assert spct(["serve", "--model", "tiny-random", "--port", "0", "--max-new-tokens", "5000"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 20
    [line] = [x for x in err.splitlines() if "error" in x]
    assert "template 'default' alone takes 3847 tokens" in line and "--max-new-tokens below 4345" in line, err
