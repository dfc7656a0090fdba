"""spct-jax against the systems a user would otherwise pick: google/tunix (JAX post-training) and llama.cpp (CPU
inference), side by side in one run, each measurement in its own process (peak RSS is that system's alone).

    make bench-peers                         # makes .venv-peers (this project + google-tunix + llama-cpp-python)
    .venv-peers/bin/python benchmarks/peers.py [--new 128] [--only sampling,grpo,grm,roofline]

Sections (one table):
  sampling   the same random Llama-shaped model (~40M, the one benchmarks/sampling.py uses), saved once as an HF
             folder and loaded by ours (`from_pretrained`) and tunix (`llama3.params.create_model_from_safe_tensors`
             into tunix's `Sampler`; the logits are checked equal first).
  smollm2    SmolLM2-135M-Instruct's Q4_1 GGUF loaded by ours (dequantised to fp32, and to bf16 weights with fp32
             compute: --ours-dtypes) and by llama.cpp (its own quantised kernels; k parallel sequences sharing
             the prompt's KV cells).
             One prompt of --prompt random token ids, k samples of --new tokens at T = --temperature, no stop token.
             tok/s = k * new / wall time of the second identical call; compile = first call - second; TTFT = a
             warm call that makes one token.
  grpo       one GRPO update on the same tokens (batch of --grpo-batch = prompts x group 4): reference log-probs +
             policy loss (clipped ratio, KL beta 0.04) + AdamW. tunix: common.compute_per_token_logps on the
             reference, then its RL actor Trainer's jitted train step with the registered "grpo" loss (what
             GRPOLearner runs after rollout). Ours: make_logprob_fn + make_grpo_step.
  grm        k = 8 critiques of one real LLMBar item (GRM prompt of ~--grm-prompt tokens, default template, one
             response order, so all k share the prompt) with SmolLM2-135M, stopping at end of turn: ours
             (GenerativeRewardModel.score, in each of --ours-dtypes) vs llama.cpp (k parallel sequences sharing
             the prompt's cells).
  roofline   STREAM-like numpy copy (bandwidth) and a jitted fp32 matmul (peak), and our k = 1 / k = 32 decode on
             the random model as fractions of them (k = 32 also decoded in one phase, decode_phases=False).
Peers are imported only inside the workers (benchmarks/peers_workers.py), so `--help` works without them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ("sampling", "smollm2", "grpo", "grm", "roofline")
DTYPE_LABELS = {"float32": "fp32 dequantised", "bfloat16": "bf16 weights, fp32 compute"}


def worker(name: str, payload: dict, python: str, timeout: float) -> dict:
    """Run one worker in a fresh process -> its result dict, or {"error": ...}."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run([python, os.path.join(HERE, "peers_workers.py"), name, json.dumps(payload)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = [x for x in done.stderr.strip().splitlines() if x.strip()][-3:]
    return {"error": f"exit {done.returncode}: " + " | ".join(tail)[-600:]}


