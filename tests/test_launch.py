"""The launch/ gcloud TPU-VM scripts.

Every script runs through bash, as a user would run it:
- with --dry-run: the printed commands are the expected gcloud commands, and nothing is invoked (fake gcloud,
  gsutil, git, ... on PATH record any call);
- with missing or bad flags: a non-zero exit and a message naming the flag;
- for real, against a fake gcloud that records its argv, answers `describe` from a list of states, and (for ssh)
  runs the remote command here with bash under a fake $HOME: what runs equals what the dry run printed, and the
  remote scripts do their job (unpack and install, start a background run with per-worker logs and a pid file,
  tail it, stop it with SIGTERM);
- with shellcheck, when it is installed.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
ALL_SCRIPTS = sorted(LAUNCH.glob("*.sh"))
ENTRY_SCRIPTS = [p.name for p in ALL_SCRIPTS if p.name != "common.sh"]

PROJECT, ZONE, NAME = "my-proj", "us-east5-a", "spct-v5p"
COMMON = ["--project", PROJECT, "--zone", ZONE, "--name", NAME]
LOC = [f"--zone={ZONE}", f"--project={PROJECT}"]
STAGES = ["rft", "grpo", "metarm", "eval", "plan", "score", "serve"]
SUBCOMMAND = {"eval": "eval run"}  # what run.sh starts for a STAGE
CONFIG = "configs/gemma2_27b_v5p.py"

BASH = shutil.which("bash") or "/bin/bash"

pytestmark = pytest.mark.timeout(60)

# A recorder: appends its argv as one JSON line to $FAKE_LOG. As gcloud it also answers `describe` with the next
# state in $FAKE_STATES, and with FAKE_EXEC=1 runs `ssh --command=...` through bash and `scp` as a local copy,
# with the remote home being $HOME.
FAKE = r'''#!{python} -IS
import json, os, shutil, subprocess, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([name] + sys.argv[1:]) + "\n")
args = sys.argv[1:]
if name == "gcloud" and "describe" in args and os.environ.get("FAKE_STATES"):
    path = os.environ["FAKE_STATES"]
    states = open(path).read().split()
    print(states[0])
    if len(states) > 1:
        open(path, "w").write(" ".join(states[1:]))
elif name == "gcloud" and os.environ.get("FAKE_EXEC") and "ssh" in args:
    cmd = [a for a in args if a.startswith("--command=")][0][len("--command="):]
    sys.exit(subprocess.run(["bash", "-c", cmd], cwd=os.environ["HOME"]).returncode)
elif name == "gcloud" and os.environ.get("FAKE_EXEC") and "scp" in args:
    src, dest = [a for a in args[args.index("scp") + 1:] if not a.startswith("--")]
    home = os.environ["HOME"]
    src = os.path.join(home, src.split(":", 1)[1]) if ":" in src else src
    dest = os.path.join(home, dest.split(":", 1)[1]) if ":" in dest else dest
    (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dest, **({{"dirs_exist_ok": True}} if os.path.isdir(src) else {{}}))
elif name == "curl":
    print(os.environ.get("FAKE_WORKER", "0"))
elif name == "python3.11" and args[:2] == ["-m", "venv"]:
    bin_dir = os.path.join(args[2], "bin")
    os.makedirs(bin_dir)
    for tool in ("python", "pip"):
        os.symlink(sys.argv[0], os.path.join(bin_dir, tool))
'''

DRY_FAKES = ["gcloud", "gsutil", "git", "curl", "ssh", "scp", "tar", "mkdir", "rm", "sleep", "python3.11", "spct"]
REAL_FAKES = ["gcloud", "gsutil", "curl", "python3.11"]


def _write_fakes(bin_dir: Path, names: list[str]) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    text = FAKE.format(python=sys.executable)
    for name in names:
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
    """A clean environment: no SPCT_* variables, fakes first on PATH, a fake home, a private TMPDIR."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPCT_")}
    env.update(HOME=str(home), TMPDIR=str(tmp), FAKE_LOG=str(tmp_path / "calls.jsonl"))
    return {"tmp_path": tmp_path, "home": home, "env": env, "log": tmp_path / "calls.jsonl"}


