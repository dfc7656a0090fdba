"""Would narrower weights speed up CPU decode? Decode-shaped matmul chains in fp32, bf16 and bf16 weights widened
to fp32 inside the program, as XLA:CPU compiles them on this machine.

    python benchmarks/cpu_dtypes.py            # SmolLM2-135M's MLP shapes (576 x 1536), 30 layers, rows 1 / 8 / 32

Decode at small k is bound by the bytes of weights read per step, so bf16 weights would halve the time if the
matmul ran at the same bandwidth. The table prints the time per chain and the weight bytes read per second. The
result on the development machine (AMD EPYC with avx512_bf16, jax 0.10.2) is in docs/performance.md.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def chain(rows: int, weights_dtype, compute_dtype, d: int, f: int, layers: int, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    ups = [jnp.asarray(rng.standard_normal((d, f)) * 0.02, weights_dtype) for _ in range(layers)]
    downs = [jnp.asarray(rng.standard_normal((f, d)) * 0.02, weights_dtype) for _ in range(layers)]
    x = jnp.asarray(rng.standard_normal((rows, d)), compute_dtype)

    @jax.jit
    def run(x, ups, downs):
        for up, down in zip(ups, downs):  # unrolled: every layer's weights are their own buffers
            x = (x @ up.astype(compute_dtype)) @ down.astype(compute_dtype)
        return x

    run(x, ups, downs).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x, ups, downs).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    weight_bytes = 2 * layers * d * f * jnp.dtype(weights_dtype).itemsize
    return best, weight_bytes / best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,8,32")
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--f", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    cases = [("fp32 weights, fp32 matmul", jnp.float32, jnp.float32),
             ("bf16 weights, bf16 matmul", jnp.bfloat16, jnp.bfloat16),
             ("bf16 weights widened to fp32 in the program", jnp.bfloat16, jnp.float32)]
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}: {args.layers} x ([rows, {args.d}] @ [{args.d}, "
          f"{args.f}] @ [{args.f}, {args.d}]), best of {args.repeats}\n")
    print("| rows | weights / matmul | ms per chain | weight GB/s | vs fp32 |")
    print("|---|---|---|---|---|")
    for rows in (int(r) for r in args.rows.split(",")):
        base = None
        for name, wd, cd in cases:
            t, bw = chain(rows, wd, cd, args.d, args.f, args.layers, args.repeats)
            base = base or t
            print(f"| {rows} | {name} | {t * 1e3:.2f} | {bw / 1e9:.1f} | {t / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
