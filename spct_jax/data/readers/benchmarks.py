"""Row converters for the evaluation formats (docs/evaluation.md) and for the schema's own JSONL.

Each converter takes one `Row` and the location-derived uid (unused where the format has an id) and returns a
PreferenceItem or a `Drop`. Pairwise benchmarks keep the benchmark's own response order with `best` pointing at
the preferred one; `rewards` stay None where the source gives only an order, so no invented scale leaks into
Eq. 10 (PreferenceItem.gt_rewards() synthesises 1/0 from `best` when asked).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from spct_jax.data.readers.fields import Drop, Row, make_item, prompt_context, turns
from spct_jax.data.schema import DataError, PreferenceItem, Turn, best_from_rewards, native_best


def _meta(row: Row, **fields: str) -> dict[str, Any]:
    """Optional string fields copied into meta under new names; absent ones are left out, not set to None."""
    out: dict[str, Any] = {}
    for key, name in fields.items():
        v = row.opt_text(name)
        if v is not None:
            out[key] = v
    return out


def rewardbench(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    return make_item(row, "prompt", context=prompt_context(row, "prompt"),
                     responses=[row.text("chosen"), row.text("rejected")], rewards=None, best=0,
                     source="rewardbench", uid=row.ident("id"),
                     meta=_meta(row, subset="subset", chosen_model="chosen_model", rejected_model="rejected_model"))


def _rmb_meta(row: Row, models: list[str | None]) -> dict[str, Any]:
    meta: dict[str, Any] = {"models": models}
    path = row.opt_text("category_path")
    if path is not None:
        # "Pairwise_set/Helpfulness/Chat/Discussion": RMB scores each goal (Helpfulness/Harmlessness) separately.
        meta["subset"] = path
        parts = path.split("/")
        if len(parts) > 1:
            meta["goal"] = parts[1]
    return meta


def llmbar(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    label = row.raw("label")
    if label not in (1, 2) or isinstance(label, bool):
        row.fail("label", f"expected 1 or 2 (the better output), got {label!r}")
    return make_item(row, "input", context=[Turn(role="user", content=row.text("input"))],
                     responses=[row.text("output_1"), row.text("output_2")], rewards=None, best=label - 1,
                     source="llmbar", uid=fallback_uid)


def rmb_pairwise(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    chosen, reject = row.sub("chosen"), row.sub("reject")
    return make_item(row, "conversation_input", context=turns(row, "conversation_input"),
                     responses=[chosen.text("answer"), reject.text("answer")], rewards=None, best=0,
                     source="rmb_pairwise", uid=row.ident("pair_uid"),
                     meta=_rmb_meta(row, [chosen.opt_text("llm_name"), reject.opt_text("llm_name")]))


def rmb_bon(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    best = row.sub("bon_best")
    losers = [row.element("loser_list", i, v) for i, v in enumerate(row.seq("loser_list"))]
    return make_item(row, "conversation_input", context=turns(row, "conversation_input"),
                     responses=[best.text("answer")] + [r.text("answer") for r in losers], rewards=None, best=0,
                     source="rmb_bon", uid=row.ident("bon_uid"),
                     meta=_rmb_meta(row, [best.opt_text("llm_name")] + [r.opt_text("llm_name") for r in losers]))


def ppe_human(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    winner = row.text("winner")
    responses = [row.text("response_1"), row.text("response_2")]
    if winner.startswith("tie"):  # "tie", "tie (bothbad)": PPE's consumers skip them, so do we (and count them)
        return Drop("tie")
    if winner not in ("model_a", "model_b"):
        row.fail("winner", f"expected 'model_a', 'model_b' or a tie, got {winner!r}")
    return make_item(row, "prompt", context=prompt_context(row, "prompt"), responses=responses, rewards=None,
                     best=0 if winner == "model_a" else 1, source="ppe_human", uid=row.ident("question_id"),
                     meta=_meta(row, model_a="model_a", model_b="model_b", language="language"))


def ppe_correctness(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    responses: list[str] = []
    while f"response_{len(responses) + 1}" in row.value:
        responses.append(row.text(f"response_{len(responses) + 1}"))
    if not responses:
        row.fail("response_1", "missing (no responses)")
    n = len(responses)
    scores = row.seq("scores")
    if len(scores) != n:
        row.fail("scores", f"has {len(scores)} values for {n} responses (response_1..response_{n})")
    rewards = []
    for i, s in enumerate(scores):
        v = float(s) if isinstance(s, bool) else row.as_number(f"scores[{i}]", s)
        if v not in (0.0, 1.0):
            row.fail(f"scores[{i}]", f"expected a 0/1 correctness label, got {s!r}")
        rewards.append(v)
    pairs = []
    for k, p in enumerate(row.seq("sampled_conflict_pairs", nonempty=False)):
        if (not isinstance(p, list) or len(p) != 2
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in p)):
            row.fail(f"sampled_conflict_pairs[{k}]", f"expected [i, j] with 0 <= i, j < {n}, got {p!r}")
        if rewards[p[0]] == rewards[p[1]]:
            row.fail(f"sampled_conflict_pairs[{k}]", f"pair {p} is not a conflict (both scores are {rewards[p[0]]:g})")
        pairs.append([p[0], p[1]])
    meta: dict[str, Any] = {"conflict_pairs": pairs, **_meta(row, model_name="model_name")}
    return make_item(row, "prompt", context=prompt_context(row, "prompt"), responses=responses, rewards=rewards,
                     best=best_from_rewards(rewards), source="ppe_correctness", uid=row.ident("question_id"),
                     meta=meta)


def realmistake(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    md = row.sub("metadata")
    label = row.text("error_label")
    if label not in ("error", "no_error"):
        row.fail("error_label", f"expected 'error' or 'no_error', got {label!r}")
    meta: dict[str, Any] = {"error_label": label, **_meta(md, subset="task_name", model="llm_response_model")}
    cats = row.value.get("error_categories")
    if isinstance(cats, list):
        meta["error_categories"] = [c for c in cats if isinstance(c, str)]
    # App. C.1: single responses are labelled 1 when correct and 0 otherwise; "no_error" is the correct case.
    return make_item(row, "input", context=[Turn(role="user", content=row.text("input"))],
                     responses=[row.text("llm_response")], rewards=[1.0 if label == "no_error" else 0.0], best=None,
                     source="realmistake", uid=md.ident("id"), meta=meta)


def schema(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    responses = row.seq("responses")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            row.fail(f"responses[{i}]", f"expected a string, got {type(r).__name__}")
    rewards = None
    if row.has("rewards"):
        rewards = [row.as_number(f"rewards[{i}]", v) for i, v in enumerate(row.seq("rewards", nonempty=False))]
    best = row.value.get("best")
    if best is not None and (isinstance(best, bool) or not isinstance(best, int)):
        row.fail("best", f"expected an integer index or null, got {best!r}")
    try:  # rewards without a best: Eq. 10's unique maximum, or a loud failure at this file:line
        best = native_best(rewards, best, has_best="best" in row.value)
    except DataError as e:
        raise DataError(f"{row.loc}: {e}") from None
    meta = row.value.get("meta") or {}
    if not isinstance(meta, dict):
        row.fail("meta", f"expected an object, got {type(meta).__name__}")
    # The schema's own files round-trip whatever PreferenceItem accepts, so the context need not end on a user turn.
    return make_item(row, "context", require_query=False, context=turns(row, "context"), responses=list(responses),
                     rewards=rewards, best=best, source=row.text("source"), uid=row.ident("uid"), meta=dict(meta))


# ---------------------------------------------------------------- JudgeBench, RewardBench 2, RM-Bench, score items

JUDGEBENCH_LABELS = {"A>B": 0, "B>A": 1}


def judgebench(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    """ScalerLab/JudgeBench `data/*.jsonl`: {pair_id, original_id, source, question, response_model, response_A,
    response_B, label}. Responses stay in the row's (A, B) order; `best` is the label's winner. The official
    metric compares verdicts with `label` (utils/metrics.py L22, L66-69), so a row without one cannot be scored."""
    uid = row.ident("pair_id")
    label = row.value.get("label")
    if label not in JUDGEBENCH_LABELS:
        problem = "missing" if label is None else f"expected 'A>B' or 'B>A', got {label!r}"
        row.fail("label", f"{problem} (pair_id {uid!r})")
    meta: dict[str, Any] = _meta(row, subset="source", response_model="response_model")
    if "subset" not in meta:  # the category (knowledge/reasoning/math/coding) is read from `source`'s prefix
        row.fail("source", f"missing (pair_id {uid!r})")
    if row.value.get("original_id") is not None:
        meta["original_id"] = row.value["original_id"]
    return make_item(row, "question", context=[Turn(role="user", content=row.text("question"))],
                     responses=[row.text("response_A"), row.text("response_B")], rewards=None,
                     best=JUDGEBENCH_LABELS[label], source="judgebench", uid=uid, meta=meta)


def _text_list(row: Row, name: str) -> list[str]:
    values = row.seq(name)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            row.fail(f"{name}[{i}]", f"expected a string, got {type(v).__name__}")
    return list(values)


def rewardbench2(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    """allenai/reward-bench-2 (split `test`): {id, prompt, chosen[list], rejected[list], num_correct, num_incorrect,
    total_completions, models, subset, additional_metadata}. Responses are chosen + rejected, the order the official
    code scores them in (`rewardbench/utils.py` L629-630: `options = row["chosen"]; options.extend(row["rejected"])`),
    so the first `num_correct` responses are the correct ones (`process_single_model`: `i < sample["num_correct"]`).
    `rewards` are those 0/1 correctness labels; `best` is 0 where there is one correct response (every subset but
    Ties), None for a Ties prompt with several."""
    uid = row.ident("id")
    chosen, rejected = _text_list(row, "chosen"), _text_list(row, "rejected")
    n_correct = row.value.get("num_correct", len(chosen))
    if isinstance(n_correct, bool) or not isinstance(n_correct, int) or n_correct != len(chosen):
        row.fail("num_correct", f"{n_correct!r} does not count the {len(chosen)} chosen responses (id {uid!r})")
    total = row.value.get("total_completions")
    if total is not None and total != len(chosen) + len(rejected):
        row.fail("total_completions", f"{total!r} != {len(chosen)} chosen + {len(rejected)} rejected (id {uid!r})")
    subset = row.opt_text("subset")
    if subset is None:
        row.fail("subset", f"missing (id {uid!r}); the scoring rule depends on it")
    meta: dict[str, Any] = {"subset": subset, "num_correct": n_correct}
    models = row.value.get("models")
    if isinstance(models, list):
        meta["models"] = [m if isinstance(m, str) else None for m in models]
    return make_item(row, "prompt", context=prompt_context(row, "prompt"), responses=chosen + rejected,
                     rewards=[1.0] * len(chosen) + [0.0] * len(rejected), best=0 if n_correct == 1 else None,
                     source="rewardbench2", uid=uid, meta=meta)


# RM-Bench's domains (README: "chat, code, math, safety-refuse, safety-response"); the per-domain files
# `data/<domain>_filtered.json` carry no `domain` field, so it is read from the file name there.
RMBENCH_DOMAINS = ("chat", "code", "math", "safety-refuse", "safety-response")
RMBENCH_STYLES = ("concise", "detailed", "detailed-markdown")  # README: the order of `chosen` and `rejected`
_LOC = re.compile(r"^(.*):(\d+|\[\d+\]|\[\".*\"\])$")


def _rmbench_domain(row: Row) -> str:
    if row.has("domain"):
        domain = row.text("domain")
        if not domain.startswith(("chat", "code", "math", "safety")):
            row.fail("domain", f"expected one of {', '.join(RMBENCH_DOMAINS)}, got {domain!r}")
        return domain
    m = _LOC.match(row.loc)
    name = Path(m.group(1) if m else row.loc).name
    for domain in sorted(RMBENCH_DOMAINS, key=len, reverse=True):  # safety-refuse before a bare "safety"
        if name.startswith(domain):
            return domain
    row.fail("domain", f"missing, and the file name {name!r} names no RM-Bench domain "
                       f"({', '.join(d + '_filtered.json' for d in RMBENCH_DOMAINS)})")


def rmbench(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    """THU-KEG/RM-Bench: {id, prompt, chosen[3], rejected[3], domain} (per-domain files: no `domain`). Responses are
    the 3 chosen then the 3 rejected, each in style order concise, detailed, detailed-markdown, as the official
    `compute_accuracy` indexes `score_chosen[i]`, `score_rejected[j]` (scripts/utils.py L78-91). The uid is
    `<domain>:<id>`: the per-domain files reuse RewardBench ids, and chat and code share 23 of them."""
    domain = _rmbench_domain(row)
    uid = f"{domain}:{row.ident('id')}"
    chosen, rejected = _text_list(row, "chosen"), _text_list(row, "rejected")
    for name, got in (("chosen", chosen), ("rejected", rejected)):
        if len(got) != len(RMBENCH_STYLES):
            row.fail(name, f"has {len(got)} responses, RM-Bench has one per style {RMBENCH_STYLES} (uid {uid!r})")
    meta: dict[str, Any] = {"subset": domain, "domain": domain}
    if row.opt_text("subset") is not None:
        meta["origin_subset"] = row.text("subset")  # the RewardBench subset the prompt came from
    return make_item(row, "prompt", context=prompt_context(row, "prompt"), responses=chosen + rejected,
                     rewards=[1.0] * 3 + [0.0] * 3, best=None, source="rmbench", uid=uid, meta=meta)


def items(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    """The `{"context", "responses"[, "uid", "rewards", "best"]}` lines `spct score --input` reads (the same fields
    as grm/trajectories.py `as_item`): `context` is the query as a string or a list of turns. Without a `uid` the
    row's location is the uid. Ground truth is optional: an item without `rewards` and `best` can be scored but not
    evaluated (`spct data check` counts those)."""
    ctx = row.raw("context")
    context = [Turn(role="user", content=ctx)] if isinstance(ctx, str) else turns(row, "context")
    responses = _text_list(row, "responses")
    rewards = None
    if row.has("rewards"):
        rewards = [row.as_number(f"rewards[{i}]", v) for i, v in enumerate(row.seq("rewards", nonempty=False))]
    best = row.value.get("best")
    if best is not None and (isinstance(best, bool) or not isinstance(best, int)):
        row.fail("best", f"expected an integer index or null, got {best!r}")
    uid = row.ident("uid") if "uid" in row.value else fallback_uid
    # `spct score` takes the context as given (no check that it ends on a user turn); so does this reader.
    return make_item(row, "context", require_query=False, context=context, responses=responses, rewards=rewards,
                     best=best, source="input", uid=uid)
