"""Tiny random transformers models (the oracle) for parity tests.

Fresh HF models initialise norm weights to zero (Gemma) or one (Llama), which hides norm bugs, so every parameter
is re-drawn from a seeded normal before use.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 128


def hf_config(family: str, **overrides):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2)
    common.update(overrides)
    if family == "gemma2":
        return transformers.Gemma2Config(query_pre_attn_scalar=24, sliding_window=6, attn_logit_softcapping=50.0,
                                         final_logit_softcapping=30.0, **common)
    if family == "llama":
        return transformers.LlamaConfig(rope_theta=50_000.0, tie_word_embeddings=False, **common)
    if family == "qwen2":
        return transformers.Qwen2Config(rope_theta=1_000_000.0, tie_word_embeddings=True, **common)
    raise ValueError(family)


def randomize(model, seed: int = 0, scale: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def tiny_hf_lm(family: str, seed: int = 0, **overrides):
    cls = {"gemma2": transformers.Gemma2ForCausalLM, "llama": transformers.LlamaForCausalLM,
           "qwen2": transformers.Qwen2ForCausalLM}[family]
    cfg = hf_config(family, **overrides)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    return randomize(model, seed)


def left_padded_batch(lengths, vocab=VOCAB, seed=0, pad_id=0):
    """ids [B, T] with real tokens right-aligned, mask [B, T], and RoPE positions as HF generate computes them."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.full((len(lengths), t), pad_id, np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, t - n:] = rng.integers(3, vocab, n)
        mask[i, t - n:] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return ids, mask, positions


def hf_logits(model, ids, mask, positions):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions))
    return out.logits.float().numpy()