def _use_fakes(sb, names: list[str]) -> None:
    bin_dir = sb["tmp_path"] / ("bin-dry" if names is DRY_FAKES else "bin-real")
    _write_fakes(bin_dir, names)
    sb["env"]["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def _run(sb, script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(sb["env"], **(env or {}))
    return subprocess.run(
        [BASH, str(LAUNCH / script), *args], env=full_env, capture_output=True, text=True, timeout=30, cwd=sb["tmp_path"]
    )


def _calls(sb) -> list[list[str]]:
    if not sb["log"].exists():
        return []
    return [json.loads(line) for line in sb["log"].read_text().splitlines()]


def dry(sb, script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    """Runs a dry run with recorders for every tool on PATH; checks it ran nothing; returns the printed commands."""
    _use_fakes(sb, DRY_FAKES)
    res = _run(sb, script, "--dry-run", *args, env=env)
    assert res.returncode == 0, res.stderr
    assert _calls(sb) == [], f"a dry run invoked {_calls(sb)}"
    lines = res.stdout.splitlines()
    assert lines, "a dry run printed no command"
    for line in lines:
        assert line.startswith("+ "), f"not a '+ ' command line: {line!r}"
    return [shlex.split(line[2:]) for line in lines]


def _command_of(argv: list[str]) -> str:
    [cmd] = [a[len("--command="):] for a in argv if a.startswith("--command=")]
    return cmd


# ---------------------------------------------------------------------------------------------------------------
# Dry runs print the expected commands.


def test_create_queued_resource_v5p(sandbox):
    cmds = dry(sandbox, "create.sh", *COMMON, "--accelerator-type", "v5p-64", "--runtime-version", "v2-alpha-tpuv5",
               "--spot")
    assert cmds == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", NAME, f"--node-id={NAME}",
         "--accelerator-type=v5p-64", "--runtime-version=v2-alpha-tpuv5", *LOC, "--spot"],
        # the poll's describe, printed once
        ["gcloud", "compute", "tpus", "queued-resources", "describe", NAME, *LOC, "--format=value(state.state)"],
    ]


def test_create_reserved_v5e_with_qr_name_and_passthrough(sandbox):
    cmds = dry(sandbox, "create.sh", *COMMON, "--accelerator-type=v5litepod-16",
               "--runtime-version=v2-alpha-tpuv5-lite", "--reserved", "--qr-name", "my-qr", "--",
               "--valid-until-duration=6h")
    assert cmds[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-qr", f"--node-id={NAME}",
                       "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", *LOC,
                       "--reserved", "--valid-until-duration=6h"]
    assert cmds[1][4:6] == ["describe", "my-qr"]


def test_create_plain_tpu_vm_and_no_wait(sandbox):
    cmds = dry(sandbox, "create.sh", *COMMON, "--accelerator-type", "v5p-8", "--runtime-version", "v2-alpha-tpuv5",
               "--no-queued")
    assert cmds == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", NAME, "--accelerator-type=v5p-8",
         "--version=v2-alpha-tpuv5", *LOC],
        ["gcloud", "compute", "tpus", "tpu-vm", "describe", NAME, *LOC, "--format=value(state)"],
    ]
    cmds = dry(sandbox, "create.sh", *COMMON, "--accelerator-type", "v5p-8", "--runtime-version", "v2-alpha-tpuv5",
               "--no-wait")
    assert len(cmds) == 1 and cmds[0][4] == "create"


def test_environment_variables_stand_in_for_flags(sandbox):
    env = {"SPCT_PROJECT": PROJECT, "SPCT_ZONE": ZONE, "SPCT_TPU_NAME": NAME, "SPCT_ACCELERATOR_TYPE": "v5p-64",
           "SPCT_RUNTIME_VERSION": "v2-alpha-tpuv5"}
    from_env = dry(sandbox, "create.sh", env=env)
    from_flags = dry(sandbox, "create.sh", *COMMON, "--accelerator-type", "v5p-64", "--runtime-version",
                     "v2-alpha-tpuv5")
    assert from_env == from_flags
    # a flag wins over its variable
    cmds = dry(sandbox, "create.sh", "--zone", "europe-west4-b", env=env)
    assert "--zone=europe-west4-b" in cmds[0]


def test_setup_archives_copies_to_all_workers_and_installs(sandbox):
    cmds = dry(sandbox, "setup.sh", *COMMON, "--check")
    tarball = f"{sandbox['tmp_path'] / 'tmp'}/spct-jax-src-{NAME}.tar.gz"
    assert cmds[0] == ["git", "-C", str(ROOT), "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"]
    assert cmds[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{NAME}:spct-jax-src.tar.gz",
                       "--worker=all", *LOC]
    assert cmds[2][:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, "--worker=all", *LOC]
    remote = _command_of(cmds[2])
    assert 'tar -xzf "$HOME/spct-jax-src.tar.gz" -C "$HOME/spct-jax"' in remote
    assert 'python3.11 -m venv "$HOME/spct-venv"' in remote
    assert '"$HOME/spct-venv/bin/pip" install -q -e "$HOME/spct-jax" "jax[tpu]"' in remote
    assert cmds[3][:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, "--worker=all"]
    assert "jax.device_count()" in _command_of(cmds[3])
    assert len(cmds) == 4


