"""Workers for benchmarks/peers.py: each runs in its own process (`python peers_workers.py NAME JSON`) and prints
one JSON line, so peak RSS (ru_maxrss) is that system's alone. Peers (tunix, llama_cpp) are imported here only.

Timing rule everywhere: the first call compiles (or warms caches); the second, identical call is timed, and
`compile_s` = first - second. Time to first token = a warm call that makes exactly one new token.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

RANDOM_CFG = dict(family="llama", vocab_size=32_000, hidden_size=512, intermediate_size=1408, num_layers=8,
                  num_heads=8, num_kv_heads=4, head_dim=64, tie_embeddings=True, pad_token_id=0, rope_theta=1e6)
# rope_theta 1e6: tunix 0.1.7's llama3 attention calls apply_rope without the config's rope_theta (its default
# 1e6 is always used), so this is the one value at which both sides compute the same function.
GRPO_CFG = dict(family="llama", vocab_size=8192, hidden_size=512, intermediate_size=1536, num_layers=6, num_heads=8,
                num_kv_heads=8, head_dim=64, tie_embeddings=True, pad_token_id=0, rope_theta=1e6)
NEVER = 10 ** 9  # an end-of-sequence id no model here can sample: every row makes exactly `new` tokens


def rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


CPU = {}  # process CPU seconds (all threads) of the last `timed` call: what other jobs on the cores cannot steal


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    CPU["last"] = time.process_time() - c0
    return time.perf_counter() - t0, out


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, n).tolist()


def three_calls(run, k: int, new: int, ttft: bool = True) -> dict:
    """run(k, new, seed) blocks until done. -> tok/s (2nd call), compile s, TTFT (2nd one-token call; skipped with
    ttft=False, where decode steps/s then counts the whole call)."""
    first, _ = timed(lambda: run(k, new, 0))
    second, _ = timed(lambda: run(k, new, 1))
    cpu = CPU["last"]
    t1 = None
    if ttft:
        run(k, 1, 2)
        t1, _ = timed(lambda: run(k, 1, 3))
    return {"tok_s": k * new / second, "seconds": second, "compile_s": max(first - second, 0.0), "ttft_s": t1,
            "cpu_tok_s": k * new / cpu, "decode_steps_s": (new - 1) / max(second - (t1 or 0.0), 1e-9)}


# -- sampling, the random Llama-shaped model: ours vs tunix ---------------------------------------------------------
def make_random(args):
    """Write the random model once (ours -> HF safetensors folder) so both sides load the same file."""
    from spct_jax.models import ModelConfig, count_params, init_model, save_pretrained

    cfg = ModelConfig(**RANDOM_CFG)
    save_pretrained(init_model(cfg, seed=0), args["dir"])
    return {"params": count_params(cfg)}


def sample_ours(args):
    from spct_jax import sampling
    from spct_jax.models import from_pretrained

    model = from_pretrained(args["path"])
    prompt = args["prompt"]
    run = lambda k, new, seed: sampling.sample(model, [prompt], num_samples=k, max_new_tokens=new,  # noqa: E731
                                               temperature=args["temperature"], seed=seed, progress=False,
                                               decode_phases=args.get("decode_phases"))
    return three_calls(run, args["k"], args["new"], args.get("ttft", True))


class IdTokenizer:
    """tunix's sampler takes strings and encodes them; this one takes token-id lists as they are."""

    def encode(self, x, **kw):
        return list(x)

    def decode(self, ids, **kw):
        return ""

    def bos_id(self):
        return 0  # falsy: tunix prepends nothing

    def eos_id(self):
        return NEVER

    def pad_id(self):
        return 0


