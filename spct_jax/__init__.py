"""spct-jax: generalist generative reward models trained by SPCT (DeepSeek-GRM, arXiv 2504.02495) in JAX/Flax NNX.

Start with `spct_jax.grm.scorer.GenerativeRewardModel` (inference) or `spct demo` (the whole pipeline on CPU);
docs/architecture.md maps every paper concept to its module.
"""
__version__ = "0.1.0"
