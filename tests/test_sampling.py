"""The sampler: greedy parity with transformers' generate, determinism, batch invariance, compiles, sharding."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spct_jax import sampling
from spct_jax.models import ModelConfig, from_pretrained, init_model
from spct_jax.sampling.strategies import top_p_mask

TINY = ModelConfig(family="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=16)


@pytest.fixture(scope="module")
def tiny():
    return init_model(TINY, seed=0)


def _prompts(lengths, seed=0, vocab=256):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, n).tolist() for n in lengths]


@pytest.mark.parametrize("decode_layers", ["split", "scan"])
@pytest.mark.parametrize("family", ["gemma2", "llama"])
def test_greedy_matches_transformers_generate(family, decode_layers, tmp_path):
    from hf_fixtures import tiny_hf_lm, torch

    hf = tiny_hf_lm(family, seed=7)
    hf.generation_config.eos_token_id = None  # generate exactly max_new_tokens on both sides
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path, dtype=jnp.float32)
    prompts = _prompts([11, 4, 8], seed=3, vocab=128)
    new = 40
    got = sampling.sample(ours, prompts, max_new_tokens=new, temperature=0.0, decode_layers=decode_layers)
    t = max(map(len, prompts))
    ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new, pad_token_id=0)
    for i in range(len(prompts)):
        assert got.tokens[i][0] == out[i, t:].tolist()


def test_top_k_1_is_greedy(tiny):
    prompts = _prompts([5, 9])
    greedy = sampling.sample(tiny, prompts, max_new_tokens=24, temperature=0.0)
    k1 = sampling.sample(tiny, prompts, max_new_tokens=24, temperature=0.7, top_k=1, seed=5)
    assert greedy.tokens == k1.tokens


def test_same_seed_same_tokens_and_different_seed_differs(tiny):
    prompts = _prompts([6, 3])
    a = sampling.sample(tiny, prompts, num_samples=4, max_new_tokens=24, seed=11)
    b = sampling.sample(tiny, prompts, num_samples=4, max_new_tokens=24, seed=11)
    c = sampling.sample(tiny, prompts, num_samples=4, max_new_tokens=24, seed=12)
    assert a.tokens == b.tokens and a.logprobs == b.logprobs
    assert a.tokens != c.tokens
    # k samples of one prompt are different draws, not copies
    assert len({tuple(s) for s in a.tokens[0]}) == 4


def test_batch_size_invariance(tiny):
    prompts = _prompts([7, 12, 3, 9, 10], seed=1)
    together = sampling.sample(tiny, prompts, num_samples=3, max_new_tokens=20, seed=3, top_p=0.9)
    for i, p in enumerate(prompts):
        alone = sampling.sample(tiny, [p], num_samples=3, max_new_tokens=20, seed=3, top_p=0.9)
        assert alone.tokens[0] == together.tokens[i]
        np.testing.assert_allclose(alone.logprobs[0][0], together.logprobs[i][0], atol=1e-5)


def test_fan_out_equals_re_prefill(tiny):
    prompts = _prompts([8, 5], seed=2)
    kw = dict(num_samples=5, max_new_tokens=20, seed=9, temperature=0.8)
    assert sampling.sample(tiny, prompts, fan_out=True, **kw).tokens == sampling.sample(tiny, prompts, fan_out=False, **kw).tokens


def test_stop_tokens_end_rows_and_are_included(tiny):
    prompts = _prompts([6, 6, 6], seed=4)
    free = sampling.sample(tiny, prompts, num_samples=2, max_new_tokens=30, seed=1)
    stop = free.tokens[0][0][3]  # a token that certainly appears in sample (0, 0)
    got = sampling.sample(tiny, prompts, num_samples=2, max_new_tokens=30, seed=1, stop_tokens=[stop])
    for row_free, row_stop in zip(free.tokens, got.tokens):
        for f, s in zip(row_free, row_stop):
            cut = f.index(stop) + 1 if stop in f else len(f)
            assert s == f[:cut]
    assert got.tokens[0][0][-1] == stop and len(got.tokens[0][0]) <= 4


def test_logprobs_are_those_of_the_sampling_distribution(tiny):
    prompt = _prompts([5], seed=8)
    out = sampling.sample(tiny, prompt, max_new_tokens=6, temperature=0.5, seed=2)
    ids = jnp.asarray([prompt[0] + out.tokens[0][0]], jnp.int32)
    logits = np.asarray(tiny(ids))[0] / 0.5
    lsm = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    want = [lsm[len(prompt[0]) - 1 + t, tok] for t, tok in enumerate(out.tokens[0][0])]
    np.testing.assert_allclose(out.logprobs[0][0], want, atol=1e-4)


def test_top_p_keeps_only_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]]))
    keep = np.asarray(top_p_mask(logits, jnp.float32(0.8)))
    assert keep[0].tolist() == [True, True, False, False]
    assert keep[1].all()  # ties at the threshold are kept


def test_compiles_stay_within_bucket_bound(tiny):
    rng = np.random.default_rng(0)
    before = sampling.compile_count()
    buckets = set()
    for _ in range(20):
        n = int(rng.integers(1, 3))
        lengths = rng.integers(2, 60, n).tolist()
        new = int(rng.integers(5, 30))
        sampling.sample(tiny, _prompts(lengths, seed=int(rng.integers(1e6))), max_new_tokens=new, num_samples=2)
        groups = {sampling.bucket(L) for L in lengths}
        for g in groups:
            size = sampling.bucket(sum(sampling.bucket(L) == g for L in lengths), minimum=1)
            buckets.add((g, size, sampling.bucket(new)))
    assert sampling.compile_count() - before <= len(buckets)


SHARDED = textwrap.dedent("""
    import os, json, sys
    import jax, numpy as np
    from spct_jax import sampling
    from spct_jax.models import ModelConfig, init_model
    cfg = ModelConfig(family="gemma2", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16, query_pre_attn_scalar=16, attn_logit_softcap=50.0,
                      final_logit_softcap=30.0, sliding_window=8, layer_types=("sliding", "full"))
    model = init_model(cfg, seed=1)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 256, n).tolist() for n in (5, 11, 7)]
    mesh = None
    if len(jax.devices()) > 1:
        mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    out = {d: sampling.sample(model, prompts, num_samples=4, max_new_tokens=24, temperature=0.0, mesh=mesh,
                              decode_layers=d).tokens for d in ("split", "scan")}
    # 8 distinct prompts x 4 copies, one sample each with its own seed: grouped, one prefix per shard's prompt
    copies = [p for p in (rng.integers(3, 256, 5 + i).tolist() for i in range(8)) for _ in range(4)]
    for share in (True, False):
        out[f"share={share}"] = sampling.sample(model, copies, max_new_tokens=10, temperature=0.9, seed=3, mesh=mesh,
                                                prompt_seeds=list(range(32)), share_identical=share).tokens
    print(json.dumps({"n": len(jax.devices()), "tokens": out}))
