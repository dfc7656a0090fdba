"""Export without a gather: from a model sharded over 2 processes, from an orbax checkpoint (`spct export`),
and what a failed export leaves behind (nothing).

The 2-process check runs this file as a script (`worker`), 2 processes x 4 fake CPU devices on 127.0.0.1 as in
test_parallel_multiprocess.py, under a timeout.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _write_byte_tokenizer(folder) -> None:
    from spct_jax.tokenizers.save import byte_tokenizer_json

    byte_tokenizer_json().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "pad_token": "<pad>"}))


# -- the worker (a fresh process) ------------------------------------------------------------------------------------
def worker(src: str, out_dir: str) -> None:
    """Load `src` sharded over both processes and export it twice: once with process 0 writing slowly (a sleep per
    block and before publishing), once with process 0's writes failing. Reports when each export returned."""
    from spct_jax.parallel.mesh import MeshConfig, initialize_distributed, make_mesh

    initialize_distributed()
    from pathlib import Path

    import jax

    from spct_jax import paths
    from spct_jax.models import safetensors_io
    from spct_jax.models.registry import load_model
    from spct_jax.models.weights import spans_processes
    from spct_jax.train.stage_common import save_model

    pid = jax.process_index()
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1))
    model, tok = load_model(src, mesh=mesh)
    assert spans_processes(model)
    out = Path(out_dir)
    write_block, commit_dir = safetensors_io._write_block, paths.commit_dir
    if pid == 0:  # a slow writer: every block, and the publishing rename
        safetensors_io._write_block = lambda f, block: (time.sleep(0.05), write_block(f, block))
        paths.commit_dir = lambda *a, **k: (time.sleep(3.0), commit_dir(*a, **k))
    report = {"process": pid, "start": time.time()}
    save_model(model, tok, src, out / "model", "float32")
    report["returned"] = time.time()
    report["complete_when_returned"] = (out / "model" / "config.json").is_file()

    if pid == 0:  # now a writer that fails half way: every process must hear of it, none may hang
        calls = []

        def failing(f, block):
            calls.append(1)
            if len(calls) > 5:
                raise OSError(28, "No space left on device (injected)")
            write_block(f, block)

        safetensors_io._write_block = failing
        paths.commit_dir = commit_dir
    try:
        save_model(model, tok, src, out / "failed", "float32")
        report["failed_export"] = "returned"
    except OSError as e:
        report["failed_export"] = f"raised: {e}"
    safetensors_io._write_block = write_block

    # `spct export` on both processes: the sharded model saved as a stage's orbax state, then exported from it
    # (each tensor restored sharded by the rules, written by process 0).
    from spct_jax.train.checkpoint import Checkpointer
    from spct_jax.train.config import OptimizerConfig
    from spct_jax.train.export_cli import export_checkpoint
    from spct_jax.train.state import create_train_state

    stage = out / "stage" / "rft"
    state = create_train_state(model, OptimizerConfig(learning_rate=1e-3), seed=0)[1]
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())  # the step count, the rng
    state = jax.tree.map(lambda x: x if not x.is_fully_addressable else jax.device_put(x, replicated), state)
    if pid == 0:  # before the save, whose barriers make it visible to process 1
        stage.mkdir(parents=True)
        (stage / "config.json").write_text(json.dumps({"model": {"init_checkpoint": src, "param_dtype": "float32"}}))
    with Checkpointer(stage / "train" / "checkpoints") as ckpt:
        ckpt.save(3, state, None)
    report["spct_export"] = export_checkpoint(stage)
    with open(out / f"report.{pid}.json", "w") as f:
        json.dump(report, f)
    print("WORKER_DONE", pid, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_two_processes_export_a_sharded_model_that_transformers_loads(tmp_path):
    """A random transformers Llama, loaded sharded (fsdp=8 over 2 processes x 4 devices) and exported by
    `save_model` with process 0 writing slowly: transformers reloads the export with the source's weights and
    logits, both processes exit 0, and the process that does not write returns only once the folder is published
    (barrier). A second export whose writes fail on process 0 raises on both processes and leaves nothing
    behind. Then the same model saved as a stage's orbax state and exported by `spct export` on both processes."""
    import torch
    from hf_fixtures import hf_logits, left_padded_batch, tiny_hf_lm
    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    hf = tiny_hf_lm("llama", seed=3)
    hf.save_pretrained(src, safe_serialization=True)
    _write_byte_tokenizer(src)
    out = tmp_path / "out"
    out.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPCT_")}
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(src), str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT + os.pathsep + os.path.dirname(__file__),
                                   "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                                   "SPCT_COORDINATOR": f"127.0.0.1:{port}", "SPCT_NUM_PROCESSES": "2",
                                   "SPCT_PROCESS_ID": str(pid)})
             for pid in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=150))
    finally:
        for p in procs:  # a hung collective must not outlive the test
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (o, e) in zip(procs, outputs):
        assert p.returncode == 0, o[-2000:] + e[-4000:]
    reports = [json.loads((out / f"report.{pid}.json").read_text()) for pid in range(2)]
    for r in reports:
        print(f"process {r['process']}: export returned after {r['returned'] - r['start']:.1f} s, "
              f"folder complete then: {r['complete_when_returned']}; failing export: {r['failed_export']}")
        assert r["complete_when_returned"]  # no process leaves before the folder is published
        assert r["returned"] - r["start"] >= 3.0  # ... which took process 0 at least its 3 s pause
        assert r["failed_export"].startswith("raised")
    assert "No space left" in reports[0]["failed_export"] and "failed on process 0" in reports[1]["failed_export"]
    assert sorted(os.listdir(out)) == ["model", "report.0.json", "report.1.json", "stage"]  # no .partial, no "failed"
    assert reports[0]["spct_export"] == reports[1]["spct_export"] and reports[0]["spct_export"]["step"] == 3

    ids, mask, pos = left_padded_batch([5, 9, 7], seed=1)
    want, valid = hf_logits(hf, ids, mask, pos), mask.astype(bool)
    for folder in (out / "model", out / "stage" / "rft" / "model"):  # save_model's, then spct export's
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                        attn_implementation="eager").eval()  # as the source
        theirs, ours = hf.state_dict(), reloaded.state_dict()
        assert sorted(theirs) == sorted(ours) and all(torch.equal(theirs[k], ours[k]) for k in theirs)
        got = hf_logits(reloaded, ids, mask, pos)
        print(f"{folder.relative_to(out)}: max |logit diff| after a 2-process export {np.abs(got - want)[valid].max():.3g}")
        np.testing.assert_array_equal(got[valid], want[valid])  # float32 weights, bit for bit: same logits


