"""Sampling GRM trajectories: the one core behind scoring, RFT, GRPO rollouts, meta-RM data and evaluation.

A trajectory is one (principles, critique, scores) generation for one item, with its own seeded shuffle of the
responses ([P] §4: responses are shuffled before sampling). Every caller goes through `sample_trajectories`:

    GenerativeRewardModel.score   k per item, Voting@k / MetaRM@k on top (scorer.py)
    RFT rejective sampling        N_RFT per item, then one hinted sample (train/rft.py)
    GRPO rollouts                 G per prompt, salt = the update number (train/grpo.py)
    meta-RM data, too-easy filter N per item (train/metarm.py, train/grpo.py)

One seed scheme. Sample j of an item under (seed, salt) has its response order drawn from (seed, salt, item) and
its tokens from the row key (seed; item, salt, j): the same (item, j, seed, salt) gives the same trajectory
whichever caller asks, in whatever batch, on whatever mesh or number of processes. The item is identified by
`item_seed` (a hash of its uid and content), never by its position in a list.

With a mesh, the sampler splits every row over the mesh's batch axes (sampling/layout.py). Callers that only sample
(RFT, rollouts) pass a copy of the weights in the compute dtype (`sampling_copy`), made once per phase.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.parse import split_sections
from spct_jax.grm.prompts import build_prompt
from spct_jax.grm.rules import REWARD_CORRECT, REWARD_WRONG, is_correct, parse_for_template
from spct_jax.grm.voting import permute, presented_position, sample_permutations, unpermute
from spct_jax.models.transformer import Decoder
from spct_jax.sampling import sample
from spct_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How trajectories are sampled. The defaults are the training stages' ([P] gives no rollout temperature);
    scoring uses T = 0.5 ([P] App. D.1) and one template for every item."""

    temperature: float = 1.0  # ours: the paper gives no rollout temperature; 1.0 is GRPO practice
    top_p: float | None = None
    max_new_tokens: int = 512  # ours: the paper's outputs are ~220-380 Gemma tokens (App. E.4)
    template: str = "default"  # App. G (a) for n >= 2
    single_template: str | None = "single"  # App. G (b): 0/1 scores for one response; None: `template` for all

    def template_for(self, num_responses: int) -> str:
        return self.single_template if num_responses == 1 and self.single_template else self.template


@dataclasses.dataclass(frozen=True)
class Trajectory:
    uid: str
    perm: tuple[int, ...]  # perm[p] = original index of the response shown at position p
    template: str
    hinted: bool
    prompt_ids: tuple[int, ...]  # the prompt that produced it (with the hint, if hinted)
    completion_ids: tuple[int, ...]  # generated ids, including the stop token when one was emitted
    logprobs: tuple[float, ...]  # under the sampling distribution (sampling.Samples)
    text: str  # decoded completion without stop tokens
    principles: str
    critique: str
    scores: tuple[int, ...] | None  # ORIGINAL response order; None when unparsable
    error: str | None
    correct: bool | None  # Eq. 10 against the item's ground truth; None for an item without one

    @property
    def reward(self) -> float:
        """Eq. 11: +1 for a correct trajectory, -1 otherwise (parse failures included; no format reward)."""
        return REWARD_CORRECT if self.correct else REWARD_WRONG


def as_item(x: PreferenceItem | Mapping[str, Any], index: int = 0) -> PreferenceItem:
    """Accept a PreferenceItem or a plain {"context", "responses"[, "uid"]} mapping."""
    if isinstance(x, PreferenceItem):
        return x
    if "context" not in x or "responses" not in x:
        raise ValueError(f"item {index}: needs fields 'context' and 'responses'")
    ctx, responses = x["context"], x["responses"]
    if not isinstance(responses, (list, tuple)):  # a str would be judged as one response per character
        raise ValueError(f"item {index}: field 'responses' must be a list of strings, got {type(responses).__name__}")
    context = [{"role": "user", "content": ctx}] if isinstance(ctx, str) else [dict(t) for t in ctx]
    return PreferenceItem(context=context, responses=list(responses), rewards=x.get("rewards"),
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


def row_seed(item_key: int, salt: int, j: int) -> int:
    """The sampler's per-row seed of sample j of an item (sampling.sample's `prompt_seeds`)."""
    return (item_key * 1_000_003 + salt * 7_919 + j) & 0x7FFFFFFF


def prompt_ids(tokenizer: Tokenizer, item: PreferenceItem, perm: Sequence[int], *, template: str,
               hint_best: int | None = None, max_prompt_tokens: int | None = None) -> list[int]:
    """Token ids of the chat-templated GRM prompt for `item` with responses shown in order `perm`."""
    text = build_prompt(item.context, permute(item.responses, perm), template=template, hint_best=hint_best)
    ids = tokenizer.encode_chat([{"role": "user", "content": text}])
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        raise ValueError(f"item {item.uid!r}: prompt has {len(ids)} tokens > max_prompt_tokens={max_prompt_tokens}")
    return ids


def sampling_copy(model: Decoder, dtype: Any = None) -> Decoder:
    """`model` with its parameters cast to `dtype` (default: its compute dtype), each keeping its sharding: the
    weights a sampling phase reads. A model already in that dtype is returned as is (sampling never donates);
    otherwise the copy lives until the caller drops it, so make one per phase, not per call."""
    dtype = jnp.dtype(model.dtype if dtype is None else dtype)
    graphdef, state = nnx.split(model)
    if all(jnp.dtype(x.dtype) == dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)):
        return model
    cast = jax.jit(lambda s: jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                                          else x, s))
    return nnx.merge(graphdef, cast(state))


