"""`spct demo --summarize`: the README's table from several runs' results.json (synthetic runs, no training)."""
import json

import numpy as np
import pytest

from spct_jax.demo import significance as sig
from spct_jax.demo.pipeline import main
from spct_jax.demo.summary import summary_markdown

CFG = {"ks": [1, 8], "metarm_ks": [8], "ablation_k": 8}


def fake_run(seed: int, n: int = 40) -> dict:
    rng = np.random.default_rng(seed)

    def vec(p):
        return [int(x) for x in rng.random(n) < p]

    per_item = {"uids": [f"u{i}" for i in range(n)], "greedy/cold_start": vec(0.3), "greedy/rft": vec(0.5),
                "greedy/rl": vec(0.55), "voting@1": vec(0.5), "voting@8": [1] * n, "metarm@8": [1] * n,
                "no_principles@8": [0] * n}
    mean = {k: float(np.mean(v)) for k, v in per_item.items() if k != "uids"}
    return {"seed": seed, "config": CFG, "wall_seconds": 600.0 + seed, "per_item": per_item,
            "stages": {s: {"greedy": mean[f"greedy/{s}"]} for s in ("cold_start", "rft", "rl")},
            "scaling": {"voting": {"1": mean["voting@1"], "8": mean["voting@8"]}, "metarm": {"8": mean["metarm@8"]}},
            "ablation": {"no_principles_voting_8": mean["no_principles@8"]},
            "signal": sig.signal(per_item, sig.phenomena(CFG["ks"], CFG["metarm_ks"], CFG["ablation_k"]), seed=seed)}


def test_summary_gives_per_seed_and_mean_accuracy_and_pooled_verdicts(tmp_path, capsys):
    runs = [fake_run(s) for s in (0, 1, 2)]
    dirs = []
    for r in runs:
        d = tmp_path / f"seed{r['seed']}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(r))
        dirs.append(str(d))
    assert main(["--summarize", *dirs]) == 0
    out = capsys.readouterr().out
    assert out == summary_markdown(runs)
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| seed |"))
    assert header.split(" | ")[1:4] == ["cold start", "RFT", "RL"] and "MetaRM@8" in header
    mean_row = next(line for line in lines if line.startswith("| mean |")).split(" | ")
    want = np.mean([r["stages"]["rft"]["greedy"] for r in runs])
    assert mean_row[2] == f"{100 * want:.1f}"
    # Principles help on every item of every seed: a zero-width interval at +100 points, "holds" everywhere.
    row = next(line for line in lines if line.startswith("| principles help"))
    assert row.count("+100.0 [+100.0, +100.0] holds") == 4  # 3 seeds + pooled
    assert "pooled (120 items)" in out
    meta = next(line for line in lines if line.startswith("| MetaRM@8 > Voting@8"))
    assert meta.count("within noise") == 4  # identical vectors: difference 0 everywhere


def test_summary_refuses_missing_runs(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--summarize", str(tmp_path / "nothing")])
