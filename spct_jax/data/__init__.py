"""Preference data: one schema, readers for real formats, TFDS/grain pipelines and deterministic batching."""
from spct_jax.data.schema import DataError, PreferenceItem, Turn, best_from_rewards

__all__ = ["DataError", "PreferenceItem", "Turn", "best_from_rewards"]