""")


def _run(devices):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    return json.loads(res.stdout.strip().splitlines()[-1])


def test_eight_sharded_devices_match_one_device():
    one, eight = _run(1), _run(8)
    assert eight["n"] == 8 and one["n"] == 1
    assert one["tokens"]["split"] == eight["tokens"]["split"] == one["tokens"]["scan"] == eight["tokens"]["scan"]
    assert (one["tokens"]["share=True"] == eight["tokens"]["share=True"] == one["tokens"]["share=False"]
            == eight["tokens"]["share=False"])


GEMMA5 = ModelConfig(family="gemma2", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=5, num_heads=4,
                     num_kv_heads=2, head_dim=16, query_pre_attn_scalar=16, attn_logit_softcap=50.0,
                     final_logit_softcap=30.0, sliding_window=8, layer_types=("sliding", "full") * 2 + ("sliding",))


@pytest.mark.parametrize("fan_out", [True, False])
@pytest.mark.parametrize("remat", ["none", "full"])
def test_split_decode_layers_sample_exactly_what_the_layer_scan_samples(fan_out, remat):
    """Per-layer buffers (the CPU default) against the stacked layer scan: a Gemma-2 with an odd layer count (a
    scanned pair plus an unrolled remainder), a window shorter than the rows, shared prefixes and re-prefill."""
    model = init_model(GEMMA5, seed=2, remat=remat)
    prompts = _prompts([13, 4, 13, 9], seed=5)
    kw = dict(num_samples=3, max_new_tokens=20, temperature=0.7, seed=9, fan_out=fan_out)
    split = sampling.sample(model, prompts, decode_layers="split", **kw)
    scan = sampling.sample(model, prompts, decode_layers="scan", **kw)
    assert split.tokens == scan.tokens
    np.testing.assert_allclose(np.concatenate([np.ravel(x) for r in split.logprobs for x in r]),
                               np.concatenate([np.ravel(x) for r in scan.logprobs for x in r]), atol=1e-6)


@pytest.mark.parametrize("copies, num_samples, grouped_slots", [
    ([0] * 8, 1, 8),  # the GRM scorer's call: one prompt, k copies with their own seeds
    ([0, 1, 0, 1], 3, 2),  # two prompts twice, 3 samples each
    ([0, 1, 0, 0, 1, 2, 0, 1], 1, 1),  # uneven copies: grouping would add rows, so the plain layout is kept
])
def test_identical_prompts_share_one_prefix_and_sample_the_same_tokens(copies, num_samples, grouped_slots):
    from spct_jax.sampling.layout import plan_call

    model = init_model(GEMMA5, seed=4)
    base = _prompts([13, 9, 20], seed=6)
    prompts = [base[c] for c in copies]
    seeds = list(range(50, 50 + len(prompts)))
    assert plan_call(list(range(len(prompts))), prompts, seeds, num_samples, 1, 0).prefix_slots == grouped_slots
    kw = dict(num_samples=num_samples, max_new_tokens=14, temperature=0.8, seed=2, prompt_seeds=seeds)
    shared = sampling.sample(model, prompts, **kw)
    plain = sampling.sample(model, prompts, share_identical=False, **kw)
    assert shared.tokens == plain.tokens
    np.testing.assert_allclose(np.concatenate([np.ravel(x) for r in shared.logprobs for x in r]),
                               np.concatenate([np.ravel(x) for r in plain.logprobs for x in r]), atol=1e-6)


@pytest.mark.parametrize("decode_layers, fan_out", [("split", True), ("split", False), ("scan", True)])
def test_decode_phases_sample_exactly_what_one_phase_samples(decode_layers, fan_out):
    """Growing the own slots between phases (64, then 128 for 70 new tokens) against one loop over all 128: shared
    prefixes and re-prefill, per-layer and stacked caches, Gemma-2's window, rows stopping in both phases."""
    assert sampling.decode_phases_for(True, 128, True, None) == (64, 128)
    model = init_model(GEMMA5, seed=3)
    prompts = _prompts([13, 4, 16, 9], seed=7)
    kw = dict(num_samples=3, max_new_tokens=70, temperature=0.9, seed=4, fan_out=fan_out, stop_tokens=range(3, 8),
              decode_layers=decode_layers)
    phased = sampling.sample(model, prompts, decode_phases=True, **kw)
    one = sampling.sample(model, prompts, decode_phases=False, **kw)
    lengths = sorted(len(t) for row in phased.tokens for t in row)
    assert lengths[0] < 64 and lengths[-1] > 64  # rows end in both phases
    assert phased.tokens == one.tokens
    np.testing.assert_allclose(np.concatenate([np.ravel(x) for r in phased.logprobs for x in r]),
                               np.concatenate([np.ravel(x) for r in one.logprobs for x in r]), atol=1e-6)