def test_setup_installs_extras_for_serve(sandbox):
    cmds = dry(sandbox, "setup.sh", *COMMON, "--extras", "serve")
    assert '"$HOME/spct-venv/bin/pip" install -q -e "$HOME/spct-jax[serve]" "jax[tpu]"' in _command_of(cmds[2])


def test_setup_mounts_a_bucket_on_all_workers(sandbox):
    cmds = dry(sandbox, "setup.sh", *COMMON, "--mount-bucket", "my-bucket", "--check")
    assert len(cmds) == 5
    # after the install, before the check
    assert "pip" in _command_of(cmds[2]) and "jax.device_count()" in _command_of(cmds[4])
    assert cmds[3][:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, "--worker=all", *LOC]
    mount = _command_of(cmds[3])
    assert "command -v gcsfuse" in mount and "cloud-storage-fuse/install" in mount
    assert 'mountpoint -q "/mnt/spct" || { sudo mkdir -p "/mnt/spct" && sudo chown "$(id -u):$(id -g)" "/mnt/spct"' \
        in mount
    assert 'gcsfuse --implicit-dirs "my-bucket" "/mnt/spct"' in mount
    # a gs:// prefix and a mount point of one's own; with --git-url too
    [argv] = dry(sandbox, "setup.sh", *COMMON, "--git-url", "u", "--mount-bucket=gs://my.bucket_2:/data/spct")[1:]
    assert 'gcsfuse --implicit-dirs "my.bucket_2" "/data/spct"' in _command_of(argv)
    # without the flag, nothing is mounted
    assert not any("gcsfuse" in " ".join(c) for c in dry(sandbox, "setup.sh", *COMMON, "--check"))


def test_setup_mount_runs_gcsfuse_where_not_mounted(sandbox):
    """The remote mount step, run here: sudo and gcsfuse are recorders, `mountpoint` is the real one."""
    if shutil.which("mountpoint") is None:
        pytest.skip("no mountpoint (util-linux) here")
    repo = _git_repo(sandbox["tmp_path"] / "repo")
    mnt = sandbox["tmp_path"] / "mnt"
    fakes = sandbox["tmp_path"] / "bin-mount"
    _write_fakes(fakes, ["sudo", "gcsfuse"])
    _use_fakes(sandbox, REAL_FAKES)
    sandbox["env"]["PATH"] = f"{fakes}{os.pathsep}{sandbox['env']['PATH']}"
    res = _run(sandbox, "setup.sh", *COMMON, "--repo", str(repo), "--mount-bucket", f"my-bucket:{mnt}",
               env={"FAKE_EXEC": "1"})
    assert res.returncode == 0, res.stderr
    calls = [c for c in _calls(sandbox) if c[0] in ("sudo", "gcsfuse")]
    assert calls[0] == ["sudo", "mkdir", "-p", str(mnt)]
    assert calls[1][:2] == ["sudo", "chown"] and calls[1][2] == f"{os.getuid()}:{os.getgid()}"
    assert calls[2] == ["gcsfuse", "--implicit-dirs", "my-bucket", str(mnt)]
    assert len(calls) == 3


def test_setup_from_git_url(sandbox):
    cmds = dry(sandbox, "setup.sh", *COMMON, "--git-url", "https://github.com/org/spct-jax.git", "--ref", "v1.0",
               "--venv", "/opt/venv", "--internal-ip")
    assert len(cmds) == 1, "a git-url setup copies nothing"
    assert "--worker=all" in cmds[0] and "--internal-ip" in cmds[0]
    remote = _command_of(cmds[0])
    assert 'git clone -q "https://github.com/org/spct-jax.git" "$HOME/spct-jax"' in remote
    assert 'git -C "$HOME/spct-jax" checkout -q "v1.0"' in remote
    assert '"/opt/venv/bin/pip" install -q -e "$HOME/spct-jax" "jax[tpu]"' in remote


@pytest.mark.parametrize("stage", STAGES)
def test_run_starts_the_stage_on_all_workers(sandbox, stage):
    cmds = dry(sandbox, "run.sh", stage, "--config", CONFIG, "--config.run_dir=gs://b/run", "--config.seed", "3",
               *COMMON, "--run-id", "r1")
    [argv] = cmds
    assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, "--worker=all", *LOC]
    remote = _command_of(argv)
    assert (f'nohup "$HOME/spct-venv/bin/spct" {SUBCOMMAND.get(stage, stage)} --config {CONFIG} '
            f'--config.run_dir=gs://b/run --config.seed=3 > "$LOG" 2>&1 < /dev/null &') in remote
    assert f'LOG="$HOME/spct_logs/{stage}-r1-w$W.log"' in remote
    assert 'cd "$HOME/spct-jax"' in remote
    # JAX's TPU runtime finds its peers: no coordinator flags
    assert "coordinator" not in remote and "num_processes" not in remote


