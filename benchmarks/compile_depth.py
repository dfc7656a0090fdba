"""Compile time against depth: the jitted SFT train step (forward + backward + AdamW) of the same small Gemma-2
config at 2 and at 32 layers, scanned and unrolled side by side in one run.

    python benchmarks/compile_depth.py [--shallow 2 --deep 32 --repeats 2 --remat full]

Each cell is `jax.jit(step).lower(abstract state, abstract batch)` plus `.compile()` (nothing runs, nothing is
allocated but the abstract shapes), timed separately, the best of `--repeats` (jax's in-memory caches are cleared
between repeats so every repeat really traces and compiles). The ratio deep / shallow is the figure: with the
blocks under one `lax.scan` the program holds one (sliding, full) pair whatever the depth, so compile time should
stay flat (target <= 2x); unrolled, every layer is its own copy in the program.

Without `scan_layers` in the Decoder (the code before scanned layers), only the unrolled column is measured.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from spct_jax.models import ModelConfig  # noqa: E402
from spct_jax.models.transformer import Decoder  # noqa: E402
from spct_jax.train.config import OptimizerConfig  # noqa: E402
from spct_jax.train.state import TrainState, make_optimizer  # noqa: E402
from spct_jax.train.steps import make_sft_step  # noqa: E402

SCAN_SWITCH = "scan_layers" in inspect.signature(Decoder.__init__).parameters


def config(layers: int, args) -> ModelConfig:
    return ModelConfig(family="gemma2", vocab_size=args.vocab, hidden_size=args.hidden,
                       intermediate_size=4 * args.hidden, num_layers=layers, num_heads=4, num_kv_heads=2,
                       head_dim=args.hidden // 4, query_pre_attn_scalar=args.hidden // 4, attn_logit_softcap=50.0,
                       final_logit_softcap=30.0, sliding_window=64,
                       layer_types=tuple("sliding" if i % 2 == 0 else "full" for i in range(layers)))


def build(layers: int, scan: bool, args):
    """(jitted step, abstract state, abstract batch) of the SFT step for a `layers`-deep model."""
    kw = {"scan_layers": scan} if SCAN_SWITCH else {}
    remat = args.remat if SCAN_SWITCH else args.remat != "none"  # the older Decoder took a bool
    model = nnx.eval_shape(lambda: Decoder(config(layers, args), rngs=nnx.Rngs(0), remat=remat, **kw))
    graphdef, params = nnx.split(model, nnx.Param)
    opt = OptimizerConfig(learning_rate=1e-4)
    state = TrainState(params=params, opt_state=jax.eval_shape(make_optimizer(opt).init, params),
                       step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    step = make_sft_step(graphdef, optimizer=opt, chunk=args.seq)
    i32 = jax.ShapeDtypeStruct((args.batch, args.seq), jnp.int32)
    batch = {"input_ids": i32, "attention_mask": i32,
             "loss_mask": jax.ShapeDtypeStruct((args.batch, args.seq), jnp.float32)}
    return step.jitted(state), state, batch


def time_compile(layers: int, scan: bool, args) -> tuple[float, float]:
    """Best (lower seconds, compile seconds) over args.repeats fresh builds."""
    best = (float("inf"), float("inf"))
    for _ in range(args.repeats):
        jax.clear_caches()
        fn, state, batch = build(layers, scan, args)
        t0 = time.perf_counter()
        lowered = fn.lower(state, batch)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        best = (min(best[0], t1 - t0), min(best[1], t2 - t1))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shallow", type=int, default=2)
    ap.add_argument("--deep", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--remat", default="full", help="model.remat policy (none | full | save_dots)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    modes = [True, False] if SCAN_SWITCH else [False]
    load = os.getloadavg()[0]
    rows = []
    for scan in modes:
        cells = {n: time_compile(n, scan, args) for n in (args.shallow, args.deep)}
        rows.append((scan, cells))
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}; Gemma-2-shaped D={args.hidden}, batch {args.batch} x "
          f"{args.seq}, remat={args.remat}; best of {args.repeats}; load average {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    print(f"| layers | {args.shallow} lower + compile s | {args.deep} lower + compile s | ratio {args.deep}/"
          f"{args.shallow} (total) |")
    print("|---|---|---|---|")
    for scan, cells in rows:
        a, b = cells[args.shallow], cells[args.deep]
        print(f"| {'scanned' if scan else 'unrolled'} | {a[0]:.2f} + {a[1]:.2f} = {sum(a):.2f} | "
              f"{b[0]:.2f} + {b[1]:.2f} = {sum(b):.2f} | {sum(b) / sum(a):.2f}x |")


if __name__ == "__main__":
    main()
