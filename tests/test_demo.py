"""The embedded demo's pipeline, reduced to seconds: every stage runs and every output is written."""
import dataclasses
import json

import pytest

from spct_jax.demo.config import DemoConfig
from spct_jax.demo.pipeline import (DemoStopped, meta_score_auc, meta_scores_of, random_filter_control, run,
                                   stopped_if_preempted, voted_accuracy)


def test_quick_demo_runs_every_stage_and_writes_every_output(tmp_path):
    cfg = DemoConfig.quick(str(tmp_path / "demo"), seed=0)
    results = run(cfg, progress=False)
    out = tmp_path / "demo"
    for name in ("report.md", "results.json", "scaling.png", "learning_curves.png", "log.txt"):
        assert (out / name).is_file(), name
    for stage in ("cold_start", "rft", "rl"):
        assert (out / "models" / stage / "config.json").is_file(), stage
    assert (out / "models" / "metarm" / "likelihood_meta_rm.json").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["stages"]) == {"cold_start", "rft", "rl"}
    assert all(0.0 <= saved["stages"][s]["greedy"] <= 1.0 for s in saved["stages"])
    assert set(saved["scaling"]["voting"]) == {str(k) for k in cfg.ks}
    assert set(saved["scaling"]["metarm"]) == {str(k) for k in cfg.metarm_ks}
    assert f"no_principles_voting_{cfg.ablation_k}" in saved["ablation"]
    assert saved["wall_seconds"] > 0 and saved["seed"] == 0
    assert saved["stats"]["rft"]["items"] == dict(cfg.sizes)["rft"]
    assert results["scaling"] == saved["scaling"]
    for k in cfg.metarm_ks:
        c = saved["controls"]["metarm_random"][str(k)]
        assert 0.0 <= c["mean"] <= 1.0 and c["sd"] >= 0.0 and c["draws"] == 20
    assert set(saved["metarm"]["eval_samples"]) == {"auc", "within_item_auc", "mixed_items"}
    assert "control, MetaRM@" in (out / "report.md").read_text()
    assert saved["metarm"]["head"] == "likelihood" and "scale" in saved["metarm"]
    # Per-item correctness backs every headline number, and each phenomenon is tested on it.
    per_item, n_eval = saved["per_item"], dict(cfg.sizes)["eval"]
    assert len(per_item["uids"]) == n_eval
    for k in cfg.ks:
        assert sum(per_item[f"voting@{k}"]) / n_eval == pytest.approx(saved["scaling"]["voting"][str(k)])
    for stage in ("cold_start", "rft", "rl"):
        assert sum(per_item[f"greedy/{stage}"]) / n_eval == pytest.approx(saved["stages"][stage]["greedy"])
    assert [r["phenomenon"] for r in saved["signal"]] == [
        "RFT > cold start", "RL > RFT", "Voting@4 > Voting@1", "MetaRM@2 > Voting@2", "MetaRM@4 > Voting@4",
        "principles help (Voting@2)"]
    for r in saved["signal"]:
        diff = (sum(per_item[r["a"]]) - sum(per_item[r["b"]])) / n_eval
        assert r["diff"] == pytest.approx(diff) and r["low"] <= r["diff"] <= r["high"]
        assert r["verdict"] in ("holds", "within noise", "reversed") and r["n"] == n_eval
    assert "## What is signal" in (out / "report.md").read_text()
    # The saved meta RM, loaded from its folder (it points at models/cold_start), re-scores the samples of the
    # report's judgements exactly as the run did.
    from spct_jax.demo.toy import toy_splits
    from spct_jax.grm.likelihood_meta_rm import MetaInput, load_meta_rm
    rm = load_meta_rm(out / "models" / "metarm")
    first = json.loads((out / "judgements_sample.jsonl").read_text().splitlines()[0])
    item = toy_splits(cfg.seed, cfg.split_sizes, cfg.toy)["eval"][0]
    assert first["uid"] == item.uid
    again = rm.scores([MetaInput(item=item, perm=tuple(s["permutation"]), text=s["text"]) for s in first["samples"]])
    assert again.tolist() == pytest.approx([s["meta_score"] for s in first["samples"]], abs=1e-5)


def test_quick_demo_with_the_papers_last_token_meta_rm(tmp_path):
    cfg = dataclasses.replace(DemoConfig.quick(str(tmp_path / "demo"), seed=1), metarm_head="last_token")
    run(cfg, progress=False)
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["metarm"]["head"] == "last_token"
    assert (tmp_path / "demo" / "models" / "metarm" / "config.json").is_file()  # an HF sequence-classification folder
    assert set(saved["scaling"]["metarm"]) == {str(k) for k in cfg.metarm_ks}
    assert "last-token scalar head" in (tmp_path / "demo" / "report.md").read_text()


def test_demo_config_rejects_bad_values(tmp_path):
    for bad in ({"teacher_error_types": ()}, {"teacher_error_types": ("typo",)}, {"no_principles_fraction": 1.5},
                {"drill_fraction": -0.1}, {"length_multiple": 0}, {"length_segments": 0}, {"length_segments": 3},
                {"metarm_head": "mean_pool"}):
        with pytest.raises(ValueError):
            DemoConfig(workdir=str(tmp_path), **bad)


def test_a_stage_cut_short_by_sigterm_stops_the_demo():
    """The training loop returns early on SIGTERM (after saving); the demo must not go on to train and evaluate
    later stages from a half-trained model."""
    done = ("model", {"steps": 10, "preempted": False})
    assert stopped_if_preempted("rft", done) is done
    with pytest.raises(DemoStopped, match="stage grpo was stopped by SIGTERM after 3 steps"):
        stopped_if_preempted("grpo", ("model", {"steps": 3, "preempted": True}))


def _toy_judgements():
    """4 items, 3 responses, best = 0; 8 samples each: 3 right (10, 2, 2) and 5 wrong (2, 10, 2)."""
    from types import SimpleNamespace as NS

    from spct_jax.data.schema import PreferenceItem
    items = [PreferenceItem(context=[{"role": "user", "content": f"q{i}"}], responses=["a", "b", "c"],
                            rewards=[1.0, 0.2, 0.2], best=0, source="test", uid=f"u{i}") for i in range(4)]
    right, wrong = (10, 2, 2), (2, 10, 2)
    js = [NS(samples=tuple(NS(scores=right if s < 3 else wrong, meta_score=1.0 if s < 3 else 0.0) for s in range(8)))
          for _ in items]
    return js, items


def test_random_filter_control_is_seeded_and_a_perfect_meta_rm_beats_it():
    js, items = _toy_judgements()
    assert voted_accuracy(js, items, 8, seed=0) == 0.0  # 5 wrong votes outvote 3 right ones
    assert voted_accuracy(js, items, 8, seed=0, meta_scores=meta_scores_of(js)) == 1.0  # the perfect meta RM keeps the 3 right + 1 wrong
    c = random_filter_control(js, items, 8, seed=0)
    assert c == random_filter_control(js, items, 8, seed=0)
    assert c["mean"] < 0.5 and c["draws"] == 20  # a random half keeps the wrong majority most of the time
    auc = meta_score_auc(js, items)
    assert auc == {"auc": 1.0, "within_item_auc": 1.0, "mixed_items": 4.0}
