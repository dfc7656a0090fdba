"""Per-format row converters and the field-based format detection that picks one."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from spct_jax.data.readers import benchmarks, training
from spct_jax.data.readers.fields import Drop, Row
from spct_jax.data.schema import PreferenceItem


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    convert: Callable[[Row, str], PreferenceItem | Drop]
    uid_field: str | None  # the row field the uid comes from; None: the row's location
    detect: Callable[[set[str], Mapping[str, Any]], bool]


def _texts(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)


# Order matters: the more specific field sets come first (e.g. sharegpt and UltraFeedback rows also have
# chosen/rejected, and RewardBench rows are hh-rlhf rows plus a prompt).
FORMATS: dict[str, Format] = {f.name: f for f in [
    # `spct score` reads a {"context", "responses"} line without "source" as a plain item (grm/score_cli.py), and
    # anything else through these readers; the same split here keeps one item format across commands.
    Format("items", benchmarks.items, "uid", lambda k, r: {"context", "responses"} <= k and "source" not in k),
    Format("schema", benchmarks.schema, "uid", lambda k, r: {"context", "responses", "uid"} <= k),
    Format("judgebench", benchmarks.judgebench, "pair_id", lambda k, r: {"pair_id", "response_A", "response_B"} <= k),
    # RewardBench 2 and RM-Bench rows hold lists of strings under chosen/rejected, UltraFeedback-binarized rows
    # lists of turns (objects): the element type tells them apart.
    Format("rewardbench2", benchmarks.rewardbench2, "id",
           lambda k, r: {"prompt", "chosen", "rejected", "num_correct"} <= k and _texts(r["chosen"])),
    Format("rmbench", benchmarks.rmbench, "id",
           lambda k, r: {"prompt", "chosen", "rejected"} <= k and _texts(r["chosen"]) and _texts(r["rejected"])),
    Format("rmb_pairwise", benchmarks.rmb_pairwise, "pair_uid", lambda k, r: "pair_uid" in k),
    Format("rmb_bon", benchmarks.rmb_bon, "bon_uid", lambda k, r: "bon_uid" in k or {"bon_best", "loser_list"} <= k),
    Format("ppe_correctness", benchmarks.ppe_correctness, "question_id",
           lambda k, r: "sampled_conflict_pairs" in k or {"scores", "response_1"} <= k),
    Format("ppe_human", benchmarks.ppe_human, "question_id", lambda k, r: {"winner", "response_1", "response_2"} <= k),
    Format("helpsteer2", training.helpsteer2, None, lambda k, r: "preference_strength" in k),
    Format("realmistake", benchmarks.realmistake, "metadata.id", lambda k, r: {"error_label", "llm_response"} <= k),
    Format("ultrafeedback", training.ultrafeedback, None, lambda k, r: {"instruction", "completions"} <= k),
    Format("sharegpt_dpo", training.sharegpt_dpo, None, lambda k, r: {"conversations", "chosen", "rejected"} <= k),
    Format("ultrafeedback_binarized", training.ultrafeedback_binarized, "prompt_id",
           lambda k, r: {"chosen", "rejected"} <= k and isinstance(r["chosen"], list)),
    Format("llmbar", benchmarks.llmbar, None, lambda k, r: {"input", "output_1", "output_2", "label"} <= k),
    Format("rewardbench", benchmarks.rewardbench, "id", lambda k, r: {"prompt", "chosen", "rejected"} <= k),
    Format("hh_rlhf", training.hh_rlhf, None, lambda k, r: {"chosen", "rejected"} <= k),
]}


def detect(row: Mapping[str, Any]) -> Format | None:
    keys = set(row)
    for f in FORMATS.values():
        if f.detect(keys, row):
            return f
    return None


__all__ = ["FORMATS", "Drop", "Format", "Row", "detect"]
