"""Would narrower weights speed up CPU decode? Decode-shaped matmul chains in fp32, bf16, bf16 weights widened to
fp32 inside the program, and the model's rule for bf16 weights under fp32 compute (models.transformer.weight_dot:
activations rounded to bf16, fp32 accumulation), as XLA:CPU compiles them on this machine; with --sampler, the
whole sampler's decode step on SmolLM2-135M in fp32, in bf16 throughout, and with bf16 weights and fp32 compute.

    python benchmarks/cpu_dtypes.py            # SmolLM2-135M's MLP shapes (576 x 1536), 30 layers, rows 1 / 8 / 32
    python benchmarks/cpu_dtypes.py --sampler  # + SmolLM2 (make smollm2), k = 1 / 8 / 32, 1000-token prompt

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

from spct_jax.models.transformer import weight_dot


def chain(rows: int, weights_dtype, compute_dtype, d: int, f: int, layers: int, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    ups = [jnp.asarray(rng.standard_normal((d, f)) * 0.02, weights_dtype) for _ in range(layers)]
    downs = [jnp.asarray(rng.standard_normal((f, d)) * 0.02, weights_dtype) for _ in range(layers)]
    x = jnp.asarray(rng.standard_normal((rows, d)), jnp.float32 if compute_dtype == "round" else compute_dtype)

    def mm(x, w):
        if compute_dtype == "round":  # the model's own rule: x rounded to w's dtype, float32 accumulation
            return weight_dot(x, w)
        return x @ w.astype(compute_dtype)

    @jax.jit
    def run(x, ups, downs):
        for up, down in zip(ups, downs):  # unrolled: every layer's weights are their own buffers
            x = mm(mm(x, up), down)
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
    ap.add_argument("--sampler", action="store_true", help="also time SmolLM2's sampler decode step per dtype")
    ap.add_argument("--ks", default="1,8,32", help="--sampler: samples per call")
    args = ap.parse_args()
    cases = [("fp32 weights, fp32 matmul", jnp.float32, jnp.float32),
             ("bf16 weights, bf16 matmul", jnp.bfloat16, jnp.bfloat16),
             ("bf16 weights widened to fp32 in the program", jnp.bfloat16, jnp.float32),
             ("bf16 weights, fp32 activations rounded to bf16, fp32 accumulation (the model's rule)",
              jnp.bfloat16, "round")]
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
    if args.sampler:
        sampler_steps([int(k) for k in args.ks.split(",")])


def sampler_steps(ks: list[int], prompt_len: int = 1000, new: int = 128, rounds: int = 3) -> None:
    """SmolLM2-135M's decode step per dtype setting: (call with `new` + 1 tokens - call with 1) / new, best of
    `rounds`, the settings interleaved in each round so that a slow minute of the machine hits all of them."""
    from spct_jax.models.gguf_import import load_gguf
    from spct_jax.models.smollm2 import smollm2_gguf_path
    from spct_jax.sampling import sample

    path = smollm2_gguf_path()
    settings = {"fp32": {}, "bf16 throughout": {"dtype": jnp.bfloat16},
                "bf16 weights, fp32 compute": {"dtype": jnp.bfloat16, "compute_dtype": jnp.float32}}
    models = {name: load_gguf(path, **kw)[0] for name, kw in settings.items()}
    prompt = np.random.default_rng(0).integers(3, 49_000, prompt_len).tolist()
    print(f"\nSmolLM2-135M sampler, {prompt_len}-token prompt, decode step = (call of {new + 1} tokens - call of 1)"
          f" / {new}, best of {rounds}\n")
    print("| k | weights / compute | prefill s | decode step ms | vs fp32 |")
    print("|---|---|---|---|---|")
    for k in ks:
        call = lambda m, n: sample(m, [prompt], num_samples=k, max_new_tokens=n, temperature=0.5,  # noqa: E731
                                   seed=0, stop_tokens=[], progress=False)
        best = {name: [float("inf"), float("inf")] for name in models}
        for name, m in models.items():  # compile both shapes
            call(m, 1), call(m, new + 1)
        for _ in range(rounds):
            for name, m in models.items():
                t0 = time.perf_counter()
                call(m, 1)
                t1 = time.perf_counter()
                call(m, new + 1)
                t2 = time.perf_counter()
                best[name] = [min(best[name][0], t1 - t0), min(best[name][1], t2 - t1)]
        base = None
        for name, (one, full) in best.items():
            step = (full - one) / new
            base = base or step
            print(f"| {k} | {name} | {one:.2f} | {step * 1e3:.1f} | {step / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