def tunix_llama(path: str, cfg: dict):
    from tunix.models.llama3 import model as llama3
    from tunix.models.llama3 import params as llama3_params

    from spct_jax.models import ModelConfig

    ours = ModelConfig(**cfg)
    tcfg = llama3.ModelConfig(num_layers=ours.num_layers, vocab_size=ours.vocab_size, embed_dim=ours.hidden_size,
                              hidden_dim=ours.intermediate_size, num_heads=ours.num_heads, head_dim=ours.head_dim,
                              num_kv_heads=ours.num_kv_heads, rope_theta=ours.rope_theta, norm_eps=ours.rms_norm_eps,
                              weight_tying=ours.tie_embeddings)
    return llama3_params.create_model_from_safe_tensors(path, tcfg), tcfg


def sample_tunix(args):
    import jax
    from tunix.generate import sampler as tsampler

    model, tcfg = tunix_llama(args["path"], RANDOM_CFG)
    prompt = args["prompt"]
    plen = 1 << (len(prompt) - 1).bit_length()  # tunix pads prompts to a power of two
    smp = tsampler.Sampler(model, IdTokenizer(), tsampler.CacheConfig(
        cache_size=plen + args["new"], num_layers=tcfg.num_layers, num_kv_heads=tcfg.num_kv_heads,
        head_dim=tcfg.head_dim))

    def run(k, new, seed):
        out = smp([prompt] * k, max_generation_steps=new, max_prompt_length=plen, temperature=args["temperature"],
                  top_p=1.0, seed=seed, eos_tokens=[NEVER])  # top_p 1.0: tunix's plain categorical draw
        jax.block_until_ready(out.tokens)
        assert all(len(t) == new for t in out.tokens), [len(t) for t in out.tokens]

    return three_calls(run, args["k"], args["new"], args.get("ttft", True))


def check_same_logits(args):
    """Max |ours - tunix| of the last position's logits on the prompt: the two really hold the same weights."""
    import jax.numpy as jnp

    from spct_jax.models import from_pretrained

    ids = jnp.asarray([args["prompt"]], jnp.int32)
    t = ids.shape[1]
    ours = from_pretrained(args["path"])
    cache = ours.init_cache(1, t)
    out = ours.extend(ids, jnp.ones((1, t), bool), cache)
    ours_logits = np.asarray(out[0])[0, -1]
    model, _ = tunix_llama(args["path"], RANDOM_CFG)
    theirs, _ = model(ids, positions=jnp.arange(t)[None], cache=None,
                      attention_mask=jnp.tril(jnp.ones((1, t, t), bool)))
    return {"max_abs_diff": float(np.max(np.abs(ours_logits - np.asarray(theirs)[0, -1]))),
            "logit_scale": float(np.max(np.abs(ours_logits)))}


# -- sampling, SmolLM2-135M from its GGUF: ours vs llama.cpp ----------------------------------------------------------
def llama_ctx(path: str, n_ctx: int, n_seq: int, threads: int):
    import llama_cpp as L

    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(path).encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, 2048, 512, n_seq
    cp.n_threads = cp.n_threads_batch = threads
    if hasattr(cp, "kv_unified"):
        cp.kv_unified = True  # one cache: seq_cp shares the prompt's cells instead of copying them
    ctx = L.llama_init_from_model(model, cp)
    return L, model, ctx


