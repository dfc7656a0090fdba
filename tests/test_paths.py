"""The path layer: local paths, gcsfuse-style paths (local) and `gs://` run dirs.

Real GCS is not reachable from the test machines. `gs://` is played by an in-memory fsspec filesystem registered
for the "gs"/"gcs" protocols (what etils.epath calls for gs:// when TensorFlow is absent; on a TPU VM that is
gcsfs). Like GCS it has no append and no folder rename. Orbax writes arrays to gs:// through tensorstore's own
GCS driver, which this fake does not reach: for checkpoints only the path handling is tested here.
"""
import json
import os

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from spct_jax import paths


class FakeGCS(MemoryFileSystem):
    """gs://bucket/key in memory; refuses append, as object stores do."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes gcsfs' finalize_on_close
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return MemoryFileSystem._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError("append is not supported by an object store")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def gcs(monkeypatch):
    import importlib

    from etils.epath import backend

    registry = importlib.import_module("fsspec.registry")  # `fsspec.registry` the attribute is a read-only view
    monkeypatch.setitem(registry._registry, "gs", FakeGCS)
    monkeypatch.setitem(registry._registry, "gcs", FakeGCS)
    monkeypatch.setenv("EPATH_USE_TF", "false")
    backend._FileSystemSpecBackend._get_filesystem.cache_clear()
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    yield FakeGCS.store
    backend._FileSystemSpecBackend._get_filesystem.cache_clear()
    FakeGCS.store.clear()


def test_local_and_remote_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not paths.is_remote("runs/a") and not paths.is_remote("/mnt/gcsfuse/run") and paths.is_remote("gs://b/r")
    assert str(paths.as_path("runs/a")) == str(tmp_path / "runs" / "a")  # orbax needs absolute local paths
    assert str(paths.as_path("gs://bucket/run")) == "gs://bucket/run"
    assert str(paths.join("gs://bucket/run", "rft", "train")) == "gs://bucket/run/rft/train"
    paths.write_text_atomic("x.json", "{}")
    assert (tmp_path / "x.json").read_text() == "{}" and os.listdir(tmp_path) == ["x.json"]


@pytest.mark.parametrize("where", ["local", "gs"])
def test_commit_dir_publishes_a_folder_whole(tmp_path, gcs, where):
    root = str(tmp_path) if where == "local" else "gs://bucket/x"
    final = paths.join(root, "model")
    for version in ("old", "new"):
        tmp = paths.temp_sibling(final)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "weights.bin").write_text(version)
        (tmp / "config.json").write_text(version)
        paths.commit_dir(tmp, final, last="config.json")
        assert not tmp.exists()
        assert (final / "weights.bin").read_text() == (final / "config.json").read_text() == version
    assert sorted(p.name for p in paths.as_path(root).iterdir()) == ["model"]


def test_stage_dir_accepts_gs_run_dirs():
    import ml_collections

    from spct_jax.train.stage_common import stage_dir

    out = stage_dir(ml_collections.ConfigDict({"run_dir": "gs://bucket/run"}), "rft")
    assert str(out / "model") == "gs://bucket/run/rft/model"
    assert str(stage_dir(ml_collections.ConfigDict({"run_dir": "/mnt/spct/run"}), "grpo")) == "/mnt/spct/run/grpo"


def test_checkpointer_hands_orbax_the_gs_uri(monkeypatch):
    """Orbax gets the URI itself (the old os.path.abspath turned it into a local 'cwd/gs:/bucket/...'). The
    manager is a recorder here: orbax's tensorstore would go to real GCS."""
    from spct_jax.train import checkpoint

    seen = []
    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", lambda directory, **kw: seen.append(directory))
    ckpt = checkpoint.Checkpointer(paths.join("gs://bucket/run/rft/train", "checkpoints"))
    assert [str(d) for d in seen] == [str(ckpt.directory)] == ["gs://bucket/run/rft/train/checkpoints"]


def test_metrics_log_on_gs_resumes_and_uploads_whole_files(gcs):
    from spct_jax.train.metrics import MetricsLogger, read_jsonl_metrics

    work = "gs://bucket/run/rft/train"
    with MetricsLogger(work, total_steps=4, progress_bar=False, sync_every_s=0.0) as log:
        log.log(0, {"loss": 2.0})
        assert read_jsonl_metrics(f"{work}/metrics.jsonl")[0]["loss"] == 2.0  # visible while the run goes on
        log.log(1, {"loss": 1.5})
    with MetricsLogger(work, total_steps=4, initial_step=1, progress_bar=False, sync_every_s=3600) as log:
        log.log(1, {"loss": 1.4})  # a resumed run repeats step 1; the later record wins
        log.log(2, {"loss": 1.0})
    records = read_jsonl_metrics(f"{work}/metrics.jsonl")
    assert {s: r["loss"] for s, r in records.items()} == {0: 2.0, 1: 1.4, 2: 1.0}
    events = [p for p in paths.as_path(f"{work}/tensorboard").iterdir() if "tfevents" in p.name]
    assert events and all(p.stat().length > 0 for p in events)


def test_hf_export_and_load_on_gs(gcs, tmp_path):
    """save_model writes weights and tokenizer straight to gs:// (no temp copy on local disk), nothing partial
    stays, and load_model reads it back by range reads."""
    import jax.numpy as jnp

    from spct_jax.models.registry import load_model
    from spct_jax.train.stage_common import save_model

    model, tok = load_model("tiny-random", seed=4)
    summary = save_model(model, tok, "tiny-random", paths.as_path("gs://bucket/run/rft/model"), "float32")
    assert summary == {"path": "gs://bucket/run/rft/model"}
    names = sorted(p.name for p in paths.as_path("gs://bucket/run/rft").iterdir())
    assert names == ["model"]  # the .model.partial folder is gone
    assert any(key.endswith("rft/model/model.safetensors") for key in gcs)  # it went to the fake store
    again, tok2 = load_model("gs://bucket/run/rft/model")
    ids = jnp.asarray(np.arange(3, 15, dtype=np.int32)[None])
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(model(ids)))
    assert tok2.encode("hello") == tok.encode("hello")
    assert json.loads(paths.as_path("gs://bucket/run/rft/model/config.json").read_text())["torch_dtype"] == "float32"
