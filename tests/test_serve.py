"""`spct serve` on loopback: batching without mix-ups, back-pressure, timeouts, auth, OpenRLHF grouping, drain.

Most tests serve a fake scorer in-process (uvicorn in a thread, on a socket bound to 127.0.0.1:0): its judgement
of a response is the response's length, so every answer shows which request it belongs to. One test starts the
real command (`spct serve --model tiny-random`) as a subprocess, scores through it and stops it with SIGTERM.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
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
import uvicorn

from spct_jax.grm.scorer import Judgement, SampleRecord
from spct_jax.serve.app import ServeOptions, create_app
from spct_jax.serve.batcher import Batcher, BatcherClosed, JobTooLarge, QueueFull, ScoreParams
from spct_jax.serve.client import ServerUnavailable, wait_for_server
from spct_jax.serve.schema import Limits
from spct_jax.serve.server import DEFAULT_HOST, build_parser, serve_in_thread

REPO = Path(__file__).resolve().parents[1]


class FakeScorer:
    """score() like GenerativeRewardModel's: every sample gives response i the score len(responses[i]), so the
    summed reward is k * len. Contexts containing "garbage" get k unparsable samples; "boom" is refused
    (ValueError, like an over-long prompt) and "crash" crashes (RuntimeError)."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls: list[list[dict]] = []
        self.lock = threading.Lock()

    def score(self, items, *, k, k_meta, temperature, max_new_tokens, seed, progress):
        with self.lock:
            self.calls.append([dict(it) for it in items])
        time.sleep(self.delay)
        out = []
        for it in items:
            if "boom" in str(it["context"]):
                raise ValueError("field 'context': boom")
            if "crash" in str(it["context"]):
                raise RuntimeError("the model fell over")
            n = len(it["responses"])
            perm = tuple(range(n))
            if "garbage" in str(it["context"]):
                samples = tuple(SampleRecord(perm, "??", "", "", None, "no scores") for _ in range(k))
                out.append(Judgement(uid=it.get("uid", ""), rewards=(0.0,) * n, best=None, num_valid=0, num_failed=k,
                                     uncertainty=None, samples=samples))
                continue
            scores = tuple(len(r) for r in it["responses"])
            samples = tuple(SampleRecord(perm, "ok", "", "", scores, None, kept=True) for _ in range(k))
            out.append(Judgement(uid=it.get("uid", ""), rewards=tuple(float(k * s) for s in scores),
                                 best=max(range(n), key=lambda i: scores[i]), num_valid=k, num_failed=0,
                                 uncertainty=(0.0,) * n, samples=samples))
        return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live(scorer, *, max_batch: int = 8, max_queue: int = 256, batch_wait_s: float = 0.005, timeout_s: float = 30.0,
         token: str | None = None, k: int = 2) -> Iterator[tuple[str, Batcher, uvicorn.Server]]:
    batcher = Batcher(scorer, max_batch=max_batch, max_queue=max_queue, batch_wait_s=batch_wait_s, max_new_tokens=4)
    options = ServeOptions(limits=Limits(default_k=k, max_k=8, has_meta_rm=False, default_k_meta=None),
                           timeout_s=timeout_s, token=token)
    try:
        with serve_in_thread(create_app(batcher, options)) as (base, server):
            yield base, batcher, server
    finally:
        batcher.close(drain=False, timeout=5)


