"""The demo's outputs: report.md (shaped like the paper's Table 3), results.json, scaling.png, learning_curves.png."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spct_jax.demo.significance import LEVEL, RESAMPLES, signal_markdown  # noqa: E402
from spct_jax.train.metrics import read_jsonl_metrics  # noqa: E402

STAGES = (("cold_start", "Cold start (\"pretrained GRM\")"), ("rft", "RFT"), ("rl", "RFT + GRPO"))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report_markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [
        "# spct demo: SPCT on the toy task (held-out accuracy, %)", "",
        f"seed {results['seed']}; {cfg['sizes']}; tiny Llama-block decoder d={cfg['d_model']}, "
        f"{cfg['num_layers']} layers; wall {results['wall_seconds']:.0f} s", "",
        "## Training stages (greedy, T = 0)", "", "| stage | accuracy | parse rate |", "|---|---|---|",
    ]
    for key, name in STAGES:
        s = results["stages"][key]
        lines.append(f"| {name} | {_pct(s['greedy'])} | {_pct(s['parse_rate'])} |")
    lines += ["", "## Inference-time scaling (RFT + GRPO model, T = 0.5), cf. the paper's Table 3", "",
              "| method | k | accuracy | vs Voting@1 |", "|---|---|---|---|"]
    base = results["scaling"]["voting"].get("1")
    for k, acc in results["scaling"]["voting"].items():
        delta = "" if base is None else f"{100 * (acc - base):+.1f}"
        lines.append(f"| Voting | {k} | {_pct(acc)} | {delta} |")
    for k, acc in results["scaling"]["metarm"].items():
        delta = "" if base is None else f"{100 * (acc - base):+.1f}"
        lines.append(f"| MetaRM (k_meta = k/2) | {k} | {_pct(acc)} | {delta} |")
    for name, acc in results["ablation"].items():
        k = name.rsplit("_", 1)[-1]
        lines.append(f"| Voting w/o principle generation | {k} | {_pct(acc)} | "
                     f"{'' if base is None else f'{100 * (acc - base):+.1f}'} |")
    if results.get("signal"):
        n = results["signal"][0]["n"]
        lines += ["", "## What is signal", "",
                  f"Each phenomenon as a paired difference A - B over the {n} held-out items, with a {int(100 * LEVEL)}% "
                  f"bootstrap interval ({RESAMPLES} resamples of the items, seeded). \"holds\": the interval is above 0; "
                  "\"within noise\": it contains 0; \"reversed\": it is below 0. The interval covers the choice of "
                  "items, not the training seed's own variance.", "", *signal_markdown(results["signal"])]
    m = results.get("metarm", {})
    st = results["stats"]
    head = {"likelihood": "the frozen cold-start LM's mean log-likelihood of the trajectory after the GRM prompt, "
                          f"scale {m.get('scale', float('nan')):.3g} and bias {m.get('bias', float('nan')):.3g} fit by "
                          "BCE (ours, not the paper's head; grm/likelihood_meta_rm.py)",
            "last_token": "the paper's last-token scalar head on the cold-start backbone, fine-tuned by BCE"}
    lines += ["", "## Details", "",
              f"- meta RM: {head.get(m.get('head'), m.get('head'))}",
              f"- meta RM held-out ROC-AUC {m.get('auc', float('nan')):.3f}, accuracy {m.get('accuracy', float('nan')):.3f} "
              f"on {int(m.get('n', 0))} trajectories; class balance {json.dumps(st.get('metarm_balance'))}"]
    ev = m.get("eval_samples")
    if ev:
        lines.append(f"- meta RM on the T = 0.5 samples of the held-out items: ROC-AUC {ev['auc']:.3f} over all samples, "
                     f"{ev['within_item_auc']:.3f} within items ({int(ev['mixed_items'])} items with both correct and "
                     "wrong samples; MetaRM@k ranks within an item)")
    for k, c in results.get("controls", {}).get("metarm_random", {}).items():
        lines.append(f"- control, MetaRM@{k} with random meta scores (a random k/2 kept): {_pct(c['mean'])} "
                     f"(sd {_pct(c['sd'])} over {int(c['draws'])} draws) against the meta RM's "
                     f"{_pct(results['scaling']['metarm'][k])}")
    lines += [f"- RFT rejective sampling: {json.dumps(st.get('rft'))}"]
    if st.get("rl_filter"):
        lines.append(f"- RL too-easy filter (cold start, 3 samples per item): {json.dumps(st['rl_filter'])}")
    lines += [
              f"- parse rate of T = 0.5 samples: {_pct(results.get('parse_rate_sampled', 0.0))}",
              "- accuracy = the voted best response equals the ground-truth best; ties are broken by a seeded "
              "shuffle (the paper's rule); Voting@k / MetaRM@k use the first k of the " f"{max(int(k) for k in results['scaling']['voting'])} samples drawn per item."]
    return "\n".join(lines) + "\n"


def scaling_plot(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    v = results["scaling"]["voting"]
    ax.plot([int(k) for k in v], [100 * x for x in v.values()], "o-", label="Voting@k")
    m = results["scaling"]["metarm"]
    if m:
        ax.plot([int(k) for k in m], [100 * x for x in m.values()], "s-", label="MetaRM@k (k_meta = k/2)")
    for key, name in STAGES:
        ax.axhline(100 * results["stages"][key]["greedy"], ls=":", lw=1, color="gray")
        ax.text(1, 100 * results["stages"][key]["greedy"], f" {name} greedy", fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def learning_curves(workdir: Path, path: Path) -> None:
    panels = (("cold_start", "loss"), ("rft", "loss"), ("grpo", "reward_mean"), ("metarm", "loss"))
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3))
    for ax, (stage, key) in zip(axes, panels):
        f = workdir / stage / "metrics.jsonl"
        if f.exists():
            rows = read_jsonl_metrics(f)
            steps = sorted(s for s in rows if key in rows[s])
            ax.plot(steps, [rows[s][key] for s in steps])
        else:  # the likelihood meta RM has no training curve: two parameters fit by Newton's method
            ax.text(0.5, 0.5, "no training curve", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_title(f"{stage}: {key}", fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(workdir: Path, results: dict, judgements, items) -> None:
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    (workdir / "report.md").write_text(report_markdown(results))
    scaling_plot(results, workdir / "scaling.png")
    learning_curves(workdir, workdir / "learning_curves.png")
    with open(workdir / "judgements_sample.jsonl", "w", encoding="utf-8") as f:
        for j in judgements:
            f.write(json.dumps(j.to_json()) + "\n")
