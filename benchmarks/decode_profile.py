"""Where a k = 32 decode step's time goes: the whole step against its weight matmuls and its draw, each jitted and
run for the same number of steps, on the ~40M model of benchmarks/sampling.py (one 1024-token prompt shared by
32 rows, per-layer buffers as the CPU sampler runs them).

    python benchmarks/decode_profile.py

step - matmuls - draw is the attention over the shared prefix and the rows' own slots plus the step's glue
(embedding lookup, norms, RoPE, cache writes): the part the matmul roofline does not account for. The step is
timed twice in one run: with the attention path "auto" picks on CPU (the decode path) and with the full path
(the reference), the one the CPU sampler used before. The last line puts the weight matmuls alone and the whole
step against the 2048^2 fp32 matmul peak measured in the same run (the k = 32 roofline of benchmarks/peers.py):
the step's fraction cannot pass the matmuls' own unless its attention ran faster than they do.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from spct_jax.models import ModelConfig, count_params, init_model
from spct_jax.sampling.prefill import fill
from spct_jax.sampling.strategies import from_options
cfg = ModelConfig(family="llama", vocab_size=32_000, hidden_size=512, intermediate_size=1408, num_layers=8,
                  num_heads=8, num_kv_heads=4, head_dim=64, tie_embeddings=True, pad_token_id=0)
model = init_model(cfg, seed=0)
R, N, STEPS = 32, 256, 32
ids = jnp.asarray(np.random.default_rng(0).integers(3, 32000, (1, 1024)), jnp.int32)
mask = jnp.ones((1, 1024), bool)
strategy = from_options(1.0, None, None, cfg.vocab_size)
gd, st = nnx.split(model)


def timeit(name, f, *a):
    jax.block_until_ready(f(*a))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(f(*a))
    t = (time.perf_counter() - t0) / STEPS
    print(f"{name}: {t * 1e3:.1f} ms per step", flush=True)
    return t

def full(st, ids, mask):
    m = nnx.merge(gd, st)
    cache, logits = fill(m, ids, mask, jnp.zeros((1,), jnp.int32), rows_per_slot=R, new_slots=N, shards=1, fan_out=True)
    cache = cache.split_layers(); layers = m.layer_states()
    keys = jax.random.split(jax.random.key(0), R)
    def body(t, c):
        cache, logits = c
        tok, lp = strategy.choose(logits, jax.vmap(jax.random.fold_in, (0, None))(keys, t))
        lg, cache = m.extend(tok[:, None].astype(jnp.int32), jnp.ones((R, 1), bool), cache, layers=layers)
        return cache, lg[:, -1]
    return jax.lax.fori_loop(0, STEPS, body, (cache, logits))[1]
def prefill_only(st, ids, mask):
    m = nnx.merge(gd, st)
    cache, logits = fill(m, ids, mask, jnp.zeros((1,), jnp.int32), rows_per_slot=R, new_slots=N, shards=1, fan_out=True)
    return logits
@jax.jit
def matmuls(st, x):
    m = nnx.merge(gd, st)
    layers = m.layer_states()
    def body(t, x):
        for p in layers:
            a = p["attn"]; f = p["mlp"]
            h = x @ a["q_proj"]["kernel"][...]; h2 = x @ a["k_proj"]["kernel"][...]; h3 = x @ a["v_proj"]["kernel"][...]
            x = x + (h @ a["o_proj"]["kernel"][...]) * 1e-3 + (h2.sum() + h3.sum()) * 1e-9
            g = x @ f["gate_proj"]["kernel"][...]; u = x @ f["up_proj"]["kernel"][...]
            x = x + ((g * u) @ f["down_proj"]["kernel"][...]) * 1e-3
        lg = m.logits_from_hidden(x)
        return x + lg[:, :512] * 1e-9
    return jax.lax.fori_loop(0, STEPS, body, x)
@jax.jit
def choose(logits):
    keys = jax.random.split(jax.random.key(0), R)
    def body(t, c):
        tok, lp = strategy.choose(c, jax.vmap(jax.random.fold_in, (0, None))(keys, t))
        return c + lp[:, None] * 1e-9
    return jax.lax.fori_loop(0, STEPS, body, logits)


def once(f, *a):
    jax.block_until_ready(f(*a))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(f(*a))
    return time.perf_counter() - t0


if __name__ == "__main__":
    from spct_jax.models.attention import ENV_IMPL

    # The path is read when a program is traced; jit caches traces per function, so each setting gets fresh
    # wrapper functions (and with them its own trace and compile).
    fresh = lambda f: jax.jit(lambda *a: f(*a))  # noqa: E731
    os.environ[ENV_IMPL] = "full"
    step_full = (once(fresh(full), st, ids, mask) - once(fresh(prefill_only), st, ids, mask)) / STEPS
    del os.environ[ENV_IMPL]
    pre = once(fresh(prefill_only), st, ids, mask)
    step = (once(fresh(full), st, ids, mask) - pre) / STEPS
    print(f"prefill {pre * 1e3:.0f} ms; decode step (the first {STEPS} steps) {step * 1e3:.1f} ms "
          f"(with the full attention path: {step_full * 1e3:.1f} ms)")
    mm = timeit("weight matmuls + LM head, 32 rows", matmuls, st, jnp.ones((R, 512)))
    draw = timeit("draw (inverse-CDF, 32k vocab)", choose, jnp.zeros((R, 32000)))
    rest = step - mm - draw
    print(f"attention + glue: {rest * 1e3:.1f} ms per step ({rest / step:.0%} of the step)")
    # The bound on the k = 32 roofline (benchmarks/peers.py): the step's FLOPs over the 2048^2 matmul peak cannot
    # pass what its weight matmuls reach with nothing else in the program.
    n = 2048
    sq = jax.jit(lambda u: u @ u)
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    peak = 2 * n ** 3 / min(once(sq, x) for _ in range(5))
    params = count_params(cfg)
    mm_flops = R * 2 * params  # every weight once per row (the tied embedding as the LM head)
    ctx = ids.shape[1] + STEPS / 2
    step_flops = mm_flops + R * 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * ctx
    print(f"matmul peak (jitted fp32 {n}^2): {peak / 1e9:.1f} GFLOP/s; weight matmuls alone "
          f"{mm_flops / mm / 1e9:.1f} GFLOP/s = {mm_flops / mm / peak:.2f} of it; the whole step "
          f"{step_flops / step / 1e9:.1f} GFLOP/s = {step_flops / step / peak:.2f} of it")
