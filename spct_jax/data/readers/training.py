"""Row converters for the training formats: HelpSteer2-preference, UltraFeedback, hh-rlhf and sharegpt DPO.

These sources have no per-row id (except UltraFeedback-binarized's `prompt_id`), so their uid is the row's
location, `<file name>:<line>` or `<file name>:[index]`: stable for a given file, unique within it.
"""
from __future__ import annotations

import re
from typing import Any

from spct_jax.data.readers.fields import ROLE_ALIASES, Drop, Row, make_item, turns
from spct_jax.data.schema import PreferenceItem, Turn, best_from_rewards

# HelpSteer2 flattens multi-turn prompts as "{user}\n<extra_id_1>Assistant\n{assistant}\n<extra_id_1>User\n{user}".
_HELPSTEER_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n")


def helpsteer2(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    parts = _HELPSTEER_TURN.split(row.text("prompt"))
    context = [Turn(role="user", content=parts[0])]
    context += [Turn(role=ROLE_ALIASES[r.lower()], content=c) for r, c in zip(parts[1::2], parts[2::2])]
    responses = [row.text("response_1"), row.text("response_2")]
    strength = row.number("preference_strength")
    if strength == 0:  # "about the same": no ground-truth best, so it cannot supervise Eq. 10
        return Drop("tie")
    meta: dict[str, Any] = {"preference_strength": strength}
    if row.opt_text("split") is not None:
        meta["subset"] = row.text("split")
    # Negative strength: response_1 is better (-3 "much better" .. -1 "slightly better"); positive: response_2.
    return make_item(row, "prompt", context=context, responses=responses, rewards=None, best=0 if strength < 0 else 1,
                     source="helpsteer2", uid=fallback_uid, meta=meta)


def _final_reply(row: Row, name: str) -> tuple[list[Turn], str]:
    msgs = turns(row, name)
    if msgs[-1]["role"] != "assistant":
        row.fail(name, "the last message must be the assistant's reply")
    return msgs[:-1], msgs[-1]["content"]


def ultrafeedback_binarized(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    ctx, chosen = _final_reply(row, "chosen")
    ctx_r, rejected = _final_reply(row, "rejected")
    if ctx != ctx_r:
        row.fail("rejected", "the conversation before the reply differs from the one in 'chosen'")
    if not ctx:
        ctx = [Turn(role="user", content=row.text("prompt"))]
    rewards = None
    if row.has("score_chosen") or row.has("score_rejected"):
        sc, sr = row.number("score_chosen"), row.number("score_rejected")
        if sc == sr:  # the binarisation picked 'chosen' arbitrarily among equals: no unique best
            return Drop("tie")
        if sc < sr:
            row.fail("score_chosen", f"{sc:g} is below score_rejected {sr:g}")
        rewards = [sc, sr]
    uid = row.ident("prompt_id") if row.has("prompt_id") else fallback_uid
    return make_item(row, "chosen", context=ctx, responses=[chosen, rejected], rewards=rewards, best=0,
                     source="ultrafeedback_binarized", uid=uid)


def _rating(c: Row) -> float:
    """Mean of the numeric per-aspect ratings (what the binarised release uses), else `overall_score`.

    openbmb/UltraFeedback annotations look like {"helpfulness": {"Rating": "4", ...}, "honesty": {...}}; some
    releases wrap each aspect in a list, and "N/A" ratings occur and are left out of the mean.
    """
    ann = c.value.get("annotations")
    if isinstance(ann, dict) and ann:
        vals: list[float] = []
        for v in ann.values():
            for a in v if isinstance(v, list) else [v]:
                r = a.get("Rating") if isinstance(a, dict) else None
                if isinstance(r, (int, float)) and not isinstance(r, bool):
                    vals.append(float(r))
                elif isinstance(r, str) and r.strip().replace(".", "", 1).isdigit():
                    vals.append(float(r))
        if vals:
            return sum(vals) / len(vals)
    if c.has("overall_score"):
        return c.number("overall_score")
    c.fail("overall_score", "missing, and 'annotations' has no numeric Rating")


def ultrafeedback(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    comps = [row.element("completions", i, v) for i, v in enumerate(row.seq("completions"))]
    if len(comps) < 2:  # one completion compares with nothing and carries no 0/1 label
        return Drop("single completion")
    rewards = [_rating(c) for c in comps]
    meta: dict[str, Any] = {"models": [c.opt_text("model") for c in comps]}
    if row.opt_text("source") is not None:
        meta["subset"] = row.text("source")
    uid = row.ident("id") if row.has("id") else fallback_uid
    return make_item(row, "instruction", context=[Turn(role="user", content=row.text("instruction"))],
                     responses=[c.text("response") for c in comps], rewards=rewards,
                     best=best_from_rewards(rewards), source="ultrafeedback", uid=uid, meta=meta)


_HH_MARK = re.compile(r"\n\n(Human|Assistant):")


def _transcript(row: Row, name: str) -> list[Turn]:
    parts = _HH_MARK.split(row.text(name))
    if parts[0].strip() or len(parts) < 3:
        row.fail(name, "expected a transcript starting with '\\n\\nHuman:'")
    return [Turn(role="user" if r == "Human" else "assistant", content=c.strip())
            for r, c in zip(parts[1::2], parts[2::2])]


def hh_rlhf(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    """The shared turns up to the last shared user turn are the context; what follows in each is the response.

    A handful of real transcripts have the reply split by a stray "\\n\\nAssistant:" (the model's text contained
    one); those consecutive assistant turns are joined so the pair is kept, and `meta["merged_turns"]` says so.
    """
    chosen, rejected = _transcript(row, "chosen"), _transcript(row, "rejected")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and chosen[k - 1]["role"] != "user":
        k -= 1
    if k == 0:
        row.fail("rejected", "shares no user turn with 'chosen'")
    responses, merged = [], False
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        tail = conv[k:]
        if not tail or any(t["role"] != "assistant" for t in tail):
            row.fail(name, "after the shared context the transcript must hold only the assistant's reply")
        merged |= len(tail) > 1
        responses.append("\n\n".join(t["content"] for t in tail))
    return make_item(row, "chosen", context=chosen[:k], responses=responses, rewards=None, best=0, source="hh_rlhf",
                     uid=fallback_uid, meta={"merged_turns": True} if merged else {})


def sharegpt_dpo(row: Row, fallback_uid: str) -> PreferenceItem | Drop:
    context = turns(row, "conversations", role_key="from", content_key="value")
    system = row.opt_text("system")
    if system:
        context = [Turn(role="system", content=system)] + context
    responses = []
    for name in ("chosen", "rejected"):
        reply = row.sub(name)
        role = reply.text("from")
        if ROLE_ALIASES.get(role.lower()) != "assistant":
            reply.fail("from", f"expected an assistant reply ('gpt'), got {role!r}")
        responses.append(reply.text("value"))
    return make_item(row, "conversations", context=context, responses=responses, rewards=None, best=0,
                     source="sharegpt_dpo", uid=fallback_uid)