def _spct_argv(remote: str) -> list[str]:
    """The spct command line a run.sh remote command starts (after `nohup`, before the redirection)."""
    words = shlex.split(remote.split("nohup ", 1)[1].split(" > ", 1)[0])
    assert words[0] == "$HOME/spct-venv/bin/spct"
    return words[1:]


# What a user adds after `--` for each inference command on a 27B slice (paths on the gcsfuse mount).
INFERENCE_ARGS = {
    "eval": ["--model", "/mnt/spct/run/grpo/model", "--meta-rm", "/mnt/spct/run/metarm/model", "--benchmark",
             "rewardbench", "--data", "/mnt/spct/data/rewardbench", "--k", "1,8,32", "--out", "gs://b/run/eval"],
    "score": ["--model", "/mnt/spct/run/grpo/model", "--input", "/mnt/spct/data/items.jsonl", "--output",
              "gs://b/run/judgements.jsonl", "--mesh", "fsdp=-1,tensor=2"],
    "serve": ["--model", "/mnt/spct/run/grpo/model", "--mesh", "tensor=4", "--host", "0.0.0.0", "--token-file",
              "/home/u/spct.token"],
}


def _parse_with_spct(argv: list[str]):
    """Parse a started spct command line with the command's own parser (config file loaded, nothing run)."""
    from spct_jax.eval.cli import parse_run_args as eval_args
    from spct_jax.grm.score_cli import parse_args as score_args
    from spct_jax.serve.server import parse_args as serve_args

    if argv[:2] == ["eval", "run"]:
        return eval_args(argv[2:])
    return {"score": score_args, "serve": serve_args}[argv[0]](argv[1:])


@pytest.mark.parametrize("stage", ["eval", "score", "serve"])
def test_run_starts_inference_commands_that_spct_accepts(sandbox, stage, monkeypatch):
    monkeypatch.chdir(ROOT)  # the workers run from the code checkout, where the config path resolves
    with_config = dry(sandbox, "run.sh", stage, "--config", CONFIG, "--config.seed=3", *COMMON, "--",
                      *INFERENCE_ARGS[stage])
    argv = _spct_argv(_command_of(with_config[0]))
    assert argv == [*SUBCOMMAND.get(stage, stage).split(), "--config", CONFIG, "--config.seed=3",
                    *INFERENCE_ARGS[stage]]
    args = _parse_with_spct(argv)
    assert args.model == "/mnt/spct/run/grpo/model" and args.seed == 3  # the override reached the config
    assert args.max_new_tokens == 1024 and args.dtype == "bfloat16"  # from the 27B config's inference.* fields
    if stage != "eval":  # eval's --k was given on the command line and wins over inference.k
        assert args.k == 32
    # --config is optional for the inference commands: the flags after -- say everything
    without = dry(sandbox, "run.sh", stage, *COMMON, "--", *INFERENCE_ARGS[stage])
    argv = _spct_argv(_command_of(without[0]))
    assert "--config" not in argv
    args = _parse_with_spct(argv)
    assert args.config is None and args.max_new_tokens == 512  # the command's own default


def test_readme_inference_examples_start_commands_spct_accepts(sandbox, monkeypatch):
    monkeypatch.chdir(ROOT)
    readme = (LAUNCH / "README.md").read_text()
    section = readme.split("## Inference on a slice", 1)[1].split("\n## ", 1)[0]
    examples = [" ".join(line.strip().rstrip("\\") for line in block.splitlines())
                for block in re.findall(r"^launch/run\.sh .*?(?<!\\)$", section, flags=re.M | re.S)]
    assert [shlex.split(e)[1] for e in examples] == ["eval", "score", "serve"]
    env = {"SPCT_PROJECT": PROJECT, "SPCT_ZONE": ZONE, "SPCT_TPU_NAME": NAME}
    for example in examples:
        args = [a for a in shlex.split(example)[1:] if a != "--dry-run"]
        [argv] = dry(sandbox, "run.sh", *args, env=env)
        parsed = _parse_with_spct(_spct_argv(_command_of(argv)))
        assert parsed.model == "/mnt/spct/gemma2-27b/grpo/model"


def test_run_env_and_passthrough_args_are_quoted_for_the_remote_shell(sandbox):
    [argv] = dry(sandbox, "run.sh", "grpo", "--config=configs/x.py", *COMMON, "--env", "XLA_FLAGS=--a=1 --b",
                 "--", "--note", "it's here")
    remote = _command_of(argv)
    assert "export XLA_FLAGS='--a=1 --b';" in remote
    assert "--config configs/x.py --note 'it'\\''s here' >" in remote


