"""`spct eval run --benchmark all --data-dir DIR`: every benchmark whose files are under DIR, one GRM load, one
table.

Layout of DIR (a benchmark without its folder, or with no data file in it, is not run; other folders are ignored):
  DIR/rewardbench/*.jsonl        RewardBench rows (the folder's own files only: a subfolder such as the shared
                                 sample's llmbar_source/ holds the upstream files its llmbar.jsonl was made from)
  DIR/ppe/**                     PPE human-preference and correctness files (a correctness file's name, or its
                                 folder's, names its set: PPE-MATH-Best-of-K..., or --subset for one set)
  DIR/rmb/Pairwise_set/**, DIR/rmb/BoN_set/**   RMB's two folders as in its RMB_dataset/ (MANIFEST.json is no data)
  DIR/realmistake/**             ReaLMistake rows
  DIR/judgebench/*.jsonl         JudgeBench pairs (the folder's own files: the shared sample's outputs/ holds
                                 recorded verdicts); every file there is pooled into one score, so keep the
                                 GPT-4o pairs alone there to compare with JudgeBench's leaderboard
  DIR/rewardbench2/**, DIR/rmbench/**   RewardBench 2 rows, RM-Bench files (their names give the domain)
  DIR/items/**                   your own {"context", "responses", "best"|"rewards"} lines (eval/items.py)
(** = every data file below, recursively.) The test data's sample (judgebench/, rewardbench/, rmb/) has this
layout.

Each benchmark runs as `spct eval run --benchmark NAME --data <its files> --out OUT/NAME` would, with the same
model, k, seed and flags: OUT/NAME/ gets its predictions, items.jsonl, results, plot and viewer. Flags that belong
to some benchmarks go to those only: --ties, --details, --prior-sets, --subset, --threshold to the scorers that take
them, --single-game to JudgeBench, --both-orders to the benchmarks with pairs. --limit counts each benchmark's data
items. Then OUT/results.json and OUT/results.md hold one table: each benchmark's headline score(s) for every
method@k, the paper's Overall (mean of RewardBench, PPE Preference, PPE Correctness, RMB) when all four are there,
and the unweighted mean of every headline score in the table (ReaLMistake's ROC-AUC included; not a paper number).

Resuming. A benchmark whose OUT/NAME/results.json exists was finished: a rerun skips it if it was judged with the
same settings and items (results.json's fingerprint, the judge store's), re-scores it from its items.jsonl
without judging if only scoring options changed, and refuses (exit 2, naming the fields) if the judging settings
differ. An unfinished benchmark resumes from its finished chunks (OUT/NAME/.judging, grm/judge_store.py). A SIGTERM
stops after the chunk in flight (exit 0, no table); the same command goes on from there.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spct_jax import paths
from spct_jax.eval.benchmarks import HEADLINE_KEYS, OVERALL_PARTS
from spct_jax.eval.run import (PROG, EvalOptions, EvalResult, Prepared, artifacts, fingerprint, judge_and_write,
                               load_judge, make_plan, prepare)
from spct_jax.eval.run_outputs import run_label, write_outputs

# Benchmarks in table order (the paper's four, ReaLMistake, then the others), and where each one's data lies:
# "*" the folder's own data files, "**" every data file below it, "<sub>/**" below that subfolder.
LAYOUT: dict[str, tuple[str, ...]] = {
    "rewardbench": ("*",), "ppe": ("**",), "rmb": ("Pairwise_set/**", "BoN_set/**"), "realmistake": ("**",),
    "judgebench": ("*",), "rewardbench2": ("**",), "rmbench": ("**",), "items": ("**",),
}
RESULTS = "results.json"


def discover(data_dir: str | Path) -> tuple[dict[str, list[str]], list[str]]:
    """({benchmark: the --data paths of its files}, notes on folders that hold nothing runnable) for DIR."""
    from spct_jax.data.formats import data_files
    from spct_jax.data.readers.files import is_data_file

    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"--data-dir {data_dir}: no such folder")
    found: dict[str, list[str]] = {}
    notes: list[str] = []
    for name, patterns in LAYOUT.items():
        folder = root / name
        if not folder.is_dir():
            continue
        data: list[str] = []
        for pattern in patterns:
            if pattern == "*":
                data += [str(p) for p in sorted(folder.iterdir()) if is_data_file(p)]
                continue
            sub = folder / pattern.removesuffix("**").rstrip("/")
            if sub.is_dir() and data_files(sub):
                data.append(str(sub))  # the folder, not its files: a PPE file's set may be named by its folder
        if data:
            found[name] = data
        else:
            want = ", ".join(f"{name}/{p}" for p in patterns)
            notes.append(f"{folder}: no data file where {name} is read from ({want}); not run")
    ignored = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in LAYOUT)
    if ignored:
        notes.append(f"{root}: not benchmark folders, ignored: {', '.join(ignored)}")
    return found, notes


def benchmark_args(args: EvalOptions, name: str, data: list[str]) -> EvalOptions:
    """The per-benchmark run: `--benchmark NAME --data <its files> --out OUT/NAME`, other options shared
    (--single-game only for JudgeBench)."""
    return dataclasses.replace(args, benchmark=name, data=data, data_dir=None, out=str(paths.as_path(args.out) / name),
                               single_game=args.single_game and name == "judgebench")


def _differences(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    return "; ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in keys)


def finished_state(prep: Prepared, full_fingerprint: Mapping[str, Any]) -> str:
    """Process 0: "new" (no results yet), "done" (finished with these settings and scoring options), "rescore"
    (finished, scoring options changed); JudgeError if finished with other judging settings."""
    from spct_jax.grm.judge import JudgeError

    path = paths.as_path(prep.args.out) / RESULTS
    if not path.exists():
        return "new"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise JudgeError(f"{path}: unreadable ({e}); delete {path.parent} to run {prep.benchmark} again", 1) from None
    theirs = results.get("fingerprint") or {}
    if theirs != dict(full_fingerprint):
        raise JudgeError(f"{path.parent} holds {prep.benchmark} results judged with other settings or items "
                         f"({_differences(theirs, full_fingerprint)}); rerun with the settings it was run with, "
                         "delete it, or choose another --out")
    return "done" if results.get("score_options") == prep.score_options() else "rescore"


def rescore(prep: Prepared, full_fingerprint: Mapping[str, Any]) -> None:
    """Process 0: score a finished benchmark again from its items.jsonl with the current scoring options."""
    out = paths.as_path(prep.args.out)
    old = json.loads((out / RESULTS).read_text())
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines() if line.strip()]
    write_outputs(out, artifacts(prep, rows, fingerprint=full_fingerprint, elapsed_s=old.get("elapsed_s", 0.0)))


def summary(args: EvalOptions, names: list[str]) -> dict[str, Any]:
    """OUT/results.json's content, from each benchmark's OUT/NAME/results.json (process 0)."""
    labels: list[str] = []
    benchmarks: dict[str, Any] = {}
    for name in names:
        res = json.loads((paths.as_path(args.out) / name / RESULTS).read_text())
        runs = res["runs"]
        labels += [run_label(r) for r in runs if run_label(r) not in labels]
        keys = [key for key in HEADLINE_KEYS[name] if any(key in r["scores"] for r in runs)]
        headline = max(runs, key=lambda r: (r["k"], r["method"] == "metarm"))  # MetaRM, else Voting, at max k
        benchmarks[name] = {"data": res["data"], "items": res["items"], "benchmark_items": res["benchmark_items"],
                            "orders": res.get("orders"), "parse_rate": res["parse_rate"],
                            "scores": {key: {run_label(r): r["scores"][key] for r in runs if key in r["scores"]}
                                       for key in keys},
                            "consistency": headline.get("consistency")}
    flat = {key: values for b in benchmarks.values() for key, values in b["scores"].items()}
    mean = {label: sum(v[label] for v in flat.values()) / len(flat) for label in labels
            if flat and all(label in v for v in flat.values())}
    overall = None
    if all(part in flat for part in OVERALL_PARTS):
        overall = {label: sum(flat[p][label] for p in OVERALL_PARTS) / len(OVERALL_PARTS) for label in labels
                   if all(label in flat[p] for p in OVERALL_PARTS)}
    return {"model": str(args.model), "meta_rm": args.meta_rm, "data_dir": str(args.data_dir), "runs": labels,
            "benchmarks": benchmarks, "overall": overall, "overall_parts": list(OVERALL_PARTS), "mean": mean,
            "mean_of": list(flat)}


def summary_markdown(s: Mapping[str, Any]) -> str:
    labels = s["runs"]
    consistent = any(b["consistency"] for b in s["benchmarks"].values())
    head = ["benchmark", "score", *labels, "items"] + (["Inconsistent"] if consistent else [])
    lines = [f"# spct eval run --benchmark all: {s['model']}", "", "| " + " | ".join(head) + " |",
             "|---|---|" + "---:|" * (len(head) - 2)]

    def pct(values: Mapping[str, float], label: str) -> str:
        return f"{100 * values[label]:.2f}" if label in values else "-"

    for name, b in s["benchmarks"].items():
        items = str(b["benchmark_items"]) + (f" ({b['items']} judged)" if b["items"] != b["benchmark_items"] else "")
        inconsistent = [pct(b["consistency"], "Inconsistent") if b["consistency"] else "-"] if consistent else []
        for key, values in b["scores"].items():
            lines.append("| " + " | ".join([name, key, *(pct(values, lb) for lb in labels), items, *inconsistent])
                         + " |")
    tail = [""] * (1 + consistent)
    if s["overall"] is not None:
        lines.append("| Overall | paper: mean of " + ", ".join(s["overall_parts"]) + " | "
                     + " | ".join([*(pct(s["overall"], lb) for lb in labels), *tail]) + " |")
    lines.append(f"| Mean | of the {len(s['mean_of'])} scores above | "
                 + " | ".join([*(pct(s["mean"], lb) for lb in labels), *tail]) + " |")
    lines += ["", "Scores in %, each by its benchmark's official rules; per-benchmark artifacts in OUT/<benchmark>/. "
              "Overall is the paper's (only with all four of its parts); Mean is the unweighted mean of every "
              "score row, not a paper number."
              + (" Inconsistent: pairs judged in both orders whose verdicts differ (headline run)." if consistent
                 else "")]
    return "\n".join(lines) + "\n"


def evaluate_all(args: EvalOptions, *, grm=None, runtime=None, show_progress: bool = True) -> EvalResult:
    """`spct eval run --benchmark all` (module docstring): every benchmark under `args.data_dir`, then the table.
    -> EvalResult (results: OUT/results.json's content, markdown: the table; on process 0). `grm` / `runtime`: as
    `run.evaluate`. Raises ValueError / OSError for bad data or options (before any model work), JudgeError for a
    model, mesh or finished benchmark that cannot be used."""
    from spct_jax.grm.judge import setup_runtime
    from spct_jax.grm.judge_store import JudgeStore, any_process, on_main

    if args.format is not None:
        raise ValueError("--format names one reader; with --benchmark all each benchmark's is detected")
    if args.data_dir is None:
        raise ValueError("--benchmark all takes --data-dir DIR (one subfolder per benchmark)")
    plan = make_plan(args)
    found, notes = discover(args.data_dir)
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if not found:
        raise ValueError(f"--data-dir {args.data_dir}: no benchmark data in the layout "
                         f"{', '.join(f'{n}/' for n in LAYOUT)} (eval/run_all.py)")
    preps: dict[str, Prepared] = {}
    for name, data in found.items():
        try:
            preps[name] = prepare(benchmark_args(args, name, data), plan, lenient=True)
        except ValueError as e:  # say which benchmark; an OSError names its file already
            raise ValueError(f"{name}: {e}") from None
    if runtime is None:
        runtime = setup_runtime(args.mesh, args.dtype, prog=PROG)
    loaded: list[Any] = [] if grm is None else [grm]

    def judge_model():  # loaded once, and only if some benchmark is to be judged
        if not loaded:
            loaded.append(load_judge(args, runtime))
        return loaded[0]

    for name, prep in preps.items():
        out = paths.as_path(prep.args.out)
        full = JudgeStore(out / ".judging", fingerprint=fingerprint(prep, runtime.dtype), items=prep.units).fingerprint
        state = on_main(lambda: finished_state(prep, full), f"reading {out / RESULTS}")
        # Process 0 alone reads --out; the others learn its answer (any_process is an all-gather).
        done, again = any_process(state == "done"), any_process(state == "rescore")
        if done:
            print(f"{PROG}: {name}: finished earlier with these settings; skipped", file=sys.stderr)
            continue
        if again:
            on_main(lambda: rescore(prep, full), f"writing {out}")
            print(f"{PROG}: {name}: finished earlier; re-scored with the new scoring options", file=sys.stderr)
            continue
        if judge_and_write(prep, runtime, judge_model, show_progress=show_progress and runtime.is_main).preempted:
            print(f"{PROG}: stopped during {name}; the same command resumes there (finished benchmarks are "
                  "skipped)", file=sys.stderr)
            return EvalResult(preempted=True)

    def write_summary() -> tuple[dict[str, Any], str]:
        s = summary(args, list(preps))
        md = summary_markdown(s)
        write_outputs(args.out, {RESULTS: (json.dumps(s, indent=2) + "\n").encode("utf-8"),
                                 "results.md": md.encode("utf-8")})
        return s, md

    written = on_main(write_summary, f"writing {args.out}")
    return EvalResult(preempted=False) if written is None else EvalResult(False, *written)
