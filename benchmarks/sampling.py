"""Sampler throughput: spct-jax (fan-out and re-prefill) vs transformers' generate, same weights, one run.

    python benchmarks/sampling.py                      # ~50M-param Llama-shaped model, prompt 1024, 256 new, k 1/8/32
    python benchmarks/sampling.py --quick              # a smaller setting for a smoke run
    python benchmarks/sampling.py --smollm2            # adds a row for the real SmolLM2-135M weights
    python benchmarks/sampling.py --sharded            # per-device memory on 8 fake CPU devices vs 1 device
    python benchmarks/sampling.py --phases             # decode_phases on vs off, k = 32, rounds interleaved

--sharded runs the same two GRM-shaped calls in a fresh process per mesh (1 device; fsdp=8; data=2 x fsdp=4 on 8
fake CPU devices, weights in the partition rules' layout): a cache-dominated call (256 rows of 16-token prompts,
512 new tokens) and a prefill-dominated one (64 distinct 2000-token prompts, 8 new tokens). It prints XLA's
compiled per-device bytes (arguments + outputs + temporaries) and the process's peak RSS, each against the
1-device run, and checks the tokens are identical. No speed target: the memory ratio is the figure.

The table's "ours" uses the sampler's default decode layout for this backend (sampling.decode_layers_for("auto"):
"split" on CPU) and a column with the other one ("scan"), so the cost of reading stacked layers in the decode loop
is measured in the same run.

New tokens/s counts k * max_new_tokens per prompt (both sides generate exactly that many: no stop tokens).
Compile time is measured on a first call and reported separately; the timed call is the second one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from spct_jax import sampling
from spct_jax.models import ModelConfig, from_pretrained, init_model, save_pretrained


# The random Llama-shaped model of the sampler rows: 8 layers of d = 512 plus a 32k vocabulary, ~40M parameters.
RANDOM_40M = ModelConfig(family="llama", vocab_size=32_000, hidden_size=512, intermediate_size=1408, num_layers=8,
                         num_heads=8, num_kv_heads=4, head_dim=64, tie_embeddings=True, pad_token_id=0)


def bench_ours(model, prompt, k, new, fan_out=True, decode_layers="auto"):
    kw = dict(num_samples=k, max_new_tokens=new, temperature=1.0, fan_out=fan_out, decode_layers=decode_layers)
    t0 = time.perf_counter()
    sampling.sample(model, [prompt], seed=0, **kw)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sampling.sample(model, [prompt], seed=1, **kw)
    run = time.perf_counter() - t0
    assert out.num_tokens == k * new
    return k * new / run, max(first - run, 0.0)


def bench_hf(hf, prompt, k, new):
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        hf.generate(input_ids=ids, do_sample=True, max_new_tokens=2, num_return_sequences=k, pad_token_id=0)  # warm-up
        t0 = time.perf_counter()
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=new,
                          min_new_tokens=new, num_return_sequences=k, pad_token_id=0)
        run = time.perf_counter() - t0
    assert out.shape == (k, len(prompt) + new)
    return k * new / run


SHARDED_WORKER = """
import json, os, resource, sys
mesh_spec, call = sys.argv[1], sys.argv[2]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + ("1" if mesh_spec == "one" else "8")
import jax, numpy as np
from flax import nnx
from spct_jax import sampling
from spct_jax.models import ModelConfig, init_model
from spct_jax.parallel.mesh import MeshConfig, make_mesh
from spct_jax.parallel.rules import param_shardings

cfg = ModelConfig(family="gemma2", vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=32, query_pre_attn_scalar=32, attn_logit_softcap=50.0,
                  final_logit_softcap=30.0, sliding_window=64, layer_types=("sliding", "full"),
                  max_position_embeddings=4096)
model, mesh = init_model(cfg, seed=0), None
if mesh_spec != "one":
    mesh = make_mesh(MeshConfig.from_mapping(json.loads(mesh_spec)))
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.device_put(state, param_shardings(mesh, state)))
rng = np.random.default_rng(0)
prompts, new = {"cache": ([rng.integers(3, 500, 16).tolist() for _ in range(256)], 512),
                "prefill": ([rng.integers(3, 500, 2000).tolist() for _ in range(64)], 8)}[call]
m = sampling.compile_call(model, prompts, max_new_tokens=new, mesh=mesh,
                          decode_phases=False).memory_analysis()  # one phase: the meshes' program on 1 device too
