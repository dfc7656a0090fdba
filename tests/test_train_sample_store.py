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
from spct_jax.train.sample_store import (ChunkStore, StoreError, StoreMismatch, item_key, trajectory_from_record,
                                         trajectory_record)

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
                text = (f"Specific Criteria: c{j}\nAnalysis: {item.uid} sample {j} salt {salt}\n"
                        f"Scores: \\boxed{{{shown}}}")
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
def test_real_sampler_chunked_rft_equals_unchunked(tmp_path):
    """The sampler itself (a random model: every sample wrong, so every pair is hinted): each trajectory, plain and
    hinted, is the same sampled in chunks of 2 items as in one call. The meta RM's chunks: test_metarm_command_..."""
    from spct_jax.grm.scorer import GenerativeRewardModel

    model, tok = small_model()
    grm = GenerativeRewardModel(model, tok, template="toy")
    rollout = RolloutConfig(max_new_tokens=6, template="toy", single_template="toy")
    items = [it for it in ITEMS if it.num_responses == 2][:4]  # 2 chunks of 4 rows each: few compiled shapes
    cfg = RFTConfig(n_rft=2, rollout=rollout, seed=3)
    whole = rejective_sampling(grm, items, cfg)
    store = open_store(tmp_path / "rft", items=items, chunk_items=2)
    assert chunked_rejective_sampling(grm, items, cfg, store).complete
    lines = list(store.lines())
    assert [[t["text"] for t in line["plain"]] for line in lines] == [[t.text for t in ts] for ts in whole.plain]
    assert [[t["text"] for t in line["hinted"]] for line in lines] == [[t.text] for t in whole.hinted]
    assert len({t.text for ts in whole.plain for t in ts}) == 8  # distinct samples, not one repeated string


