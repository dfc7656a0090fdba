"""A TFDS dataset (array_record, no TensorFlow) of PreferenceItems from a folder of preference files, read back
through grain with seeded shuffling and per-process sharding.

Each example is one PreferenceItem stored as its JSON (`PreferenceItem.to_json`) in a Text feature: the schema
has ragged, nested fields (turns, n responses, meta) that a fixed TFDS feature spec would have to flatten, and
JSON round-trips them exactly. Examples are written in source order (sorted file paths, then row order;
`disable_shuffling`), so shuffling is grain's job and depends only on the seed.

The dataset lands in `<data_dir>/spct_preferences/1.0.0/`, with a fingerprint of the source files in its
metadata; rebuilding from changed sources needs `overwrite=True` rather than silently reusing stale data.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import grain
import tensorflow_datasets as tfds

from spct_jax.data.formats import data_files, read_folder_with_report
from spct_jax.data.schema import DataError, PreferenceItem

NAME = "spct_preferences"
VERSION = "1.0.0"
SPLIT = "train"


def source_fingerprint(src_dir: str | Path, format: str | None = None) -> str:
    """sha256 over the relative paths and bytes of the source files and the forced format."""
    src = Path(src_dir)
    h = hashlib.sha256(f"format={format}\n".encode())
    for p in data_files(src):
        h.update(f"{p.relative_to(src).as_posix() if src.is_dir() else p.name}\n".encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


class PreferenceDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One split, "train", holding every item of every preference file under `src_dir` (see formats.py)."""

    name = NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "PreferenceItem JSON per example."}
    # TFDS derives a checksums-file location from the builder's module path; for a builder inside a package
    # that lookup needs the `importlib_resources` backport, which TFDS does not install. Nothing is downloaded
    # here, so there are no checksums to find.
    code_path = None

    def __init__(self, *, src_dir: str | Path | None = None, format: str | None = None, **kwargs: Any):
        self._src_dir = None if src_dir is None else Path(src_dir)
        self._format = format
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        metadata = tfds.core.MetadataDict()
        if self._src_dir is not None:
            metadata["fingerprint"] = source_fingerprint(self._src_dir, self._format)
            metadata["format"] = self._format or "auto"
        return tfds.core.DatasetInfo(
            builder=self,
            description="SPCT preference items (spct_jax.data.schema.PreferenceItem as JSON).",
            features=tfds.features.FeaturesDict({
                "uid": tfds.features.Text(),
                "source": tfds.features.Text(),
                "item": tfds.features.Text(),
            }),
            disable_shuffling=True,
            metadata=metadata,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        if self._src_dir is None:
            raise DataError(f"{NAME}: building needs src_dir (a folder of preference files)")
        # Raise on any bad row: a dataset with silently missing rows would be worse than none.
        items, _ = read_folder_with_report(self._src_dir, self._format, on_error="raise")
        if not items:
            raise DataError(f"{self._src_dir}: no preference items found")
        return {SPLIT: self._generate_examples(items)}

    def _generate_examples(self, items: list[PreferenceItem]):  # type: ignore[override]
        for it in items:
            yield f"{it.source}:{it.uid}", {"uid": it.uid, "source": it.source,
                           "item": json.dumps(it.to_json(), ensure_ascii=False, sort_keys=True)}


def build_tfds(src_dir: str | Path, data_dir: str | Path, *, format: str | None = None,
               overwrite: bool = False) -> PreferenceDataset:
    """Build (or reuse, when built from identical sources) the array_record dataset under `data_dir`."""
    builder = PreferenceDataset(src_dir=src_dir, format=format, data_dir=str(data_dir), file_format="array_record")
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if builder.is_prepared():
        stored = tfds.builder_from_directory(builder.data_dir).info.metadata or {}
        if stored.get("fingerprint") != source_fingerprint(src_dir, format):
            if not overwrite:
                raise DataError(f"{builder.data_dir} was built from other sources than {src_dir}; "
                                "pass overwrite=True to rebuild it")
            mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=mode, try_download_gcs=False))
    return builder


def dataset_dir(data_dir: str | Path) -> Path:
    """The versioned folder holding dataset_info.json: `data_dir` itself or `<data_dir>/spct_preferences/1.0.0`."""
    d = Path(data_dir)
    if (d / "dataset_info.json").is_file():
        return d
    versioned = d / NAME / VERSION
    if (versioned / "dataset_info.json").is_file():
        return versioned
    raise DataError(f"{data_dir}: no {NAME} dataset (build it with build_tfds first)")


def decode_example(example: dict[str, Any]) -> PreferenceItem:
    """A stored example back to a PreferenceItem (Text features come back from array_record as bytes)."""
    raw = example["item"]
    return PreferenceItem.from_json(json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw))


def grain_dataset(data_dir: str | Path, *, seed: int, shuffle: bool = True, shard_index: int | None = None,
                  shard_count: int | None = None, drop_remainder: bool = False,
                  split: str = SPLIT) -> grain.MapDataset:
    """One epoch of PreferenceItems for this process, as a random-access grain MapDataset.

    The whole dataset is permuted with `seed` (identically on every process), then process i takes positions
    i, i + n, i + 2n, ... so shards are disjoint and together cover every item once. With drop_remainder the
    last len % n positions are left out so every process sees the same count (multi-host steps stay in lock
    step); by default nothing is dropped and shard sizes may differ by one. For another epoch, pass another
    seed (e.g. base_seed + epoch). The shard defaults to jax.process_index() of jax.process_count().
    """
    if shard_index is None or shard_count is None:
        import jax  # only here: reading data back should not initialise a backend unless sharding asks for it

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in [0, {shard_count})")
    source = tfds.builder_from_directory(dataset_dir(data_dir)).as_data_source(split)
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if drop_remainder:
        ds = ds[: len(ds) - len(ds) % shard_count]
    return ds[shard_index::shard_count].map(decode_example)