def test_decode_phases_default_one_cpu_device_long_generations_only():
    assert sampling.decode_phases_for(None, 256, True, None) == (128, 256)
    assert sampling.decode_phases_for(None, 128, True, None) == ()  # short: one loop body to compile
    assert sampling.decode_phases_for(True, 32, True, None) == ()  # too short to split
    assert sampling.decode_phases_for(None, 256, False, None) == ()  # the stacked (TPU) layout
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    assert sampling.decode_phases_for(None, 256, True, mesh) == ()  # a mesh keeps the measured programs
    assert sampling.decode_phases_for(True, 256, False, mesh) == (128, 256)


def test_decode_layers_default_per_backend_and_rejects_unknown(tiny):
    assert sampling.decode_layers_for("auto") == "split"  # the tests run on CPU
    assert sampling.decode_layers_for("scan") == "scan"
    with pytest.raises(ValueError, match="decode_layers"):
        sampling.sample(tiny, [[5, 6]], max_new_tokens=2, decode_layers="unrolled")


def test_a_remat_model_samples_like_the_plain_one():
    """Per-block remat changes the backward pass only: sampling (a raw lax.scan prefill) runs and agrees."""
    cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, pad_token_id=0)
    plain, remat = init_model(cfg, seed=3), init_model(cfg, seed=3, remat=True)
    prompts = [[1, 5, 9, 2], list(np.random.default_rng(0).integers(1, 64, sampling.PREFILL_CHUNK + 5))]
    a = sampling.sample(plain, prompts, num_samples=2, max_new_tokens=6, temperature=1.0, seed=4)
    b = sampling.sample(remat, prompts, num_samples=2, max_new_tokens=6, temperature=1.0, seed=4)
    assert a.tokens == b.tokens


def test_length_bucketed_batches_cover_every_sequence_once_with_room_to_spare():
    from spct_jax.sampling import length_bucketed_batches

    lengths = [5, 40, 17, 3, 100, 16, 33]
    batches = length_bucketed_batches(lengths, batch_size=3)
    assert sorted(i for idx, _, _ in batches for i in idx) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in idx) for idx, _, _ in batches] == [[3, 5, 16], [17, 33, 40], [100]]
    for idx, rows, length in batches:
        assert rows >= len(idx) and rows & (rows - 1) == 0
        assert length >= max(lengths[i] for i in idx) and length & (length - 1) == 0 and length >= 16
