"""Reward options for RL and the grouping core every adapter shares.

A trainer hands over a flat batch of (prompt, completion) pairs. Pairs with the same prompt (a GRPO group) become
ONE GRM item (`/v1/score` with all their responses), the paper's multi-response input: the GRM sees the
candidates side by side, which is how it was trained to judge. `RewardOptions` then maps each response's votes to
the number the trainer gets.

Defaults reproduce `spct serve`'s `/get_reward` exactly: the reward is the mean 1..10 score of the samples that were
summed (summed votes / samples summed), and 0.0 when no sample parsed (the server's --fallback-reward default).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from spct_jax.serve.client import Context, RewardClient, ScoreResult

# Affine maps of the mean 1..10 score: name -> (offset, slope), reward = (score - offset) * slope.
SCALES = {
    "raw": (0.0, 1.0),          # the mean score itself, 1..10 (today's /get_reward)
    "centered": (5.5, 1 / 4.5),  # 1 -> -1, 5.5 -> 0, 10 -> +1: symmetric around the scale's middle
    "unit": (1.0, 1 / 9),       # 1 -> 0, 10 -> 1
}
CLIENT_KEYS = ("max_concurrency", "timeout", "connect_timeout", "retries", "backoff", "max_backoff", "transport")


@dataclasses.dataclass(frozen=True)
class RewardOptions:
    """How votes become a trainer's reward.

    scale: "raw" (mean 1..10 score, default), "centered" ([-1, 1]) or "unit" ([0, 1]); see SCALES.
    min_parsed: withhold the reward of a group's responses when fewer than this many of the k samples parsed
        (default 1: only when none did, as the server does). Counts parsed samples, before any meta RM selection.
    fallback: the reward given when withheld, in the trainer's units (not scaled). Default 0.0 = the server's.
        None hands the trainer "no reward" (TRL turns None into NaN and leaves it out of the group statistics);
        adapters whose framework cannot take None (verl, tunix) refuse it or use NaN, as their docs say.
    k / k_meta: samples per item / kept by the meta RM (None: the server's --k / --k-meta).
    max_group: split a larger group into chunks of at most this many responses (long responses x a big group
        can overrun the GRM's context); None judges each group whole.
    """

    scale: str = "raw"
    min_parsed: int = 1
    fallback: float | None = 0.0
    k: int | None = None
    k_meta: int | None = None
    max_group: int | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {sorted(SCALES)}, got {self.scale!r}")
        if self.min_parsed < 1:
            raise ValueError("min_parsed must be >= 1 (0 would hand out a reward no sample supports)")
        if self.max_group is not None and self.max_group < 1:
            raise ValueError("max_group must be >= 1 or None")

    def value(self, mean_score: float) -> float:
        offset, slope = SCALES[self.scale]
        return (mean_score - offset) * slope


@dataclasses.dataclass(frozen=True)
class Reward:
    """One response's reward. uncertainty: variance of the summed samples' scores for this response, in the
    reward's units squared (None when withheld). withheld: `value` is the fallback."""

    value: float | None
    uncertainty: float | None
    num_valid: int
    num_failed: int
    withheld: bool


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], RewardOptions]:
    """Adapter **options -> (RewardClient kwargs, RewardOptions); an unknown name raises TypeError, so a typo
    cannot silently fall back to a default."""
    client = {k: options.pop(k) for k in CLIENT_KEYS if k in options}
    return client, RewardOptions(**options)


_clients: dict[tuple, RewardClient] = {}
_clients_lock = threading.Lock()


def setting(name: str, kwargs: dict[str, Any], extra: dict[str, Any] | None = None) -> str | None:
    """`url` / `token` for adapters configured by the framework rather than by code: kwargs[name], else
    extra["spct_<name>"], else $SPCT_REWARD_<NAME> (the token also from the file named by $SPCT_REWARD_TOKEN_FILE)."""
    if kwargs.get(name):
        return kwargs[name]
    if extra and extra.get(f"spct_{name}"):
        return extra[f"spct_{name}"]
    value = os.environ.get(f"SPCT_REWARD_{name.upper()}")
    if not value and name == "token" and os.environ.get("SPCT_REWARD_TOKEN_FILE"):
        value = Path(os.environ["SPCT_REWARD_TOKEN_FILE"]).read_text(encoding="utf-8").strip()
    return value or None


def client_from_settings(kwargs: dict[str, Any], extra: dict[str, Any] | None = None, *,
                         who: str = "spct reward") -> tuple[RewardClient, RewardOptions]:
    """A process-wide cached client (+ options) for function-style adapters: verl and OpenRLHF call once per
    rollout or batch, from several threads, and a client per call would open a connection pool per call."""
    kwargs = dict(kwargs)
    url, token = setting("url", kwargs, extra), setting("token", kwargs, extra)
    kwargs.pop("url", None), kwargs.pop("token", None)
    if not url:
        raise ValueError(f"{who}: no server URL; set $SPCT_REWARD_URL (or pass url=...)")
    client_kw, options = split_options(kwargs)
    key = (url, token, tuple(sorted((k, repr(v)) for k, v in client_kw.items())))
    with _clients_lock:
        if key not in _clients:
            _clients[key] = RewardClient(url, token=token, **client_kw)
        return _clients[key], options


