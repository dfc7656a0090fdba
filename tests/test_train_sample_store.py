"""Sampling that survives preemption (train/sample_store.py): chunks written as they go, resumed by chunk.

- The store: atomic shards + manifest, a refused rerun with other items or settings, damaged folders named, gs://.
- RFT's rows do not depend on chunking or on a stop: a GRM stand-in whose trajectories are pure functions of
  (item, sample, seed, salt), as the real core's are, gives rows (right and wrong trajectories, hinted ones); a real
  SIGTERM in-process stops after the chunk in flight and the rerun assembles the uninterrupted bytes.
- The real sampler: chunked trajectories equal unchunked ones (RFT and meta RM).
- `spct rft` as a subprocess: SIGKILL mid-sampling, then a rerun stopped by SIGTERM (exit 0 at a chunk boundary),
  then a rerun to the end: every file equals an uninterrupted run's, and no chunk was sampled twice.
- Two processes (2 x 4 CPU devices): a SIGTERM to one stops both after the same chunk; the rerun completes and
  equals a one-process, one-chunk run.
Subprocesses share a JAX compilation cache in the test's temp dir, and each runs under a timeout.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from spct_jax.data.schema import PreferenceItem
from spct_jax.grm.rules import is_correct
from spct_jax.grm.trajectories import RolloutConfig, Trajectory, item_seed, row_seed
from spct_jax.grm.voting import permute, sample_permutations
from spct_jax.train.rft import (RFTConfig, RFTStats, assemble_rft_dataset, chunked_rejective_sampling,
                                read_rft_dataset, rejective_sampling, write_rft_dataset)
from spct_jax.train.sample_store import (ChunkStore, StoreError, StoreMismatch, item_key, stored_trajectories,
                                         trajectory_from_record, trajectory_record)

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny_cpu.py")
ITEMS_FIXTURE = str(REPO / "tests" / "fixtures" / "data" / "sampling" / "rft_items.jsonl")  # 8 pairwise items


def pair(uid: str, n: int = 2, best: int = 0) -> PreferenceItem:
    return PreferenceItem(context=[{"role": "user", "content": f"question {uid}?"}],
                          responses=[f"answer {uid}.{r}" for r in range(n)], rewards=None, best=best, source="t",
                          uid=uid)


ITEMS = [pair(f"q{i}", n=2 + i % 2, best=i % 2) for i in range(9)] + [
    PreferenceItem(context=[{"role": "user", "content": "2+2?"}], responses=["4"], rewards=[1.0], best=None,
                   source="t", uid="single")]


class StandInGRM:
    """`trajectories` as the real core promises them: sample j of an item under (seed, salt) is a function of
    (item, j, seed, salt) alone, whatever else is in the call. Scores are drawn so some samples are right, some
    wrong (rows exist), and hinted ones are right more often."""

    def __init__(self, on_call=None):
        self.calls: list[tuple[list[str], int]] = []
        self.on_call = on_call

    def trajectories(self, items, num, *, seed, cfg, salt=0, hinted=False, max_batch_rows=256, progress=None):
        self.calls.append(([it.uid for it in items], salt))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        out = []
        for item in items:
            key, n = item_seed(item), item.num_responses
            row = []
            for j, perm in enumerate(sample_permutations(n, num, (seed, salt, key))):
                rng = np.random.default_rng([row_seed(key, salt, j), seed])
                if n == 1:
                    scores = (int(rng.integers(0, 2)),)
                else:
                    scores = tuple(int(x) for x in rng.integers(1, 11, n))
                    if hinted and rng.random() < 0.5:  # a hint helps
                        scores = tuple(10 if i == item.best else 1 for i in range(n))
                shown = ", ".join(map(str, permute(scores, perm)))
                text = f"Specific Criteria: c{j}\nAnalysis: {item.uid} sample {j} salt {salt}\nScores: \\boxed{{{shown}}}"
                row.append(Trajectory(uid=item.uid, perm=perm, template=cfg.template_for(n), hinted=hinted,
                                      prompt_ids=(), completion_ids=(), logprobs=(), text=text, principles=f"c{j}",
                                      critique="", scores=scores, error=None,
                                      correct=is_correct(scores, item.gt_rewards())))
            out.append(row)
        return out


def small_model():
    """A random 1-layer decoder with the byte tokenizer: tiny-random's interface, a fraction of its compile time."""
    from spct_jax.models import ModelConfig, init_model
    from spct_jax.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=1, num_kv_heads=1, head_dim=16, tie_embeddings=True, max_position_embeddings=4096,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return init_model(cfg, seed=0), tok


