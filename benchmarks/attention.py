"""Attention memory and speed: the full path (today's [B, K, G, T, S] score array) vs the blockwise path.

    python benchmarks/attention.py [--mem-t 4096 --speed-ts 512,1024,2048,4096 --block 512 ...]

Memory: XLA's compiled temporary bytes (`jit(...).lower(...).compile().memory_analysis().temp_size_in_bytes`) of
one attention forward + backward (gradients w.r.t. q, k, v of <out, cotangent>), and of the forward alone, at
T = S = --mem-t; and of a 2-layer Gemma-2-shaped decoder's parameter gradient on one --mem-t-token row with every
attention forced full or blockwise. Nothing is run for these rows: they are the compiler's own accounting.

Speed: wall and process CPU seconds of one jitted forward + backward at each T, best of --repeats rounds after a
compile call; the two paths run interleaved round by round so that load from other processes hits both alike.
The load average is printed before and after (the numbers are only comparable on a quiet machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from spct_jax.models import attention as A  # noqa: E402

MiB = 2**20


def program(impl: str, t: int, args, *, window, softcap, backward: bool):
    """A jitted function of (q, k, v, valid, ct): grads of <attention(q, k, v), ct> w.r.t. q, k, v, or the output."""
    extra = dict(block_q=args.block, block_kv=args.block) if impl == "blockwise" else {}
    fn = A.blockwise_attention if impl == "blockwise" else A.reference_attention

    def out(q, k, v, valid):
        return fn(q, k, v, q_slots=jnp.arange(t), kv_valid=valid, scale=args.head_dim**-0.5, softcap=softcap,
                  window=window, **extra)

    def step(q, k, v, valid, ct):
        if not backward:
            return out(q, k, v, valid)
        return jax.grad(lambda *a: jnp.sum(out(*a, valid) * ct), argnums=(0, 1, 2))(q, k, v)

    return jax.jit(step)


def shapes(t: int, args):
    kh, g = args.kv_heads, args.heads // args.kv_heads
    q = jax.ShapeDtypeStruct((args.batch, t, kh, g, args.head_dim), jnp.float32)
    kv = jax.ShapeDtypeStruct((args.batch, kh, t, args.head_dim), jnp.float32)
    return q, kv, kv, jax.ShapeDtypeStruct((args.batch, t), jnp.bool_), q


def memory_rows(args) -> list[str]:
    t = args.mem_t
    rows = []
    variants = [("causal (Llama / Qwen2)", None, None), (f"soft-cap 50, window {t // 4} (Gemma-2)", t // 4, 50.0)]
    for label, window, softcap in variants:
        for backward in (True, False):
            temp = {impl: program(impl, t, args, window=window, softcap=softcap, backward=backward)
                    .lower(*shapes(t, args)).compile().memory_analysis().temp_size_in_bytes
                    for impl in ("full", "blockwise")}
            what = "forward + backward" if backward else "forward"
            rows.append(f"| {label} | {what} | {temp['full'] / MiB:.1f} | {temp['blockwise'] / MiB:.1f} | "
                        f"{temp['blockwise'] / temp['full']:.3f} |")
    return rows


def decoder_rows(args) -> list[str]:
    """The same comparison inside a model: compiled temporaries of the parameter gradient of a 2-layer Gemma-2-shaped
    decoder (sliding window T/4, soft-cap 50; d=128, the attention widths above, vocabulary 256) on one T-token row,
    with every attention forced full or blockwise ($SPCT_ATTENTION_IMPL, read when the decoder is traced)."""
    from flax import nnx

    from spct_jax.models import ModelConfig, init_model

    t = args.mem_t
    cfg = ModelConfig(family="gemma2", vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=2,
                      num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.head_dim,
                      query_pre_attn_scalar=args.head_dim, attn_logit_softcap=50.0, final_logit_softcap=30.0,
                      sliding_window=t // 4, layer_types=("sliding", "full"))
    ids = jax.ShapeDtypeStruct((args.batch, t), jnp.int32)
    mask = jax.ShapeDtypeStruct((args.batch, t), jnp.bool_)
    rows = []
    for remat in ("full", "none"):
        temp = {}
        for impl in ("full", "blockwise"):
            os.environ[A.ENV_IMPL], os.environ[A.ENV_BLOCK] = impl, str(args.block)
            graphdef, state = nnx.split(init_model(cfg, remat=remat))
            grad = lambda st, i, m: jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(i, m)))(st)  # noqa: E731
            temp[impl] = jax.jit(grad).lower(state, ids, mask).compile().memory_analysis().temp_size_in_bytes
        os.environ.pop(A.ENV_IMPL)
        rows.append(f"| 2-layer decoder, remat {remat} | gradient | {temp['full'] / MiB:.1f} | "
                    f"{temp['blockwise'] / MiB:.1f} | {temp['blockwise'] / temp['full']:.3f} |")
    return rows


def speed_rows(args) -> list[str]:
    rng = np.random.default_rng(0)
    rows = []
    for t in args.speed_ts:
        q, k, v, valid, ct = (jnp.asarray(rng.normal(size=s.shape), s.dtype) if s.dtype != jnp.bool_
                              else jnp.ones(s.shape, bool) for s in shapes(t, args))
        fns = {impl: program(impl, t, args, window=None, softcap=50.0, backward=True) for impl in ("full", "blockwise")}
        best = {impl: (float("inf"), float("inf")) for impl in fns}
        for fn in fns.values():
            jax.block_until_ready(fn(q, k, v, valid, ct))  # compile
        for _ in range(args.repeats):
            for impl, fn in fns.items():
                w0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(fn(q, k, v, valid, ct))
                w, c = time.perf_counter() - w0, time.process_time() - c0
                best[impl] = (min(best[impl][0], w), min(best[impl][1], c))
        (fw, fc), (bw, bc) = best["full"], best["blockwise"]
        rows.append(f"| {t} | {fw * 1e3:.1f} | {bw * 1e3:.1f} | {bw / fw:.2f} | {fc * 1e3:.1f} | {bc * 1e3:.1f} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--block", type=int, default=A.DEFAULT_BLOCK)
    ap.add_argument("--mem-t", type=int, default=4096)
    ap.add_argument("--speed-ts", type=lambda s: [int(x) for x in s.split(",") if x], default=[512, 1024, 2048, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()}; B={args.batch} H={args.heads} K={args.kv_heads} "
          f"Dh={args.head_dim} block={args.block}; load average {os.getloadavg()[0]:.2f}")
    print(f"\nCompiled temporary memory at T = S = {args.mem_t} (MiB):\n")
    print("| attention | pass | full | blockwise | blockwise / full |\n|---|---|---|---|---|")
    for row in memory_rows(args) + decoder_rows(args):
        print(row, flush=True)
    if args.speed_ts:
        print("\nForward + backward, causal with soft-cap 50, best of "
              f"{args.repeats} (ms):\n")
        print("| T | full wall | blockwise wall | blockwise / full | full CPU | blockwise CPU |")
        print("|---|---|---|---|---|---|")
        for row in speed_rows(args):
            print(row, flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
