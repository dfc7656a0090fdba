"""Sampler throughput: spct-jax (fan-out and re-prefill) vs transformers' generate, same weights, one run.

    python benchmarks/sampling.py                      # ~50M-param Llama-shaped model, prompt 1024, 256 new, k 1/8/32
    python benchmarks/sampling.py --quick              # a smaller setting for a smoke run
    python benchmarks/sampling.py --smollm2            # adds a row for the real SmolLM2-135M weights

New tokens/s counts k * max_new_tokens per prompt (both sides generate exactly that many: no stop tokens).
Compile time is measured on a first call and reported separately; the timed call is the second one.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from spct_jax import sampling
from spct_jax.models import ModelConfig, from_pretrained, init_model, save_pretrained


def bench_ours(model, prompt, k, new, fan_out=True):
    t0 = time.perf_counter()
    sampling.sample(model, [prompt], num_samples=k, max_new_tokens=new, temperature=1.0, seed=0, fan_out=fan_out)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sampling.sample(model, [prompt], num_samples=k, max_new_tokens=new, temperature=1.0, seed=1, fan_out=fan_out)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--ks", default="1,8,32")
    args = ap.parse_args()
    import torch
    import transformers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    prompt_len, new = (256, 64) if args.quick else (1024, 256)
    # ~50M params: 8 layers of d=512 plus a 32k vocabulary.
    cfg = ModelConfig(family="llama", vocab_size=32_000, hidden_size=512, intermediate_size=1408, num_layers=8,
                      num_heads=8, num_kv_heads=4, head_dim=64, tie_embeddings=True, pad_token_id=0)
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
        theirs = bench_hf(hf, prompt, k, new)
        rows.append((f"random {n_params / 1e6:.0f}M", k, ours, theirs, ours / theirs, no_fan, compile_s))
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
        theirs = bench_hf(hf2, p2, k, 64)
        rows.append(("SmolLM2-135M (p256, n64)", k, ours, theirs, ours / theirs, no_fan, compile_s))

    print(f"\nprompt {prompt_len} tokens, {new} new tokens, fp32, {jax.devices()[0].platform}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| model | k | ours tok/s | transformers tok/s | ours / transformers | ours w/o fan-out tok/s | compile s |")
    print("|---|---|---|---|---|---|---|")
    for name, k, ours, theirs, ratio, no_fan, comp in rows:
        print(f"| {name} | {k} | {ours:.1f} | {theirs:.1f} | {ratio:.2f}x | {no_fan:.1f} | {comp:.1f} |")


if __name__ == "__main__":
    main()