def llama_generate(L, model, ctx, prompt, k, new, temperature, seed, stop=()):
    """Prefill `prompt` once (sequence 0), share its cells with sequences 1..k-1, then decode the k sequences as
    one batch per step (llama.cpp's `parallel` example). -> (token lists, seconds to first token)."""
    mem = L.llama_get_memory(ctx)
    L.llama_memory_clear(mem, True)
    smp = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(smp, L.llama_sampler_init_temp(temperature))
    L.llama_sampler_chain_add(smp, L.llama_sampler_init_dist(seed))
    batch = L.llama_batch_init(max(len(prompt), k), 0, k)
    t0 = time.perf_counter()

    def put(i, tok, pos, seqs, logits):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, len(seqs), logits
        for j, s in enumerate(seqs):
            batch.seq_id[i][j] = s

    for i, tok in enumerate(prompt):
        put(i, tok, i, [0], i == len(prompt) - 1)
    batch.n_tokens = len(prompt)
    assert L.llama_decode(ctx, batch) == 0
    for s in range(1, k):
        L.llama_memory_seq_cp(mem, 0, s, -1, -1)
    first = [L.llama_sampler_sample(smp, ctx, len(prompt) - 1) for _ in range(k)]
    ttft = time.perf_counter() - t0
    out, live = [[t] for t in first], [t not in stop for t in first]
    pos = len(prompt)
    while rows := [s for s in range(k) if live[s] and len(out[s]) < new]:
        for i, s in enumerate(rows):
            put(i, out[s][-1], pos, [s], True)
        batch.n_tokens = len(rows)
        rc = L.llama_decode(ctx, batch)
        assert rc == 0, f"llama_decode returned {rc} at position {pos} with {len(rows)} rows"
        for i, s in enumerate(rows):
            tok = L.llama_sampler_sample(smp, ctx, i)
            out[s].append(tok)
            live[s] = tok not in stop
        pos += 1
    L.llama_batch_free(batch)
    L.llama_sampler_free(smp)
    return out, ttft


def sample_llamacpp(args):
    k, new, prompt = args["k"], args["new"], args["prompt"]
    L, model, ctx = llama_ctx(args["gguf"], len(prompt) + k * new + 16, k, args["threads"])
    gen = lambda kk, nn, seed: llama_generate(L, model, ctx, prompt, kk, nn, args["temperature"], seed)  # noqa
    res = three_calls(gen, k, new)
    res["version"] = L.__version__
    return res


def gguf_dtypes(args) -> dict:
    """load_gguf's dtypes for our side: "float32" (the Q4_1 weights dequantised to fp32) or "bfloat16" (bf16
    weights, fp32 compute: every matmul rounds its activations to bf16 and accumulates in fp32, as `spct score
    --dtype bfloat16` runs on CPU)."""
    import jax.numpy as jnp

    return {"bfloat16": {"dtype": jnp.bfloat16, "compute_dtype": jnp.float32}}.get(args.get("dtype", "float32"), {})


def sample_ours_gguf(args):
    from spct_jax import sampling
    from spct_jax.models.gguf_import import load_gguf

    model, _ = load_gguf(args["gguf"], **gguf_dtypes(args))
    prompt = args["prompt"]
    run = lambda k, new, seed: sampling.sample(model, [prompt], num_samples=k, max_new_tokens=new,  # noqa: E731
                                               temperature=args["temperature"], seed=seed, progress=False)
    return three_calls(run, args["k"], args["new"])


# -- the GRM workload: k critiques of one LLMBar item -----------------------------------------------------------------
def llmbar_item(path: str, target_tokens: int):
    """The LLMBar item whose GRM prompt (default template, original order) is closest to `target_tokens`."""
    from spct_jax.data.formats import read_preferences
    from spct_jax.grm.trajectories import prompt_ids as grm_prompt_ids
    from spct_jax.models.gguf_import import tokenizer_for

    tok = tokenizer_for(path)
    items = read_preferences(os.path.join(args_data(), "rewardbench", "llmbar_source", "Natural", "dataset.json"),
                             format="llmbar")
    best = min(items[:60], key=lambda it: abs(len(grm_prompt_ids(tok, it, (0, 1), template="default"))
                                              - target_tokens))
    return best, tok, grm_prompt_ids(tok, best, (0, 1), template="default")


def args_data() -> str:
    return os.environ.get("SPCT_SHARED_DATA", "/work/shared/data")


