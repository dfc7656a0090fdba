"""tunix (google/tunix): the GRM as a GRPO reward function.

    from tunix.rl.grpo.grpo_learner import GRPOLearner
    from spct_jax.integrations.tunix import reward_fn

    learner = GRPOLearner(rl_cluster=..., algo_config=..., reward_fns=[reward_fn("http://127.0.0.1:8000")])

How tunix calls it (google/tunix at c7d8950, tunix/rl/reward_manager.py, SequenceRewardManager._compute_rewards):
`r = reward_fn(prompts=prompts, completions=completions, **kwargs)` where kwargs are the batch's other columns
(e.g. "answer"), mode="train"/"eval", and any algo_config field the function's signature names; it reads
`inspect.signature(reward_fn)`, names the metric rewards/<reward_fn.__name__>, and stores `np.array(r)` into a
float array (NaN-aware sums and means). The prompts are repeated once per generation (tunix/rl/grpo/grpo_learner.py
passes training_input["prompts"] with rollout_output.text), so equal prompts form one group: one GRM item.

tunix stores the rewards in a float array, so a withheld reward with fallback=None is returned as NaN (tunix's
nansum counts it as 0); the default fallback 0.0 is the server's.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from spct_jax.integrations.options import GroupedRewardFunction, split_options
from spct_jax.serve.client import RewardClient


class TunixRewardFunction(GroupedRewardFunction):
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [math.nan if r.value is None else r.value for r in self.rewards(prompts, completions)]


def reward_fn(url: str, *, token: str | None = None, name: str = "spct_grm", **options: Any) -> TunixRewardFunction:
    """A tunix reward function judged by the `spct serve` at `url`; options as for trl.reward_function."""
    client_kw, reward_options = split_options(dict(options))
    return TunixRewardFunction(RewardClient(url, token=token, **client_kw), reward_options, name)
