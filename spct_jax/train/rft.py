"""Stage 1 of SPCT: rejective fine-tuning (RFT), SPEC §2.

For every RM item, sample N_RFT trajectories (responses shuffled per sample) and judge each by Eq. 10:
  * reject incorrect trajectories;
  * drop the item when all N_RFT are correct ("too easy");
  * hinted sampling (`RFTConfig.hinted`): the prompt gets "The best response is: Response j", ONE trajectory per
    item is sampled, and it is kept if correct. It is trained WITHOUT the hint in the prompt (SPEC §2.1 recommends
    this so the model does not learn to rely on a hint it will never see). Which items get a hint:

        "all"       every item that is not too easy ([P] §3.2 "besides non-hinted sampling ... each query and
                    the corresponding responses are sampled once"; Table 4 ablates hinted and non-hinted sampling
                    as two full sources). The default: our reading of the paper.
        "unsolved"  only items none of whose N_RFT plain samples is correct (a narrower reading: the hint as a
                    fallback for what the GRM "could hardly generate correct rewards" for)
        "none"      no hinted sampling (Table 4, "w/o Hinted Sampling")

    Single-response items never get a hint: "The best response is: Response j" names nothing among one response
    (App. G (b) has no hint), so they are neither hinted-sampled nor labelled hinted.
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
from spct_jax.grm.trajectories import RolloutConfig, Trajectory

# App. C.1: "The sampling time N_RFT is set to 3."
PAPER_N_RFT = 3
HINTED_MODES = ("all", "unsolved", "none")  # which items get one hinted sample (module docstring)
HINT_SALT = 1  # the hinted pass draws independently of the plain one (grm/trajectories.py, "One seed scheme")


@dataclasses.dataclass(frozen=True)
class RFTConfig:
    n_rft: int = PAPER_N_RFT
    hinted: str = "all"  # §3.2 hinted sampling: "all" | "unsolved" | "none" (module docstring; "all" is ours)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    seed: int = 0
    sample_rows: int = 256  # ours: rows per sampler call; bounds the KV cache of the phase

    def __post_init__(self):
        if self.n_rft < 1:
            raise ValueError("n_rft must be >= 1")
        if self.sample_rows < 1:
            raise ValueError("sample_rows must be >= 1")
        if self.hinted not in HINTED_MODES:
            raise ValueError(f"hinted must be one of {HINTED_MODES}, got {self.hinted!r}")


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
    hinted_items: int = 0  # items sent to hinted sampling (one trajectory each)
    hinted_accepted: int = 0
    unsolved_items: int = 0  # items left with no kept trajectory (hint or not)
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


def select(item: PreferenceItem, plain: Sequence[Trajectory], stats: RFTStats) -> tuple[list[RFTExample], str]:
    """The rejection rule for one item's non-hinted trajectories: (kept examples, verdict), the verdict being
    "too_easy" (every sample correct: the item is dropped), "unsolved" (none correct) or "partial"."""
    stats.items += 1
    stats.sampled += len(plain)
    stats.parse_failures += sum(t.error is not None for t in plain)
    correct = [t for t in plain if t.correct]
    stats.rejected += len(plain) - len(correct)
    if len(correct) == len(plain):
        stats.too_easy_items += 1  # "the query and responses with all N_RFT trajectories correct (too easy)"
        return [], "too_easy"
    stats.accepted += len(correct)
    return [example_from(item, t) for t in correct], "partial" if correct else "unsolved"


def wants_hint(item: PreferenceItem, verdict: str, mode: str) -> bool:
    """Whether `item` gets one hinted sample under `mode` (module docstring), given select()'s verdict."""
    if mode == "none" or verdict == "too_easy" or item.num_responses < 2:
        return False
    return mode == "all" or verdict == "unsolved"


def rejective_sampling(grm: GenerativeRewardModel, items: Sequence[PreferenceItem], cfg: RFTConfig,
                       *, progress: bool | None = None) -> RFTResult:
    plain = grm.trajectories(items, cfg.n_rft, seed=cfg.seed, cfg=cfg.rollout, max_batch_rows=cfg.sample_rows,
                             progress=progress)
    stats = RFTStats()
    examples: list[RFTExample] = []
    need_hint: list[int] = []
    unsolved: set[int] = set()  # indices of items with no kept trajectory yet
    for i, (item, trajs) in enumerate(zip(items, plain)):
        kept, verdict = select(item, trajs, stats)
        examples.extend(kept)
        if verdict == "unsolved":
            unsolved.add(i)
        if wants_hint(item, verdict, cfg.hinted):
            need_hint.append(i)
    stats.hinted_items = len(need_hint)
    if need_hint:
        # "For hinted sampling, each query and the corresponding responses are sampled once, and trajectories
        # are only rejected when incorrect."
        hinted = grm.trajectories([items[i] for i in need_hint], 1, seed=cfg.seed, cfg=cfg.rollout, hinted=True,
                                  salt=HINT_SALT, max_batch_rows=cfg.sample_rows, progress=progress)
        for i, (traj,) in zip(need_hint, hinted):
            if traj.correct:
                stats.hinted_accepted += 1
                examples.append(example_from(items[i], traj))
                unsolved.discard(i)
    stats.unsolved_items = len(unsolved)
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
