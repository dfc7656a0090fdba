"""Rewards per second through the TRL adapter (spct_jax.integrations.trl) against one `spct serve`, at GRPO group
sizes 4 and 8, with grouping (a group = one GRM item, the default) and without (max_group=1: every completion is
its own item, judged alone).

    python benchmarks/serve_rl.py                              # tiny-random GRM, toy template, k=4, 16 new tokens
    python benchmarks/serve_rl.py --max-new-tokens 128 --prompts 4 --batches 2
    python benchmarks/serve_rl.py --groups 4,8 --prompts 8 --batches 3 --k 4 --max-batch 8   # an accelerator

The server is the real command in a subprocess on 127.0.0.1 (a free port), stopped at the end. Each setting calls
the adapter as GRPOTrainer does: one call per rollout batch of P prompts x G completions (prompts repeated G
times); the adapter sends one /v1/score request per item, max_concurrency at a time. Every setting is warmed up
with untimed batches of the same shapes until two in a row take about the same time (the sampler compiles per
shape), then timed over --batches batches. Completions are same-length strings, so batches of a setting share
one bucket.

Reports rewards/s (completions rewarded per second) and GRM items and samples per batch. --max-batch defaults
to 1, the CPU setting (benchmarks/serve.py): with batching, the rows of a sampler call vary with how many items
the batcher gathered, and the compiles of those shapes leak into the timing on CPU.

What decides the outcome: an ungrouped item has one response, so its k samples are the same prompt and share one
prefill; a grouped item's k samples are k shuffles of G responses, k different prompts G times as long. Per
completion, grouping costs about k times the prefill tokens and saves G - 1 of every G decoded critiques. With
short critiques (16 tokens) on the dev box's CPU, grouping loses (G=4: 10 vs 75 rewards/s); at 128 new tokens it
is even at G=8 (22 vs 20); with real critiques (hundreds of tokens) decoding dominates and grouping should win by
up to G. The paper groups for the judgement's sake (responses compared side by side), not for speed.

Measured on the 2 shared CPU cores (load 5-8, +-30%), tiny-random, toy template, k=4, --max-batch 1:
  16 new tokens, 8 prompts x G:  G=4 grouped 10.1 / ungrouped 75.5; G=8 grouped 16.0 / ungrouped 62.4 rewards/s
  128 new tokens, 4 prompts x G: G=4 grouped 13.4 / ungrouped 20.6; G=8 grouped 22.4 / ungrouped 19.7 rewards/s
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from spct_jax.integrations.trl import reward_function
from spct_jax.serve.client import ServerUnavailable, wait_for_server

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "spct_jax.cli", "serve", "--model", args.model, "--host", "127.0.0.1",
           "--port", str(port), "--k", str(args.k), "--max-new-tokens", str(args.max_new_tokens),
           "--template", args.template, "--max-batch", str(args.max_batch), "--max-queue", "1024",
           "--timeout", "600"]
    log = open(os.devnull, "w") if not args.server_log else open(args.server_log, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_server(base, timeout_s=180, alive=lambda: proc.poll() is None)
        except ServerUnavailable as e:
            raise RuntimeError(f"spct serve did not come up: {' '.join(cmd)}") from e
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def rollout_batch(batch: int, prompts: int, group: int) -> tuple[list[str], list[str]]:
    """P prompts x G completions, as TRL passes them (each prompt repeated G times); every string of a kind has
    one length, so every batch of a setting falls in the same prompt-length bucket."""
    ps, cs = [], []
    for p in range(prompts):
        prompt = f"Batch {batch:03d}, question {p:03d}: explain why the sky is blue."
        for g in range(group):
            ps.append(prompt)
            cs.append(f"Answer {g:02d} to {p:03d}: light scatters off small molecules.")
    return ps, cs


def run_setting(base: str, args: argparse.Namespace, group: int, grouped: bool) -> dict:
    fn = reward_function(base, max_concurrency=args.concurrency, timeout=900,
                         max_group=None if grouped else 1)
    # Warm-up: the sampler compiles per shape, and a call's rows vary with how many items the batcher gathered
    # and how many of an item's k shuffles coincide (they share a prefill), so one batch is not enough. Warm up
    # until two batches in a row take about the same time.
    times: list[float] = []
    for w in range(args.max_warmup):
        t = time.perf_counter()
        fn(*rollout_batch(900 + w, args.prompts, group))
        times.append(time.perf_counter() - t)
        if len(times) >= args.min_warmup and abs(times[-1] - times[-2]) <= 0.25 * max(times[-2:]):
            break
    m0 = httpx.get(f"{base}/metrics", timeout=10).json()
    t0 = time.perf_counter()
    n = 0
    for b in range(args.batches):
        prompts, completions = rollout_batch(b, args.prompts, group)
        n += len(fn(prompts, completions))
    wall = time.perf_counter() - t0
    m1 = httpx.get(f"{base}/metrics", timeout=10).json()
    fn.close()
    items = (m1["requests"]["ok"] - m0["requests"]["ok"]) / args.batches
    samples = (m1["samples"]["total"] - m0["samples"]["total"]) / args.batches
    return {"group": group, "grouped": grouped, "rewards_per_s": n / wall, "warmup": len(times),
            "items_per_batch": items,
            "samples_per_batch": samples, "s_per_batch": wall / args.batches,
            "p50_ms": m1["latency_ms"]["p50"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--template", default="toy")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=1, help="the server's --max-batch (1: the CPU setting)")
    p.add_argument("--groups", default="4,8")
    p.add_argument("--prompts", type=int, default=8, help="prompts per rollout batch")
    p.add_argument("--batches", type=int, default=3, help="timed rollout batches per setting")
    p.add_argument("--concurrency", type=int, default=16, help="the adapter's max_concurrency")
    p.add_argument("--min-warmup", type=int, default=3, help="untimed batches at least per setting")
    p.add_argument("--max-warmup", type=int, default=12, help="untimed batches at most per setting")
    p.add_argument("--server-log", default=None)
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f}{' (busy machine: numbers are noisy)' if load > 2.5 else ''}")
    print(f"server: {args.model}, template {args.template}, k={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"max_batch={args.max_batch}; {args.prompts} prompts x G completions per batch, {args.batches} batches")
    rows = []
    with server(args) as base:
        for g in [int(x) for x in args.groups.split(",")]:
            for grouped in (True, False):
                rows.append(run_setting(base, args, g, grouped))
                r = rows[-1]
                print(f"G={g} {'grouped  ' if grouped else 'ungrouped'} {r['rewards_per_s']:8.2f} rewards/s  "
                      f"{r['items_per_batch']:5.0f} items/batch  {r['samples_per_batch']:5.0f} samples/batch  "
                      f"{r['s_per_batch']:7.2f} s/batch  ({r['warmup']} warm-up batches)", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("\n| G | grouping | rewards/s | GRM items / batch | samples / batch | s / batch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['group']} | {'one item per group' if r['grouped'] else 'one item per completion'} | "
              f"{r['rewards_per_s']:.2f} | {r['items_per_batch']:.0f} | {r['samples_per_batch']:.0f} | "
              f"{r['s_per_batch']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