# -- spct export: an orbax checkpoint -> an HF folder ---------------------------------------------------------------
def _stage(tmp_path, name: str, module, init_checkpoint: str, param_dtype: str = "float32", step: int = 7):
    """run_dir/<name> as a stage leaves it: config.json and an orbax checkpoint of the module's TrainState."""
    from spct_jax.train.checkpoint import Checkpointer
    from spct_jax.train.config import OptimizerConfig
    from spct_jax.train.state import create_train_state

    stage = tmp_path / "run" / name
    stage.mkdir(parents=True)
    (stage / "config.json").write_text(json.dumps({"model": {"init_checkpoint": init_checkpoint,
                                                             "param_dtype": param_dtype},
                                                   "meta_rm": {"init_checkpoint": ""}}))
    _, state = create_train_state(module, OptimizerConfig(learning_rate=1e-3), seed=0)
    with Checkpointer(stage / "train" / "checkpoints") as ckpt:
        ckpt.save(step, state, {"epoch": 0, "index": 3})
    return stage


def _ids(vocab: int):
    rng = np.random.default_rng(0)
    return rng.integers(3, vocab, (2, 9)).astype(np.int32), np.ones((2, 9), np.int32)


def test_spct_export_turns_a_saved_state_into_the_same_model(tmp_path, capsys):
    import jax.numpy as jnp

    from spct_jax.cli import main
    from spct_jax.models.registry import load_model

    model, _ = load_model("tiny-random", seed=5)  # not seed 0: the weights must come from the checkpoint
    stage = _stage(tmp_path, "rft", model, "tiny-random")
    assert main(["export", str(stage)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 7 and summary["kind"] == "lm" and summary["path"] == str(stage / "model")
    again, tok = load_model(stage / "model")
    ids, mask = _ids(again.config.vocab_size)
    np.testing.assert_array_equal(np.asarray(again(jnp.asarray(ids), jnp.asarray(mask))),
                                  np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))))
    assert tok.encode("abc") == load_model("tiny-random")[1].encode("abc")
    assert sorted(p.name for p in stage.iterdir()) == ["config.json", "model", "train"]  # nothing partial

    # bfloat16, to another folder: the saved float32 weights rounded once
    out = tmp_path / "bf16"
    assert main(["export", str(stage), "--dtype", "bfloat16", "--out", str(out), "--step", "7"]) == 0
    half, _ = load_model(out, dtype=jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(half.embed[...]), np.asarray(model.embed[...].astype(jnp.bfloat16)))