def grm_ours(args):
    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.models.gguf_import import load_gguf

    model, tok = load_gguf(args["gguf"], **gguf_dtypes(args))
    item, _, prompt = llmbar_item(args["gguf"], args["target"])
    grm = GenerativeRewardModel(model, tok)
    score = lambda seed: grm.score([item], k=args["k"], temperature=args["temperature"],  # noqa: E731
                                   max_new_tokens=args["new"], seed=seed, shuffle=False, progress=False)
    first, _ = timed(lambda: score(0))
    second, js = timed(lambda: score(1))
    cpu = CPU["last"]
    n = sum(len(s.completion_ids) if hasattr(s, "completion_ids") else 0 for s in js[0].samples)
    if not n:  # SampleRecord may not keep ids: count with the tokenizer
        n = sum(len(tok.encode(s.text)) for s in js[0].samples)
    return {"seconds": second, "compile_s": max(first - second, 0.0), "new_tokens": n, "tok_s": n / second,
            "cpu_tok_s": n / cpu, "prompt_tokens": len(prompt), "uid": item.uid, "valid": js[0].num_valid}


def grm_llamacpp(args):
    from spct_jax.models.gguf_import import tokenizer_for

    _, tok, prompt = llmbar_item(args["gguf"], args["target"])
    k, new = args["k"], args["new"]
    L, model, ctx = llama_ctx(args["gguf"], 2 * (len(prompt) + k * new), k, args["threads"])
    stop = set(tok.stop_ids)
    gen = lambda seed: llama_generate(L, model, ctx, prompt, k, new, args["temperature"], seed, stop)  # noqa
    first, _ = timed(lambda: gen(0))
    second, (out, _) = timed(lambda: gen(1))
    cpu = CPU["last"]
    from spct_jax.grm.rules import parse_for_template

    texts = [tok.decode([t for t in o if t not in stop]) for o in out]
    valid = sum(parse_for_template(t, 2, "default").ok for t in texts)
    n = sum(len([t for t in o if t not in stop]) + (1 if o[-1] in stop else 0) for o in out)
    return {"seconds": second, "compile_s": max(first - second, 0.0), "new_tokens": n, "tok_s": n / second,
            "cpu_tok_s": n / cpu, "prompt_tokens": len(prompt), "valid": valid, "mode": "k parallel sequences, one shared prompt"}


# -- GRPO step: ours vs tunix on the same tokens -----------------------------------------------------------------------
def grpo_batch(b: int, p: int, c: int, vocab: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (b, p + c)).astype(np.int32)
    adv = rng.choice([-1.0, 1.0], b).astype(np.float32)
    return ids, adv


def grpo_ours(args):
    import jax
    import jax.numpy as jnp

    from spct_jax.models import ModelConfig, init_model
    from spct_jax.train.config import GRPOLossConfig, OptimizerConfig
    from spct_jax.train.state import create_train_state
    from spct_jax.train.steps import make_grpo_step, make_logprob_fn

    b, p, c = args["batch"], args["prompt"], args["completion"]
    cfg = ModelConfig(**GRPO_CFG)
    opt = OptimizerConfig(learning_rate=1e-6)
    graphdef, state0 = create_train_state(init_model(cfg, seed=0), opt, seed=0)
    ids, adv = grpo_batch(b, p, c, cfg.vocab_size)
    mask = np.ones_like(ids)
    loss_mask = np.zeros(ids.shape, np.float32)
    loss_mask[:, p:] = 1.0
    base = {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}
    logprobs = make_logprob_fn(graphdef, chunk=p + c)
    ref = jax.tree.map(jnp.copy, state0.params)
    step = make_grpo_step(graphdef, optimizer=opt, loss=GRPOLossConfig(beta=0.04, epsilon=0.2, group_size=4),
                          chunk=p + c)
    holder = {"s": step.place(state0)}

    def one():
        batch = dict(base, advantages=adv, ref_logp=logprobs(ref, base))
        holder["s"], m = step(holder["s"], batch)
        jax.block_until_ready(m)

    return steps_timing(one, args["repeats"])


def steps_timing(one, repeats):
    first, _ = timed(one)
    times, cpus = [], []
    for _ in range(repeats):
        times.append(timed(one)[0])
        cpus.append(CPU["last"])
    return {"steps_s": 1.0 / min(times), "cpu_steps_s": 1.0 / min(cpus), "median_s": float(np.median(times)),
            "compile_s": max(first - min(times), 0)}


