"""Request and response bodies of the two scoring endpoints; every rejection names the offending field.

POST /v1/score (ours)
    {"context": str | [{"role", "content"}], "responses": [str, ...], "k"?: int, "k_meta"?: int,
     "return_samples"?: bool}
    -> {"rewards", "best", "num_valid", "num_failed", "uncertainty", "samples"?}
    `rewards` are the summed votes of Eq. 14 (Voting@k, or MetaRM@k with a meta RM), one per response in the
    order given. Unknown fields are refused, so a typo such as "k_mta" cannot silently fall back to a default.

POST /get_reward (OpenRLHF's remote-RM protocol)
    {"query": [str], "prompts": [str], "labels"?: [...]} -> {"rewards": [float]}
    * Pairing: query[i] is prompts[i] + the i-th response, so the response is query[i][len(prompts[i]):]. A query
      that does not start with its prompt is refused (400, field "query[i]"); `prompts` is required and must be as
      long as `query` (400, field "prompts"). We do not guess a split from chat-template markers: a wrong guess
      would score the wrong text without anyone noticing.
    * Grouping: queries with the same prompt string form ONE GRM item whose responses are those queries'
      responses, in order of appearance, so a group of G rollouts is judged together in one GRM call (the paper's
      multi-response setting). Groups are formed within one request only.
    * The prompt text (chat markup included, as the policy saw it) becomes the user turn of the GRM's context.
    * Reward of a response: its pointwise GRM score, i.e. its summed votes divided by the number of samples that
      were summed (all parsed samples for Voting@k, the kept ones for MetaRM@k): the mean 1..10 score of the
      paper's template. When no sample parsed, the reward is the server's --fallback-reward (default 0.0), never
      NaN.
    * `labels` and any other fields (OpenRLHF versions send extras) are accepted and ignored: the GRM judges without
      references.
    * Size: one request may hold at most --max-request-items groups (GRM items), and never more than --max-queue
      (which counts items); a larger one gets 413 naming "query": split it into several requests.

Both endpoints refuse a GRM prompt longer than the model's positions less --max-new-tokens (400), as `spct score`
does (grm/judge.py holds the shared rules).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from spct_jax.grm.judge import FieldError, check_context, check_strings
from spct_jax.grm.scorer import Judgement
from spct_jax.grm.voting import default_k_meta

SCORE_FIELDS = ("context", "responses", "k", "k_meta", "return_samples")
# Every item gets the same uid: the scorer seeds each item from its uid and content, and a uid that depended on
# the request or its batch position would make a reward depend on who else was in the batch.
SERVE_UID = "serve"


# A request body that does not fit the schema; `field` names where (e.g. "responses[2]"). The same class as the
# CLIs' item errors (grm/judge.py), so `spct score` and this server refuse the same items in the same words.
SchemaError = FieldError


@dataclasses.dataclass(frozen=True)
class Limits:
    """Server-side bounds on what one request may ask for."""

    default_k: int
    max_k: int
    has_meta_rm: bool
    default_k_meta: int | None  # None: the paper's k/2 (only used with a meta RM)
    max_request_items: int = 256  # GRM items (distinct prompts) per request; the queue's bound caps it too

    def k_meta_for(self, k: int) -> int | None:
        """The k_meta a request gets when it names none."""
        if not self.has_meta_rm:
            return None
        return default_k_meta(k) if self.default_k_meta is None else min(self.default_k_meta, k)


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
    item: dict[str, Any]
    k: int
    k_meta: int | None
    return_samples: bool


@dataclasses.dataclass(frozen=True)
class RewardRequest:
    """groups[g] = (prompt, responses); where[i] = (group, position) of query i."""

    groups: list[tuple[str, list[str]]]
    where: list[tuple[int, int]]

    @property
    def items(self) -> list[dict[str, Any]]:
        return [{"context": prompt, "responses": responses, "uid": SERVE_UID} for prompt, responses in self.groups]


def _int(body: dict[str, Any], name: str, lo: int, hi: int, default: int | None) -> int | None:
    if name not in body or body[name] is None:
        return default
    v = body[name]
    if isinstance(v, bool) or not isinstance(v, int):
        raise SchemaError(name, f"must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise SchemaError(name, f"must be in [{lo}, {hi}], got {v}")
    return v


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise SchemaError("body", f"must be a JSON object, got {type(body).__name__}")
    return body


def parse_score_request(body: Any, limits: Limits) -> ScoreRequest:
    body = _object(body)
    for name in body:
        if name not in SCORE_FIELDS:
            raise SchemaError(name, f"unknown field; expected one of {list(SCORE_FIELDS)}")
    if "context" not in body:
        raise SchemaError("context", "is required")
    context = check_context(body["context"])
    if "responses" not in body:
        raise SchemaError("responses", "is required")
    responses = check_strings(body["responses"], "responses")
    k = _int(body, "k", 1, limits.max_k, limits.default_k)
    if body.get("k_meta") is not None and not limits.has_meta_rm:
        raise SchemaError("k_meta", "this server has no meta RM (start it with --meta-rm)")
    k_meta = _int(body, "k_meta", 1, k, limits.k_meta_for(k))
    rs = body.get("return_samples", False)
    if not isinstance(rs, bool):
        raise SchemaError("return_samples", f"must be a boolean, got {type(rs).__name__}")
    return ScoreRequest(item={"context": context, "responses": list(responses), "uid": SERVE_UID}, k=k, k_meta=k_meta,
                        return_samples=rs)


def parse_reward_request(body: Any) -> RewardRequest:
    body = _object(body)
    if "query" not in body:
        raise SchemaError("query", "is required")
    queries = check_strings(body["query"], "query", allow_empty_list=True)
    if "prompts" not in body or body["prompts"] is None:
        raise SchemaError("prompts", "is required: each query is split as prompts[i] + response")
    prompts = check_strings(body["prompts"], "prompts", allow_empty_list=True)
    if len(prompts) != len(queries):
        raise SchemaError("prompts", f"has {len(prompts)} entries for {len(queries)} queries")
    index: dict[str, int] = {}
    groups: list[tuple[str, list[str]]] = []
    where: list[tuple[int, int]] = []
    for i, (q, p) in enumerate(zip(queries, prompts)):
        if not p:
            raise SchemaError(f"prompts[{i}]", "is empty")
        if not q.startswith(p):
            raise SchemaError(f"query[{i}]", f"does not start with prompts[{i}]")
        g = index.setdefault(p, len(groups))
        if g == len(groups):
            groups.append((p, []))
        where.append((g, len(groups[g][1])))
        groups[g][1].append(q[len(p):])
    return RewardRequest(groups=groups, where=where)


def num_summed(j: Judgement) -> int:
    """How many samples' votes make up `j.rewards` (the kept ones; all parsed ones without a meta RM)."""
    return sum(s.kept for s in j.samples)


def pointwise_rewards(req: RewardRequest, judgements: list[Judgement], fallback: float) -> list[float]:
    out = []
    for g, pos in req.where:
        j = judgements[g]
        n = num_summed(j)
        out.append(float(j.rewards[pos]) / n if n else fallback)
    return out


def score_response(j: Judgement, *, with_samples: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"rewards": list(j.rewards), "best": j.best, "num_valid": j.num_valid,
                         "num_failed": j.num_failed,
                         "uncertainty": None if j.uncertainty is None else list(j.uncertainty)}
    if with_samples:
        d["samples"] = [dataclasses.asdict(s) for s in j.samples]
    return d