def versions(python: str) -> str:
    code = ("import importlib.metadata as m\nfor p in ('jax','jaxlib','flax','optax','numpy','google-tunix',"
            "'llama_cpp_python','safetensors'):\n    try: print(p, m.version(p))\n    except Exception: print(p, '-')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.split()
    return ", ".join(f"{a} {b}" for a, b in zip(out[::2], out[1::2]))


def fmt(x, spec=".1f", scale=1.0):
    return "-" if x is None else format(x * scale, spec)


class Table:
    def __init__(self):
        self.rows = []

    def add(self, section, system, setting, r: dict, rate_key="tok_s", unit="tok/s", ratio=None):
        if "error" in r:
            self.rows.append((section, system, setting, "ERROR: " + r["error"], "", "", "", "", "", ""))
            return
        wall, cpu = ("", "") if ratio is None else ratio
        self.rows.append((section, system, setting, f"{r[rate_key]:.2f} {unit}", f"{r['cpu_' + rate_key]:.2f}",
                          fmt(r.get("ttft_s"), ".2f") + (" s" if r.get("ttft_s") is not None else ""),
                          fmt(r.get("compile_s"), ".1f") + " s", fmt(r.get("peak_rss"), ".0f", 1e-6) + " MB",
                          wall and f"**{wall:.2f}x**", cpu and f"{cpu:.2f}x"))

    def print(self):
        print("| workload | system | setting | throughput (wall) | per CPU-second | TTFT | compile | peak RSS "
              "| ours / peer (wall) | ours / peer (CPU time) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in self.rows:
            print("| " + " | ".join(row) + " |")


def ratio(ours: dict, peer: dict, key: str):
    """(wall-clock ratio, CPU-time ratio): other jobs on shared cores steal wall time, not CPU time."""
    if "error" in ours or "error" in peer:
        return None
    return ours[key] / peer[key], ours["cpu_" + key] / peer["cpu_" + key]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    ap.add_argument("--ks", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=1000, help="prompt tokens (tunix pads it to 1024)")
    ap.add_argument("--new", type=int, default=256, help="new tokens per sample")
    ap.add_argument("--ttft-max-k", type=int, default=32, help="skip the two extra one-token calls above this k")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--grpo-batch", type=int, default=8)
    ap.add_argument("--grpo-prompt", type=int, default=32)
    ap.add_argument("--grpo-completion", type=int, default=96)
    ap.add_argument("--grm-k", type=int, default=8)
    ap.add_argument("--grm-prompt", type=int, default=1000)
    ap.add_argument("--grm-new", type=int, default=256)
    ap.add_argument("--ours-dtypes", default="float32,bfloat16",
                    help="our weights in the smollm2 and grm sections (bfloat16: bf16 weights, fp32 compute)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama.cpp threads")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the workers (the peers venv)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", help="also write every raw result here")
    args = ap.parse_args()
    only = set(args.only.split(","))
    dtypes = [d for d in args.ours_dtypes.split(",") if d]
    if unknown := [d for d in dtypes if d not in DTYPE_LABELS]:
        ap.error(f"--ours-dtypes: unknown {unknown}; expected {', '.join(DTYPE_LABELS)}")
    ks = [int(x) for x in args.ks.split(",")]
    run = lambda name, payload: worker(name, payload, args.python, args.timeout)  # noqa: E731
    table, raw = Table(), {}
    print(f"versions: {versions(args.python)}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}",
          flush=True)

    from_random = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "random")
        if only & {"sampling", "roofline"}:
            made = raw["make_random"] = run("make_random", {"dir": model_dir})
            prompt = __import__("numpy").random.default_rng(0).integers(3, 32_000, args.prompt).tolist()
            base = {"path": model_dir, "prompt": prompt, "new": args.new, "temperature": args.temperature}
            if "sampling" in only:
                raw["same_logits"] = run("check_same_logits", base)
                print(f"same weights: {raw['same_logits']}", flush=True)
            for k in ks:
                if "sampling" not in only and k not in (1, 32):
                    continue
                base["ttft"] = k <= args.ttft_max_k
                ours = from_random[k] = raw[f"sample_ours_k{k}"] = run("sample_ours", {**base, "k": k})
                print(f"ours k={k}: {ours}", flush=True)
                if "roofline" in only and k == 32:  # the same call decoded in one phase, for the roofline lines
                    one = from_random["32, one phase"] = raw["sample_ours_k32_one_phase"] = run(
                        "sample_ours", {**base, "k": k, "decode_phases": False})
                    print(f"ours k={k}, one phase: {one}", flush=True)
                if "sampling" in only:
                    theirs = raw[f"sample_tunix_k{k}"] = run("sample_tunix", {**base, "k": k})
                    print(f"tunix k={k}: {theirs}", flush=True)
                    setting = f"random {made.get('params', 0) / 1e6:.0f}M fp32, k={k}"
                    table.add("sampling", "spct-jax", setting, ours, ratio=ratio(ours, theirs, "tok_s"))
                    table.add("sampling", "tunix Sampler", setting, theirs)
        if "smollm2" in only or "grm" in only:
            from spct_jax.models.smollm2 import smollm2_gguf_path

            gguf = str(smollm2_gguf_path())
        if "smollm2" in only:
            prompt2 = __import__("numpy").random.default_rng(1).integers(3, 49_000, args.prompt).tolist()
            base2 = {"gguf": gguf, "prompt": prompt2, "new": args.new, "temperature": args.temperature,
                     "threads": args.threads}
            for k in ks:
                ours = {dt: run("sample_ours_gguf", {**base2, "k": k, "dtype": dt}) for dt in dtypes}
                theirs = raw[f"smollm2_llamacpp_k{k}"] = run("sample_llamacpp", {**base2, "k": k})
                print(f"smollm2 k={k}: ours {ours} llama.cpp {theirs}", flush=True)
                setting = f"SmolLM2-135M Q4_1 GGUF, k={k}"
                for dt, r in ours.items():
                    raw[f"smollm2_ours_{dt}_k{k}"] = r
                    table.add("sampling, SmolLM2", f"spct-jax ({DTYPE_LABELS[dt]})", setting, r,
                              ratio=ratio(r, theirs, "tok_s"))
                table.add("sampling, SmolLM2", "llama.cpp (Q4_1)", setting, theirs)
        if "grpo" in only:
            g = {"batch": args.grpo_batch, "prompt": args.grpo_prompt, "completion": args.grpo_completion,
                 "repeats": args.repeats, "dir": os.path.join(tmp, "grpo")}
            ours, theirs = raw["grpo_ours"], raw["grpo_tunix"] = run("grpo_ours", g), run("grpo_tunix", g)
            print(f"grpo: ours {ours} tunix {theirs}", flush=True)
            setting = (f"24.6M, batch {args.grpo_batch} (group 4) x {args.grpo_prompt}+{args.grpo_completion} tok,"
                       f" best of {args.repeats}")
            table.add("GRPO step", "spct-jax", setting, ours, "steps_s", "steps/s", ratio(ours, theirs, "steps_s"))
            table.add("GRPO step", "tunix (ref logps + actor train step)", setting, theirs, "steps_s", "steps/s")
        if "grm" in only:
            g = {"gguf": gguf, "k": args.grm_k, "new": args.grm_new, "temperature": args.temperature,
                 "target": args.grm_prompt, "threads": args.threads}
            ours = {dt: run("grm_ours", {**g, "dtype": dt}) for dt in dtypes}
            theirs = raw["grm_llamacpp"] = run("grm_llamacpp", g)
            print(f"grm: ours {ours} llama.cpp {theirs}", flush=True)
            n = next((r["prompt_tokens"] for r in [*ours.values(), theirs] if "prompt_tokens" in r), "?")
            setting = f"LLMBar item, prompt {n} tok, k={args.grm_k}, <= {args.grm_new} new, stop at end of turn"
            for dt, r in ours.items():
                raw[f"grm_ours_{dt}"] = r
                table.add("GRM critiques", f"spct-jax GenerativeRewardModel ({DTYPE_LABELS[dt]})", setting, r,
                          ratio=ratio(r, theirs, "tok_s"))
            table.add("GRM critiques", "llama.cpp (Q4_1), k parallel sequences", setting, theirs)
            for name, r in [*((f"ours {dt}", r) for dt, r in ours.items()), ("llama.cpp", theirs)]:
                if "error" not in r:
                    print(f"grm {name}: {r['seconds']:.1f} s per item for {r['new_tokens']} tokens, "
                          f"{r['valid']}/{args.grm_k} critiques parse")
    print()
    table.print()
    if "roofline" in only:
        roof = raw["roofline"] = run("roofline", {"stream_mb": 512, "matmul": 2048, "repeats": 5})
        print()
        print(roofline_lines(roof, from_random, made.get("params", 0), args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


def roofline_lines(roof: dict, ours: dict, params: int, args) -> str:
    """Our decode as a fraction of the machine's limits (random model: L 8, KV heads 4, Dh 64, H 8, fp32)."""
    if "error" in roof:
        return f"roofline: ERROR {roof['error']}"
    layers, kv, dh, heads = 8, 4, 64, 8
    ctx = args.prompt + args.new / 2  # mean context a decode step reads
    out = [f"machine: copy bandwidth {roof['bandwidth'] / 1e9:.1f} GB/s (numpy, 512 MB, read + write), "
           f"matmul {roof['matmul_flops'] / 1e9:.1f} GFLOP/s (jitted fp32 2048^2)"]
    one = ours.get(1, {})
    if "decode_steps_s" in one:
        step_bytes = params * 4 + layers * 2 * kv * dh * 4 * ctx
        bw = step_bytes * one["decode_steps_s"]
        out.append(f"k = 1 decode: {one['decode_steps_s']:.1f} steps/s x {step_bytes / 1e6:.0f} MB (weights + KV) "
                   f"= {bw / 1e9:.2f} GB/s = **{bw / roof['bandwidth']:.2f} of the bandwidth roofline**")
    for key, label in ((32, "k = 32 decode"), ("32, one phase", "k = 32 decode in one phase (decode_phases=False)")):
        big = ours.get(key, {})
        if "decode_steps_s" in big:
            step_flops = 32 * (2 * params + 4 * layers * heads * dh * ctx)
            fl = step_flops * big["decode_steps_s"]
            out.append(f"{label}: {big['decode_steps_s']:.1f} steps/s x {step_flops / 1e9:.2f} GFLOP "
                       f"= {fl / 1e9:.1f} GFLOP/s = **{fl / roof['matmul_flops']:.2f} of the matmul roofline**")
    return "\n".join(out)


if __name__ == "__main__":
    main()