def test_logs_default_worker_0_and_all(sandbox):
    [argv] = dry(sandbox, "logs.sh", *COMMON)
    assert argv == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, "--worker=0", *LOC,
                    '--command=tail -n 100 -F "$HOME/spct_logs/latest.log"']
    [argv] = dry(sandbox, "logs.sh", *COMMON, "--worker=all", "--lines", "5", "--file", "rft-r1-w0.log")
    assert "--worker=all" in argv
    remote = _command_of(argv)
    assert 'tail -n 5 -F "$HOME/spct_logs/rft-r1-w0.log" | sed -u "s/^/[w$W] /"' in remote
    [argv] = dry(sandbox, "logs.sh", *COMMON, "--worker", "3", "--no-follow")
    assert "--worker=3" in argv and " -F" not in _command_of(argv)


def test_stop_sends_sigterm_on_all_workers(sandbox):
    [argv] = dry(sandbox, "stop.sh", *COMMON)
    assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, "--worker=all", *LOC]
    assert 'kill -TERM "$(cat "$HOME/spct_logs/spct.pid")"' in _command_of(argv)


def test_copy_checkpoints_from_gcs_and_from_a_worker(sandbox):
    dest = str(sandbox["tmp_path"] / "ckpt")
    assert dry(sandbox, "copy_checkpoints.sh", "--src", "gs://b/run", "--dest", dest) == [
        ["mkdir", "-p", dest],
        ["gcloud", "storage", "rsync", "-r", "gs://b/run", dest],
    ]
    assert not Path(dest).exists(), "a dry run created the destination"
    assert dry(sandbox, "copy_checkpoints.sh", "--src", "gs://b/run", "--dest", dest, "--gsutil")[1] == [
        "gsutil", "-m", "rsync", "-r", "gs://b/run", dest]
    assert dry(sandbox, "copy_checkpoints.sh", *COMMON, "--src", "spct-jax/runs/rft", "--dest", dest)[1] == [
        "gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", f"{NAME}:spct-jax/runs/rft", dest, "--worker=0",
        *LOC]


def test_delete(sandbox):
    assert dry(sandbox, "delete.sh", *COMMON) == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", NAME, *LOC, "--force", "--quiet"]]
    assert dry(sandbox, "delete.sh", *COMMON, "--tpu-vm", "--async") == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", NAME, *LOC, "--quiet", "--async"]]


def test_every_remote_command_is_valid_shell(sandbox):
    commands = []
    for script, args in [
        ("setup.sh", ["--check"]),
        ("setup.sh", ["--git-url", "u", "--ref", "r", "--mount-bucket", "my-bucket:/mnt/x"]),
        ("run.sh", ["rft", "--config", CONFIG, "--env", "A=b c", "--", "x'y"]),
        ("logs.sh", ["--worker=all"]),
        ("stop.sh", []),
    ]:
        for argv in dry(sandbox, script, *COMMON, *args):
            commands += [a[len("--command="):] for a in argv if a.startswith("--command=")]
    assert len(commands) == 7
    shells = ["bash"] + (["sh"] if shutil.which("sh") else [])
    for cmd in commands:
        for sh in shells:
            res = subprocess.run([sh, "-n", "-c", cmd], capture_output=True, text=True)
            assert res.returncode == 0, f"{sh} -n rejects {cmd!r}: {res.stderr}"


def test_readme_examples_match_the_dry_runs(sandbox):
    """The walk-through's full command listings are what the scripts print."""
    readme = (LAUNCH / "README.md").read_text()
    env = {"SPCT_PROJECT": "my-project", "SPCT_ZONE": ZONE, "SPCT_TPU_NAME": NAME}
    runs = [
        ("create.sh", ["--accelerator-type", "v5p-64", "--runtime-version", "v2-alpha-tpuv5", "--spot"]),
        ("copy_checkpoints.sh", ["--src", "gs://my-bucket/gemma2-27b-rft", "--dest",
                                 "./checkpoints/gemma2-27b-rft"]),
        ("delete.sh", []),
    ]
    _use_fakes(sandbox, DRY_FAKES)
    res = _run(sandbox, "setup.sh", "--mount-bucket", "my-bucket", "--dry-run", env=env)
    [mount] = [line for line in res.stdout.splitlines() if "gcsfuse" in line]
    assert mount in readme, f"README is out of date for setup.sh --mount-bucket: {mount}"
    for script, args in runs:
        _use_fakes(sandbox, DRY_FAKES)
        res = _run(sandbox, script, *args, "--dry-run", env=env)
        assert res.returncode == 0, res.stderr
        for line in res.stdout.splitlines():
            assert line in readme, f"README is out of date for {script}: {line}"


