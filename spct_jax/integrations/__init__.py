"""RL frameworks on the caller's side of `spct serve`: thin adapters from each framework's reward-function
convention onto `spct_jax.serve.client.RewardClient`.

  options.py   RewardOptions (scale, min_parsed, fallback, k, max_group), the grouping core shared by all adapters
  trl.py       reward_function(url, ...) -> fn(prompts, completions, **kw) for trl.GRPOTrainer(reward_funcs=[...])
  verl.py      compute_score / compute_score_async / compute_score_batch for custom_reward_function.path
  openrlhf.py  the --remote_rm_url recipe for /get_reward, and reward_func(queries, prompts, labels)
  tunix.py     reward_fn(url, ...) for tunix's GRPOLearner(reward_fns=[...])

Imports run one way: integrations -> serve.client, never back. None of the frameworks is imported here; each
adapter only follows the calling convention (the docstrings cite the framework code that calls it). Walk-through:
docs/rl-integration.md.
"""