def open_store(directory, items=ITEMS, chunk_items=3, **fingerprint) -> ChunkStore:
    return ChunkStore(directory, fingerprint={"stage": "test", **fingerprint},
                      keys=[item_key(i) for i in items], chunk_items=chunk_items).open()


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# -- the store ------------------------------------------------------------------------------------------------------
def test_store_writes_shard_then_manifest_and_resumes_at_the_first_unfinished_chunk(tmp_path):
    store = open_store(tmp_path / "s")
    assert store.num_chunks == 4 and store.bounds(3) == (9, 10) and store.pending() == [0, 1, 2, 3]
    lines = [{"index": i, "uid": ITEMS[i].uid} for i in range(3)]
    store.write(0, lines, {"n": 3})
    assert (tmp_path / "s" / "chunk-00000.jsonl").read_text().splitlines()[1] == '{"index": 1, "uid": "q1"}'
    with pytest.raises(StoreError, match="never sampled twice"):
        store.write(0, lines)
    with pytest.raises(ValueError, match="2 lines for 3 items"):
        store.write(1, lines[:2])
    # A kill mid-write leaves only a hidden temp file, which the next run removes and never reads.
    (tmp_path / "s" / ".chunk-00001.jsonl.partial").write_text('{"index": 3, "trunc')
    again = open_store(tmp_path / "s")
    assert again.pending() == [1, 2, 3] and again.read(0) == lines and again.metas() == [{"n": 3}]
    assert sorted(os.listdir(tmp_path / "s")) == ["chunk-00000.jsonl", "manifest.json"]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["done"]["0"]["items"] == 3 and manifest["fingerprint"]["num_items"] == 10


def test_store_refuses_other_items_or_settings_naming_the_manifest_and_fields(tmp_path):
    store = open_store(tmp_path / "s", n_rft=3)
    store.write(0, [{"i": i} for i in range(3)])
    with pytest.raises(StoreMismatch, match=r"manifest\.json.*n_rft: 3 there, 2 now"):
        open_store(tmp_path / "s", n_rft=2)
    with pytest.raises(StoreMismatch, match="chunk_items: 3 there, 2 now"):
        open_store(tmp_path / "s", chunk_items=2, n_rft=3)
    changed = [pair("q0", best=1), *ITEMS[1:]]  # same uid, other ground truth
    with pytest.raises(StoreMismatch, match="items_sha256"):
        open_store(tmp_path / "s", items=changed, n_rft=3)
    assert open_store(tmp_path / "s", n_rft=3).pending() == [1, 2, 3]  # the same settings resume


def test_store_names_a_missing_or_altered_shard(tmp_path):
    store = open_store(tmp_path / "s")
    store.write(0, [{"i": i} for i in range(3)])
    shard = tmp_path / "s" / "chunk-00000.jsonl"
    shard.write_text(shard.read_text().replace('"i": 1', '"i": 7'))
    with pytest.raises(StoreError, match="chunk-00000.jsonl: differs"):
        open_store(tmp_path / "s").read(0)
    shard.unlink()
    with pytest.raises(StoreError, match="chunk-00000.jsonl: missing"):
        open_store(tmp_path / "s")


def test_trajectory_records_round_trip():
    [[t, *_]] = StandInGRM().trajectories([ITEMS[1]], 2, seed=0, cfg=RolloutConfig())
    back = trajectory_from_record(t.uid, json.loads(json.dumps(trajectory_record(t))))
    assert (back.perm, back.text, back.scores, back.correct, back.hinted, back.principles) == (
        t.perm, t.text, t.scores, t.correct, t.hinted, "c0")


def test_store_on_gs(tmp_path, monkeypatch):
    """A gs:// run dir (an in-memory object store, as in test_paths.py): shards, manifest, resume and the dataset."""
    import importlib

    from test_paths import FakeGCS  # the in-memory gs:// of the path layer's tests

    from etils.epath import backend

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(registry._registry, "gs", FakeGCS)
    monkeypatch.setitem(registry._registry, "gcs", FakeGCS)
    monkeypatch.setenv("EPATH_USE_TF", "false")
    backend._FileSystemSpecBackend._get_filesystem.cache_clear()
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    try:
        cfg = RFTConfig(n_rft=3, rollout=RolloutConfig())
        store = open_store("gs://bucket/run/rft/samples")
        run = chunked_rejective_sampling(StandInGRM(), ITEMS, cfg, store)
        assert run.complete and not run.preempted
        assemble_rft_dataset(store, "gs://bucket/run/rft/rft_data.jsonl")
        local = tmp_path / "rft_data.jsonl"
        write_rft_dataset(rejective_sampling(StandInGRM(), ITEMS, cfg), local)
        assert read_rft_dataset("gs://bucket/run/rft/rft_data.jsonl") == read_rft_dataset(local)
        assert open_store("gs://bucket/run/rft/samples").pending() == []
    finally:
        backend._FileSystemSpecBackend._get_filesystem.cache_clear()
        FakeGCS.store.clear()