def test_printed_commands_round_trip_through_a_shell(sandbox):
    tricky = ["--description=it's $HOME ~ `x` \\ \"q\"", "*", "a b", "", "--labels=k=v,w=z", "~/x", "$(date)"]
    cmds = dry(sandbox, "create.sh", *COMMON, "--accelerator-type", "v5p-64", "--runtime-version", "v",
               "--no-wait", "--", *tricky)
    assert cmds[0][-len(tricky):] == tricky


def test_every_flag_is_documented_in_the_readme():
    readme = (LAUNCH / "README.md").read_text()
    flags = set()
    case_pattern = re.compile(r"^-[-a-z0-9.=*]*(\s*\|\s*-[-a-z0-9.=*]*)*\)$")  # e.g. `--zone | --zone=*)`
    for script in ALL_SCRIPTS:
        for line in script.read_text().splitlines():
            if case_pattern.match(line.strip()):
                flags.update(w.removesuffix("=*") for w in re.split(r"[\s|)]+", line.strip()) if w)
    flags = {f for f in flags if "*" not in f}  # `--config.*` is documented as --config.KEY=VALUE
    assert {"--spot", "--reserved", "--worker", "--dry-run", "--config", "--gsutil"} <= flags
    missing = sorted(f for f in flags if f"`{f}" not in readme and f"{f}`" not in readme and f", `{f}" not in readme)
    assert not missing, f"flags missing from launch/README.md: {missing}"


def test_every_script_has_help_and_strict_mode(sandbox):
    for name in ENTRY_SCRIPTS:
        text = (LAUNCH / name).read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text, name
        res = _run(sandbox, name, "--help")
        assert res.returncode == 0 and "Usage: launch/" in res.stdout and "--dry-run" in res.stdout, name


# ---------------------------------------------------------------------------------------------------------------
# Bad command lines fail clearly.


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("create.sh", [], "--project is required (or set SPCT_PROJECT)"),
        ("create.sh", ["--project", "p"], "--zone is required (or set SPCT_ZONE)"),
        ("create.sh", ["--project", "p", "--zone", "z"], "--name is required (or set SPCT_TPU_NAME)"),
        ("create.sh", COMMON, "--accelerator-type is required (or set SPCT_ACCELERATOR_TYPE)"),
        ("create.sh", [*COMMON, "--accelerator-type", "v5p-64"],
         "--runtime-version is required (or set SPCT_RUNTIME_VERSION); for v5p-64 use v2-alpha-tpuv5"),
        ("create.sh", [*COMMON, "--accelerator-type", "v5litepod-16"], "use v2-alpha-tpuv5-lite"),
        ("create.sh", [*COMMON, "--accelerator-type", "big", "--runtime-version", "x"], "does not look like a TPU"),
        ("create.sh", [*COMMON, "--accelerator-type", "v5p-64", "--runtime-version", "v", "--spot", "--reserved"],
         "--spot and --reserved exclude each other"),
        ("create.sh", [*COMMON, "--zone"], "--zone needs a value"),
        ("create.sh", [*COMMON, "--bogus"], "unknown argument '--bogus'"),
        ("setup.sh", ["--zone", "z", "--name", "n"], "--project is required"),
        ("run.sh", ["--config", CONFIG, *COMMON], "STAGE is required: one of rft grpo metarm eval plan score serve"),
        ("run.sh", ["train", "--config", CONFIG, *COMMON], "unknown STAGE 'train'"),
        ("run.sh", ["rft", *COMMON], "--config is required"),
        ("run.sh", ["score", "--config.seed=3", *COMMON], "--config.seed=3 needs --config"),
        ("run.sh", ["rft", "--config", CONFIG, "--project", "p", "--zone", "z"], "--name is required"),
        ("run.sh", ["rft", "--config", CONFIG, *COMMON, "--env", "no-equals"], "--env wants KEY=VALUE"),
        ("setup.sh", [*COMMON, "--remote-dir", "/"], "--remote-dir '/' must be a plain folder path"),
        ("setup.sh", [*COMMON, "--extras", "serve]; rm"], "--extras 'serve]; rm' must be names"),
        ("setup.sh", [*COMMON, "--venv", "a/../b"], "--venv 'a/../b' must be a plain folder path"),
        ("setup.sh", [*COMMON, "--git-url", "https://x/$(id)"], "--git-url must not contain"),
        ("setup.sh", [*COMMON, "--mount-bucket", "Bad_Bucket"], "'Bad_Bucket' is not a bucket name"),
        ("setup.sh", [*COMMON, "--mount-bucket", "my-bucket:mnt/spct"],
         "the mount point 'mnt/spct' must be an absolute path"),
        ("setup.sh", [*COMMON, "--mount-bucket", "my-bucket:/mnt/../x"],
         "--mount-bucket '/mnt/../x' must be a plain folder"),
        ("run.sh", ["rft", "--config", CONFIG, *COMMON, "--run-id", "a b"], "--run-id may hold"),
        ("logs.sh", ["--project", "p", "--name", "n"], "--zone is required"),
        ("logs.sh", [*COMMON, "--worker", "first"], "--worker must be a worker number or 'all'"),
        ("stop.sh", ["--zone", "z", "--name", "n"], "--project is required"),
        ("delete.sh", ["--project", "p", "--zone", "z"], "--name is required"),
        ("copy_checkpoints.sh", ["--dest", "d"], "--src is required"),
        ("copy_checkpoints.sh", ["--src", "gs://b/x"], "--dest is required"),
        ("copy_checkpoints.sh", ["--src", "runs/x", "--dest", "d"], "--project is required"),
    ],
)
def test_bad_flags_exit_nonzero_with_a_clear_message(sandbox, script, args, message):
    _use_fakes(sandbox, DRY_FAKES)
    for extra in ([], ["--dry-run"]):
        res = _run(sandbox, script, *args, *extra)
        assert res.returncode != 0
        assert message in res.stderr, res.stderr
        assert res.stdout == ""
    assert _calls(sandbox) == []