def grpo_tunix(args):
    """tunix's GRPO actor update as GRPOLearner drives it: the reference's per-token log-probs
    (common.compute_per_token_logps, what rl_cluster.get_ref_per_token_logps runs), then the actor trainer's jitted
    train step (PeftTrainer._train_step under nnx.jit) with the registered "grpo" policy loss. Rollout, rewards and
    advantages are outside the step (given, as on our side)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tunix.rl import algo_core  # noqa: F401  (registers the "grpo" loss)
    from tunix.rl import common, function_registry
    from tunix.rl.grpo.grpo_learner import GRPOConfig, TrainExample
    from tunix.rl.trainer import Trainer
    from tunix.sft.peft_trainer import TrainingConfig

    from spct_jax.models import ModelConfig, init_model, save_pretrained

    b, p, c = args["batch"], args["prompt"], args["completion"]
    save_pretrained(init_model(ModelConfig(**GRPO_CFG), seed=0), args["dir"])
    actor, _ = tunix_llama(args["dir"], GRPO_CFG)
    reference, _ = tunix_llama(args["dir"], GRPO_CFG)
    algo = GRPOConfig(num_generations=4, num_iterations=1, beta=0.04, epsilon=0.2)
    algo.temperature = 1.0  # GRPOLearner copies the rollout temperature here
    loss = function_registry.get_policy_loss_fn("grpo")
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-6, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0))
    trainer = Trainer(actor, tx, TrainingConfig(eval_every_n_steps=10 ** 9, max_steps=10 ** 9),
                      custom_checkpoint_metadata_fn=dict)
    trainer.with_loss_fn(lambda model, train_example, algo_config: loss(
        model, train_example, algo_config=algo, pad_id=0, eos_id=NEVER), has_aux=True)
    trainer.with_gen_model_input_fn(lambda x: {"train_example": x, "algo_config": algo})
    train_step, _ = trainer.jit_train_and_eval_step()
    ids, adv = grpo_batch(b, p, c, GRPO_CFG["vocab_size"])
    prompt, completion = jnp.asarray(ids[:, :p]), jnp.asarray(ids[:, p:])
    ref_graph, ref_state = nnx.split(reference)

    def one():
        ref_logp = common.compute_per_token_logps(ref_graph, ref_state, prompt_tokens=prompt,
                                                  completion_tokens=completion, pad_id=0, eos_id=NEVER)
        ex = TrainExample(prompt_ids=prompt, prompt_mask=prompt != 0, completion_ids=completion,
                          completion_mask=jnp.ones(completion.shape, jnp.int32), advantages=jnp.asarray(adv),
                          ref_per_token_logps=ref_logp, old_per_token_logps=None)
        out = train_step(ex)
        jax.block_until_ready(out)

    return steps_timing(one, args["repeats"])


# -- the machine's limits ----------------------------------------------------------------------------------------------
def roofline(args):
    import jax
    import jax.numpy as jnp

    a = np.ones(args["stream_mb"] * (1 << 20) // 4, np.float32)
    dst = np.empty_like(a)
    copy = min(timed(lambda: np.copyto(dst, a))[0] for _ in range(args["repeats"]))
    n = args["matmul"]
    x = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda u, v: u @ v)
    f(x, x).block_until_ready()
    mm = min(timed(lambda: f(x, x).block_until_ready())[0] for _ in range(args["repeats"]))
    return {"bandwidth": 2 * a.nbytes / copy, "matmul_flops": 2 * n ** 3 / mm}


WORKERS = {f.__name__: f for f in (make_random, sample_ours, sample_tunix, check_same_logits, sample_llamacpp,
                                   sample_ours_gguf, grm_ours, grm_llamacpp, grpo_ours, grpo_tunix, roofline)}

if __name__ == "__main__":
    name, payload = sys.argv[1], json.loads(sys.argv[2])
    result = WORKERS[name](payload)
    result["peak_rss"] = rss()
    print("RESULT " + json.dumps(result), flush=True)