def test_spct_export_writes_the_meta_rm_as_a_sequence_classifier(tmp_path, capsys):
    import jax.numpy as jnp

    from spct_jax.cli import main
    from spct_jax.models.registry import load_model
    from spct_jax.models.scalar_head import ScalarRM, load_scalar_rm

    base, tok = load_model("tiny-random", seed=2)
    rm = ScalarRM.from_decoder(base, seed=1)
    stage = _stage(tmp_path, "metarm", rm, "tiny-random")
    assert main(["export", str(stage)]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "scalar_rm"
    again = load_scalar_rm(stage / "model")
    ids, mask = _ids(base.config.vocab_size)
    np.testing.assert_array_equal(np.asarray(again(jnp.asarray(ids), jnp.asarray(mask))),
                                  np.asarray(rm(jnp.asarray(ids), jnp.asarray(mask))))
    assert json.loads((stage / "model" / "config.json").read_text())["pad_token_id"] == tok.pad_id


def test_spct_export_names_what_is_wrong(tmp_path, capsys):
    from spct_jax.cli import main
    from spct_jax.models.registry import load_model

    assert main(["export", str(tmp_path / "nowhere"), "--model", "tiny-random"]) == 1
    assert "no checkpoint directory" in capsys.readouterr().err
    model, _ = load_model("tiny-random")
    stage = _stage(tmp_path, "rft", model, "tiny-random")
    assert main(["export", str(stage), "--step", "3"]) == 1
    assert "no checkpoint step 3" in capsys.readouterr().err
    other = tmp_path / "other"  # an architecture that is not the one trained
    other.mkdir()
    from spct_jax.models import ModelConfig

    (other / "config.json").write_text(json.dumps(ModelConfig(
        family="llama", vocab_size=263, hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
        num_kv_heads=2, head_dim=16).to_hf_config()))
    _write_byte_tokenizer(other)
    assert main(["export", str(stage), "--model", str(other)]) == 1
    assert "param ('layers', 'attn', 'k_proj', 'kernel') has shape (2, 64, 32), the model needs (3, 64, 32)" in \
        capsys.readouterr().err  # the blocks are stacked: another depth is another [L, ...]
    assert not (stage / "model").exists() and not (stage / ".model.partial").exists()


def test_a_failed_export_leaves_nothing_and_keeps_the_previous_one(tmp_path, monkeypatch):
    from spct_jax.models import safetensors_io
    from spct_jax.models.registry import load_model
    from spct_jax.models.weights import save_pretrained

    model, _ = load_model("tiny-random")
    save_pretrained(model, tmp_path / "m", max_shard_bytes=30_000)
    before = {p: (tmp_path / "m" / p).read_bytes() for p in os.listdir(tmp_path / "m")}
    calls = []

    def failing(f, block):
        calls.append(1)
        if len(calls) >= 4:
            raise OSError(28, "No space left on device (injected)")
        f.write(np.ascontiguousarray(block).tobytes())

    monkeypatch.setattr(safetensors_io, "_write_block", failing)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(load_model("tiny-random", seed=1)[0], tmp_path / "m", max_shard_bytes=30_000)
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no .m.partial
    assert {p: (tmp_path / "m" / p).read_bytes() for p in os.listdir(tmp_path / "m")} == before
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(model, tmp_path / "fresh")
    assert sorted(os.listdir(tmp_path)) == ["m"]


if __name__ == "__main__":
    worker(*sys.argv[1:3])
