"""Stage 1 of SPCT: rejective fine-tuning (RFT), SPEC §2.

For every RM item, sample N_RFT trajectories (responses shuffled per sample) and judge each by Eq. 10:
  * reject incorrect trajectories;
  * drop the item when all N_RFT are correct ("too easy");
  * when none is correct, run hinted sampling once: the prompt gets "The best response is: Response j", and the
    trajectory is kept if correct. It is trained WITHOUT the hint in the prompt (SPEC §2.1 recommends this so the
    model does not learn to rely on a hint it will never see).
The kept trajectories become SFT examples (prompt = the un-hinted GRM prompt in the presented order, target = the
trajectory), optionally mixed with general instruction data (the paper's 1070K in-house set). The non-hinted
trajectories, right or wrong, are also the meta RM's training data (SPEC §5).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from spct_jax.data.batching import SFTRecord
from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.prompts import build_prompt
from spct_jax.grm.scorer import GenerativeRewardModel
from spct_jax.grm.voting import permute
from spct_jax.train.rollout import RolloutConfig, Trajectory, sample_trajectories

# App. C.1: "The sampling time N_RFT is set to 3."
PAPER_N_RFT = 3


@dataclasses.dataclass(frozen=True)
class RFTConfig:
    n_rft: int = PAPER_N_RFT
    hinted: bool = True  # §3.2: hinted sampling for items no plain sample gets right (ablation ② in Table 4)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    seed: int = 0

    def __post_init__(self):
        if self.n_rft < 1:
            raise ValueError("n_rft must be >= 1")


@dataclasses.dataclass(frozen=True)
class RFTExample:
    uid: str
    perm: tuple[int, ...]
    template: str
    prompt: str  # the GRM prompt WITHOUT any hint, responses in presented order
    target: str  # the trajectory (principles, critique, scores)
    hinted: bool

    def sft_record(self) -> SFTRecord:
        return SFTRecord(uid=f"{self.uid}#{'-'.join(map(str, self.perm))}#{'h' if self.hinted else 'p'}",
                         messages=[{"role": "user", "content": self.prompt}], target=self.target)


@dataclasses.dataclass
class RFTStats:
    items: int = 0
    sampled: int = 0  # non-hinted trajectories
    accepted: int = 0  # non-hinted trajectories kept
    rejected: int = 0  # non-hinted trajectories dropped as incorrect
    too_easy_items: int = 0  # items whose N_RFT samples were all correct (dropped)
    hinted_items: int = 0  # items with no correct sample, sent to hinted sampling
    hinted_accepted: int = 0
    unsolved_items: int = 0  # still no correct trajectory after the hint
    parse_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RFTResult:
    examples: list[RFTExample]
    stats: RFTStats
    plain: list[list[Trajectory]]  # every non-hinted trajectory, for meta-RM data


def example_from(item: PreferenceItem, traj: Trajectory) -> RFTExample:
    """The SFT example for a kept trajectory: the plain (un-hinted) prompt in the trajectory's presented order."""
    prompt = build_prompt(item.context, permute(item.responses, traj.perm), template=traj.template)
    return RFTExample(uid=item.uid, perm=traj.perm, template=traj.template, prompt=prompt, target=traj.text,
                      hinted=traj.hinted)


def select(item: PreferenceItem, plain: Sequence[Trajectory], stats: RFTStats) -> tuple[list[RFTExample], bool]:
    """The rejection rule for one item's non-hinted trajectories: (kept examples, needs a hint)."""
    stats.items += 1
    stats.sampled += len(plain)
    stats.parse_failures += sum(t.error is not None for t in plain)
    correct = [t for t in plain if t.correct]
    stats.rejected += len(plain) - len(correct)
    if len(correct) == len(plain):
        stats.too_easy_items += 1  # "the query and responses with all N_RFT trajectories correct (too easy)"
        return [], False
    stats.accepted += len(correct)
    return [example_from(item, t) for t in correct], not correct


def rejective_sampling(grm: GenerativeRewardModel, items: Sequence[PreferenceItem], cfg: RFTConfig,
                       *, progress: bool | None = None) -> RFTResult:
    plain = sample_trajectories(grm, items, cfg.n_rft, seed=cfg.seed, cfg=cfg.rollout, progress=progress)
    stats = RFTStats()
    examples: list[RFTExample] = []
    need_hint: list[PreferenceItem] = []
    for item, trajs in zip(items, plain):
        kept, hint = select(item, trajs, stats)
        examples.extend(kept)
        if hint:
            need_hint.append(item)
    if cfg.hinted and need_hint:
        stats.hinted_items = len(need_hint)
        # "For hinted sampling, each query and the corresponding responses are sampled once, and trajectories
        # are only rejected when incorrect."
        hinted = sample_trajectories(grm, need_hint, 1, seed=cfg.seed, cfg=cfg.rollout, hinted=True, salt=1,
                                     progress=progress)
        for item, (traj,) in zip(need_hint, hinted):
            if traj.correct:
                stats.hinted_accepted += 1
                examples.append(example_from(item, traj))
            else:
                stats.unsolved_items += 1
    else:
        stats.unsolved_items = len(need_hint)
    return RFTResult(examples=examples, stats=stats, plain=plain)


def write_rft_dataset(result: RFTResult, path: str | os.PathLike) -> None:
    """JSONL of kept examples plus `<path>.stats.json`; both appear atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for ex in result.examples:
            f.write(json.dumps(dataclasses.asdict(ex)) + "\n")
    os.replace(tmp, path)
    stats = path.with_name(path.name + ".stats.json")
    stats.write_text(json.dumps(result.stats.as_dict(), indent=1))


def read_rft_dataset(path: str | os.PathLike) -> list[RFTExample]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                d["perm"] = tuple(d["perm"])
                out.append(RFTExample(**d))
    return out


def general_instruction_records(path: str | os.PathLike) -> list[SFTRecord]:
    """General instruction data mixed into RFT (the paper's 1070K in-house set; Table 4 shows it matters).

    Lines are {"messages": [...], "target": str} or sharegpt {"conversations": [{"from","value"}...]} whose last
    turn is the assistant's answer.
    """
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            if "messages" in d:
                records.append(SFTRecord(uid=f"gi:{lineno}", messages=d["messages"], target=d["target"]))
                continue
            roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
            turns = [{"role": roles[t["from"]], "content": t["value"]} for t in d["conversations"]]
            if not turns or turns[-1]["role"] != "assistant":
                raise ValueError(f"{path}:{lineno}: the last turn must be the assistant's answer")
            records.append(SFTRecord(uid=f"gi:{lineno}", messages=turns[:-1], target=turns[-1]["content"]))
    return records
