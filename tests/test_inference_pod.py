"""The inference commands on a pod, rehearsed on CPU (tiny-random, the short `toy` template, a few items):

- `spct score` on 8 fake devices (fsdp=8, and data=2 x fsdp=4) writes the judgements one device writes;
- `spct eval run` on 2 processes x 4 devices writes the predictions one process writes, and only process 0
  writes anything (each process runs in its own folder, so a write by process 1 would show);
- a mesh that does not fit the devices or the model's heads, and a `--model` / `--meta-rm` that names nothing,
  end `spct score`, `spct eval run` and `spct serve` with exit 2 and one line naming the flag, before any output;
- SIGTERM during `spct score` keeps the finished chunks; the rerun judges only the rest and writes the bytes an
  uninterrupted run writes; a rerun with other settings is refused;
- `spct serve` on two processes refuses to start (multi-host serving is not supported).

Multi-device and multi-process runs are subprocesses under timeouts: a hung collective must fail the test.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spct_jax.cli import main as spct

ROOT = Path(__file__).resolve().parents[1]
RB = ROOT / "tests" / "fixtures" / "data" / "formats" / "rewardbench.jsonl"  # 3 RewardBench pairs
ITEMS = [{"context": "What is 2+2?", "responses": ["4", "5"], "uid": "a", "best": 0},
         {"context": "Name a colour", "responses": ["red", "7", "blue"], "uid": "b"},
         {"context": "Say hi", "responses": ["hello", "bye"], "uid": "c", "best": 0}]
FAST = ["--template", "toy", "--max-new-tokens", "6"]  # short prompts: seconds, not minutes, on 2 cores


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPCT_")}
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def items_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("items") / "items.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    return path


@pytest.fixture(scope="module")
def meta_rm(tmp_path_factory) -> Path:
    """A random scalar meta RM on tiny-random's byte vocabulary (HF sequence-classification layout)."""
    from spct_jax.models.registry import tiny_random_config
    from spct_jax.models.scalar_head import init_scalar_rm, save_scalar_rm
    from spct_jax.tokenizer import ByteTokenizer

    path = tmp_path_factory.mktemp("metarm")
    save_scalar_rm(init_scalar_rm(tiny_random_config(ByteTokenizer().vocab_size), seed=3), path)
    return path


def _same_judged_lines(got: list[dict], want: list[dict]) -> None:
    """Equal in every field; meta scores to float32 rounding (a sharded matmul sums in another order)."""
    def strip(lines):
        return [{**x, "samples": [{**s, "meta_score": None} for s in x["samples"]]} for x in lines]

    assert strip(got) == strip(want)
    for g, w in zip(got, want):
        for s, t in zip(g["samples"], w["samples"]):
            assert s["meta_score"] == pytest.approx(t["meta_score"], rel=1e-5, abs=1e-6)


# -- spct score on 8 devices ----------------------------------------------------------------------------------------
SCORE_ON_MESHES = textwrap.dedent("""
    import json, sys
    from spct_jax.cli import main
    items, meta_rm, out = sys.argv[1:4]
    rcs = {}
    for tag, mesh in [("one", []), ("fsdp8", ["--mesh", "fsdp=8"]), ("data2_fsdp4", ["--mesh", "data=2,fsdp=4"])]:
        rcs[tag] = main(["score", "--model", "tiny-random", "--meta-rm", meta_rm, "--k-meta", "1", "--input", items,
                         "--output", f"{out}/{tag}.jsonl", "--k", "2", "--template", "toy", "--max-new-tokens", "6",
                         "--batch-items", "2", "--dtype", "float32", *mesh])
    print("RCS", json.dumps(rcs), flush=True)
""")


