"""Meta RM: a toy separation it must learn (held-out AUC), and MetaRM@k wiring through the scorer."""
import numpy as np

from spct_jax.grm.scorer import GenerativeRewardModel
from spct_jax.models import ModelConfig, init_model
from spct_jax.models.registry import load_model
from spct_jax.models.scalar_head import ScalarRM, init_scalar_rm
from spct_jax.tokenizer import ByteTokenizer
from spct_jax.train.config import OptimizerConfig
from spct_jax.train.metarm import MetaRMExample, evaluate_metarm
from spct_jax.train.stages import StageRun, train_metarm

TINY = ModelConfig(family="llama", vocab_size=263, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                   num_kv_heads=1, head_dim=16, pad_token_id=0)


def toy_examples(n: int, seed: int) -> list[MetaRMExample]:
    """Trajectories whose failures differ systematically: the incorrect ones hedge and end in a tie (ties are
    wrong by Eq. 10), the correct ones commit to a strict order with the ground-truth best (response 1) on top."""
    from spct_jax.grm.parse import parse_scores
    from spct_jax.grm.rules import is_correct

    tok = ByteTokenizer()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if rng.random() < 0.5:
            a = int(rng.integers(6, 11))
            text = f"Analysis: Response 1 is right.\nScores: \\boxed{{{a}, {int(rng.integers(1, a))}}}"
        else:
            a = int(rng.integers(1, 11))
            text = f"Analysis: unsure, both look alike.\nScores: \\boxed{{{a}, {a}}}"
        label = is_correct(parse_scores(text, 2).scores, [1.0, 0.0])  # the label comes from the rule, not the recipe
        ids = tok.encode_chat([{"role": "user", "content": "Please score the responses."},
                               {"role": "assistant", "content": text}], add_generation_prompt=False)
        out.append(MetaRMExample(uid=str(i), ids=tuple(ids), label=float(label), origin="toy"))
    return out


def test_meta_rm_separates_a_toy_set(tmp_path):
    train, held = toy_examples(256, seed=0), toy_examples(64, seed=1)
    rm = init_scalar_rm(TINY, seed=0)
    before = evaluate_metarm(rm, held, pad_id=0)
    run = StageRun(workdir=str(tmp_path), steps=60, batch_size=32, seed=0, progress_bar=False,
                   optimizer=OptimizerConfig(learning_rate=3e-3, total_steps=60, warmup_steps=5))
    rm, _ = train_metarm(rm, train, run, pad_id=0)
    after = evaluate_metarm(rm, held, pad_id=0)
    print("meta RM toy held-out before/after:", before, after)
    # Random features may already rank the two kinds apart; calibration (the sign of the logit) needs training.
    assert after["auc"] >= 0.8
    assert after["accuracy"] >= 0.9 and after["accuracy"] > before["accuracy"] + 0.2


def test_metarm_at_k_sums_only_the_kept_samples(tmp_path):
    """A tiny byte-level GRM taught (by a few SFT steps) to end with one of several boxed score pairs, so its T=1
    samples parse and differ; a random meta RM then picks k_meta of them."""
    from spct_jax.data.batching import SFTRecord
    from spct_jax.grm.prompts import build_prompt
    from spct_jax.train.stages import sft

    tok = ByteTokenizer()
    item = {"context": "q?", "responses": ["a", "b"], "uid": "x"}
    prompt = build_prompt(item["context"], item["responses"], template="toy")
    rng = np.random.default_rng(0)
    pairs = [(7, 3), (2, 9), (5, 6), (8, 8)]
    records = [SFTRecord(uid=str(i), messages=[{"role": "user", "content": prompt}],
                         target="Scores: \\boxed{%d, %d}" % pairs[int(rng.integers(4))]) for i in range(64)]
    run = StageRun(workdir=str(tmp_path / "sft"), steps=120, batch_size=16, seed=0, progress_bar=False,
                   optimizer=OptimizerConfig(learning_rate=1e-2, total_steps=120, warmup_steps=10))
    model, _ = sft(init_model(TINY, seed=0), tok, records, run, max_len=1024)
    rm = ScalarRM.from_decoder(init_model(TINY, seed=3), seed=1)
    grm = GenerativeRewardModel(model, tok, meta_rm=rm, template="toy")
    [j] = grm.score([item], k=8, k_meta=4, temperature=0.5, max_new_tokens=24, seed=0)
    metas = [s.meta_score for s in j.samples]
    assert all(m is not None and np.isfinite(m) for m in metas)
    valid = [i for i, s in enumerate(j.samples) if s.scores is not None]
    assert len(valid) >= 5, [s.text for s in j.samples]  # the plumbing is only tested if samples parse
    kept = [i for i, s in enumerate(j.samples) if s.kept]
    # kept = the valid samples among the 4 best by meta score (failures rank last), and only they are summed
    ranked = sorted(range(8), key=lambda i: (i not in valid, -metas[i], i))[:4]
    assert kept == sorted(i for i in ranked if i in valid) and len(kept) == 4
    totals = np.zeros(2)
    for i in kept:
        totals += j.samples[i].scores
    assert tuple(totals) == j.rewards
