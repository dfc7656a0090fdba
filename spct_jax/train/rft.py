"""Stage 1 of SPCT: rejective fine-tuning (RFT), [P] §3.2.

For every RM item, sample N_RFT trajectories (responses shuffled per sample) and judge each by Eq. 10:
  * reject incorrect trajectories;
  * drop the item when all N_RFT are correct ("too easy");
  * hinted sampling (`RFTConfig.hinted`): the prompt gets "The best response is: Response j", ONE trajectory per
    item is sampled, and it is kept if correct. It is trained WITHOUT the hint in the prompt (our reading of [P] §3.2,
    so the model does not learn to rely on a hint it will never see). Which items get a hint:

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
trajectories, right or wrong, are also the meta RM's training data ([P] §5).

`spct rft` samples in chunks of items that survive preemption (`chunked_rejective_sampling`, train/sample_store.py):
each chunk's shard keeps every trajectory and the rows it gives, and `assemble_rft_dataset` writes rft_data.jsonl in
`rejective_sampling`'s own row order, so the dataset does not depend on the chunking or on where a run was stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from spct_jax import paths
from spct_jax.data.batching import SFTRecord
from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.prompts import build_prompt
from spct_jax.grm.scorer import GenerativeRewardModel
from spct_jax.grm.voting import permute
from spct_jax.grm.trajectories import RolloutConfig, Trajectory
from spct_jax.train.sample_store import (ChunkRun, ChunkStore, atomic_text_writer, item_key, run_chunks,
                                         trajectory_record, write_bytes_atomic)

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
    examples: list[RFTExample]  # every item's kept plain trajectories in item order, then the kept hinted ones
    stats: RFTStats
    plain: list[list[Trajectory]]  # every non-hinted trajectory, for meta-RM data
    hinted: list[Trajectory | None] = dataclasses.field(default_factory=list)  # per item: its hinted sample
    kept_plain: list[list[RFTExample]] = dataclasses.field(default_factory=list)  # per item
    kept_hinted: list[RFTExample | None] = dataclasses.field(default_factory=list)  # per item


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
    """Rejective sampling of `items` (module docstring). Every trajectory is seeded by (item, sample, seed, salt),
    so sampling the items in chunks, the hinted pass of each chunk within it, gives the same trajectories, and
    `examples` of the chunks' results in order (`assemble_rft_dataset`) the same rows in the same order."""
    plain = grm.trajectories(items, cfg.n_rft, seed=cfg.seed, cfg=cfg.rollout, max_batch_rows=cfg.sample_rows,
                             progress=progress)
    stats = RFTStats()
    kept_plain: list[list[RFTExample]] = []
    need_hint: list[int] = []
    unsolved: set[int] = set()  # indices of items with no kept trajectory yet
    for i, (item, trajs) in enumerate(zip(items, plain)):
        kept, verdict = select(item, trajs, stats)
        kept_plain.append(kept)
        if verdict == "unsolved":
            unsolved.add(i)
        if wants_hint(item, verdict, cfg.hinted):
            need_hint.append(i)
    stats.hinted_items = len(need_hint)
    hinted_trajs: list[Trajectory | None] = [None] * len(items)
    kept_hinted: list[RFTExample | None] = [None] * len(items)
    if need_hint:
        # "For hinted sampling, each query and the corresponding responses are sampled once, and trajectories
        # are only rejected when incorrect."
        hinted = grm.trajectories([items[i] for i in need_hint], 1, seed=cfg.seed, cfg=cfg.rollout, hinted=True,
                                  salt=HINT_SALT, max_batch_rows=cfg.sample_rows, progress=progress)
        for i, (traj,) in zip(need_hint, hinted):
            hinted_trajs[i] = traj
            if traj.correct:
                stats.hinted_accepted += 1
                kept_hinted[i] = example_from(items[i], traj)
                unsolved.discard(i)
    stats.unsolved_items = len(unsolved)
    examples = [e for kept in kept_plain for e in kept] + [e for e in kept_hinted if e is not None]
    return RFTResult(examples=examples, stats=stats, plain=plain, hinted=hinted_trajs, kept_plain=kept_plain,
                     kept_hinted=kept_hinted)