def listening_addresses(port: int) -> set[str] | None:
    """IPv4 addresses with a listening TCP socket on `port` (Linux /proc), or None where /proc is unavailable."""
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    out = set()
    for row in rows:
        local, state = row.split()[1], row.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":  # 0A = LISTEN
            out.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def item(i: int) -> dict:
    """Request i: two responses whose lengths (i % 13 + 1, i // 13 + 1) identify i."""
    return {"context": f"question {i}", "responses": ["a" * (i % 13 + 1), "b" * (i // 13 + 1)]}


def test_default_bind_is_loopback():
    args = build_parser().parse_args(["--model", "tiny-random"])
    assert args.host == DEFAULT_HOST == "127.0.0.1"


def test_200_concurrent_requests_each_get_their_own_answer():
    fake = FakeScorer(delay=0.02)

    async def client(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=60,
                                     limits=httpx.Limits(max_connections=200)) as c:
            return await asyncio.gather(*(c.post("/v1/score", json=item(i)) for i in range(200)))

    with live(fake, max_batch=16, max_queue=512) as (base, _, _):
        answers = asyncio.run(client(base))
        metrics = httpx.get(f"{base}/metrics").json()
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["rewards"] == [2.0 * (i % 13 + 1), 2.0 * (i // 13 + 1)], i  # k=2 samples x length
        assert body["num_valid"] == 2 and "samples" not in body
    # Each request was scored exactly once: no duplicate and no lost item across all scorer calls.
    scored = sorted(it["context"] for call in fake.calls for it in call)
    assert scored == sorted(f"question {i}" for i in range(200))
    b = metrics["batches"]
    assert b["max_requests"] > 1 and b["count"] == len(fake.calls) < 200
    assert sum(int(n) * c for n, c in b["histogram_requests"].items()) == 200
    assert max(len(call) for call in fake.calls) <= 16
    assert metrics["requests"]["ok"] == 200 and metrics["requests"]["total"] == 200
    assert metrics["latency_ms"]["count"] == 200 and 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p99"]
    assert metrics["samples"] == {"total": 400, "failed": 0, "parse_failure_rate": 0.0}
    assert metrics["queue_depth"] == 0 and metrics["in_flight"] == 0


def test_full_queue_answers_503_with_retry_after():
    fake = FakeScorer(delay=0.4)

    async def client(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/score", json=item(i)) for i in range(10)))

    with live(fake, max_batch=1, max_queue=2) as (base, _, _):
        answers = asyncio.run(client(base))
        metrics = httpx.get(f"{base}/metrics").json()
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 503} and codes.count(200) >= 2, codes  # the two queued ones, at least
    for i, r in enumerate(answers):
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]
        else:
            assert r.json()["rewards"] == [2.0 * (i % 13 + 1), 2.0 * (i // 13 + 1)]
    assert metrics["requests"]["rejected"] == codes.count(503)
    assert metrics["batches"]["max_requests"] == 1  # --max-batch 1 turns batching off


def test_timeout_answers_504_and_drops_the_queued_job():
    fake = FakeScorer(delay=2.0)

    async def client(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            first = asyncio.create_task(c.post("/v1/score", json=item(1)))
            await asyncio.sleep(0.1)  # let the first job reach the scorer; the second then waits in the queue
            return [await first, await c.post("/v1/score", json=item(2))]

    with live(fake, max_batch=1, timeout_s=0.3) as (base, _, _):
        t0 = time.monotonic()
        answers = asyncio.run(client(base))
        elapsed = time.monotonic() - t0
        time.sleep(2.2)  # the worker finishes the first call; the cancelled second job must not be scored
        metrics = httpx.get(f"{base}/metrics").json()
    assert [r.status_code for r in answers] == [504, 504]
    assert "timeout" in answers[0].json()["error"]
    assert elapsed < 1.6  # answered at ~0.3 s and ~0.6 s, not after the 2 s scorer call
    assert len(fake.calls) == 1 and metrics["requests"]["timeouts"] == 2


def test_token_is_required_when_set():
    with live(FakeScorer(), token="s3cret-token") as (base, _, _):
        assert httpx.post(f"{base}/v1/score", json=item(0)).status_code == 401
        bad = httpx.post(f"{base}/v1/score", json=item(0), headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401 and bad.headers["WWW-Authenticate"] == "Bearer"
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.post(f"{base}/get_reward", json={"query": ["pa"], "prompts": ["p"]}).status_code == 401
        auth = {"Authorization": "Bearer s3cret-token"}
        assert httpx.post(f"{base}/v1/score", json=item(0), headers=auth).status_code == 200
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}  # probes carry no token
        m = httpx.get(f"{base}/metrics", headers=auth).json()
    assert m["requests"]["unauthorized"] == 4 and m["requests"]["ok"] == 1


def test_get_reward_groups_queries_by_prompt():
    fake = FakeScorer()
    p1, p2 = "<user>Tell a joke</user>", "<user>Add 2+2</user>"
    body = {"query": [p1 + "aa", p2 + "b", p1 + "cccc", p2 + "ddd", p1 + "e", "garbage?" + "xyz"],
            "prompts": [p1, p2, p1, p2, p1, "garbage?"], "labels": ["", "4", "", "4", "", ""], "extra": 1}
    with live(fake, k=3) as (base, _, _):
        r = httpx.post(f"{base}/get_reward", json=body)
        empty = httpx.post(f"{base}/get_reward", json={"query": [], "prompts": []})
    assert r.status_code == 200, r.text
    # Pointwise reward = summed votes / samples summed = the length; no parsed sample -> fallback 0.0.
    assert r.json() == {"rewards": [2.0, 1.0, 4.0, 3.0, 1.0, 0.0]}
    assert len(fake.calls) == 1  # one request -> one scorer call holding one item per distinct prompt
    assert [(it["context"], it["responses"]) for it in fake.calls[0]] == [
        (p1, ["aa", "cccc", "e"]), (p2, ["b", "ddd"]), ("garbage?", ["xyz"])]
    assert empty.json() == {"rewards": []}


@pytest.mark.parametrize("path,body,field", [
    ("/v1/score", b"{not json", "body"),
    ("/v1/score", b"[1, 2]", "body"),
    ("/v1/score", json.dumps({"responses": ["a"]}).encode(), "context"),
    ("/v1/score", json.dumps({"context": "q", "responses": "a"}).encode(), "responses"),
    ("/v1/score", json.dumps({"context": "q", "responses": []}).encode(), "responses"),
    ("/v1/score", json.dumps({"context": "q", "responses": ["a", 3]}).encode(), "responses[1]"),
    ("/v1/score", json.dumps({"context": [{"role": "bot", "content": "x"}], "responses": ["a"]}).encode(),
     "context[0]"),
    ("/v1/score", json.dumps({"context": "q", "responses": ["a"], "k": "two"}).encode(), "k"),
    ("/v1/score", json.dumps({"context": "q", "responses": ["a"], "k": 99}).encode(), "k"),
    ("/v1/score", json.dumps({"context": "q", "responses": ["a"], "k_meta": 1}).encode(), "k_meta"),
    ("/v1/score", json.dumps({"context": "q", "responses": ["a"], "k_mta": 1}).encode(), "k_mta"),
    ("/v1/score", json.dumps({"context": "q", "responses": ["a"], "return_samples": "yes"}).encode(),
     "return_samples"),
    ("/get_reward", json.dumps({"query": ["pa"]}).encode(), "prompts"),
    ("/get_reward", json.dumps({"query": ["pa", "pb"], "prompts": ["p"]}).encode(), "prompts"),
    ("/get_reward", json.dumps({"query": ["pa", "qb"], "prompts": ["p", "p"]}).encode(), "query[1]"),
    ("/get_reward", json.dumps({"prompts": ["p"]}).encode(), "query"),
    ("/get_reward", json.dumps({"query": ["pa", 7], "prompts": ["p", "p"]}).encode(), "query[1]"),
])
def test_bad_requests_get_400_naming_the_field(served_fake, path, body, field):
    base, fake = served_fake
    r = httpx.post(f"{base}{path}", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and r.json()["error"]


@pytest.fixture(scope="module")
def served_fake():
    fake = FakeScorer()
    with live(fake) as (base, _, _):
        yield base, fake


def test_scorer_errors_stay_with_their_request(served_fake):
    base, _ = served_fake
    r = httpx.post(f"{base}/v1/score", json={"context": "boom", "responses": ["a"]})
    assert r.status_code == 400 and "boom" in r.json()["error"]
    r = httpx.post(f"{base}/v1/score", json={"context": "crash", "responses": ["a"]})
    assert r.status_code == 500 and "fell over" in r.json()["error"]
    ok = httpx.post(f"{base}/v1/score", json={**item(3), "return_samples": True, "k": 3})
    assert ok.status_code == 200 and len(ok.json()["samples"]) == 3 and ok.json()["rewards"] == [12.0, 3.0]


def test_batcher_without_http():
    fake = FakeScorer(delay=0.05)
    b = Batcher(fake, max_batch=3, max_queue=11, batch_wait_s=0.05)
    p2, p3 = ScoreParams(2, None, 0.5), ScoreParams(3, None, 0.5)
    # Queued before the worker starts, so its first call sees them all: the k=2 jobs share it, k=3 waits its turn.
    boom = {"context": "boom", "responses": ["x"]}
    futs = [b.submit([item(0)], p2), b.submit([item(1)], p3), b.submit([boom], p2), b.submit([item(2)], p2)]
    # The queue bound counts items: 4 queued + 8 > 11; a job over the whole bound could never be taken.
    with pytest.raises(QueueFull):
        b.submit([item(i) for i in range(8)], p2)
    with pytest.raises(JobTooLarge):
        b.submit([item(i) for i in range(12)], p2)
    assert b.queue_depth == 4 and b.queued_requests == 4
    b.start()
    time.sleep(0.01)
    big = b.submit([item(i) for i in range(10, 17)], p3)  # 7 items > max_batch: scored in chunks of 3
    assert [j.rewards for j in futs[0].result(10)] == [(2.0, 2.0)]
    assert [j.rewards for j in futs[1].result(10)] == [(6.0, 3.0)]
    with pytest.raises(ValueError, match="boom"):
        futs[2].result(10)
    assert [j.rewards for j in futs[3].result(10)] == [(6.0, 2.0)]  # batched with "boom", yet answered
    assert [j.rewards[0] for j in big.result(10)] == [3.0 * (i % 13 + 1) for i in range(10, 17)]
    contexts = [[it["context"] for it in call] for call in fake.calls]
    assert contexts[:4] == [["question 0", "boom", "question 2"], ["question 0"], ["boom"], ["question 2"]]
    # Job 1 shares its call with big's first 2 items (calls are filled in queue order); big's other 5 follow.
    assert contexts[4] == ["question 1", "question 10", "question 11"] and [len(c) for c in contexts[5:]] == [3, 2]
    b.close(drain=True)
    with pytest.raises(BatcherClosed):
        b.submit([item(0)], p2)


def test_close_drains_queued_jobs():
    fake = FakeScorer(delay=0.05)
    b = Batcher(fake, max_batch=1, max_queue=8, batch_wait_s=0)
    futs = [b.submit([item(i)], ScoreParams(1, None, 0.0)) for i in range(4)]
    b.start()
    b.close(drain=True, timeout=10)
    assert all(f.done() and not f.exception() for f in futs) and len(fake.calls) == 4


def test_shutdown_answers_requests_in_flight():
    fake = FakeScorer(delay=0.6)
    results: list[httpx.Response] = []
    with live(fake, max_batch=1) as (base, batcher, server):
        threads = [threading.Thread(target=lambda i=i: results.append(httpx.post(f"{base}/v1/score", json=item(i),
                                                                                timeout=30))) for i in range(3)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while httpx.get(f"{base}/metrics").json()["in_flight"] < 3:
            assert time.monotonic() - t0 < 10
            time.sleep(0.02)
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        for t in threads:
            t.join(30)
    assert sorted(r.status_code for r in results) == [200, 200, 200]
    assert len(fake.calls) == 3
    with pytest.raises(BatcherClosed):
        batcher.submit([item(0)], ScoreParams(1, None, 0.0))


def test_spct_serve_end_to_end_with_tiny_random(tmp_path):
    """The real command: tiny-random GRM, both endpoints batched into one call, then SIGTERM drains and exits 0."""
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    cmd = [sys.executable, "-m", "spct_jax.cli", "serve", "--model", "tiny-random", "--port", str(port), "--k", "2",
           "--max-new-tokens", "4", "--batch-wait-ms", "500", "--timeout", "150"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        try:
            wait_for_server(base, timeout_s=120, alive=lambda: proc.poll() is None)
        except ServerUnavailable as e:
            raise AssertionError((tmp_path / "serve.log").read_text()) from e
        assert listening_addresses(port) in ({"127.0.0.1"}, None)  # the default bind: loopback only
        answers: dict[str, httpx.Response] = {}
        calls = {"score": ("/v1/score", {"context": "What is 2+2?", "responses": ["4", "5"], "return_samples": True}),
                 "reward": ("/get_reward", {"query": ["Q: hi A: hello", "Q: hi A: bye"], "prompts": ["Q: hi A: "] * 2})}
        threads = [threading.Thread(target=lambda n=n, p=p, b=b: answers.__setitem__(
            n, httpx.post(f"{base}{p}", json=b, timeout=170))) for n, (p, b) in calls.items()]
        for t in threads:
            t.start()
        while httpx.get(f"{base}/metrics", timeout=10).json()["in_flight"] < 2:
            assert time.monotonic() - t0 < 150 and all(t.is_alive() for t in threads)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # both requests are in flight: they must still be answered
        for t in threads:
            t.join(170)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = (tmp_path / "serve.log").read_text()
    assert rc == 0, out
    assert f"serving on http://127.0.0.1:{port}" in out  # the default bind address, as the bound socket reports it
    score, reward = answers["score"], answers["reward"]
    assert score.status_code == 200 and reward.status_code == 200, (score.text, reward.text)
    s = score.json()
    assert len(s["rewards"]) == 2 and s["num_valid"] + s["num_failed"] == 2 and len(s["samples"]) == 2
    assert all(sorted(x["permutation"]) == [0, 1] for x in s["samples"])
    rewards = reward.json()["rewards"]
    assert len(rewards) == 2 and all(math.isfinite(x) for x in rewards)  # garbage parses to the 0.0 fallback


def test_cli_refuses_bad_flags_before_loading_a_model(tmp_path, capsys):
    from spct_jax.cli import main as spct

    assert spct(["serve", "--model", "tiny-random", "--k-meta", "2"]) == 2
    assert "--k-meta needs --meta-rm" in capsys.readouterr().err
    empty = tmp_path / "token"
    empty.write_text("  \n")
    assert spct(["serve", "--model", "tiny-random", "--token-file", str(empty)]) == 2
    assert "token" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        t0 = time.monotonic()
        assert spct(["serve", "--model", "tiny-random", "--port", str(taken.getsockname()[1])]) == 2
        assert time.monotonic() - t0 < 5 and "cannot bind" in capsys.readouterr().err


def test_spct_serve_shards_the_model_over_the_hosts_devices(tmp_path):
    """`--mesh fsdp=4` on a host of 4 (fake) devices: the server answers what the one-device GRM answers."""
    import os

    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.models.registry import load_model
    from spct_jax.serve.schema import SERVE_UID

    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "spct_jax.cli", "serve", "--model", "tiny-random", "--port", str(port), "--k", "2",
           "--max-new-tokens", "4", "--template", "toy", "--mesh", "fsdp=4", "--dtype", "float32"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    item = {"context": "What is 2+2?", "responses": ["4", "5"]}
    try:
        try:
            wait_for_server(base, timeout_s=120, alive=lambda: proc.poll() is None)
        except ServerUnavailable as e:
            raise AssertionError((tmp_path / "serve.log").read_text()) from e
        answer = httpx.post(f"{base}/v1/score", json={**item, "return_samples": True}, timeout=120)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = (tmp_path / "serve.log").read_text()
    assert rc == 0 and "mesh {'data': 1, 'fsdp': 4, 'tensor': 1}, float32" in out, out
    assert answer.status_code == 200, answer.text
    model, tok = load_model("tiny-random")
    [want] = GenerativeRewardModel(model, tok, template="toy").score([{**item, "uid": SERVE_UID}], k=2,
                                                                      temperature=0.5, max_new_tokens=4, seed=0)
    got = answer.json()
    assert got["rewards"] == list(want.rewards) and got["num_failed"] == want.num_failed
    assert [s["text"] for s in got["samples"]] == [s.text for s in want.samples]
    assert [s["permutation"] for s in got["samples"]] == [list(s.permutation) for s in want.samples]
