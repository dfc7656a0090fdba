"""The embedded demo's pipeline, reduced to seconds: every stage runs and every output is written."""
import json

import pytest

from spct_jax.demo.config import DemoConfig
from spct_jax.demo.pipeline import DemoStopped, run, stopped_if_preempted


def test_quick_demo_runs_every_stage_and_writes_every_output(tmp_path):
    cfg = DemoConfig.quick(str(tmp_path / "demo"), seed=0)
    results = run(cfg, progress=False)
    out = tmp_path / "demo"
    for name in ("report.md", "results.json", "scaling.png", "learning_curves.png", "log.txt"):
        assert (out / name).is_file(), name
    for stage in ("cold_start", "rft", "rl", "metarm"):
        assert (out / "models" / stage / "config.json").is_file(), stage
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["stages"]) == {"cold_start", "rft", "rl"}
    assert all(0.0 <= saved["stages"][s]["greedy"] <= 1.0 for s in saved["stages"])
    assert set(saved["scaling"]["voting"]) == {str(k) for k in cfg.ks}
    assert set(saved["scaling"]["metarm"]) == {str(k) for k in cfg.metarm_ks}
    assert f"no_principles_voting_{cfg.ablation_k}" in saved["ablation"]
    assert saved["wall_seconds"] > 0 and saved["seed"] == 0
    assert saved["stats"]["rft"]["items"] == dict(cfg.sizes)["rft"]
    assert results["scaling"] == saved["scaling"]


def test_demo_config_rejects_bad_values(tmp_path):
    for bad in ({"teacher_error_types": ()}, {"teacher_error_types": ("typo",)}, {"no_principles_fraction": 1.5},
                {"drill_fraction": -0.1}, {"length_multiple": 0}, {"length_segments": 0}, {"length_segments": 3}):
        with pytest.raises(ValueError):
            DemoConfig(workdir=str(tmp_path), **bad)


def test_a_stage_cut_short_by_sigterm_stops_the_demo():
    """The training loop returns early on SIGTERM (after saving); the demo must not go on to train and evaluate
    later stages from a half-trained model."""
    done = ("model", {"steps": 10, "preempted": False})
    assert stopped_if_preempted("rft", done) is done
    with pytest.raises(DemoStopped, match="stage grpo was stopped by SIGTERM after 3 steps"):
        stopped_if_preempted("grpo", ("model", {"steps": 3, "preempted": True}))
