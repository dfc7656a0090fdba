"""TFDS (array_record, no TensorFlow) build of a folder and the grain read-back: identical items, seeded order,
disjoint per-process shards."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from spct_jax.data import DataError, read_folder_with_report
from spct_jax.data.tfds_builder import build_tfds, grain_dataset

FORMATS = Path(__file__).parent / "fixtures" / "data" / "formats"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for p in FORMATS.iterdir():
        if p.suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
            continue
        shutil.copy(p, src / p.name)
    # A subfolder with a file of the same name: location uids must stay distinct.
    (src / "more").mkdir()
    shutil.copy(FORMATS / "hh_rlhf.jsonl", src / "more" / "hh_rlhf.jsonl")
    data_dir = tmp_path_factory.mktemp("tfds")
    build_tfds(src, data_dir)
    items, _ = read_folder_with_report(src)
    return src, data_dir, items


def uids(ds) -> list[tuple[str, str]]:
    return [(it.source, it.uid) for it in ds]


def test_round_trip_is_identical_and_in_source_order(built):
    src, data_dir, items = built
    assert len(items) > 25 and not importlib.util.find_spec("tensorflow")
    got = list(grain_dataset(data_dir, seed=0, shuffle=False, shard_index=0, shard_count=1))
    assert got == items  # every field, meta included, in sorted-file then row order
    assert {"more/hh_rlhf.jsonl:1", "hh_rlhf.jsonl:1"} <= {it.uid for it in got}


def test_seeded_shuffle_is_reproducible(built):
    _, data_dir, items = built
    a = uids(grain_dataset(data_dir, seed=7, shard_index=0, shard_count=1))
    b = uids(grain_dataset(data_dir, seed=7, shard_index=0, shard_count=1))
    c = uids(grain_dataset(data_dir, seed=8, shard_index=0, shard_count=1))
    assert a == b and a != c and sorted(a) == sorted(c) == sorted(uids(items))
    assert a != uids(items)


@pytest.mark.parametrize("count", [2, 3])
def test_shards_are_disjoint_and_cover_everything(built, count):
    _, data_dir, items = built
    shards = [uids(grain_dataset(data_dir, seed=3, shard_index=i, shard_count=count)) for i in range(count)]
    flat = [u for s in shards for u in s]
    assert len(flat) == len(set(flat)) == len(items) and set(flat) == set(uids(items))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    even = [len(grain_dataset(data_dir, seed=3, shard_index=i, shard_count=count, drop_remainder=True))
            for i in range(count)]
    assert len(set(even)) == 1 and sum(even) == len(items) - len(items) % count


def test_default_shard_is_this_jax_process(built):
    _, data_dir, items = built
    assert len(grain_dataset(data_dir, seed=1)) == len(items)  # one process: the whole dataset
    with pytest.raises(ValueError, match="shard_index"):
        grain_dataset(data_dir, seed=1, shard_index=2, shard_count=2)


def test_rebuild_reuses_identical_sources_and_refuses_changed_ones(built, tmp_path):
    src, data_dir, items = built
    build_tfds(src, data_dir)  # same sources: reused, no error
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(FORMATS / "rmb_bon.json", other / "rmb_bon.json")
    with pytest.raises(DataError, match="overwrite=True"):
        build_tfds(other, data_dir)
    fresh = tmp_path / "fresh"
    build_tfds(src, fresh)
    build_tfds(other, fresh, overwrite=True)
    assert uids(grain_dataset(fresh, seed=0, shuffle=False, shard_index=0, shard_count=1)) == [
        ("rmb_bon", "b-1"), ("rmb_bon", "b-2")]


def test_bad_rows_stop_the_build(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "data" / "malformed" / "missing_field.jsonl", src)
    with pytest.raises(DataError, match=r"missing_field\.jsonl:2: field 'rejected': missing"):
        build_tfds(src, tmp_path / "out")
    with pytest.raises(DataError, match="no spct_preferences dataset"):
        grain_dataset(tmp_path / "out", seed=0)