def test_real_run_without_gcloud_says_so(sandbox):
    bin_dir = sandbox["tmp_path"] / "bin-bare"  # only what the scripts themselves need, no gcloud
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    sandbox["env"]["PATH"] = str(bin_dir)
    res = _run(sandbox, "delete.sh", *COMMON)
    assert res.returncode != 0 and "'gcloud' not found on PATH" in res.stderr
    # a dry run needs no gcloud
    res = _run(sandbox, "delete.sh", *COMMON, "--dry-run")
    assert res.returncode == 0 and res.stdout.startswith("+ gcloud compute tpus queued-resources delete")


# ---------------------------------------------------------------------------------------------------------------
# Real runs against a fake gcloud: they run exactly what the dry run prints, and the remote scripts work.


def _real(sb, script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    _use_fakes(sb, REAL_FAKES)
    return _run(sb, script, *args, env=env)


def _gcloud_calls(sb) -> list[list[str]]:
    return [c for c in _calls(sb) if c[0] in ("gcloud", "gsutil")]


def test_create_polls_until_active(sandbox):
    args = [*COMMON, "--accelerator-type", "v5p-64", "--runtime-version", "v2-alpha-tpuv5", "--spot"]
    expected = dry(sandbox, "create.sh", *args)
    states = sandbox["tmp_path"] / "states"
    states.write_text("WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
    res = _real(sandbox, "create.sh", *args, "--poll-interval", "0", env={"FAKE_STATES": str(states)})
    assert res.returncode == 0, res.stderr
    calls = _gcloud_calls(sandbox)
    assert calls == [expected[0]] + [expected[1]] * 3
    assert "state: PROVISIONING" in res.stderr and "is ACTIVE" in res.stderr


@pytest.mark.parametrize("queued,state", [(True, "FAILED"), (True, "SUSPENDED"), (False, "PREEMPTED")])
def test_create_stops_on_a_failed_state(sandbox, queued, state):
    states = sandbox["tmp_path"] / "states"
    states.write_text(f"PROVISIONING {state}")
    mode = [] if queued else ["--no-queued"]
    res = _real(sandbox, "create.sh", *COMMON, "--accelerator-type", "v5p-64", "--runtime-version", "v",
                "--poll-interval", "0", *mode, env={"FAKE_STATES": str(states)})
    assert res.returncode != 0 and f"reached state {state}" in res.stderr


def test_create_times_out(sandbox):
    states = sandbox["tmp_path"] / "states"
    states.write_text("WAITING_FOR_RESOURCES")
    res = _real(sandbox, "create.sh", *COMMON, "--accelerator-type", "v5p-64", "--runtime-version", "v",
                "--poll-interval", "1", "--timeout", "1", env={"FAKE_STATES": str(states)})
    assert res.returncode != 0 and "not ACTIVE after 1s" in res.stderr


def _git_repo(path: Path) -> Path:
    (path / "configs").mkdir(parents=True)
    (path / "setup.py").write_text("# the package\n")
    (path / "configs" / "tiny.py").write_text("# a config\n")
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    (path / "setup.py").write_text("# uncommitted edit\n")
    return path


def test_setup_ships_the_committed_tree_and_installs_it(sandbox):
    repo = _git_repo(sandbox["tmp_path"] / "repo")
    args = [*COMMON, "--repo", str(repo)]
    expected = [c for c in dry(sandbox, "setup.sh", *args) if c[0] == "gcloud"]
    res = _real(sandbox, "setup.sh", *args, env={"FAKE_EXEC": "1"})
    assert res.returncode == 0, res.stderr
    assert _gcloud_calls(sandbox) == expected
    assert "uncommitted changes" in res.stderr
    code = sandbox["home"] / "spct-jax"
    assert (code / "configs" / "tiny.py").is_file()
    assert (code / "setup.py").read_text() == "# the package\n", "ships the commit, not the working tree"
    assert not (sandbox["home"] / "spct-jax-src.tar.gz").exists(), "the remote tarball is cleaned up"
    assert not list((sandbox["tmp_path"] / "tmp").glob("*.tar.gz")), "the local tarball is cleaned up"
    pip = [c for c in _calls(sandbox) if c[0] == "pip"]
    assert pip[-1] == ["pip", "install", "-q", "-e", str(code), "jax[tpu]"]
    # running it again replaces the checkout and keeps the venv
    (code / "stale.py").write_text("")
    assert _real(sandbox, "setup.sh", *args, env={"FAKE_EXEC": "1"}).returncode == 0
    assert not (code / "stale.py").exists()


def test_setup_without_a_commit_fails_clearly(sandbox):
    empty = sandbox["tmp_path"] / "empty"
    subprocess.run(["git", "init", "-q", str(empty)], check=True)
    res = _real(sandbox, "setup.sh", *COMMON, "--repo", str(empty))
    assert res.returncode != 0 and "no commit 'HEAD'" in res.stderr
    assert _gcloud_calls(sandbox) == []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_logs_stop_on_a_fake_worker(sandbox):
    home = sandbox["home"]
    (home / "spct-jax" / "configs").mkdir(parents=True)
    bin_dir = home / "spct-venv" / "bin"
    bin_dir.mkdir(parents=True)
    spct = bin_dir / "spct"
    spct.write_text('#!/usr/bin/env bash\ntrap \'echo "got SIGTERM in $PWD"; exit 0\' TERM\n'
                    'echo "args: $*"\nwhile true; do sleep 0.05; done\n')
    spct.chmod(0o755)
    env = {"FAKE_EXEC": "1", "FAKE_WORKER": "3"}
    args = ["rft", "--config", "configs/tiny.py", "--config.run_dir=gs://b/r", *COMMON, "--run-id", "r1"]
    expected = dry(sandbox, "run.sh", *args)
    logs = home / "spct_logs"
    pid = None
    try:
        res = _real(sandbox, "run.sh", *args, env=env)
        assert res.returncode == 0, res.stderr
        assert _gcloud_calls(sandbox) == expected
        assert "worker 3: started rft" in res.stdout
        log = logs / "rft-r1-w3.log"
        assert (logs / "latest.log").resolve() == log.resolve()
        pid = int((logs / "spct.pid").read_text())
        _wait_for(lambda: "args:" in log.read_text(), "the run's first log line")
        assert "args: rft --config configs/tiny.py --config.run_dir=gs://b/r" in log.read_text()

        again = _real(sandbox, "run.sh", *args, env=env)
        assert again.returncode != 0 and "spct is already running" in again.stderr

        tail = _real(sandbox, "logs.sh", *COMMON, "--no-follow", env=env)
        assert tail.returncode == 0 and "args: rft" in tail.stdout
        tail_all = _real(sandbox, "logs.sh", *COMMON, "--worker=all", "--no-follow", env=env)
        assert "[w3] args: rft" in tail_all.stdout

        stop = _real(sandbox, "stop.sh", *COMMON, env=env)
        assert stop.returncode == 0 and "sent SIGTERM" in stop.stdout
        _wait_for(lambda: "got SIGTERM" in log.read_text(), "the run to get SIGTERM")
        _wait_for(lambda: not _alive(pid), "the run to exit")
        assert f"got SIGTERM in {home / 'spct-jax'}" in log.read_text(), "runs inside the code checkout"
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, 9)


def test_delete_and_copy_run_what_the_dry_run_prints(sandbox):
    for script, args in [
        ("delete.sh", COMMON),
        ("delete.sh", [*COMMON, "--no-queued"]),
        ("copy_checkpoints.sh", ["--src", "gs://b/run", "--dest", "out", "--project", PROJECT]),
        ("copy_checkpoints.sh", ["--src", "gs://b/run", "--dest", "out", "--gsutil"]),
    ]:
        expected = [c for c in dry(sandbox, script, *args) if c[0] in ("gcloud", "gsutil")]
        sandbox["log"].unlink(missing_ok=True)
        res = _real(sandbox, script, *args)
        assert res.returncode == 0, res.stderr
        assert _gcloud_calls(sandbox) == expected
        sandbox["log"].unlink(missing_ok=True)
    assert (sandbox["tmp_path"] / "out").is_dir()


# ---------------------------------------------------------------------------------------------------------------
# Lint.


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck); launch/*.sh were not linted")
    res = subprocess.run([shellcheck, "-x", *map(str, ALL_SCRIPTS)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
