"""`spct demo --summarize DIR...`: one markdown summary of several demo runs (e.g. seeds 0, 1, 2), for the README.

It prints two tables from each run's results.json:
  * held-out accuracy (%) per seed and their mean, for the greedy stages, Voting@k, MetaRM@k and the
    no-principles ablation;
  * each phenomenon's paired difference (points) with its 95% bootstrap interval and verdict per seed, and pooled:
    the per-item vectors of every run concatenated (the runs' items are different draws of the same task), the
    same bootstrap over the pooled items.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from spct_jax.demo import significance as sig


def read_runs(dirs: Sequence[str | Path]) -> list[dict]:
    runs = []
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (give the --workdir of finished demo runs)")
        runs.append(json.loads(path.read_text()))
    return runs


def _columns(run: Mapping) -> list[tuple[str, float]]:
    cols = [("cold start", run["stages"]["cold_start"]["greedy"]), ("RFT", run["stages"]["rft"]["greedy"]),
            ("RL", run["stages"]["rl"]["greedy"])]
    cols += [(f"Voting@{k}", v) for k, v in run["scaling"]["voting"].items()]
    cols += [(f"MetaRM@{k}", v) for k, v in run["scaling"]["metarm"].items()]
    cols += [(f"w/o principles @{name.rsplit('_', 1)[-1]}", v) for name, v in run["ablation"].items()]
    return cols


def accuracy_table(runs: Sequence[Mapping]) -> list[str]:
    names = [name for name, _ in _columns(runs[0])]
    for r in runs[1:]:
        if [name for name, _ in _columns(r)] != names:
            raise ValueError("the runs measure different methods (different demo configurations); summarize "
                             "runs of one configuration")
    lines = ["| seed | " + " | ".join(names) + " | wall (s) |", "|---" * (len(names) + 2) + "|"]
    values = np.array([[v for _, v in _columns(r)] for r in runs])  # [runs, methods]
    for r, row in zip(runs, values):
        lines.append(f"| {r['seed']} | " + " | ".join(f"{100 * v:.1f}" for v in row) + f" | {r['wall_seconds']:.0f} |")
    if len(runs) > 1:
        lines.append("| mean | " + " | ".join(f"{100 * v:.1f}" for v in values.mean(axis=0)) + " | |")
    return lines


def _cell(row: Mapping) -> str:
    return f"{100 * row['diff']:+.1f} [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}] {row['verdict']}"


def signal_table(runs: Sequence[Mapping]) -> list[str]:
    """Per seed and pooled: difference [interval] verdict for every phenomenon the first run measured."""
    if not all(r.get("signal") and r.get("per_item") for r in runs):
        return ["(no per-item results in these runs: rerun them with the current demo)"]
    cfg = runs[0]["config"]
    comparisons = sig.phenomena(cfg["ks"], cfg["metarm_ks"], cfg["ablation_k"])
    pooled_items = {key: [x for r in runs for x in r["per_item"][key]]
                    for _, a, b in comparisons for key in (a, b)}
    pooled = sig.signal(pooled_items, comparisons, seed=0)
    head = [f"seed {r['seed']}" for r in runs] + ([f"pooled ({len(pooled_items[comparisons[0][1]])} items)"]
                                                   if len(runs) > 1 else [])
    lines = ["| phenomenon (A - B, points) | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for i, (name, _, _) in enumerate(comparisons):
        cells = []
        for r in runs:
            row = next((x for x in r["signal"] if x["phenomenon"] == name), None)
            cells.append("n/a" if row is None else _cell(row))
        if len(runs) > 1:
            cells.append(_cell(pooled[i]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def summary_markdown(runs: Sequence[Mapping]) -> str:
    if not runs:
        raise ValueError("no runs to summarize")
    return "\n".join([
        "Held-out accuracy (%):", "", *accuracy_table(runs), "",
        f"Paired differences with {int(100 * sig.LEVEL)}% bootstrap intervals over the held-out items "
        f"({sig.RESAMPLES} resamples) and verdicts:", "", *signal_table(runs)]) + "\n"


def main(dirs: Sequence[str]) -> int:
    print(summary_markdown(read_runs(dirs)), end="")
    return 0


__all__ = ["accuracy_table", "main", "read_runs", "signal_table", "summary_markdown"]