def sample_trajectories(model: Decoder, tokenizer: Tokenizer, items: Sequence[PreferenceItem], num: int, *,
                        seed: int, cfg: RolloutConfig, salt: int = 0, hinted: bool = False, shuffle: bool = True,
                        mesh: jax.sharding.Mesh | None = None, max_prompt_tokens: int | None = None,
                        max_batch_rows: int = 256, progress: bool | None = None) -> list[list[Trajectory]]:
    """`num` trajectories per item from ONE batched sampler call; result[i][j] is item i's j-th trajectory.

    hinted: append "The best response is: Response j" (the presented position of the ground-truth best), RFT's
        hinted sampling ([P] §3.2); needs >= 2 responses and a unique best.
    salt: separates independent draws with the same seed (GRPO's update number, RFT's hinted pass, the filter).
    shuffle: False shows every sample the responses in their original order.
    max_batch_rows: rows per sampler call (bounds the KV cache: the phase's memory is set by it, not by `items`).
    """
    plans = []
    for item in items:
        key = item_seed(item)
        template = cfg.template_for(item.num_responses)
        n = item.num_responses
        perms = sample_permutations(n, num, (seed, salt, key)) if shuffle else [tuple(range(n))] * num
        if hinted and (n < 2 or item.best is None):
            # A hint names the best of >= 2 responses; a single response has none (App. G (b) has no hint).
            raise ValueError(f"item {item.uid!r}: hinted sampling needs >= 2 responses and a unique ground-truth best")
        prompts = [prompt_ids(tokenizer, item, perm, template=template, max_prompt_tokens=max_prompt_tokens,
                              hint_best=presented_position(perm, item.best) if hinted else None) for perm in perms]
        plans.append((item, key, template, perms, prompts))
    flat_prompts = [p for *_, ps in plans for p in ps]
    seeds = [row_seed(key, salt, j) for _, key, _, perms, _ in plans for j in range(len(perms))]
    out = sample(model, flat_prompts, num_samples=1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                 top_p=cfg.top_p, stop_tokens=tokenizer.stop_ids, seed=seed, prompt_seeds=seeds, mesh=mesh,
                 max_batch_rows=max_batch_rows, progress=progress)
    stop = set(tokenizer.stop_ids)
    result, r = [], 0
    for item, _, template, perms, prompts in plans:
        judgeable = item.rewards is not None if item.num_responses == 1 else item.best is not None  # Eq. 10
        truth = item.gt_rewards() if judgeable else None
        row = []
        for j, perm in enumerate(perms):
            ids = out.tokens[r + j][0]
            text = tokenizer.decode([t for t in ids if t not in stop])
            parsed = parse_for_template(text, item.num_responses, template)
            scores = unpermute(parsed.scores, perm) if parsed.ok else None
            principles, critique = split_sections(text)
            correct = None if truth is None else scores is not None and is_correct(scores, truth)
            row.append(Trajectory(uid=item.uid, perm=tuple(perm), template=template, hinted=hinted,
                                  prompt_ids=tuple(prompts[j]), completion_ids=tuple(ids),
                                  logprobs=tuple(out.logprobs[r + j][0]), text=text, principles=principles,
                                  critique=critique, scores=scores, error=parsed.error, correct=correct))
        result.append(row)
        r += len(perms)
    return result
