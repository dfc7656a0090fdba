"""Scalar-head (meta RM) parity with transformers' XForSequenceClassification (num_labels=1): load and export."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import hf_config, left_padded_batch, randomize, tiny_hf_lm, torch, transformers
from spct_jax.models import ConfigError, ScalarRM, from_pretrained, load_scalar_rm, save_scalar_rm
from spct_jax.models.scalar_head import init_scalar_rm

FAMILIES = ["gemma2", "llama", "qwen2"]
LENGTHS = [14, 9, 3, 12]  # 14 crosses Gemma-2's 6-slot sliding window
TOL = 1e-4


def _hf_cls(family):
    return {"gemma2": transformers.Gemma2ForSequenceClassification, "llama": transformers.LlamaForSequenceClassification,
            "qwen2": transformers.Qwen2ForSequenceClassification}[family]


def tiny_hf_rm(family: str, seed: int = 0):
    cfg = hf_config(family, num_labels=1)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return randomize(_hf_cls(family)(cfg).eval(), seed)


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    family = request.param
    hf = tiny_hf_rm(family, seed=10 + FAMILIES.index(family))
    folder = tmp_path_factory.mktemp(f"rm-{family}")
    hf.save_pretrained(folder, safe_serialization=True)
    return family, hf, folder


def right_padded_batch(lengths, seed=0, pad_id=0):
    ids, mask, _ = left_padded_batch(lengths, seed=seed, pad_id=pad_id)
    for i, n in enumerate(lengths):  # move each row's real tokens to the front
        ids[i] = np.roll(ids[i], n - ids.shape[1])
        mask[i] = np.roll(mask[i], n - ids.shape[1])
    return ids, mask, np.clip(np.cumsum(mask, axis=1) - 1, 0, None)


def hf_scores(model, ids, mask, positions):
    # Real tokens are drawn from [3, vocab) and pad is 0, so transformers' `input_ids != pad` rule and our mask
    # rule pick the same token.
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions))
    assert out.logits.shape == (ids.shape[0], 1)
    return out.logits[:, 0].float().numpy()


def ours(rm, ids, mask):
    return np.asarray(rm(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))


@pytest.mark.parametrize("padding", ["left", "right"])
def test_fp32_scores_match_transformers(pair, padding):
    _, hf, folder = pair
    rm = load_scalar_rm(folder)
    ids, mask, pos = (left_padded_batch(LENGTHS, seed=1) if padding == "left" else right_padded_batch(LENGTHS, seed=1))
    got, ref = ours(rm, ids, mask), hf_scores(hf, ids, mask, pos)
    assert got.shape == (len(LENGTHS),) and got.dtype == np.float32
    assert np.max(np.abs(got - ref)) <= TOL, (got, ref)


def test_export_reloads_in_transformers_with_same_scores(pair, tmp_path):
    family, hf, folder = pair
    rm = load_scalar_rm(folder)
    save_scalar_rm(rm, tmp_path / "export")
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    assert cfg["architectures"] == [_hf_cls(family).__name__]
    assert cfg["id2label"] == {"0": "LABEL_0"} and cfg["pad_token_id"] == 0
    reloaded = _hf_cls(family).from_pretrained(tmp_path / "export", attn_implementation="eager").eval()
    assert reloaded.config.num_labels == 1
    ids, mask, pos = left_padded_batch(LENGTHS, seed=2)
    ref = hf_scores(hf, ids, mask, pos)
    assert np.max(np.abs(hf_scores(reloaded, ids, mask, pos) - ref)) <= TOL
    assert np.max(np.abs(ours(load_scalar_rm(tmp_path / "export"), ids, mask) - ref)) <= TOL


def test_scores_are_jittable_and_bf16_close(pair):
    _, hf, folder = pair
    ids, mask, pos = left_padded_batch(LENGTHS, seed=3)
    ref = hf_scores(hf, ids, mask, pos)
    rm = load_scalar_rm(folder)
    jitted = nnx.jit(lambda m, i, a: m(i, a))
    np.testing.assert_allclose(np.asarray(jitted(rm, jnp.asarray(ids, jnp.int32), jnp.asarray(mask))), ref,
                               atol=TOL, rtol=0)
    bf16 = ours(load_scalar_rm(folder, dtype=jnp.bfloat16), ids, mask)
    assert bf16.dtype == np.float32
    # bf16 rounding measured 0.4-1.5e-2 here (|score| <= 2.4); a layout bug gives O(|score|) errors.
    assert np.max(np.abs(bf16 - ref)) < 0.05 * np.abs(ref).max() + 0.01


def test_from_decoder_keeps_backbone_and_drops_lm_head(tmp_path):
    hf = tiny_hf_lm("llama", seed=3)  # untied: has an lm_head
    hf.save_pretrained(tmp_path / "lm", safe_serialization=True)
    lm = from_pretrained(tmp_path / "lm")
    rm = ScalarRM.from_decoder(lm, seed=5)
    paths = {p for p, _ in nnx.to_flat_state(nnx.state(rm, nnx.Param))}
    assert not any("lm_head" in p for p in paths)
    assert ("score", "kernel") in paths and rm.score.kernel.shape == (64, 1)
    ids, mask, _ = left_padded_batch(LENGTHS, seed=4)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
    np.testing.assert_array_equal(np.asarray(rm.backbone.hidden_states(ids, mask)[0]),
                                  np.asarray(lm.hidden_states(ids, mask)[0]))
    # The RM is a separate module: changing its params leaves the LM alone.
    before = np.asarray(lm.embed[...])
    rm.backbone.embed.set_value(rm.backbone.embed[...] + 1.0)
    np.testing.assert_array_equal(np.asarray(lm.embed[...]), before)
    # Same seed, same head; different seed, different head.
    np.testing.assert_array_equal(np.asarray(ScalarRM.from_decoder(lm, seed=5).score.kernel[...]),
                                  np.asarray(rm.score.kernel[...]))
    assert not np.array_equal(np.asarray(ScalarRM.from_decoder(lm, seed=6).score.kernel[...]),
                              np.asarray(rm.score.kernel[...]))


def test_init_scalar_rm_param_count_and_padding_invariance():
    from spct_jax.models import ModelConfig

    cfg = ModelConfig.from_hf_config(hf_config("llama").to_dict())
    rm = init_scalar_rm(cfg, seed=0)
    n = sum(int(x.size) for x in jax.tree.leaves(nnx.state(rm, nnx.Param)))
    d, v, f, layers = 64, 128, 96, 3
    per_layer = d * 64 + 2 * d * 32 + 64 * d + 3 * d * f + 2 * d
    assert n == v * d + layers * per_layer + d + d  # embed, blocks, final norm, score
    # The same sequence scores the same however it is padded.
    ids, mask, _ = left_padded_batch([5, 9], seed=6)
    r_ids, r_mask, _ = right_padded_batch([5, 9], seed=6)
    np.testing.assert_allclose(ours(rm, ids, mask), ours(rm, r_ids, r_mask), atol=1e-5)


def test_refuses_multi_label_checkpoint_and_export_without_pad(pair, tmp_path):
    _, _, folder = pair
    cfg = json.loads((folder / "config.json").read_text())
    cfg["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="num_labels"):
        load_scalar_rm(tmp_path)
    rm = load_scalar_rm(folder)
    no_pad = init_scalar_rm(rm.config.replace(pad_token_id=None))
    with pytest.raises(ConfigError, match="pad_token_id"):
        save_scalar_rm(no_pad, tmp_path / "x")