# -- `spct rft` as a subprocess: SIGKILL, then SIGTERM, then to the end --------------------------------------------
def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPCT_")}
    # One compilation cache for the test's subprocesses: a rerun does not pay the compiles again.
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            **extra}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """`small_model` as an HF folder with its tokenizer, what model.init_checkpoint names."""
    from spct_jax.train.stage_common import save_model

    path = tmp_path_factory.mktemp("small_model") / "model"
    save_model(*small_model(), "tiny-random", path, "float32")
    return path


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, model_dir):
    """The `spct rft` command line on `model_dir`, a compile cache, and an uninterrupted run's outputs."""
    root = tmp_path_factory.mktemp("rft_cli")
    setup = {"root": root, "cache": root / "jax_cache",
             "args": ["--config", TINY, f"--config.model.init_checkpoint={model_dir}",
                      f"--config.rft.data={ITEMS_FIXTURE}", "--config.rft.chunk_items=1"]}
    proc = subprocess.run([sys.executable, "-m", "spct_jax.cli", "rft", *setup["args"],
                           f"--config.run_dir={root / 'whole'}"], cwd=root, env=_env(setup["cache"]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    setup["whole"] = json.loads(proc.stdout[proc.stdout.index("{"):])
    return setup


def _start_rft(setup, run_dir: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:  # a file, not a pipe: the test polls the run dir meanwhile
        return subprocess.Popen([sys.executable, "-m", "spct_jax.cli", "rft", *setup["args"],
                                 f"--config.run_dir={run_dir}"], cwd=setup["root"], env=_env(setup["cache"]),
                                stdout=f, stderr=subprocess.STDOUT, text=True)


def _done_chunks(samples: Path) -> list[int]:
    try:
        return sorted(int(k) for k in json.loads((samples / "manifest.json").read_text())["done"])
    except FileNotFoundError:
        return []


def _wait_for_chunks(proc: subprocess.Popen, samples: Path, at_least: int, timeout: float = 240) -> list[int]:
    end = time.time() + timeout
    while len(done := _done_chunks(samples)) < at_least:
        if proc.poll() is not None or time.time() > end:
            proc.kill()
            proc.wait()
            pytest.fail(f"no chunk {at_least - 1} written (exit {proc.returncode}); done: {done}")
        time.sleep(0.01)
    return done


def _summary(log: Path) -> dict:
    text = log.read_text()
    return json.loads(text[text.index("\n{") + 1:])


def test_rft_command_survives_sigkill_and_sigterm_and_equals_an_uninterrupted_run(cli_setup, tmp_path):
    whole = cli_setup["whole"]
    n = whole["items"]
    assert n == 8 and whole["sampling"] == {"chunks": 8, "sampled": list(range(8)), "reused": [], "complete": True}
    samples = tmp_path / "rft" / "samples"

    # 1. SIGKILL as soon as one chunk is recorded: the process dies mid-sampling, with no chance to clean up.
    proc = _start_rft(cli_setup, tmp_path, tmp_path / "1.log")
    _wait_for_chunks(proc, samples, 1)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed = _done_chunks(samples)
    assert 1 <= len(killed) < n and killed == list(range(len(killed))), killed
    assert not (tmp_path / "rft" / "rft_data.jsonl").exists()

    # 2. Rerun, SIGTERM once it has written one more chunk: exit 0 at a chunk boundary, nothing partial visible.
    proc = _start_rft(cli_setup, tmp_path, tmp_path / "2.log")
    _wait_for_chunks(proc, samples, len(killed) + 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, (tmp_path / "2.log").read_text()[-3000:]
    second = _summary(tmp_path / "2.log")
    assert second["preempted"] is True and second["sampling"]["reused"] == killed
    stopped = _done_chunks(samples)
    assert second["sampling"]["sampled"] == stopped[len(killed):] and len(stopped) < n, (second, stopped)
    assert sorted(os.listdir(samples)) == [f"chunk-{k:05d}.jsonl" for k in stopped] + ["manifest.json"]
    assert not (tmp_path / "rft" / "rft_data.jsonl").exists() and not (tmp_path / "rft" / "model").exists()

    # 3. Rerun to the end: only the chunks no earlier run finished are sampled.
    proc = _start_rft(cli_setup, tmp_path, tmp_path / "3.log")
    assert proc.wait(timeout=300) == 0, (tmp_path / "3.log").read_text()[-3000:]
    third = _summary(tmp_path / "3.log")
    assert third["sampling"] == {"chunks": n, "sampled": list(range(len(stopped), n)), "reused": stopped,
                                 "complete": True}
    logs = [(tmp_path / f"{i}.log").read_text() for i in (1, 2, 3)]
    written = [sum(f"chunk {k} written" in log for log in logs) for k in range(n)]
    started = [sum(f"chunk {k} of {n} " in log for log in logs) for k in range(n)]
    print(f"{n} chunks: SIGKILL with {killed} written, SIGTERM after {second['sampling']['sampled']}, then "
          f"{third['sampling']['sampled']}; writes per chunk {written}, sampler starts per chunk {started}")
    assert written == [1] * n  # no chunk sampled to the end twice
    assert [k for k in range(n) if started[k] > 1] in ([], [len(killed)])  # only the one the SIGKILL cut short
    done = json.loads((samples / "manifest.json").read_text())["done"]
    runs = [done[str(k)]["run"] for k in range(n)]
    assert runs == ([runs[0]] * len(killed) + [runs[len(killed)]] * (len(stopped) - len(killed))
                    + [runs[-1]] * (n - len(stopped))) and len(set(runs)) == 3  # each chunk by the run that did it

    # Every output equals the uninterrupted run's, byte for byte.
    assert third["rft_stats"] == whole["rft_stats"] and third["rft_stats"]["sampled"] == 2 * n
    ref = cli_setup["root"] / "whole" / "rft"
    for name in ("rft_data.jsonl", "rft_data.jsonl.stats.json"):
        assert (tmp_path / "rft" / name).read_bytes() == (ref / name).read_bytes(), name
    shards = files(samples)
    assert {k: v for k, v in shards.items() if k != "manifest.json"} == {
        k: v for k, v in files(ref / "samples").items() if k != "manifest.json"}
    texts = [t["text"] for k in range(n) for line in map(json.loads, shards[f"chunk-{k:05d}.jsonl"].splitlines())
             for t in line["plain"] + line["hinted"]]
    assert len(texts) == 3 * n and len(set(texts)) > n  # every trajectory stored, and they differ


# -- two processes: a SIGTERM to one stops both after the same chunk ---------------------------------------------------
WORKER = textwrap.dedent("""
    import json, sys, time
    out_dir, chunk_items, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    import jax
    from spct_jax.parallel import MeshConfig, initialize_distributed, make_mesh, param_shardings
    initialize_distributed()  # SPCT_* variables, or one process
    from flax import nnx
    from spct_jax.data.schema import PreferenceItem
    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.grm.trajectories import RolloutConfig
    from spct_jax.models import ModelConfig, init_model
    from spct_jax.tokenizer import ByteTokenizer
    from spct_jax.train.rft import RFTConfig, assemble_rft_dataset, chunked_rejective_sampling
    from spct_jax.train.sample_store import ChunkStore, item_key, on_main

    tok = ByteTokenizer()
    cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=1, num_kv_heads=1, head_dim=16, tie_embeddings=True, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    model = init_model(cfg, seed=0)  # the same weights on every process
    mesh = None
    if jax.process_count() > 1:  # rows split over both hosts, params sharded over them (as `spct rft` samples)
        mesh = make_mesh(MeshConfig(2, 4, 1))
        graphdef, state = nnx.split(model)
        model = nnx.merge(graphdef, jax.device_put(state, param_shardings(mesh, state)))
    grm = GenerativeRewardModel(model, tok, template="toy", mesh=mesh)

    class Slow:  # long enough chunks for the signal to land mid-sampling
        def trajectories(self, *args, **kwargs):
            time.sleep(pause)
            return grm.trajectories(*args, **kwargs)

    items = [PreferenceItem(context=[{"role": "user", "content": f"question {i}?"}],
                            responses=[f"answer {i}.{r}" for r in range(2)], rewards=None, best=i % 2, source="t",
                            uid=f"q{i}") for i in range(6)]
    rft = RFTConfig(n_rft=2, rollout=RolloutConfig(max_new_tokens=4, template="toy", single_template="toy"), seed=2)
    store = ChunkStore(out_dir + "/samples", fingerprint={"test": "two processes"}, keys=[item_key(i) for i in items],
                       chunk_items=chunk_items).open()
    run = chunked_rejective_sampling(Slow(), items, rft, store)
    if run.complete:
        on_main(lambda: assemble_rft_dataset(store, out_dir + "/rft_data.jsonl"), "assembling")
    print("DONE", json.dumps({"process": jax.process_index(), "preempted": run.preempted, **run.as_dict()}),
          flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(cache: Path, *args: str) -> list[subprocess.Popen]:
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-c", WORKER, *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=_env(cache, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                                      SPCT_COORDINATOR=f"127.0.0.1:{port}", SPCT_NUM_PROCESSES="2",
                                      SPCT_PROCESS_ID=str(pid)))
            for pid in range(2)]


def _finish(workers: list[subprocess.Popen], timeout: float) -> list[dict]:
    """Each worker's DONE record after asserting it exited 0; kills any still running (a hung collective)."""
    outputs = []
    try:
        for w in workers:
            outputs.append(w.communicate(timeout=timeout))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0 and "DONE" in out, out[-2000:] + err[-4000:]
    return [json.loads(out.split("DONE", 1)[1]) for out, _ in outputs]


@pytest.mark.timeout(300)
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_chunk(tmp_path):
    cache = tmp_path / "jax_cache"
    t0 = time.time()
    single = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "single"), "100", "0"], cwd=REPO,
                            env=_env(cache, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
                            capture_output=True, text=True, timeout=200)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-4000:]

    multi = tmp_path / "multi"
    t1 = time.time()
    workers = _start_two(cache, str(multi), "1", "0.3")
    end = time.time() + 200
    try:
        while not _done_chunks(multi / "samples"):
            assert all(w.poll() is None for w in workers) and time.time() < end, "no chunk written"
            time.sleep(0.01)
    except AssertionError:
        _finish(workers, timeout=1)
        raise
    workers[1].send_signal(signal.SIGTERM)  # only process 1 is told; process 0 learns it at the chunk boundary
    done = _finish(workers, timeout=200)
    assert [d["process"] for d in done] == [0, 1] and all(d["preempted"] for d in done), done
    assert done[0]["sampled"] == done[1]["sampled"] == _done_chunks(multi / "samples"), done
    stopped = done[0]["sampled"]
    assert 1 <= len(stopped) < 6 and not (multi / "rft_data.jsonl").exists()
    assert sorted(os.listdir(multi / "samples")) == [f"chunk-{k:05d}.jsonl" for k in stopped] + ["manifest.json"]

    t2 = time.time()
    done = _finish(_start_two(cache, str(multi), "1", "0"), timeout=200)
    print(f"timing: single {t1 - t0:.1f} s, stopped pair {t2 - t1:.1f} s, resumed pair {time.time() - t2:.1f} s")
    assert all(d["reused"] == stopped and d["sampled"] == list(range(len(stopped), 6)) and d["complete"]
               for d in done), done
    # Two processes, six one-item chunks, stopped and resumed == one process, one chunk, uninterrupted.
    lines = [line for k in range(6) for line in (multi / "samples" / f"chunk-{k:05d}.jsonl").read_text().splitlines()]
    assert lines == (tmp_path / "single" / "samples" / "chunk-00000.jsonl").read_text().splitlines()
    assert (multi / "rft_data.jsonl").read_bytes() == (tmp_path / "single" / "rft_data.jsonl").read_bytes()
    print(f"2 processes: SIGTERM to process 1 stopped both after chunks {stopped}; the rerun sampled the rest")


# -- `spct metarm`: a SIGTERM during sampling, then a rerun that resumes it --------------------------------------------
def test_metarm_command_stops_on_sigterm_and_resumes_its_sampling(model_dir, tmp_path, monkeypatch):
    import contextlib
    import io

    from spct_jax.grm.scorer import GenerativeRewardModel
    from spct_jax.models.registry import load_model
    from spct_jax.train import metarm_cli
    from spct_jax.train.metarm import METARM_SALT

    args = ["--config", TINY, f"--config.run_dir={tmp_path}", f"--config.model.init_checkpoint={model_dir}",
            f"--config.metarm.data={ITEMS_FIXTURE}", "--config.metarm.chunk_items=4"]  # 2 chunks of 8 rows
    calls = []
    sample = GenerativeRewardModel.trajectories

    def signalled(self, *a, **kw):  # a real SIGTERM to this process while the 1st chunk is being sampled
        calls.append(len(a[0]))
        if len(calls) == 1 and stop:
            os.kill(os.getpid(), signal.SIGTERM)
        return sample(self, *a, **kw)

    def call() -> dict:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = metarm_cli.main(args)
        assert code == 0, err.getvalue()[-3000:]
        return json.loads(out.getvalue())

    monkeypatch.setattr(GenerativeRewardModel, "trajectories", signalled)
    stop = True
    first = call()  # exit 0 after writing the chunk in flight, before any training
    assert first["preempted"] is True and first["sampling"]["sampled"] == [0] and calls == [4]
    assert not (tmp_path / "metarm" / "model").exists() and not (tmp_path / "metarm" / "train").exists()
    stop = False
    second = call()
    assert second["sampling"] == {"chunks": 2, "sampled": [1], "reused": [0], "complete": True}
    assert calls == [4, 4]  # the rerun sampled the last chunk's items only
    b = second["balance"]
    assert sum(b[s]["positives"] + b[s]["negatives"] + b[s]["dropped_too_long"] for s in b) == 8 * 2
    assert (tmp_path / "metarm" / "model" / "config.json").is_file()

    # The stored trajectories are the ones one unchunked, uninterrupted call samples.
    from spct_jax.grm.trajectories import RolloutConfig
    from spct_jax.train.stage_common import load_run_config, read_items

    config = load_run_config(TINY)
    model, tok = load_model(model_dir)
    items = read_items(ITEMS_FIXTURE, "metarm.data")
    whole = sample(GenerativeRewardModel(model, tok), items, config.metarm.n_rft, seed=config.seed, salt=METARM_SALT,
                   cfg=RolloutConfig(temperature=config.inference.temperature,
                                     max_new_tokens=config.inference.max_new_tokens))
    lines = [json.loads(x) for k in range(2) for x in (tmp_path / "metarm" / "samples" / f"chunk-{k:05d}.jsonl")
             .read_text().splitlines()]
    assert [[t["text"] for t in line["trajectories"]] for line in lines] == [[t.text for t in ts] for ts in whole]
