"""verl: the GRM as verl's custom reward function.

    # single-item form (verl's naive reward manager / reward loop call it once per rollout)
    custom_reward_function.path=<site-packages>/spct_jax/integrations/verl.py
    custom_reward_function.name=compute_score        # or compute_score_async (awaited by the reward loop)
    # batched form (reward_model.reward_manager=batch): one call per batch, GRPO groups judged together
    custom_reward_function.name=compute_score_batch
    # options: custom_reward_function.reward_kwargs.scale=centered (any RewardOptions field, and url/token)

How verl calls them (volcengine/verl at b178a3c): verl/workers/reward_manager/naive.py and
verl/experimental/reward_loop/reward_manager/naive.py call `compute_score(data_source=, solution_str=,
ground_truth=, extra_info=, **reward_kwargs)` once per rollout (awaiting it when it is a coroutine function);
verl/workers/reward_manager/batch.py calls `compute_score(data_sources=, solution_strs=, ground_truths=,
extra_infos=, **reward_kwargs)` once per batch and takes one result per rollout. A dict result's "score" is the
reward; its other keys are logged as reward_extra_info.

verl passes the response only (solution_str), not the prompt, so the GRM's context comes from `extra_info`: the
first of extra_info[prompt_key] (reward_kwargs or $SPCT_PROMPT_KEY), "prompt", "question", "problem" that exists
(verl's example preprocessors store the question there; a string or a list of chat messages). `ground_truth` is
ignored: the GRM judges without references.

Server: `url` / `token` from reward_kwargs, else extra_info["spct_url"] / ["spct_token"], else $SPCT_REWARD_URL and
$SPCT_REWARD_TOKEN (or $SPCT_REWARD_TOKEN_FILE). A group here: in the batched form, the rollouts of one prompt in
the batch (verl's rollout.n samples); in the single-item form every rollout is its own GRM item (the server's
micro-batcher still batches the concurrent requests, but the GRM judges each response alone).

verl needs a number for every rollout, so `fallback=None` is refused; the default 0.0 is the server's.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from spct_jax.integrations.options import (Reward, RewardOptions, as_context, ascore_grouped, client_from_settings,
                                           score_grouped)
from spct_jax.serve.client import Context, RewardClient

PROMPT_KEYS = ("prompt", "question", "problem")


def _setup(kwargs: dict[str, Any], extra_info: dict[str, Any] | None) -> tuple[RewardClient, RewardOptions, str | None]:
    kwargs = dict(kwargs)
    prompt_key = kwargs.pop("prompt_key", None) or os.environ.get("SPCT_PROMPT_KEY")
    client, options = client_from_settings(kwargs, extra_info, who="spct verl reward")
    if options.fallback is None:
        raise ValueError("verl needs a number for every rollout: fallback=None is not allowed here")
    return client, options, prompt_key


def context_of(extra_info: dict[str, Any] | None, prompt_key: str | None = None) -> Context:
    extra_info = extra_info or {}
    for key in ([prompt_key] if prompt_key else []) + list(PROMPT_KEYS):
        if key in extra_info and extra_info[key] is not None:
            value = extra_info[key]
            return as_context(value.tolist() if hasattr(value, "tolist") else value)  # parquet gives numpy arrays
    raise ValueError(f"spct verl reward: the prompt is not in extra_info (looked for {prompt_key or ''} "
                     f"{', '.join(PROMPT_KEYS)}; keys: {sorted(extra_info)}); store it there in preprocessing or "
                     "name its key with prompt_key / $SPCT_PROMPT_KEY")


def _as_verl(r: Reward) -> dict[str, Any]:
    return {"score": float(r.value),  # type: ignore[arg-type]  # fallback=None is refused in _setup
            "spct_uncertainty": math.nan if r.uncertainty is None else r.uncertainty,
            "spct_num_valid": r.num_valid, "spct_withheld": float(r.withheld)}


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    """One rollout's reward: {"score", "spct_uncertainty", "spct_num_valid", "spct_withheld"}."""
    client, options, prompt_key = _setup(kwargs, extra_info)
    [r] = score_grouped(client, [context_of(extra_info, prompt_key)], [solution_str], options)
    return _as_verl(r)


async def compute_score_async(data_source: Any, solution_str: str, ground_truth: Any,
                              extra_info: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """compute_score as a coroutine: verl's reward loop awaits it on its event loop instead of a thread."""
    client, options, prompt_key = _setup(kwargs, extra_info)
    [r] = await ascore_grouped(client, [context_of(extra_info, prompt_key)], [solution_str], options)
    return _as_verl(r)


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict[str, Any] | None], **kwargs: Any) -> list[dict[str, Any]]:
    """The batched form: rollouts of the same prompt are judged together, one GRM item per prompt."""
    if not solution_strs:
        return []
    client, options, prompt_key = _setup(kwargs, extra_infos[0])
    contexts = [context_of(e, prompt_key) for e in extra_infos]
    return [_as_verl(r) for r in score_grouped(client, contexts, list(solution_strs), options)]
