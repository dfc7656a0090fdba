"""Logit parity with transformers (PyTorch CPU) for Gemma-2, Llama and Qwen2, plus cache and export checks."""
import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_fixtures import hf_logits, left_padded_batch, tiny_hf_lm, torch, transformers
from spct_jax.models import ConfigError, WeightsError, from_pretrained, save_pretrained
from spct_jax.models.transformer import weight_dot

FAMILIES = ["gemma2", "llama", "qwen2"]
# Gemma-2's window is 6 slots; 14-token sequences cross it on every sliding layer.
LENGTHS = [14, 9, 3, 12]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    family = request.param
    hf = tiny_hf_lm(family, seed=FAMILIES.index(family))
    folder = tmp_path_factory.mktemp(family)
    hf.save_pretrained(folder, safe_serialization=True)
    return family, hf, folder


def _valid_max_diff(a, b, mask):
    m = mask.astype(bool)
    return float(np.max(np.abs(a[m] - b[m])))


def test_fp32_logits_match_transformers_with_left_padding(pair):
    family, hf, folder = pair
    ours = from_pretrained(folder, dtype=jnp.float32)
    ids, mask, pos = left_padded_batch(LENGTHS, seed=1)
    ref = hf_logits(hf, ids, mask, pos)
    got = np.asarray(ours(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    assert got.shape == ref.shape
    assert _valid_max_diff(got, ref, mask) <= 1e-4


def test_bf16_logits_close_to_fp32_reference(pair):
    family, hf, folder = pair
    ours = from_pretrained(folder, dtype=jnp.bfloat16)
    ids, mask, pos = left_padded_batch(LENGTHS, seed=2)
    ref = hf_logits(hf, ids, mask, pos)
    got = np.asarray(ours(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    # bf16 has ~3 significant digits; this bound only catches layout bugs, the measured value goes in the notes.
    assert _valid_max_diff(got, ref, mask) < 0.35 * float(np.abs(ref).max())


def test_bf16_weights_with_fp32_compute_match_transformers_on_the_same_weights(pair):
    """bfloat16 weights, float32 compute (models.transformer.weight_dot): the oracle is transformers in float32 on the
    same bfloat16-rounded weights, so what is left is our rounding of each matmul's activations to bfloat16
    (2^-9 relative, through a few layers: measured 0.26-0.43% of the largest logit on these models)."""
    family, hf, folder = pair
    ours = from_pretrained(folder, dtype=jnp.bfloat16, compute_dtype=jnp.float32)
    ids, mask, pos = left_padded_batch(LENGTHS, seed=2)
    rounded = copy.deepcopy(hf)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    ref = hf_logits(rounded, ids, mask, pos)
    got = np.asarray(ours(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    assert got.dtype == np.float32
    assert _valid_max_diff(got, ref, mask) < 0.01 * float(np.abs(ref).max())


@pytest.mark.parametrize("shape", [(1, 48), (1, 1, 48), (3, 5, 48)])
def test_weight_dot_rounds_activations_to_narrower_weights_and_accumulates_in_fp32(shape):
    """Closed form: bfloat16 weights and float32 activations give exactly bf16(x) @ w summed in float32 (each
    product of two bfloat16 values is exact in float32), including the one-row case that goes in as two rows;
    same-width operands give the plain product."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((48, 24)).astype(np.float32)
    got = np.asarray(weight_dot(jnp.asarray(x), jnp.asarray(w, jnp.bfloat16)))
    assert got.dtype == np.float32 and got.shape == shape[:-1] + (24,)
    exact = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64) @ np.asarray(jnp.asarray(w, jnp.bfloat16), np.float64)
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-5)
    widened = x.astype(np.float64) @ np.asarray(jnp.asarray(w, jnp.bfloat16), np.float64)  # x not rounded
    assert np.abs(got - widened).max() > 1e-4  # the activations really were rounded
    np.testing.assert_allclose(np.asarray(weight_dot(jnp.asarray(x), jnp.asarray(w))), x @ w, rtol=1e-6, atol=1e-6)


def test_prefill_then_decode_equals_full_forward(pair):
    family, _, folder = pair
    model = from_pretrained(folder, dtype=jnp.float32)
    ids, mask, _ = left_padded_batch(LENGTHS, seed=3)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
    full = np.asarray(model(ids, mask))
    split = 5
    cache = model.init_cache(ids.shape[0], ids.shape[1] + 2)
    logits, cache = model.extend(ids[:, :split], mask[:, :split], cache)
    steps = [np.asarray(logits)]
    for t in range(split, ids.shape[1]):
        logits, cache = model.extend(ids[:, t:t + 1], mask[:, t:t + 1], cache)
        steps.append(np.asarray(logits))
    stepped = np.concatenate(steps, axis=1)
    assert _valid_max_diff(stepped, full, np.asarray(mask)) <= 1e-5


def test_shared_prefix_decode_equals_full_forward(pair):
    """Prompts prefilled once and read as a SharedPrefix by 3 rows each: every row's decode logits equal a full
    forward of (prompt + its own continuation). Continuations of 9 tokens cross Gemma-2's 6-slot window, so
    the window's reach back into the prefix is checked too."""
    family, _, folder = pair
    model = from_pretrained(folder, dtype=jnp.float32)
    c, new = 3, 9
    ids, mask, _ = left_padded_batch([7, 4], seed=4)  # [U=2, P=7]
    u, p = ids.shape
    conts = np.random.default_rng(5).integers(3, model.config.vocab_size, (u * c, new))  # [R, N]
    ids_j, mask_j = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
    _, cache = model.extend(ids_j, mask_j, model.init_cache(u, p))
    cache = cache.shared_by(c, new)
    steps = []
    for t in range(new):
        logits, cache = model.extend(jnp.asarray(conts[:, t:t + 1], jnp.int32), jnp.ones((u * c, 1), bool), cache)
        steps.append(np.asarray(logits[:, 0]))
    stepped = np.stack(steps, axis=1)  # [R, N, V]
    full_ids = np.concatenate([np.repeat(ids, c, axis=0), conts], axis=1)
    full_mask = np.concatenate([np.repeat(mask, c, axis=0), np.ones_like(conts, bool)], axis=1)
    full = np.asarray(model(jnp.asarray(full_ids, jnp.int32), jnp.asarray(full_mask)))[:, p:]
    assert np.max(np.abs(stepped - full)) <= 1e-5
    with pytest.raises(ValueError, match="shared prefix"):
        cache.take(jnp.arange(u * c))


def test_export_round_trip_reloads_in_transformers(pair, tmp_path):
    family, hf, folder = pair
    ours = from_pretrained(folder, dtype=jnp.float32)
    save_pretrained(ours, tmp_path / "export")
    reloaded = type(hf).from_pretrained(tmp_path / "export", attn_implementation="eager").eval()
    ids, mask, pos = left_padded_batch(LENGTHS, seed=4)
    assert _valid_max_diff(hf_logits(reloaded, ids, mask, pos), hf_logits(hf, ids, mask, pos), mask) <= 1e-5


def test_sharded_export_round_trip(pair, tmp_path):
    family, hf, folder = pair
    ours = from_pretrained(folder, dtype=jnp.float32)
    save_pretrained(ours, tmp_path / "sharded", max_shard_bytes=60_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    again = from_pretrained(tmp_path / "sharded", dtype=jnp.float32)
    ids, mask, _ = left_padded_batch(LENGTHS, seed=5)
    a = np.asarray(ours(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    b = np.asarray(again(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    np.testing.assert_array_equal(a, b)


def _copy_without(src, dst, drop=None, reshape=None):
    from spct_jax.models.safetensors_io import SafetensorsFile, write_safetensors

    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    f = SafetensorsFile(src / "model.safetensors")
    items = []
    for k in f.keys():
        if k == drop:
            continue
        arr = f.get(k)
        if k == reshape:
            arr = arr[..., :-1]
        items.append((k, arr.shape, arr.dtype, lambda a=arr: a))
    write_safetensors(dst / "model.safetensors", items)


def test_missing_tensor_is_named(pair, tmp_path):
    _, _, folder = pair
    name = "model.layers.1.mlp.up_proj.weight"
    _copy_without(folder, tmp_path / "bad", drop=name)
    with pytest.raises(WeightsError, match=name.replace(".", r"\.")):
        from_pretrained(tmp_path / "bad")


def test_shape_mismatch_is_named(pair, tmp_path):
    _, _, folder = pair
    name = "model.layers.0.self_attn.k_proj.weight"
    _copy_without(folder, tmp_path / "bad", reshape=name)
    with pytest.raises(WeightsError, match=name.replace(".", r"\.") + ".*shape"):
        from_pretrained(tmp_path / "bad")


def test_unknown_model_type_is_named(pair, tmp_path):
    _, _, folder = pair
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt_bigcode"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type"):
        from_pretrained(tmp_path)


def test_missing_config_field_is_named(pair, tmp_path):
    _, _, folder = pair
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="intermediate_size"):
        from_pretrained(tmp_path)
