"""`spct serve` throughput and latency: requests/s and p50/p99 at concurrency 1, 8 and 32, batching on and off.

    python benchmarks/serve.py                       # the real tiny-random GRM on this CPU ("toy" template)
    python benchmarks/serve.py --fake                # a cost-model scorer: server and batching overhead only
    python benchmarks/serve.py --seconds 5 --concurrency 1,8,32 --max-batch 8
    python benchmarks/serve.py --fake --fake-call-ms 0 --fake-prompt-ms 0   # the HTTP path alone

Each setting runs the full HTTP path (uvicorn on 127.0.0.1, httpx clients, the batcher) in this process: C clients
each send /v1/score requests back to back for --seconds (closed loop). "off" is --max-batch 1. Every request is a
distinct item of the same length, so the GRM prompts share one length bucket and the sampler's compiles are done
once, in a warm-up that scores every batch size before timing starts.

The fake scorer sleeps 30 ms per call plus 2 ms per prompt (items x k): an accelerator-like cost where a batch
costs little more than one prompt, which is where batching pays most (--fake-call-ms, --fake-prompt-ms; both 0:
the HTTP path and the batcher alone).

Measured on the 2 shared CPU cores of the dev box (load ~8, so +-20%): with the real tiny-random GRM, batching
LOSES (about 10 vs 19.5 req/s at concurrency 8-32): on CPU the sampler's cost grows linearly with rows, and a
batch pads its unique prompts to a power of two and decodes every row for the longest, so there is no per-call
overhead left to share. With the accelerator-like cost model it wins about 4.5x at concurrency 32 (122 vs 27
req/s, p99 0.34 s vs 1.4 s). So: --max-batch 1 for CPU serving, the default (8) on an accelerator.

Every guard `spct serve` has runs here too (serve_in_thread: header timeout and connection cap; the app: Host
allow-list, Content-Type, body timeout, the watch for clients that go away; with the real GRM, the per-request
prompt-length check), so its figures include what they cost.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from spct_jax.grm.scorer import Judgement
from spct_jax.serve.app import ServeOptions, create_app
from spct_jax.serve.batcher import Batcher
from spct_jax.serve.metrics import percentile
from spct_jax.serve.schema import Limits
from spct_jax.serve.server import serve_in_thread


class CostModelScorer:
    def __init__(self, per_call_s: float = 0.030, per_prompt_s: float = 0.002):
        self.per_call_s, self.per_prompt_s = per_call_s, per_prompt_s

    def score(self, items, *, k, k_meta, temperature, max_new_tokens, seed, progress) -> list[Judgement]:
        time.sleep(self.per_call_s + self.per_prompt_s * len(items) * k)
        return [Judgement(uid="", rewards=(0.0,) * len(it["responses"]), best=None, num_valid=0, num_failed=k,
                          uncertainty=None, samples=()) for it in items]


def request(i: int) -> dict:
    # Same length for every i: one prompt-length bucket, so timing never includes a compile.
    return {"context": f"Which answer to question {i % 50000:05d} is better?", "responses": ["yes", "no"]}


async def closed_loop(base: str, concurrency: int, seconds: float) -> tuple[int, list[float], float]:
    latencies: list[float] = []
    counter = iter(range(10**9))
    errors = 0

    async def worker(c: httpx.AsyncClient, stop: float) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = await c.post("/v1/score", json=request(next(counter)))
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=base, timeout=600,
                                 limits=httpx.Limits(max_connections=concurrency)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c, t0 + seconds) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return errors, latencies, wall


def warm_up(scorer, args, reps: int = 4) -> None:
    """Compile every batch shape the timed runs can hit, outside the timing: item counts 1..max_batch, each a few
    times, because samples whose shuffles coincide share a prefill, so the row count varies with the items."""
    t0 = time.perf_counter()
    for rep in range(reps):
        for n in range(1, args.max_batch + 1):
            scorer.score([request(50000 + rep * 1000 + n * 10 + i) for i in range(n)], k=args.k, k_meta=None,
                         temperature=0.5, max_new_tokens=args.max_new_tokens, seed=0, progress=False)
    print(f"warm-up (compiles for 1..{args.max_batch} items): {time.perf_counter() - t0:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fake", action="store_true", help="cost-model scorer instead of the tiny-random GRM")
    ap.add_argument("--fake-call-ms", type=float, default=30.0, help="--fake: cost per scorer call")
    ap.add_argument("--fake-prompt-ms", type=float, default=2.0, help="--fake: cost per prompt (items x k)")
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--template", default="toy")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8, help="the 'on' setting; 'off' is 1")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed closed loop per setting")
    args = ap.parse_args()

    guards = {}  # what `spct serve` adds in front of the scorer (app.py's defaults add the rest: Host, 415, ...)
    if args.fake:
        scorer = CostModelScorer(args.fake_call_ms / 1e3, args.fake_prompt_ms / 1e3)
        label = f"fake scorer ({args.fake_call_ms:g} ms/call + {args.fake_prompt_ms:g} ms/prompt)"
    else:
        from spct_jax.grm.scorer import GenerativeRewardModel
        from spct_jax.models.registry import describe_model, load_model

        model, tok = load_model(args.model)
        scorer = GenerativeRewardModel(model, tok, template=args.template)
        label = f"{args.model}, template {args.template}, k={args.k}, max_new_tokens={args.max_new_tokens}"
        warm_up(scorer, args)
        from spct_jax.grm.judge import prompt_budget, prompt_check

        config, _ = describe_model(args.model)
        budget = prompt_budget(config, args.max_new_tokens, args.model)
        guards["prompt_check"] = prompt_check(tok, template=args.template, budget=budget,
                                              positions=config.max_position_embeddings,
                                              max_new_tokens=args.max_new_tokens)
        t0 = time.perf_counter()
        for i in range(500):
            guards["prompt_check"](request(60000 + i))
        print(f"prompt-length check: {(time.perf_counter() - t0) / 500 * 1e3:.2f} ms per request")

    rows = []
    for batching, max_batch in (("on", args.max_batch), ("off", 1)):
        for conc in (int(c) for c in args.concurrency.split(",")):
            batcher = Batcher(scorer, max_batch=max_batch, max_queue=1024, batch_wait_s=args.batch_wait_ms / 1e3,
                              max_new_tokens=args.max_new_tokens)
            options = ServeOptions(limits=Limits(default_k=args.k, max_k=args.k, has_meta_rm=False,
                                                 default_k_meta=None), timeout_s=600, **guards)
            with serve_in_thread(create_app(batcher, options)) as (base, _):
                errors, lat, wall = asyncio.run(closed_loop(base, conc, args.seconds))
                snap = httpx.get(f"{base}/metrics").json()
            lat.sort()
            b = snap["batches"]
            rows.append((batching, max_batch, conc, len(lat), len(lat) / wall, percentile(lat, 50), percentile(lat, 99),
                         b["count"] and sum(b["recent_items"]) / len(b["recent_items"]), b["max_items"], errors))
            print(f"  done: batching {batching}, concurrency {conc}", flush=True)

    print(f"\n{label}\n")
    print(f"{'batching':>8} {'max_batch':>9} {'conc':>4} {'reqs':>5} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'mean items/call':>15} {'max':>4} {'errors':>6}")
    for batching, mb, conc, n, rps, p50, p99, mean_items, max_items, errors in rows:
        print(f"{batching:>8} {mb:>9} {conc:>4} {n:>5} {rps:>7.2f} {p50 * 1e3:>8.0f} {p99 * 1e3:>8.0f} "
              f"{mean_items:>15.2f} {max_items:>4} {errors:>6}")


if __name__ == "__main__":
    main()
