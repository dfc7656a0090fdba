"""TRL: the GRM as a reward function of `trl.GRPOTrainer` (and any trainer using TRL's reward-function convention).

    from trl import GRPOConfig, GRPOTrainer
    from spct_jax.integrations.trl import reward_function

    grm = reward_function("http://127.0.0.1:8000", token=os.environ.get("SPCT_TOKEN"), scale="centered")
    trainer = GRPOTrainer(model=..., reward_funcs=[grm], args=GRPOConfig(num_generations=8, ...), ...)

TRL calls `fn(prompts=..., completions=..., completion_ids=..., **dataset_columns, trainer_state=...,
log_extra=..., log_metric=...)` with one entry per completion, each prompt repeated once per generation
(trl/trainer/grpo_trainer.py, `_calculate_rewards`, trl 1.16). Both of TRL's forms are taken: plain text (prompt
and completion strings) and conversational (lists of {"role", "content"} messages).

A group here = the completions of one prompt in the batch TRL passes (its num_generations rollouts of that prompt):
they go to the server as one /v1/score item, judged together. The number each completion gets is set by
RewardOptions (options.py): by default the mean 1..10 score, as /get_reward. A withheld reward is `fallback`; with
fallback=None TRL receives None, which it turns into NaN and leaves out of that reward's statistics.

Logged through TRL's own hooks when it passes them: `spct/uncertainty` (mean variance of the samples' scores),
`spct/withheld` (fraction of completions withheld) and `spct/parsed` (fraction of samples that parsed) as metrics,
and a `spct_uncertainty` column in the completions table.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from spct_jax.integrations.options import GroupedRewardFunction, split_options
from spct_jax.serve.client import RewardClient


class TRLRewardFunction(GroupedRewardFunction):
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        rewards = self.rewards(prompts, completions)
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if rewards and callable(log_metric):
            unc = [r.uncertainty for r in rewards if r.uncertainty is not None and not math.isnan(r.uncertainty)]
            if unc:
                log_metric("spct/uncertainty", sum(unc) / len(unc))
            log_metric("spct/withheld", sum(r.withheld for r in rewards) / len(rewards))
            samples = sum(r.num_valid + r.num_failed for r in rewards)
            log_metric("spct/parsed", sum(r.num_valid for r in rewards) / samples if samples else 0.0)
        if callable(log_extra):
            log_extra("spct_uncertainty", [r.uncertainty for r in rewards])
        return [r.value for r in rewards]


def reward_function(url: str, *, token: str | None = None, name: str = "spct_grm",
                    **options: Any) -> TRLRewardFunction:
    """A TRL reward function judged by the `spct serve` at `url`.

    options: RewardOptions fields (scale, min_parsed, fallback, k, k_meta, max_group) and RewardClient ones
    (max_concurrency, timeout, connect_timeout, retries, backoff, max_backoff, transport). `name` is what TRL logs
    the reward under (rewards/<name>/mean).
    """
    client_kw, reward_options = split_options(dict(options))
    return TRLRewardFunction(RewardClient(url, token=token, **client_kw), reward_options, name)
