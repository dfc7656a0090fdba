"""One schema for every kind of preference data SPCT reads: single, paired and multi-response items.

A `PreferenceItem` is what flows from file readers into prompts, rules and benchmarks. Ground truth is kept
in two forms because the paper needs both: `rewards` (the per-response labels r_i of Eq. 10) and `best`
(argmax_l r_l, which Eq. 10 requires to be unique for n >= 2).

Rows of the schema's own JSON may give `rewards` without `best`; `native_best` then derives `best` from the unique
maximum of the rewards and refuses a shared maximum (see its docstring for the `"best": null` case).
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypedDict


class Turn(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


VALID_ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A malformed input row. The message names `file:line` and the offending field."""


@dataclasses.dataclass(frozen=True)
class PreferenceItem:
    """One RM data point: a conversation (last user turn = the query) and n >= 1 candidate responses.

    rewards: ground-truth reward per response, or None (e.g. inference-only items). For single-response
        items it is [0.0] or [1.0] (App. C.1: "1 for correct responses and 0 for incorrect ones").
    best: index of the unique ground-truth best response, or None where there is no unique maximum
        (or n == 1, where Eq. 10 compares the score with the label instead).
    """

    context: list[Turn]
    responses: list[str]
    rewards: list[float] | None
    best: int | None
    source: str
    uid: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.responses:
            raise DataError(f"item {self.uid!r}: field 'responses' is empty")
        if not all(isinstance(r, str) for r in self.responses):
            raise DataError(f"item {self.uid!r}: field 'responses' must hold strings")
        if not self.context:
            raise DataError(f"item {self.uid!r}: field 'context' is empty")
        for t in self.context:
            if not isinstance(t, dict) or t.get("role") not in VALID_ROLES or not isinstance(t.get("content"), str):
                raise DataError(f"item {self.uid!r}: field 'context' has a bad turn {t!r}")
        n = len(self.responses)
        if self.rewards is not None:
            if len(self.rewards) != n:
                raise DataError(f"item {self.uid!r}: field 'rewards' has {len(self.rewards)} values for {n} responses")
        if self.best is not None:
            if not (isinstance(self.best, int) and 0 <= self.best < n):
                raise DataError(f"item {self.uid!r}: field 'best' = {self.best!r} out of range for {n} responses")
            if self.rewards is not None:
                top = max(self.rewards)
                if self.rewards[self.best] != top or self.rewards.count(top) != 1:
                    raise DataError(f"item {self.uid!r}: field 'best' is not the unique maximum of 'rewards'")

    @property
    def query(self) -> str:
        """The last user turn (the paper: 'the last round is the User's query')."""
        for t in reversed(self.context):
            if t["role"] == "user":
                return t["content"]
        return self.context[-1]["content"]

    @property
    def num_responses(self) -> int:
        return len(self.responses)

    def gt_rewards(self) -> list[float]:
        """Rewards usable by Eq. 10; synthesised from `best` when only the best index is known."""
        if self.rewards is not None:
            return list(self.rewards)
        if self.best is None:
            raise DataError(f"item {self.uid!r}: no ground truth ('rewards' and 'best' are both missing)")
        return [1.0 if i == self.best else 0.0 for i in range(len(self.responses))]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["context"] = [dict(t) for t in self.context]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PreferenceItem":
        """The inverse of to_json; a dict with `rewards` and no `best` key gets `native_best`'s index."""
        uid = str(d["uid"])
        rewards = None if d.get("rewards") is None else [float(x) for x in d["rewards"]]
        try:
            best = native_best(rewards, d.get("best"), has_best="best" in d)
        except DataError as e:
            raise DataError(f"item {uid!r}: {e}") from None
        return cls(context=[Turn(role=t["role"], content=t["content"]) for t in d["context"]],
                   responses=list(d["responses"]), rewards=rewards, best=best, source=d.get("source", "spct"),
                   uid=uid, meta=dict(d.get("meta") or {}))


def best_from_rewards(rewards: list[float]) -> int | None:
    """The unique argmax, or None when the maximum is shared (Eq. 10 needs 'only one maximum')."""
    if len(rewards) < 2:
        return None
    top = max(rewards)
    return rewards.index(top) if rewards.count(top) == 1 else None


def native_best(rewards: list[float] | None, best: int | None, *, has_best: bool) -> int | None:
    """The `best` of a row of the schema's own JSON, where Eq. 10 decides the best response from `rewards`.

    - a `best` index is kept as given (PreferenceItem checks that it is the unique maximum of the rewards);
    - no `best` field, rewards for n >= 2 responses: their unique argmax. A shared maximum raises DataError: Eq. 10
      cannot judge such a row, and a silent best=None would make training drop it as "no unique best";
    - `"best": null`: the unique argmax where there is one, else None. A null next to a shared maximum is a tie the
      row declares: PreferenceItem.to_json writes exactly that for items with no unique best by design (a PPE
      correctness question with several correct answers, an UltraFeedback row with tied ratings), so those dumps
      read back unchanged.
    Without rewards (or for one response, which Eq. 10 compares with its label instead) `best` stays as given.
    """
    if best is not None or rewards is None:
        return best
    derived = best_from_rewards(rewards)
    if derived is None and not has_best and len(rewards) >= 2:
        top = max(rewards)
        tied = [i for i, r in enumerate(rewards) if r == top]
        raise DataError(f"field 'rewards': the maximum {top:g} is not unique (responses {tied}), so Eq. 10 has no "
                        "best response; make one reward the maximum, or write \"best\": null to keep the row as a "
                        "tie (training then drops it)")
    return derived
