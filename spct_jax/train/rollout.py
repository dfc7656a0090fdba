"""Sampling GRM trajectories for training: the shared front half of RFT, GRPO and meta-RM data.

Every trajectory is one (principles, critique, scores) generation for one item, with its own seeded shuffle of the
responses, judged by the paper's rule (Eq. 10) against the ground truth. RFT keeps the correct ones, GRPO turns the
rule into a +-1 reward (Eq. 11), and the meta RM learns to predict it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.rules import is_correct, parse_for_template
from spct_jax.grm.scorer import GenerativeRewardModel, item_seed
from spct_jax.grm.voting import presented_position, sample_permutations, unpermute
from spct_jax.sampling import sample

# Eq. 11: +1 for a correct trajectory, -1 otherwise (parse failures included; no format reward).
REWARD_CORRECT, REWARD_WRONG = 1.0, -1.0


@dataclasses.dataclass(frozen=True)
class Trajectory:
    uid: str
    perm: tuple[int, ...]  # perm[p] = original index of the response shown at position p
    template: str
    hinted: bool
    prompt_ids: tuple[int, ...]  # the prompt that produced it (with the hint, if hinted)
    completion_ids: tuple[int, ...]  # generated ids, including the stop token when one was emitted
    logprobs: tuple[float, ...]
    text: str  # decoded completion without stop tokens
    scores: tuple[int, ...] | None  # ORIGINAL response order
    error: str | None
    correct: bool

    @property
    def reward(self) -> float:
        return REWARD_CORRECT if self.correct else REWARD_WRONG


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    temperature: float = 1.0  # ours: the paper gives no rollout temperature; 1.0 is GRPO practice (SPEC §9)
    top_p: float | None = None
    max_new_tokens: int = 512  # ours: the paper's outputs are ~220-380 Gemma tokens (App. E.4)
    template: str = "default"  # App. G (a) for n >= 2
    single_template: str = "single"  # App. G (b): 0/1 scores for single-response items

    def template_for(self, num_responses: int) -> str:
        return self.single_template if num_responses == 1 else self.template


def gt_rewards(item: PreferenceItem) -> list[float]:
    return item.gt_rewards()


def sample_trajectories(grm: GenerativeRewardModel, items: Sequence[PreferenceItem], num: int, *, seed: int,
                        cfg: RolloutConfig, hinted: bool = False, salt: int = 0,
                        progress: bool | None = None) -> list[list[Trajectory]]:
    """`num` trajectories per item from ONE batched sampler call; result[i][j] is item i's j-th trajectory.

    hinted: append "The best response is: Response j" (the presented position of the ground-truth best), the
        RFT stage's hinted sampling (SPEC §1.3 (e)).
    salt: separates independent draws with the same seed (e.g. GRPO step number, hinted vs not).
    """
    plans = []
    for item in items:
        s = item_seed(item)
        template = cfg.template_for(item.num_responses)
        perms = sample_permutations(item.num_responses, num, (seed, salt, s))
        hint = None
        prompts = []
        for perm in perms:
            if hinted:
                # A hint names the best of >= 2 responses; a single response has none (App. G (b) has no hint).
                if item.num_responses < 2 or item.best is None:
                    raise ValueError(f"item {item.uid!r}: hinted sampling needs >= 2 responses and a unique "
                                     f"ground-truth best")
                hint = presented_position(perm, item.best)
            prompts.append(grm.prompt_ids(item, perm, template=template, hint_best=hint))
        plans.append((item, s, template, perms, prompts))
    flat_prompts = [p for *_, ps in plans for p in ps]
    seeds = [(s * 1_000_003 + salt * 7_919 + j) & 0x7FFFFFFF for _, s, _, perms, _ in plans for j in range(len(perms))]
    tok = grm.tokenizer
    out = sample(grm.model, flat_prompts, num_samples=1, max_new_tokens=cfg.max_new_tokens,
                 temperature=cfg.temperature, top_p=cfg.top_p, stop_tokens=tok.stop_ids, seed=seed,
                 prompt_seeds=seeds, mesh=grm.mesh, progress=progress)
    result, r = [], 0
    stop = set(tok.stop_ids)
    for item, _, template, perms, prompts in plans:
        gt = gt_rewards(item)
        row = []
        for j, perm in enumerate(perms):
            ids = out.tokens[r + j][0]
            text = tok.decode([t for t in ids if t not in stop])
            parsed = parse_for_template(text, item.num_responses, template)
            scores = unpermute(parsed.scores, perm) if parsed.ok else None
            row.append(Trajectory(uid=item.uid, perm=tuple(perm), template=template, hinted=hinted,
                                  prompt_ids=tuple(prompts[j]), completion_ids=tuple(ids),
                                  logprobs=tuple(out.logprobs[r + j][0]), text=text, scores=scores,
                                  error=parsed.error, correct=scores is not None and is_correct(scores, gt)))
        result.append(row)
        r += len(perms)
    return result
