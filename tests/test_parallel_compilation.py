"""The persistent compilation cache the stage and inference commands enable, and compile counts per phase."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp

from spct_jax.parallel.compilation import ENV_VAR, cache_dir, compile_counts, compile_delta, compile_phase

ROOT = Path(__file__).resolve().parents[1]


def test_cache_dir_precedence(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert cache_dir("", run_dir="gs://b/run/") == "gs://b/run/compilation_cache"  # survives the pod's VMs
    assert cache_dir(None).endswith(os.path.join(".cache", "spct-jax", "xla"))  # inference: a user cache dir
    monkeypatch.setenv(ENV_VAR, "/shared/xla")
    assert cache_dir("", run_dir="/runs/a") == "/shared/xla"
    assert cache_dir("/mine", run_dir="/runs/a") == "/mine"  # the config field wins
    assert cache_dir("off", run_dir="/runs/a") is None
    monkeypatch.setenv(ENV_VAR, "off")
    assert cache_dir("", run_dir="/runs/a") is None


def test_compiles_are_counted_under_the_outermost_phase():
    x7, x9, x11 = jnp.ones(7), jnp.ones(9), jnp.ones(11)  # (making them compiles programs too)
    before = compile_counts()
    f = jax.jit(lambda x: jnp.cos(x) * 3)
    with compile_phase("outer"):
        with compile_phase("sampling"):  # e.g. the sampler called from GRPO's rollout phase
            f(x7).block_until_ready()
        f(x7).block_until_ready()  # cached in memory: no new program
        f(x9).block_until_ready()  # a new shape: one more
    f(x11).block_until_ready()
    delta = compile_delta(before)
    assert delta["outer"].programs == 2 and "sampling" not in delta
    assert delta["other"].programs >= 1 and delta["outer"].seconds > 0


# A stage command's runtime set-up from a config, then a jitted step: run twice in fresh processes, the second
# loads every program from run_dir/compilation_cache instead of compiling it.
SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from spct_jax.config_files import load_config
    from spct_jax.parallel.compilation import compile_counts, compile_phase
    from spct_jax.train.stage_common import setup_runtime

    config = load_config(sys.argv[1], [f"--config.run_dir={sys.argv[2]}", "--config.runtime.compilation_cache_min_secs=0"])
    setup_runtime(config)
    with compile_phase("work"):
        step = jax.jit(lambda w, x: jnp.tanh(x @ w) @ w.T)
        step(jnp.ones((32, 32)), jnp.ones((4, 32))).block_until_ready()
    c = compile_counts()["work"]
    print("COUNTS " + json.dumps({"dir": jax.config.jax_compilation_cache_dir, "programs": c.programs,
                                  "hits": c.cache_hits}))
""")


def test_stage_runtime_caches_compiled_programs_in_the_run_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "configs" / "tiny_cpu.py"), str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.split("COUNTS ", 1)[1]))
    assert runs[0]["dir"] == runs[1]["dir"] == str(tmp_path / "compilation_cache")
    assert runs[0]["programs"] >= 1 and runs[0]["hits"] == 0
    assert runs[1]["programs"] == runs[0]["programs"] == runs[1]["hits"]  # nothing compiled the second time
    assert any((tmp_path / "compilation_cache").iterdir())