@pytest.mark.timeout(240)
def test_score_on_8_devices_equals_one_device(items_file, meta_rm, tmp_path):
    res = subprocess.run([sys.executable, "-c", SCORE_ON_MESHES, str(items_file), str(meta_rm), str(tmp_path)],
                         cwd=ROOT, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                         capture_output=True, text=True, timeout=200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    [rcs] = [json.loads(line[4:]) for line in res.stdout.splitlines() if line.startswith("RCS ")]
    assert rcs == {"one": 0, "fsdp8": 0, "data2_fsdp4": 0}, res.stderr[-4000:]
    assert "using 1 of 8 devices" in res.stderr  # the one-device run says what --mesh would give
    want = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [x["uid"] for x in want] == ["a", "b", "c"] and all(len(x["samples"]) == 2 for x in want)
    assert any(s["text"] for x in want for s in x["samples"])  # tokens were sampled: texts are compared
    for tag in ("fsdp8", "data2_fsdp4"):
        _same_judged_lines([json.loads(x) for x in (tmp_path / f"{tag}.jsonl").read_text().splitlines()], want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data2_fsdp4.jsonl", "fsdp8.jsonl", "one.jsonl"]


# -- spct eval run on 2 processes x 4 devices ---------------------------------------------------------------------
EVAL_ARGS = ["eval", "run", "--model", "tiny-random", "--benchmark", "rewardbench", "--data", str(RB), "--k", "2",
             "--batch-items", "2", *FAST]


@pytest.mark.timeout(300)
def test_eval_run_on_two_processes_equals_one_process_and_only_process_0_writes(meta_rm, tmp_path):
    port = _free_port()
    argv = [*EVAL_ARGS, "--meta-rm", str(meta_rm), "--mesh", "fsdp=8", "--dtype", "float32", "--out", "out"]
    workers, dirs = [], []
    for pid in range(2):
        cwd = tmp_path / f"process{pid}"  # --out is relative: each process would write into its own folder
        cwd.mkdir()
        dirs.append(cwd)
        env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=4", SPCT_COORDINATOR=f"127.0.0.1:{port}",
                   SPCT_NUM_PROCESSES="2", SPCT_PROCESS_ID=str(pid))
        workers.append(subprocess.Popen([sys.executable, "-m", "spct_jax.cli", *argv], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for w in workers:
            outputs.append(w.communicate(timeout=240))
    finally:
        for w in workers:  # a hung collective must not outlive the test
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, out[-2000:] + err[-4000:]
    assert "| Voting | 2 |" in outputs[0][0] and "| Voting" not in outputs[1][0]  # process 0 reports the table

    # One process, one device, the same command.
    assert spct([*EVAL_ARGS, "--meta-rm", str(meta_rm), "--out", str(tmp_path / "single")]) == 0
    single, multi = tmp_path / "single", dirs[0] / "out"
    assert not (dirs[1] / "out").exists(), "process 1 wrote outputs"
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())  # no .judging left
    for name in ("predictions.jsonl", "predictions_metarm.jsonl"):
        assert (multi / name).read_bytes() == (single / name).read_bytes(), name
    _same_judged_lines([json.loads(x) for x in (multi / "items.jsonl").read_text().splitlines()],
                       [json.loads(x) for x in (single / "items.jsonl").read_text().splitlines()])
    got, want = (json.loads((d / "results.json").read_text()) for d in (multi, single))
    assert got["runs"] == want["runs"] and got["items"] == want["items"] == 3


# -- bad input -------------------------------------------------------------------------------------------------------
def _commands(items_file: Path, out: Path) -> dict[str, list[str]]:
    return {"score": ["score", "--input", str(items_file), "--output", str(out / "j.jsonl")],
            "eval": ["eval", "run", "--benchmark", "rewardbench", "--data", str(RB), "--out", str(out / "eval")],
            "serve": ["serve", "--port", "0"]}


BAD_MESHES = textwrap.dedent("""
    import contextlib, io, json, sys
    from spct_jax.cli import main
    commands = json.loads(sys.argv[1])
    results = []
    for name, argv in commands.items():
        for mesh in ("fsdp=3", "tensor=8"):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main([*argv, "--model", "tiny-random", "--mesh", mesh])
            results.append([name, mesh, rc, err.getvalue()])
    print("RESULTS", json.dumps(results), flush=True)
""")


@pytest.mark.timeout(120)
def test_a_mesh_that_does_not_fit_exits_2_naming_the_axis(items_file, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", BAD_MESHES, json.dumps(_commands(items_file, out))], cwd=ROOT,
                         env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"), capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, res.stderr[-4000:]
    [results] = [json.loads(line[8:]) for line in res.stdout.splitlines() if line.startswith("RESULTS ")]
    assert len(results) == 6
    for name, mesh, rc, err in results:
        assert rc == 2, (name, mesh, err)
        [line] = [x for x in err.splitlines() if "error" in x]
        if mesh == "fsdp=3":
            assert "axis 'fsdp' = 3 does not divide the 8 devices" in line, (name, line)
        else:
            assert "4 attention heads do not divide over axis 'tensor' (8 ways)" in line, (name, line)
        assert "Traceback" not in err
    assert not out.exists()  # nothing written, not even the folder


@pytest.mark.parametrize("command", ["score", "eval", "serve"])
def test_a_model_naming_nothing_exits_2_with_one_line(command, items_file, meta_rm, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = _commands(items_file, out)[command]
    for flags, shown, reason in [
        (["--model", "nonexistent-model"], "--model 'nonexistent-model'", "no such file or folder"),
        (["--model", str(tmp_path / "missing" / "model")], "missing/model", "no such file or folder"),
        (["--model", str(empty)], f"--model '{empty}'", "a folder without config.json"),
        (["--model", "tiny-random", "--meta-rm", str(tmp_path / "nope")], "--meta-rm", "not found"),
        (["--model", "tiny-random", "--meta-rm", str(empty)], "--meta-rm", "holds neither config.json"),
    ]:
        capsys.readouterr()
        assert spct([*argv, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert shown in err and reason in err and "expected" in err, err
    assert not out.exists()


# -- SIGTERM and resume --------------------------------------------------------------------------------------------
def test_score_keeps_finished_items_on_sigterm_and_resumes_without_rescoring_them(items_file, tmp_path, capsys,
                                                                                  monkeypatch):
    from spct_jax.grm.scorer import GenerativeRewardModel

    argv = ["score", "--model", "tiny-random", "--input", str(items_file), "--k", "2", "--batch-items", "1", *FAST]
    ref = tmp_path / "ref" / "j.jsonl"
    assert spct([*argv, "--output", str(ref)]) == 0

    original = GenerativeRewardModel.score
    calls: list[list[str]] = []

    def score(self, items, **kw):
        calls.append([it.uid for it in items])
        if len(calls) == 2 and terminate:  # a real SIGTERM, delivered while the second chunk is judged
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, items, **kw)

    monkeypatch.setattr(GenerativeRewardModel, "score", score)
    out = tmp_path / "run" / "j.jsonl"
    chunks = out.parent / ".j.jsonl.judging"
    terminate = True
    capsys.readouterr()
    assert spct([*argv, "--output", str(out)]) == 0
    assert "stopped by SIGTERM with 2 of 3 items judged" in capsys.readouterr().err
    assert calls == [["a"], ["b"]] and not out.exists()  # the chunk in flight finished and was kept
    manifest = json.loads((chunks / "manifest.json").read_text())
    assert sorted(i for e in manifest["done"].values() for i in e["items"]) == [0, 1]

    assert spct([*argv, "--output", str(out), "--seed", "5"]) == 2  # other settings: refused, nothing changed
    assert "(seed: 0 there, 5 now)" in capsys.readouterr().err and not out.exists() and chunks.is_dir()

    calls.clear()
    terminate = False
    assert spct([*argv, "--output", str(out)]) == 0
    assert calls == [["c"]]  # a and b were not judged again
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_items"] == 2
    assert out.read_bytes() == ref.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["j.jsonl"]  # the chunks are gone


# -- serve on several hosts ----------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_serve_refuses_to_run_on_several_processes():
    port = _free_port()
    workers = []
    for pid in range(2):
        env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2", SPCT_COORDINATOR=f"127.0.0.1:{port}",
                   SPCT_NUM_PROCESSES="2", SPCT_PROCESS_ID=str(pid))
        workers.append(subprocess.Popen([sys.executable, "-m", "spct_jax.cli", "serve", "--model", "tiny-random",
                                         "--port", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    try:
        outputs = [w.communicate(timeout=90) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for pid, (w, (_, err)) in enumerate(zip(workers, outputs)):
        assert w.returncode == 2, err[-3000:]
        assert f"this is process {pid} of 2 (a multi-host run); spct serve runs on one host" in err
