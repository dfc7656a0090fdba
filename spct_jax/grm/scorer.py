"""`GenerativeRewardModel`: the GRM as a scorer, with inference-time scaling (Voting@k, MetaRM@k).

For each item, k samples each see their own seeded shuffle of the responses ([P] §4: "responses are shuffled
before sampling"); all k x items prompts go through the trajectory core (trajectories.py: one batched sampler
call, identical shuffles share a prefill, rows split over the mesh when there is one); each sample's scores are
parsed, mapped back to the original order and voted (Eq. 14). With a meta RM, every sample is scored by it and only
the top k_meta are summed.

Meta RMs are one interface (`MetaRM`): `scores(items, trajectories)` -> one float per trajectory, item by item.
Two implement it: the paper's scalar head with its own tokenizer (`ScalarMetaRM`, reading the App. G (c) template)
and the likelihood meta RM (`likelihood_meta_rm.LikelihoodMetaRM`, reading the GRM's own prompt). The scorer calls
the interface and never asks which one it holds; `grm/judge.py` loads either from a folder.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.prompts import build_metarm_prompt
from spct_jax.grm.trajectories import (RolloutConfig, Trajectory, as_item, item_seed, prompt_ids,
                                       sample_trajectories)
from spct_jax.grm.voting import permute, vote
from spct_jax.models.padding import pad_rows
from spct_jax.models.transformer import Decoder
from spct_jax.sampling import length_bucketed_batches
from spct_jax.tokenizer import Tokenizer

# Paper, App. D.1: "the temperature is set to 0.5" for all inference-time scaling runs (greedy = 0).
PAPER_TEMPERATURE = 0.5
__all__ = ["GenerativeRewardModel", "Judgement", "MetaRM", "SampleRecord", "ScalarMetaRM", "PAPER_TEMPERATURE",
           "as_item", "as_meta_rm", "item_seed", "score_sequences"]


@runtime_checkable
class MetaRM(Protocol):
    """A meta RM: the meta reward of every sampled trajectory ([P] §5; higher = more likely correct by Eq. 10).

    scores(items, trajectories) -> float32 [N]: trajectories[i] are item i's samples (anything with `.perm`, the
    order the sample saw the responses in, and `.text`, what it wrote); N = their total count, item by item. A
    trajectory's score must depend on that trajectory alone, never on what else is in the call, so chunked and
    whole runs agree."""

    def scores(self, items: Sequence[PreferenceItem], trajectories: Sequence[Sequence[Any]]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True, eq=False)
class ScalarMetaRM:
    """The paper's meta RM: a `ScalarRM` (a scalar head on an LM) reading the App. G (c) template, tokenized with
    ITS OWN tokenizer (a meta RM trained from another base than the GRM's has another vocabulary)."""

    rm: nnx.Module  # spct_jax.models.scalar_head.ScalarRM: rm(ids [B, T], mask [B, T]) -> [B]
    tokenizer: Tokenizer
    batch_size: int = 16

    def scores(self, items: Sequence[PreferenceItem], trajectories: Sequence[Sequence[Any]]) -> np.ndarray:
        seqs = []
        for item, ts in zip(items, trajectories, strict=True):
            for t in ts:
                user, assistant = build_metarm_prompt(item.context, permute(item.responses, t.perm), t.text)
                seqs.append(self.tokenizer.encode_chat([{"role": "user", "content": user},
                                                        {"role": "assistant", "content": assistant}],
                                                       add_generation_prompt=False))
        return score_sequences(self.rm, seqs, pad_id=self.tokenizer.pad_id, batch_size=self.batch_size)


def as_meta_rm(meta_rm: Any, tokenizer: Tokenizer) -> MetaRM | None:
    """`meta_rm` as a `MetaRM`: one already is (it has `scores`); a bare `ScalarRM` module (the older calling
    convention, `GenerativeRewardModel(..., meta_rm=rm, meta_tokenizer=tok)`) is wrapped with `tokenizer`."""
    if meta_rm is None or isinstance(meta_rm, MetaRM):
        return meta_rm
    if isinstance(meta_rm, nnx.Module):
        return ScalarMetaRM(meta_rm, tokenizer)
    raise TypeError(f"meta_rm: a {type(meta_rm).__name__} is neither a MetaRM (no scores(items, trajectories)) "
                    "nor a ScalarRM module")


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

    @classmethod
    def of(cls, t: Trajectory, meta_score: float | None = None, kept: bool = False) -> "SampleRecord":
        return cls(permutation=t.perm, text=t.text, principles=t.principles, critique=t.critique, scores=t.scores,
                   error=t.error, meta_score=meta_score, kept=kept)


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


class GenerativeRewardModel:
    """score(items, k=..., k_meta=...) -> list[Judgement]."""

    def __init__(self, model: Decoder, tokenizer: Tokenizer, meta_rm=None, *, meta_tokenizer: Tokenizer | None = None,
                 template: str = "default", max_prompt_tokens: int | None = None, mesh=None):
        """meta_rm: a `MetaRM`, or a bare `ScalarRM` read with `meta_tokenizer` (default: the GRM's tokenizer)."""
        self.model = model
        self.tokenizer = tokenizer
        self.meta_rm: MetaRM | None = as_meta_rm(meta_rm, meta_tokenizer or tokenizer)
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.mesh = mesh

    def prompt_ids(self, item: PreferenceItem, perm: Sequence[int], *, template: str | None = None,
                   hint_best: int | None = None) -> list[int]:
        """Token ids of the chat-templated GRM prompt for `item` with responses shown in order `perm`."""
        return prompt_ids(self.tokenizer, item, perm, template=template or self.template, hint_best=hint_best,
                          max_prompt_tokens=self.max_prompt_tokens)

    def trajectories(self, items: Sequence[PreferenceItem], num: int, *, seed: int, cfg: RolloutConfig,
                     salt: int = 0, hinted: bool = False, shuffle: bool = True, max_batch_rows: int = 256,
                     progress: bool | None = None) -> list[list[Trajectory]]:
        """`num` trajectories per item from this GRM, on its mesh (trajectories.sample_trajectories)."""
        return sample_trajectories(self.model, self.tokenizer, items, num, seed=seed, cfg=cfg, salt=salt,
                                   hinted=hinted, shuffle=shuffle, mesh=self.mesh,
                                   max_prompt_tokens=self.max_prompt_tokens, max_batch_rows=max_batch_rows,
                                   progress=progress)

    def score(self, items: Sequence[PreferenceItem | Mapping[str, Any]], *, k: int = 1, k_meta: int | None = None,
              temperature: float = PAPER_TEMPERATURE, max_new_tokens: int = 512, top_p: float | None = None,
              seed: int = 0, template: str | None = None, shuffle: bool = True, max_batch_rows: int = 256,
              progress: bool | None = None) -> list[Judgement]:
        items = [as_item(x, i) for i, x in enumerate(items)]
        if k_meta is not None and self.meta_rm is None:
            raise ValueError("k_meta needs a meta RM")
        cfg = RolloutConfig(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            template=template or self.template, single_template=None)
        trajs = self.trajectories(items, k, seed=seed, cfg=cfg, shuffle=shuffle, max_batch_rows=max_batch_rows,
                                  progress=progress)
        meta = None
        if self.meta_rm is not None:
            meta = np.asarray(self.meta_rm.scores(items, trajs))
            if meta.shape != (sum(map(len, trajs)),):
                raise ValueError(f"meta RM {type(self.meta_rm).__name__}: {meta.shape} scores for "
                                 f"{sum(map(len, trajs))} trajectories")
        judgements, r = [], 0
        for item, ts in zip(items, trajs):
            item_meta = None if meta is None else [float(m) for m in meta[r:r + len(ts)]]
            v = vote([t.scores for t in ts], meta_scores=item_meta, k_meta=k_meta if item_meta is not None else None,
                     seed=(seed, item_seed(item)), num_responses=item.num_responses)
            kept = set(v.kept)
            records = tuple(SampleRecord.of(t, None if item_meta is None else item_meta[j], j in kept)
                            for j, t in enumerate(ts))
            judgements.append(Judgement(uid=item.uid, rewards=tuple(float(x) for x in v.totals), best=v.best,
                                        num_valid=v.num_valid, num_failed=v.num_failed, uncertainty=v.uncertainty,
                                        samples=records))
            r += len(ts)
        return judgements


def score_sequences(rm, seqs: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 16) -> np.ndarray:
    """Scalar scores for token sequences; lengths are bucketed (powers of two) to bound recompiles."""
    graphdef, state = nnx.split(rm)
    out = np.zeros(len(seqs), np.float32)
    for idx, rows, length in length_bucketed_batches([len(x) for x in seqs], batch_size):
        ids, mask = pad_rows([seqs[i] for i in idx], pad_id=pad_id, length=length, num_rows=rows, side="left")
        mask[len(idx):, -1] = True  # filler rows need one visible token
        scores = np.asarray(_rm_apply(graphdef, state, jnp.asarray(ids), jnp.asarray(mask)))
        out[idx] = scores[: len(idx)]
    return out


@functools.partial(jax.jit, static_argnums=0)
def _rm_apply(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)  # [B]
