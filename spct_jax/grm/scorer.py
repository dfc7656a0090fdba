"""`GenerativeRewardModel`: the GRM as a scorer, with inference-time scaling (Voting@k, MetaRM@k).

For each item, k samples each see their own seeded shuffle of the responses (SPEC §4: "responses are shuffled
before sampling"); all k x items prompts go through ONE batched sampler call (identical shuffles share a prefill);
each sample's scores are parsed, mapped back to the original order and voted (Eq. 14). With a meta RM, every sample
is scored by it and only the top k_meta are summed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.likelihood_meta_rm import LikelihoodMetaRM, MetaInput
from spct_jax.grm.parse import split_sections
from spct_jax.grm.prompts import build_metarm_prompt, build_prompt
from spct_jax.grm.rules import parse_for_template
from spct_jax.grm.voting import permute, sample_permutations, unpermute, vote
from spct_jax.models.transformer import Decoder
from spct_jax.sampling import length_bucketed_batches, sample
from spct_jax.tokenizer import Tokenizer

# Paper, App. D.1: "the temperature is set to 0.5" for all inference-time scaling runs (greedy = 0).
PAPER_TEMPERATURE = 0.5


@dataclasses.dataclass(frozen=True)
class SampleRecord:
    """One sampled trajectory. permutation[p] = original index of the response shown at position p."""

    permutation: tuple[int, ...]
    text: str
    principles: str
    critique: str
    scores: tuple[int, ...] | None  # ORIGINAL response order; None when unparsable
    error: str | None
    meta_score: float | None = None
    kept: bool = False  # summed into the vote


@dataclasses.dataclass(frozen=True)
class Judgement:
    uid: str
    rewards: tuple[float, ...]  # summed votes per response (original order)
    best: int | None
    num_valid: int
    num_failed: int
    uncertainty: tuple[float, ...] | None
    samples: tuple[SampleRecord, ...]

    def to_json(self, *, with_samples: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


def as_item(x: PreferenceItem | Mapping[str, Any], index: int = 0) -> PreferenceItem:
    """Accept a PreferenceItem or a plain {"context", "responses"[, "uid"]} mapping."""
    if isinstance(x, PreferenceItem):
        return x
    if "context" not in x or "responses" not in x:
        raise ValueError(f"item {index}: needs fields 'context' and 'responses'")
    ctx = x["context"]
    context = [{"role": "user", "content": ctx}] if isinstance(ctx, str) else [dict(t) for t in ctx]
    return PreferenceItem(context=context, responses=list(x["responses"]), rewards=x.get("rewards"),
                          best=x.get("best"), source=str(x.get("source", "input")), uid=str(x.get("uid", index)))


def item_seed(item: PreferenceItem) -> int:
    """A stable per-item integer from its uid and content, so seeds do not depend on batch position."""
    h = hashlib.blake2b(digest_size=4)
    h.update(item.uid.encode())
    for t in item.context:
        h.update(t["content"].encode())
    for r in item.responses:
        h.update(r.encode())
    return int.from_bytes(h.digest(), "little") & 0x7FFFFFFF


class GenerativeRewardModel:
    """score(items, k=..., k_meta=...) -> list[Judgement]."""

    def __init__(self, model: Decoder, tokenizer: Tokenizer, meta_rm=None, *, meta_tokenizer: Tokenizer | None = None,
                 template: str = "default", max_prompt_tokens: int | None = None, mesh=None):
        self.model = model
        self.tokenizer = tokenizer
        self.meta_rm = meta_rm
        self.meta_tokenizer = meta_tokenizer or tokenizer
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.mesh = mesh

    def prompt_ids(self, item: PreferenceItem, perm: Sequence[int], *, template: str | None = None,
                   hint_best: int | None = None) -> list[int]:
        """Token ids of the chat-templated GRM prompt for `item` with responses shown in order `perm`."""
        text = build_prompt(item.context, permute(item.responses, perm), template=template or self.template,
                            hint_best=hint_best)
        ids = self.tokenizer.encode_chat([{"role": "user", "content": text}])
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise ValueError(f"item {item.uid!r}: prompt has {len(ids)} tokens > max_prompt_tokens="
                             f"{self.max_prompt_tokens}")
        return ids

    def score(self, items: Sequence[PreferenceItem | Mapping[str, Any]], *, k: int = 1, k_meta: int | None = None,
              temperature: float = PAPER_TEMPERATURE, max_new_tokens: int = 512, top_p: float | None = None,
              seed: int = 0, template: str | None = None, shuffle: bool = True,
              progress: bool | None = None) -> list[Judgement]:
        template = template or self.template
        items = [as_item(x, i) for i, x in enumerate(items)]
        if k_meta is not None and self.meta_rm is None:
            raise ValueError("k_meta needs a meta RM")
        plans = []  # (item, [perm_j], [prompt_ids_j], [row seed_j])
        for item in items:
            s = item_seed(item)
            n = item.num_responses
            perms = sample_permutations(n, k, (seed, s)) if shuffle else [tuple(range(n))] * k
            plans.append((item, s, perms, [self.prompt_ids(item, p, template=template) for p in perms]))
        prompts = [ids for _, _, _, ps in plans for ids in ps]
        prompt_seeds = [(s * 1_000_003 + j) & 0x7FFFFFFF for _, s, perms, _ in plans for j in range(len(perms))]
        out = sample(self.model, prompts, num_samples=1, max_new_tokens=max_new_tokens, temperature=temperature,
                     top_p=top_p, stop_tokens=self.tokenizer.stop_ids, seed=seed, prompt_seeds=prompt_seeds,
                     mesh=self.mesh, progress=progress)
        texts = [self.tokenizer.decode([t for t in row[0] if t not in self.tokenizer.stop_ids]) for row in out.tokens]
        meta = self._meta_scores(plans, texts) if self.meta_rm is not None else None

        judgements, r = [], 0
        for item, s, perms, _ in plans:
            records, sample_scores = [], []
            for j, perm in enumerate(perms):
                text = texts[r + j]
                parsed = parse_for_template(text, item.num_responses, template)
                scores = unpermute(parsed.scores, perm) if parsed.ok else None
                principles, critique = split_sections(text)
                records.append(SampleRecord(permutation=tuple(perm), text=text, principles=principles,
                                            critique=critique, scores=scores, error=parsed.error,
                                            meta_score=None if meta is None else float(meta[r + j])))
                sample_scores.append(scores)
            item_meta = None if meta is None else [float(m) for m in meta[r:r + len(perms)]]
            v = vote(sample_scores, meta_scores=item_meta, k_meta=k_meta if item_meta is not None else None,
                     seed=(seed, s), num_responses=item.num_responses)
            kept = set(v.kept)
            records = [dataclasses.replace(rec, kept=j in kept) for j, rec in enumerate(records)]
            judgements.append(Judgement(uid=item.uid, rewards=tuple(float(x) for x in v.totals), best=v.best,
                                        num_valid=v.num_valid, num_failed=v.num_failed, uncertainty=v.uncertainty,
                                        samples=tuple(records)))
            r += len(perms)
        return judgements

    def _meta_scores(self, plans, texts: list[str], batch_size: int = 16) -> np.ndarray:
        """Meta reward of every sampled trajectory: a ScalarRM reads the App. G (c) template (in batches of
        left-padded rows); a LikelihoodMetaRM reads the GRM's own prompt followed by the trajectory."""
        if isinstance(self.meta_rm, LikelihoodMetaRM):
            inputs, r = [], 0
            for item, _, perms, _ in plans:
                inputs += [MetaInput(item=item, perm=tuple(perm), text=texts[r + j]) for j, perm in enumerate(perms)]
                r += len(perms)
            return self.meta_rm.scores(inputs)
        tok = self.meta_tokenizer
        seqs, r = [], 0
        for item, _, perms, _ in plans:
            for j, perm in enumerate(perms):
                user, assistant = build_metarm_prompt(item.context, permute(item.responses, perm), texts[r + j])
                seqs.append(tok.encode_chat([{"role": "user", "content": user},
                                             {"role": "assistant", "content": assistant}],
                                            add_generation_prompt=False))
            r += len(perms)
        return score_sequences(self.meta_rm, seqs, pad_id=tok.pad_id, batch_size=batch_size)


def score_sequences(rm, seqs: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 16) -> np.ndarray:
    """Scalar scores for token sequences; lengths are bucketed (powers of two) to bound recompiles."""
    graphdef, state = nnx.split(rm)
    out = np.zeros(len(seqs), np.float32)
    for idx, rows, length in length_bucketed_batches([len(x) for x in seqs], batch_size):
        ids = np.full((rows, length), pad_id, np.int32)
        mask = np.zeros((rows, length), bool)
        for r, i in enumerate(idx):
            ids[r, length - len(seqs[i]):] = seqs[i]
            mask[r, length - len(seqs[i]):] = True
        mask[len(idx):, -1] = True  # filler rows need one visible token
        scores = np.asarray(_rm_apply(graphdef, state, jnp.asarray(ids), jnp.asarray(mask)))
        out[idx] = scores[: len(idx)]
    return out


@functools.partial(jax.jit, static_argnums=0)
def _rm_apply(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)  # [B]
