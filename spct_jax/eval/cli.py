"""`spct eval score` and `spct eval run`: the command lines over the evaluation library.

    spct eval score --benchmark rewardbench --data rb.jsonl --predictions pred.jsonl [--json]
    spct eval run --model DIR --benchmark B --data PATH --k 1,8,32 --out DIR      (see eval/run.py)

`spct eval score` scores any judge's predictions on a benchmark with its official rules
(benchmarks.score_predictions); `spct eval run` builds an `EvalOptions` from its flags (and `--config`'s fields
for the flags not given) and calls `run.evaluate`, or `run_all.evaluate_all` for `--benchmark all`.

Predictions are read by the benchmark's own reader (benchmarks.load_benchmark_predictions: JudgeBench's has one
line per pair and order shown), and the uids a file may hold are the benchmark's (benchmarks.expected_uids: PPE
conflict pairs, RM-Bench comparisons). Every file `spct eval run` writes as predictions*.jsonl scores here to the
numbers in its results.json.

Exit status of `score`: 0 scored; 1 bad data, predictions or options (the message names file:line or the uid);
2 bad command line. `run`: as eval/run.py says.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from spct_jax.eval import run
from spct_jax.eval.benchmarks import BENCHMARK_INFO, BENCHMARKS, score_predictions
from spct_jax.eval.metrics import TIE_RULES
from spct_jax.eval.run import ALL, DEFAULTS, PROG, EvalOptions, evaluate


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
        got = score_predictions(args.benchmark, args.data, args.predictions, format=args.format,
                                strict=args.strict, **_options(args))
    except (ValueError, OSError) as e:
        # DataError and PredictionError are ValueErrors; so are an option the benchmark does not take and a
        # metric undefined on the data (ROC-AUC with one class).
        print(f"spct eval score: error: {e}", file=sys.stderr)
        return 1
    if got.unmatched:
        print(f"spct eval score: note: {len(got.unmatched)} predictions match no item and were not used",
              file=sys.stderr)
    if not got.scores:
        print("spct eval score: error: no items to score", file=sys.stderr)
        return 1
    results = got.scores
    print(json.dumps(results) if args.json else _table(args.benchmark, got.num_items, results))
    return 0


# -- spct eval run -------------------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,8,32, got {text!r}") from None


def parse_ks(text: str) -> list[int]:
    """--k '1,8,32' -> [1, 8, 32] (sorted, unique, each >= 1)."""
    ks = sorted(set(_int_list(text)))
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"every k must be >= 1, got {text!r}")
    return ks


def build_run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=run.__doc__.split("\n\n")[0], epilog=benchmarks_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="GRM: checkpoint folder, .gguf file, tiny-random or smollm2-135m")
    p.add_argument("--meta-rm", default=None, metavar="DIR",
                   help="meta RM folder: an HF sequence-classification checkpoint (its own tokenizer files are used "
                        "if it has them, else the GRM's tokenizer), or a likelihood meta RM (likelihood_meta_rm.json)")
    p.add_argument("--benchmark", required=True, choices=[*sorted(BENCHMARKS), ALL],
                   help="the benchmark's rules score the run ('items': your own {context, responses, best|rewards} "
                        "lines); 'all': every benchmark found under --data-dir")
    p.add_argument("--data", action="extend", nargs="+", metavar="PATH",
                   help="benchmark data files or folders (read recursively); not with --benchmark all")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="--benchmark all: a folder with one subfolder per benchmark (DIR/judgebench/*.jsonl, "
                        "DIR/rewardbench/*.jsonl, DIR/rmb/{Pairwise_set,BoN_set}/, DIR/ppe/, ...; eval/run_all.py)")
    p.add_argument("--format", default=None, help="data format for the reader (default: detected)")
    p.add_argument("--k", type=parse_ks, default=None, metavar="K[,K...]",
                   help="samples per item (per order, when judged in two); several (1,8,32) give a scaling curve "
                        "from one max(k) run (default 8)")
    p.add_argument("--k-meta", type=_int_list, default=None, metavar="KM[,KM...]",
                   help="samples the meta RM keeps, one per k in ascending k order (default: k/2 rounded up)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder, local or gs:// (created if missing)")
    p.add_argument("--limit", type=int, default=None,
                   help="judge only the first N data items (per benchmark with 'all'); an item judged in parts "
                        "(PPE conflict pairs, RM-Bench pairs, Ties ratings, two orders) counts once")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 512")
    p.add_argument("--temperature", type=float, default=None, help="default: 0.5 (paper) if max k > 1, else 0")
    p.add_argument("--seed", type=int, default=None, help="sampling, shuffle and tie-break seed (default 0)")
    p.add_argument("--template", default="default", help="GRM prompt template")
    p.add_argument("--batch-items", type=int, default=None,
                   help="items per sampler call, and per chunk kept for a resume (default 8)")
    p.add_argument("--both-orders", action="store_true",
                   help="judge every pair in both orders (shuffle off), score Voting over both, and report the "
                        "position consistency (judgebench: the default)")
    p.add_argument("--single-game", action="store_true",
                   help="judgebench: judge each pair in the original order only (JudgeBench's --single_game)")
    p.add_argument("--ties", choices=TIE_RULES, default=None, help="scoring tie rule (default: the benchmark's)")
    p.add_argument("--prior-sets", action="store_true", help="rewardbench: [2,2,2,2,1] average with prior sets")
    p.add_argument("--details", action="store_true",
                   help="add per-subset scores (rewardbench, rmb, judgebench, rewardbench2, rmbench)")
    p.add_argument("--subset", default=None, help="ppe: the correctness set of all the data")
    p.add_argument("--threshold", type=float, default=None,
                   help="realmistake: predict 'error' iff the per-sample mean score < threshold (default 5.5, "
                        "the midpoint of the 1-10 scale; the same for every k, as predictions are means)")
    p.add_argument("--viewer-limit", type=int, default=500, help="items shown in viewer.html (default 500)")
    from spct_jax.grm.judge import add_runtime_args

    add_runtime_args(p)
    return p


def parse_run_args(argv: Sequence[str]) -> EvalOptions:
    """The command line as EvalOptions, with --config's fields for the flags not given (grm/judge.py);
    SystemExit(2) if bad."""
    from spct_jax.grm.judge import parse_args as parse

    parser = build_run_parser()
    args = parse(parser, list(argv), DEFAULTS)
    if isinstance(args.k, int):  # a config's inference.k / k_meta are single values
        args.k = [args.k]
    if isinstance(args.k_meta, int):
        args.k_meta = [args.k_meta]
    if args.benchmark == ALL:
        if args.data_dir is None or args.data is not None:
            parser.error("--benchmark all takes --data-dir DIR (one subfolder per benchmark), not --data")
    elif args.data is None or args.data_dir is not None:
        parser.error(f"--benchmark {args.benchmark} takes --data PATH (--data-dir is for --benchmark all)")
    return EvalOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalOptions)})


def run_main(argv: Sequence[str]) -> int:
    """`spct eval run ...`; the exit status (eval/run.py's module docstring)."""
    try:
        options = parse_run_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on bad usage (2); return it as a status
        return int(e.code or 0)
    from spct_jax.grm.judge import JudgeError

    try:
        if options.benchmark == ALL:
            from spct_jax.eval.run_all import evaluate_all

            result = evaluate_all(options)
        else:
            result = evaluate(options)
    except JudgeError as e:  # a --model / --meta-rm / --mesh that cannot be used, a resume that does not match
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except (ValueError, OSError) as e:  # DataError, PredictionError, ConfigError, TokenizerError are ValueErrors
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    if result.markdown is not None:
        print(result.markdown, end="")
    return 0


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
        return run_main(list(argv[1:]))
    print(f"spct eval: unknown subcommand {argv[0]!r} (known: score, run)", file=sys.stderr)
    return 2
