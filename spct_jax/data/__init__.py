"""Preference data: one schema, readers for real formats, TFDS/grain pipelines and deterministic batching.

The TFDS/grain pipeline (`spct_jax.data.tfds_builder`) and SFT batching (`spct_jax.data.batching`) are
imported from their modules: they pull in tensorflow_datasets/grain and numpy, which plain readers do not need.
"""
from spct_jax.data.formats import (FORMAT_NAMES, ReadReport, read_folder_with_report, read_preferences,
                                   read_preferences_with_report)
from spct_jax.data.readers.files import BadRow
from spct_jax.data.schema import DataError, PreferenceItem, Turn, best_from_rewards

__all__ = ["BadRow", "DataError", "FORMAT_NAMES", "PreferenceItem", "ReadReport", "Turn", "best_from_rewards",
           "read_folder_with_report", "read_preferences", "read_preferences_with_report"]