compiled = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
out = sampling.sample(model, prompts, max_new_tokens=new, temperature=1.0, seed=0, mesh=mesh, progress=False)
print(json.dumps({"compiled": compiled, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "tokens": out.tokens}))
"""


def sharded_rows() -> list[tuple]:
    """(call, mesh, compiled bytes/device, ratio, peak RSS, ratio, tokens identical) per call and mesh."""
    rows = []
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for call in ("cache", "prefill"):
        ref = None
        for mesh in ("one", json.dumps({"fsdp": 8}), json.dumps({"data": 2, "fsdp": 4})):
            res = subprocess.run([sys.executable, "-c", SHARDED_WORKER, mesh, call], env=env, capture_output=True,
                                 text=True, check=True)
            got = json.loads(res.stdout.strip().splitlines()[-1])
            ref = ref or got
            rows.append((call, mesh, got["compiled"], got["compiled"] / ref["compiled"], got["rss"],
                         got["rss"] / ref["rss"], got["tokens"] == ref["tokens"]))
    return rows


def phases_rows(model, prompt, k, new, rounds):
    """Decode steps/s with decode_phases on and off: (256-token call - 1-token call) / 255 per round, the two
    settings alternating within each round so that the machine's drift hits both alike."""
    times = {True: [], False: []}
    for phased in (True, False):  # compile both programs first
        for n in (new, 1):
            sampling.sample(model, [prompt], num_samples=k, max_new_tokens=n, temperature=1.0, seed=0,
                            decode_phases=phased, progress=False)
    for r in range(rounds):
        for phased in (True, False):
            spent = []
            for n in (new, 1):
                t0 = time.perf_counter()
                sampling.sample(model, [prompt], num_samples=k, max_new_tokens=n, temperature=1.0, seed=r + 1,
                                decode_phases=phased, progress=False)
                spent.append(time.perf_counter() - t0)
            times[phased].append((new - 1) / (spent[0] - spent[1]))
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--sharded", action="store_true")
    ap.add_argument("--ks", default="1,8,32")
    ap.add_argument("--phases", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="--phases: interleaved rounds")
    args = ap.parse_args()
    if args.sharded:
        print("| call | mesh | compiled MB / device | vs 1 device | peak RSS MB | vs 1 device | tokens identical |")
        print("|---|---|---|---|---|---|---|")
        for call, mesh, comp, comp_r, rss, rss_r, same in sharded_rows():
            print(f"| {call} | {mesh} | {comp / 1e6:.1f} | {comp_r:.3f} | {rss / 1e6:.0f} | {rss_r:.2f} | {same} |")
        return
    if args.phases:
        cfg = RANDOM_40M
        model, k, new = init_model(cfg, seed=0), 32, 256
        prompt = np.random.default_rng(0).integers(3, cfg.vocab_size, 1000).tolist()
        times = phases_rows(model, prompt, k, new, args.rounds)
        print(f"k = {k}, prompt 1000, {new} new tokens, decode steps/s per round (phases "
              f"{sampling.decode_phases_for(True, new, True, None)} vs one phase):")
        for phased in (True, False):
            print(f"  {'phases   ' if phased else 'one phase'}: median {np.median(times[phased]):.2f}, "
                  f"rounds {[round(x, 2) for x in times[phased]]}")
        ratios = [a / b for a, b in zip(times[True], times[False])]
        print(f"  phases / one phase: median {np.median(ratios):.3f}, per round {[round(x, 3) for x in ratios]}")
        return
    import torch
    import transformers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    prompt_len, new = (256, 64) if args.quick else (1024, 256)
    cfg = RANDOM_40M
    model = init_model(cfg, seed=0)
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None
        model = from_pretrained(d)
    n_params = sum(p.numel() for p in hf.parameters())
    prompt = np.random.default_rng(0).integers(3, cfg.vocab_size, prompt_len).tolist()
    rows = []
    for k in [int(x) for x in args.ks.split(",")]:
        ours, compile_s = bench_ours(model, prompt, k, new)
        no_fan, _ = bench_ours(model, prompt, k, new, fan_out=False)
        other = "scan" if sampling.decode_layers_for("auto") == "split" else "split"
        alt, _ = bench_ours(model, prompt, k, new, decode_layers=other)
        theirs = bench_hf(hf, prompt, k, new)
        rows.append((f"random {n_params / 1e6:.0f}M", k, ours, theirs, ours / theirs, no_fan, alt, compile_s))
    if args.smollm2:
        from spct_jax.models.smollm2 import smollm2_gguf_path

        path = smollm2_gguf_path()
        ours_model = from_pretrained(path)
        hf2 = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                torch_dtype=torch.float32).eval()
        hf2.generation_config.eos_token_id = None
        k = 8
        p2 = np.random.default_rng(1).integers(3, 49_000, 256).tolist()
        ours, compile_s = bench_ours(ours_model, p2, k, 64)
        no_fan, _ = bench_ours(ours_model, p2, k, 64, fan_out=False)
        other = "scan" if sampling.decode_layers_for("auto") == "split" else "split"
        alt, _ = bench_ours(ours_model, p2, k, 64, decode_layers=other)
        theirs = bench_hf(hf2, p2, k, 64)
        rows.append(("SmolLM2-135M (p256, n64)", k, ours, theirs, ours / theirs, no_fan, alt, compile_s))

    print(f"\nprompt {prompt_len} tokens, {new} new tokens, fp32, {jax.devices()[0].platform}, "
          f"torch threads {torch.get_num_threads()}\n")
    auto = sampling.decode_layers_for("auto")
    other = "scan" if auto == "split" else "split"
    print(f"| model | k | ours tok/s (decode layers: {auto}) | transformers tok/s | ours / transformers "
          f"| ours w/o fan-out tok/s | ours, {other} tok/s | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, k, ours, theirs, ratio, no_fan, alt, comp in rows:
        print(f"| {name} | {k} | {ours:.1f} | {theirs:.1f} | {ratio:.2f}x | {no_fan:.1f} | {alt:.1f} | {comp:.1f} |")


if __name__ == "__main__":
    main()