def rewards_of(result: ScoreResult, options: RewardOptions) -> list[Reward]:
    """Map one /v1/score answer (asked with return_samples=True) to one Reward per response."""
    means = result.pointwise
    if means is None and result.num_summed is None:
        raise ValueError("the answer does not say how many samples were summed (ask with return_samples=True)")
    if means is None or result.num_valid < options.min_parsed:
        return [Reward(options.fallback, None, result.num_valid, result.num_failed, True) for _ in result.rewards]
    slope = SCALES[options.scale][1]
    unc = result.uncertainty or [math.nan] * len(means)
    return [Reward(options.value(m), u * slope * slope, result.num_valid, result.num_failed, False)
            for m, u in zip(means, unc)]


def group_positions(keys: Sequence[Hashable], max_group: int | None = None) -> list[list[int]]:
    """Positions sharing a key, groups in order of first appearance (then split into max_group chunks)."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    out = []
    for positions in groups.values():
        step = max_group or len(positions)
        out += [positions[s:s + step] for s in range(0, len(positions), step)]
    return out


def context_key(context: Context) -> Hashable:
    return context if isinstance(context, str) else json.dumps(context, sort_keys=True)


def _requests(contexts: Sequence[Context], responses: Sequence[str],
              options: RewardOptions) -> tuple[list[list[int]], list[tuple[Context, list[str]]]]:
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} prompts for {len(responses)} completions")
    groups = group_positions([context_key(c) for c in contexts], options.max_group)
    return groups, [(contexts[g[0]], [responses[i] for i in g]) for g in groups]


def _scatter(groups: list[list[int]], results: list[ScoreResult], options: RewardOptions, n: int) -> list[Reward]:
    out: list[Reward | None] = [None] * n
    for positions, result in zip(groups, results):
        for i, reward in zip(positions, rewards_of(result, options)):
            out[i] = reward
    return out  # type: ignore[return-value]  # every position belongs to exactly one group


def score_grouped(client: RewardClient, contexts: Sequence[Context], responses: Sequence[str],
                  options: RewardOptions) -> list[Reward]:
    """Rewards for pairs (contexts[i], responses[i]): one GRM item per distinct context, requests in parallel."""
    groups, requests = _requests(contexts, responses, options)
    results = client.score_groups(requests, k=options.k, k_meta=options.k_meta, return_samples=True)
    return _scatter(groups, results, options, len(responses))


async def ascore_grouped(client: RewardClient, contexts: Sequence[Context], responses: Sequence[str],
                         options: RewardOptions) -> list[Reward]:
    groups, requests = _requests(contexts, responses, options)
    results = await client.ascore_groups(requests, k=options.k, k_meta=options.k_meta, return_samples=True)
    return _scatter(groups, results, options, len(responses))


class GroupedRewardFunction:
    """fn(prompts, completions, **kwargs) -> list of rewards, one per completion, in order (the TRL / tunix
    convention). Completions with equal prompts are judged together as one GRM item. `last` keeps the latest
    batch's `Reward`s (uncertainty, parse counts) for callers that want more than the numbers."""

    def __init__(self, client: RewardClient, options: RewardOptions, name: str = "spct_grm"):
        self.client, self.options = client, options
        self.__name__ = name  # TRL and tunix name their logged metrics after it (rewards/<name>/mean)
        self.last: list[Reward] = []

    def contexts_and_responses(self, prompts: Sequence[Any],
                               completions: Sequence[Any]) -> tuple[list[Context], list[str]]:
        return [as_context(p) for p in prompts], [as_response(c) for c in completions]

    def rewards(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[Reward]:
        contexts, responses = self.contexts_and_responses(prompts, completions)
        self.last = score_grouped(self.client, contexts, responses, self.options)
        return self.last

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return [r.value for r in self.rewards(prompts, completions)]

    def close(self) -> None:
        self.client.close()


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def as_context(prompt: Any) -> Context:
    """A trainer's prompt as the GRM's context: a string stays a string (the user turn); a conversation
    ([{"role", "content"}, ...]) keeps its system/user/assistant turns."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        turns = []
        for i, m in enumerate(prompt):
            if m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"prompt turn {i}: role {m.get('role')!r}; the GRM reads system, user and "
                                 "assistant turns only")
            turns.append({"role": m["role"], "content": _text(m.get("content", ""))})
        return turns
    raise TypeError(f"a prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}")


def as_response(completion: Any) -> str:
    """A completion as the response text: a string, or the contents of its messages (conversational form)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, dict) for m in completion):
        return "\n".join(_text(m.get("content", "")) for m in completion)
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")
