"""`spct eval score`: score any judge's predictions on a benchmark with its official rules.

    spct eval score --benchmark rewardbench --data rb.jsonl --predictions pred.jsonl [--json]

Predictions are read by the benchmark's own reader (benchmarks.load_benchmark_predictions: JudgeBench's has one
line per pair and order shown), and the uids a file may hold are the benchmark's (benchmarks.expected_uids: PPE
conflict pairs, RM-Bench comparisons). Every file `spct eval run` writes as predictions*.jsonl scores here to the
numbers in its results.json.

Exit status: 0 scored; 1 bad data, predictions or options (the message names file:line or the uid);
2 bad command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from spct_jax.data.schema import PreferenceItem
from spct_jax.eval import ppe
from spct_jax.eval.benchmarks import (BENCHMARK_INFO, BENCHMARKS, expected_uids, load_benchmark_predictions,
                                      score_benchmark)
from spct_jax.eval.metrics import TIE_RULES
from spct_jax.eval.predictions import PredictionError


def benchmarks_epilog() -> str:
    """Every benchmark with its rule and the official source it follows (BENCHMARK_INFO), for --help."""
    width = max(map(len, BENCHMARK_INFO))
    lines = ["benchmarks (--benchmark NAME: rule; source):"]
    for name, (rule, source) in BENCHMARK_INFO.items():
        lines += [f"  {name:<{width}}  {rule}", f"  {'':<{width}}  source: {source}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spct eval score", description=__doc__.split("\n\n")[0],
                                epilog=benchmarks_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    p.add_argument("--data", required=True, action="extend", nargs="+", metavar="PATH",
                   help="benchmark data files or folders (read recursively), e.g. RMB's pairwise and BoN sets")
    p.add_argument("--format", default=None, help="data format for the reader (default: detected from the fields)")
    p.add_argument("--predictions", required=True, metavar="PRED.jsonl",
                   help='one {"uid": ..., "scores": [...]} line per item, scores in the original response order '
                        "(ppe correctness: per conflict pair, uid question_id+j, or per question with all K scores; "
                        "rmbench: whole (6 scores) or per comparison, uid <uid>+c<i>r<j>; judgebench: one "
                        '{"uid", "order": "AB"|"BA", "scores": [s_A, s_B] | null} line per order shown; '
                        "realmistake: an item without a line counts as failed)")
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by section name")
    p.add_argument("--ties", choices=TIE_RULES, default=None,
                   help="tie rule (default per benchmark: rewardbench, ppe, rewardbench2, items half; rmb, rmbench "
                        "wrong; judgebench takes none: a tie is the verdict A=B)")
    p.add_argument("--seed", type=int, default=None, help="seed of the 'random' tie-break")
    p.add_argument("--prior-sets", action="store_true", help="rewardbench: [2,2,2,2,1] average with prior sets")
    p.add_argument("--details", action="store_true",
                   help="rewardbench, rmb: per-subset accuracies; judgebench: per source; rewardbench2: the Ties "
                        "formula's terms; rmbench: each domain's Easy/Normal/Hard")
    p.add_argument("--single-game", action="store_true",
                   help="judgebench: score the AB lines only, with JudgeBench's --single_game rule")
    p.add_argument("--threshold", type=float, default=None,
                   help="realmistake: predict 'error' iff score < threshold (default 5.5, the midpoint of the "
                        "1-10 scale; spct eval run's predictions are per-sample means)")
    p.add_argument("--subset", default=None,
                   help="ppe: the correctness set of all the data (mmlu_pro, math, gpqa, ifeval, mbpp_plus); "
                        "default: the set named in each data path")
    p.add_argument("--strict", action="store_true", help="fail on predictions that match no item")
    # (each scorer checks that every item it needs has a prediction; --strict adds the converse)
    return p


def _options(args: argparse.Namespace) -> dict:
    """Only the options the user gave, so each benchmark keeps its own defaults and rejects what it lacks."""
    opts = {"ties": args.ties, "seed": args.seed, "threshold": args.threshold, "subset": args.subset}
    opts = {k: v for k, v in opts.items() if v is not None}
    if args.prior_sets:
        opts["prior_sets"] = True
    if args.details:
        opts["details"] = True
    if args.single_game:
        opts["single_game"] = True
    return opts


def _read(paths: Sequence[str], format: str | None, benchmark: str) -> list[PreferenceItem]:
    from spct_jax.data.formats import data_files, read_preferences  # the readers pull in more than scoring needs

    items: list[PreferenceItem] = []
    for src in paths:
        for path in data_files(src):
            got = read_preferences(path, format=format)
            # PPE correctness rows do not name their set (MMLU-Pro, MATH, ...); the file's name usually does
            # (PPE-MATH-Best-of-K...), so record it where the item has none. --subset overrides it in scoring.
            # Only the path from the named folder on is read, so that no unrelated parent folder name counts.
            named = Path(src).name + "/" + path.relative_to(src).as_posix() if Path(src).is_dir() else path.name
            found = ppe.parse_correctness_set(named) if benchmark == "ppe" else None
            if found is not None:
                got = [dataclasses.replace(it, meta={**it.meta, "benchmark": found})
                       if ppe.is_correctness(it) and "benchmark" not in it.meta else it for it in got]
            items += got
    return items


def _table(name: str, n_items: int, results: dict[str, float]) -> str:
    width = max(len(k) for k in results)
    lines = [f"{name}: {n_items} items (%)"]
    lines += [f"  {k:<{width}}  {100 * v:6.2f}" for k, v in results.items()]
    return "\n".join(lines)


def score_main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on bad usage (2); return it as a status
        return int(e.code or 0)
    try:
        items = _read(args.data, args.format, args.benchmark)
        preds = load_benchmark_predictions(args.benchmark, args.predictions)
        expected = expected_uids(args.benchmark, items, preds)
        extra = [u for u in preds if u not in expected]
        if args.strict and extra:
            shown = ", ".join(repr(u) for u in extra[:5]) + (", ..." if len(extra) > 5 else "")
            raise PredictionError(f"{len(extra)} predictions match no item: uid {shown}")
        results = score_benchmark(args.benchmark, items, preds, **_options(args))
    except (ValueError, OSError) as e:
        # DataError and PredictionError are ValueErrors; so are an option the benchmark does not take and a
        # metric undefined on the data (ROC-AUC with one class).
        print(f"spct eval score: error: {e}", file=sys.stderr)
        return 1
    if extra:
        print(f"spct eval score: note: {len(extra)} predictions match no item and were not used", file=sys.stderr)
    if not results:
        print("spct eval score: error: no items to score", file=sys.stderr)
        return 1
    print(json.dumps(results) if args.json else _table(args.benchmark, len(items), results))
    return 0


if __name__ == "__main__":
    sys.exit(score_main())


def main(argv: Sequence[str]) -> int:
    """`spct eval score ...` (score predictions) or `spct eval run ...` (run a GRM, then score)."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: spct eval score --benchmark B --data PATH --predictions F [--json]\n"
              "       spct eval run --model M --benchmark B --data PATH --k 8 --out DIR\n"
              "       spct eval run --model M --benchmark all --data-dir DIR --k 8 --out DIR\n"
              "                     [--mesh data=D,fsdp=F,tensor=T] [--dtype D] [--config FILE]")
        return 0 if argv else 2
    if argv[0] == "score":
        return score_main(list(argv[1:]))
    if argv[0] == "run":
        from spct_jax.eval.run import run_main

        return run_main(list(argv[1:]))
    print(f"spct eval: unknown subcommand {argv[0]!r} (known: score, run)", file=sys.stderr)
    return 2