def write_rft_dataset(result: RFTResult, path: paths.PathLike) -> None:
    """JSONL of kept examples plus `<path>.stats.json`; each appears whole, the stats last (local, gs://)."""
    path = paths.as_path(path)
    with atomic_text_writer(path) as f:
        for ex in result.examples:
            f.write(json.dumps(dataclasses.asdict(ex)) + "\n")
    write_bytes_atomic(stats_path(path), json.dumps(result.stats.as_dict(), indent=1).encode())


def stats_path(dataset: paths.PathLike) -> paths.Path:
    p = paths.as_path(dataset)
    return p.with_name(p.name + ".stats.json")


# -- chunked sampling (train/sample_store.py): what a chunk's shard holds, and the dataset assembled from them ------
def shard_lines(items: Sequence[PreferenceItem], result: RFTResult, first_index: int) -> list[dict[str, Any]]:
    """One line per item: every trajectory (plain, and hinted if any; right or wrong, the meta RM's data too, [P]
    §5) and the rft_data.jsonl rows it gives (kept plain, kept hinted)."""
    lines = []
    for i, item in enumerate(items):
        hinted, kept_hinted = result.hinted[i], result.kept_hinted[i]
        lines.append({"index": first_index + i, "uid": item.uid,
                      "plain": [trajectory_record(t) for t in result.plain[i]],
                      "hinted": [] if hinted is None else [trajectory_record(hinted)],
                      "kept": [dataclasses.asdict(e) for e in result.kept_plain[i]],
                      "kept_hinted": [] if kept_hinted is None else [dataclasses.asdict(kept_hinted)]})
    return lines


def chunked_rejective_sampling(grm: GenerativeRewardModel, items: Sequence[PreferenceItem], cfg: RFTConfig,
                               store: ChunkStore, *, progress: bool | None = None) -> ChunkRun:
    """`rejective_sampling` one chunk of `store` at a time, each written as it is done; stops every process at
    the same chunk boundary on a SIGTERM (sample_store.run_chunks). The store's keys must be `items`'."""
    if store.keys != [item_key(item) for item in items]:
        raise ValueError("the store was opened for other items")

    def sample(start: int, stop: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        result = rejective_sampling(grm, items[start:stop], cfg, progress=progress)
        return shard_lines(items[start:stop], result, start), {"stats": result.stats.as_dict()}

    return run_chunks(store, sample, what="rejective sampling")


def summed_stats(store: ChunkStore) -> RFTStats:
    total = RFTStats()
    for meta in store.metas():
        for k, v in meta["stats"].items():
            setattr(total, k, getattr(total, k) + v)
    return total


def assemble_rft_dataset(store: ChunkStore, path: paths.PathLike) -> RFTStats:
    """rft_data.jsonl from the shards of a finished store, in `rejective_sampling`'s order whatever the chunking
    (every item's kept plain rows, then every item's kept hinted row), and its stats summed over the chunks; the
    stats file is written last, so both exist only when the dataset is whole. Process 0 calls it."""
    path = paths.as_path(path)
    if store.pending():
        raise ValueError(f"{store.directory}: chunks {store.pending()} are not sampled yet")
    with atomic_text_writer(path) as f:
        for field in ("kept", "kept_hinted"):
            for line in store.lines():
                for ex in line[field]:
                    f.write(json.dumps(ex) + "\n")
    stats = summed_stats(store)
    write_bytes_atomic(stats_path(path), json.dumps(stats.as_dict(), indent=1).encode())
    return stats


def read_rft_dataset(path: paths.PathLike) -> list[RFTExample]:
    out = []
    with paths.as_path(path).open(encoding="utf-8") as f:
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