# -- RFT's rows do not depend on chunking or on a stop ----------------------------------------------------------------
@pytest.mark.parametrize("hinted", ["all", "unsolved"])
def test_chunked_rft_rows_and_stats_equal_unchunked(tmp_path, hinted):
    cfg = RFTConfig(n_rft=3, hinted=hinted, rollout=RolloutConfig(), seed=4)
    whole = rejective_sampling(StandInGRM(), ITEMS, cfg)
    s = whole.stats
    # The stand-in gives every kind of item: rows from plain and hinted samples, too easy and unsolved items.
    assert s.accepted > 0 and s.hinted_accepted > 0 and s.too_easy_items > 0 and s.rejected > 0, s
    write_rft_dataset(whole, tmp_path / "whole.jsonl")
    for chunk_items in (1, 4):
        grm = StandInGRM()
        store = open_store(tmp_path / f"c{chunk_items}", chunk_items=chunk_items)
        run = chunked_rejective_sampling(grm, ITEMS, cfg, store)
        assert run.sampled == list(range(store.num_chunks)) and run.complete
        # Each chunk's hinted pass runs within the chunk, on that chunk's items only.
        for uids, salt in grm.calls:
            assert len(uids) <= chunk_items
        stats = assemble_rft_dataset(store, tmp_path / f"c{chunk_items}.jsonl")
        assert stats == s
        assert (tmp_path / f"c{chunk_items}.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
        assert (tmp_path / f"c{chunk_items}.jsonl.stats.json").read_bytes() == (
            tmp_path / "whole.jsonl.stats.json").read_bytes()
        # Every trajectory, right or wrong, is kept in the shards (the meta RM's data, [P] §5).
        lines = list(store.lines())
        assert [[t["text"] for t in line["plain"]] for line in lines] == [[t.text for t in ts] for ts in whole.plain]
        assert [len(line["hinted"]) for line in lines] == [int(t is not None) for t in whole.hinted]


def test_sigterm_stops_after_the_chunk_in_flight_and_the_rerun_equals_an_uninterrupted_run(tmp_path):
    cfg = RFTConfig(n_rft=2, rollout=RolloutConfig(), seed=1)
    whole = rejective_sampling(StandInGRM(), ITEMS, cfg)
    write_rft_dataset(whole, tmp_path / "whole.jsonl")

    # A real SIGTERM to this process during the 3rd sampler call (chunk 1's plain pass): the handler only sets a
    # flag, chunk 1 finishes (its hinted pass included) and is written, then sampling stops.
    first = StandInGRM(on_call=lambda n: n == 3 and os.kill(os.getpid(), signal.SIGTERM))
    store = open_store(tmp_path / "s", chunk_items=3)
    handler = signal.getsignal(signal.SIGTERM)
    run = chunked_rejective_sampling(first, ITEMS, cfg, store)
    assert run.preempted and run.sampled == [0, 1] and not run.complete
    assert signal.getsignal(signal.SIGTERM) is handler  # restored: a later SIGTERM is not swallowed
    assert sorted(os.listdir(tmp_path / "s")) == ["chunk-00000.jsonl", "chunk-00001.jsonl", "manifest.json"]

    second = StandInGRM()
    store = open_store(tmp_path / "s", chunk_items=3)
    run = chunked_rejective_sampling(second, ITEMS, cfg, store)
    assert run.reused == [0, 1] and run.sampled == [2, 3] and run.complete and not run.preempted
    resampled = {uid for uids, _ in second.calls for uid in uids}
    assert resampled == {it.uid for it in ITEMS[6:]}  # no item of a finished chunk is sampled again
    stats = assemble_rft_dataset(store, tmp_path / "resumed.jsonl")
    assert stats == whole.stats and (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    runs = [e["run"] for e in json.loads((tmp_path / "s" / "manifest.json").read_text())["done"].values()]
    assert runs[0] == runs[1] != runs[2] == runs[3]  # chunks 0-1 by the first run, never rewritten


# -- the real sampler: chunked equals unchunked ------------------------------------------------------------------------
def test_real_sampler_chunked_equals_unchunked(tmp_path):
    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.train.metarm import METARM_SALT
    from spct_jax.train.sample_store import chunked_trajectories

    model, tok = small_model()
    grm = GenerativeRewardModel(model, tok, template="toy")
    rollout = RolloutConfig(max_new_tokens=6, template="toy", single_template="toy")
    items = [it for it in ITEMS if it.num_responses == 2][:4]  # 2 chunks of 4 rows each: few compiled shapes
    whole = grm.trajectories(items, 2, seed=3, cfg=rollout, salt=METARM_SALT)
    store = open_store(tmp_path / "metarm", items=items, chunk_items=2)
    assert chunked_trajectories(grm, items, store, 2, seed=3, cfg=rollout, salt=METARM_SALT).complete
    got = stored_trajectories(store)
    assert [[(t.perm, t.text, t.scores, t.correct) for t in ts] for ts in got] == [
        [(t.perm, t.text, t.scores, t.correct) for t in ts] for ts in whole]

    cfg = RFTConfig(n_rft=2, rollout=rollout, seed=3)
    plain = rejective_sampling(grm, items, cfg)
    store = open_store(tmp_path / "rft", items=items, chunk_items=2)
    assert chunked_rejective_sampling(grm, items, cfg, store).complete
    lines = list(store.lines())
    assert [[t["text"] for t in line["plain"]] for line in lines] == [[t.text for t in ts] for ts in plain.plain]
    assert [[t["text"] for t in line["hinted"]] for line in lines] == [
        [] if t is None else [t.text] for t in plain.hinted]
    assert len({t.text for ts in plain.plain for t in ts}) > 5  # distinct samples, not one repeated string
