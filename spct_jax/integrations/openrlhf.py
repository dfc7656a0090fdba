"""OpenRLHF: the GRM as OpenRLHF's remote reward model.

Recipe A, the HTTP endpoint (no token: OpenRLHF's client sends no Authorization header, so keep the server on
loopback or a private network):

    spct serve --model RUN_DIR/grm --port 8000 --k 8 --max-batch 8
    # OpenRLHF <= 0.10.x:
    python -m openrlhf.cli.train_ppo_ray ... --remote_rm_url http://127.0.0.1:8000/get_reward
    # OpenRLHF 0.11 renamed the flag:  --reward.remote_url http://127.0.0.1:8000/get_reward

Recipe B, this file as OpenRLHF's custom reward function (bearer token, RewardOptions, uncertainty logged):

    SPCT_REWARD_URL=http://grm-host:8000 SPCT_REWARD_TOKEN_FILE=/secrets/spct \\
    python -m openrlhf.cli.train_ppo_ray ... --remote_rm_url $(python -c \\
        "import spct_jax.integrations.openrlhf as m; print(m.__file__)")
    # options via the environment: SPCT_REWARD_SCALE=centered, SPCT_REWARD_MIN_PARSED=2, SPCT_REWARD_FALLBACK=0

What OpenRLHF sends (the request /get_reward was written for), one JSON body per POST:
    {"query": [prompt_i + response_i, ...], "prompts": [prompt_i, ...], "labels": [label_i, ...]}
  * up to v0.9.0, openrlhf/utils/remote_rm_utils.py (L10-32 at tag v0.9.0): `requests.post(url, json={"query":
    queries, "prompts": prompts, "labels": labels}, headers={"Content-Type": "application/json"}, timeout=180)`
    with the whole rollout batch split evenly over the URLs given, retried 5 times 1 s apart, reading
    response.json()["rewards"]. A GRPO group (n_samples_per_prompt rollouts of one prompt) sits in one request,
    so the server judges it as one GRM item.
  * from v0.9.x (v0.10.0-v0.11.0), openrlhf/utils/agent.py, SingleTurnAgentExecutor (L287 and L322-356 at
    v0.11.0): an aiohttp POST per ROLLOUT, body {"query": [query], "prompts": [prompt], "labels": [label]}, with
    query = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False); it reads "rewards" (and
    "scores", "extra_logs" if present). One rollout per request: every response is judged ALONE (a group of one),
    not against its siblings; recipe B with OpenRLHF's custom function has the same per-rollout batching there.
    The server's micro-batcher still puts concurrent rollouts in one sampler call.
  * query must start with its prompt (the server answers 400, field "query[i]", otherwise): true when decoding
    prompt + response ids reproduces the prompt text, which holds for byte-level BPE tokenizers; check yours
    (`tokenizer.decode(tokenizer(p, add_special_tokens=False).input_ids) == p`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from spct_jax.integrations.options import RewardOptions, client_from_settings, score_grouped

ENV_OPTIONS = {"SPCT_REWARD_SCALE": ("scale", str), "SPCT_REWARD_MIN_PARSED": ("min_parsed", int),
               "SPCT_REWARD_FALLBACK": ("fallback", float), "SPCT_REWARD_K": ("k", int),
               "SPCT_REWARD_MAX_GROUP": ("max_group", int), "SPCT_REWARD_TIMEOUT": ("timeout", float),
               "SPCT_REWARD_MAX_CONCURRENCY": ("max_concurrency", int)}


def request_body(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any]) -> dict[str, Any]:
    """The body OpenRLHF posts to --remote_rm_url (both generations above)."""
    return {"query": list(queries), "prompts": list(prompts), "labels": list(labels)}


def split_query(query: str, prompt: str, i: int = 0) -> str:
    """The response inside an OpenRLHF query, by the server's rule (serve/schema.py): query = prompt + response."""
    if not query.startswith(prompt):
        raise ValueError(f"query[{i}] does not start with prompts[{i}]; cannot tell the response apart")
    return query[len(prompt):]


def _env_options() -> dict[str, Any]:
    return {name: cast(os.environ[var]) for var, (name, cast) in ENV_OPTIONS.items() if os.environ.get(var)}


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None,
                **options: Any) -> dict[str, Any]:
    """OpenRLHF's custom `reward_func(queries, prompts, labels)`: {"rewards", "scores", "extra_logs"}.

    Queries with the same prompt are judged together (one GRM item per prompt). The server from $SPCT_REWARD_URL
    (token: $SPCT_REWARD_TOKEN / $SPCT_REWARD_TOKEN_FILE), options from SPCT_REWARD_* (ENV_OPTIONS) or **options.
    """
    client, opts = client_from_settings({**_env_options(), **options}, who="spct OpenRLHF reward_func")
    if opts.fallback is None:
        raise ValueError("OpenRLHF needs a number for every rollout: fallback=None is not allowed here")
    responses = [split_query(q, p, i) for i, (q, p) in enumerate(zip(queries, prompts, strict=True))]
    rewards = score_grouped(client, list(prompts), responses, opts)
    values = [float(r.value) for r in rewards]  # type: ignore[arg-type]  # fallback None refused above
    return {"rewards": values, "scores": values,
            "extra_logs": {"spct_uncertainty": [math.nan if r.uncertainty is None else r.uncertainty
                                                for r in rewards],
                           "spct_withheld": [float(r.withheld) for r in rewards]}}


__all__ = ["RewardOptions", "request_body", "reward_func", "split_query"]
