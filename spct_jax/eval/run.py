"""`spct eval run`: judge a benchmark with a GRM (Voting@k, MetaRM@k), then score it with the official rules.

    spct eval run --model DIR [--meta-rm DIR] --benchmark B --data PATH --k 1,8,32 [--k-meta 4] --out DIR

Several k: each item is sampled max(k) times ONCE, and Voting@k / MetaRM@k for every k vote over the FIRST k of
those samples (a nested-subset estimate). Sample j of an item depends only on (seed, item, j) - its response order
and its sampling seed (scorer.py, voting.py) - so the first k samples are exactly what a separate `--k k` run
would draw; the estimates for different k are therefore correlated (they share samples), not independent runs.
MetaRM@k keeps the top k_meta of those k by meta score; k_meta defaults to k/2 (rounded up) for each k.
A prediction is the vote totals, so ties between responses are scored by the benchmark's own rule, exactly as
`spct eval score` would score the same file; `--ties random` gives the paper's seeded random tie-break instead.

What is judged is not always the data's item (results.json: `items` counts judged items, `benchmark_items` the
data's):
  ppe          a correctness question (32 responses) is judged as its conflict pairs, one 2-response item per
               pair with uid question_id+j (ppe.py: PPE's own pairwise view; 32 chain-of-thought answers do not fit
               one prompt). --limit counts questions, so every judged question is scored whole.
  realmistake  ROC-AUC and the threshold compare scores ACROSS items, and a sum over the samples that parsed
               depends on how many parsed (6 of 8 at 8 = 48 ranks below 8 of 8 at 7 = 56). The prediction is
               therefore the per-sample mean, totals / samples summed (the parsed ones for Voting, the kept ones
               for MetaRM), as serve's pointwise rewards; --threshold is per sample (default 5.5, on 1-10). An
               item none of whose samples parsed has no score and no predictions line: realmistake.py counts it
               under "Failed" and scores it as a failed judgement, never as an "error" verdict.

On a pod: `--mesh data=D,fsdp=F,tensor=T` (and `--dtype`, default bfloat16 with a mesh) shards the GRM and meta
RM over every device of every host, or `--config configs/X.py` takes the mesh, dtype, k, k_meta, temperature,
max_new_tokens and items per call from the run config (grm/judge.py). Start the same command on every host
(`launch/run.sh eval ...`): every process judges, process 0 writes. --out may be a gs:// folder.

Preemption: judged items are kept in chunks of --batch-items under `--out/.judging/` as they are done; a SIGTERM
stops after the chunk in flight (exit 0) and the same command resumes without judging them again
(grm/judge_store.py). The folder is removed once the artifacts are written.

Artifacts in --out (written only after every item is judged, each under a temporary name and then renamed, or on
gs:// uploaded whole, so a crash leaves no half-written file):
  predictions.jsonl            one {"uid", "scores"} line per judged item, Voting@k totals in the original response
                               order (realmistake: the per-sample mean; none for an item with no parsed sample)
  predictions_metarm.jsonl     the same for MetaRM@k (with --meta-rm)
    (several k: predictions_k{K}.jsonl and predictions_metarm_k{K}.jsonl, one per k; any of them scores with
    `spct eval score --predictions ...` to the numbers in results.json)
  items.jsonl                  per judged item: uid, source, meta, context, responses, ground truth (rewards, best),
                               samples [{permutation, text, principles, critique, scores (original order) | null,
                               error, meta_score, kept (in the headline vote)}], votes [{method, k, k_meta,
                               totals, best, kept, num_valid, num_failed}]
  results.json / results.md    the official scores per method@k, run settings, parse rate and the file list
  scaling.png                  headline score vs k, Voting and MetaRM lines (only with several k)
  viewer.html                  the critique viewer (report.py), first --viewer-limit items

Exit status: 0 done (or stopped by SIGTERM, resumable); 1 bad data or options, or a checkpoint that cannot be
read (nothing is written); 2 bad command line, a --model / --meta-rm naming nothing loadable, or a mesh that does
not fit the devices or the model.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from spct_jax import paths

from spct_jax.data.schema import DataError, PreferenceItem
from spct_jax.eval import ppe, realmistake, rewardbench, rmb
from spct_jax.eval.benchmarks import BENCHMARKS, score_benchmark
from spct_jax.eval.metrics import TIE_RULES

if TYPE_CHECKING:  # the GRM stack pulls in jax; keep `--help` and input errors fast
    from spct_jax.grm.scorer import GenerativeRewardModel, SampleRecord

PROG = "spct eval run"
DEFAULTS = {"k": [8], "max_new_tokens": 512, "batch_items": 8, "seed": 0}  # when neither a flag nor --config sets them
# The keys the scaling plot and the summary line follow, per benchmark (benchmarks.py's headline keys).
HEADLINES: dict[str, tuple[str, ...]] = {
    "rewardbench": (rewardbench.SCORE_KEY,), "rmb": (rmb.SCORE_KEY,),
    "ppe": (ppe.PREFERENCE_KEY, ppe.CORRECTNESS_KEY), "realmistake": (realmistake.SCORE_KEY,),
}


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="GRM: checkpoint folder, .gguf file, tiny-random or smollm2-135m")
    p.add_argument("--meta-rm", default=None, metavar="DIR",
                   help="meta RM folder: an HF sequence-classification checkpoint (its own tokenizer files are used "
                        "if it has them, else the GRM's tokenizer), or a likelihood meta RM (likelihood_meta_rm.json)")
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    p.add_argument("--data", required=True, action="extend", nargs="+", metavar="PATH",
                   help="benchmark data files or folders (read recursively)")
    p.add_argument("--format", default=None, help="data format for the reader (default: detected)")
    p.add_argument("--k", type=parse_ks, default=None, metavar="K[,K...]",
                   help="samples per item; several (1,8,32) give a scaling curve from one max(k) run (default 8)")
    p.add_argument("--k-meta", type=_int_list, default=None, metavar="KM[,KM...]",
                   help="samples the meta RM keeps, one per k in ascending k order (default: k/2 rounded up)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder, local or gs:// (created if missing)")
    p.add_argument("--limit", type=int, default=None,
                   help="judge only the first N data items (a PPE correctness question counts once, with all its "
                        "conflict pairs)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 512")
    p.add_argument("--temperature", type=float, default=None, help="default: 0.5 (paper) if max k > 1, else 0")
    p.add_argument("--seed", type=int, default=None, help="sampling, shuffle and tie-break seed (default 0)")
    p.add_argument("--template", default="default", help="GRM prompt template")
    p.add_argument("--batch-items", type=int, default=None,
                   help="items per sampler call, and per chunk kept for a resume (default 8)")
    p.add_argument("--ties", choices=TIE_RULES, default=None, help="scoring tie rule (default: the benchmark's)")
    p.add_argument("--prior-sets", action="store_true", help="rewardbench: [2,2,2,2,1] average with prior sets")
    p.add_argument("--details", action="store_true", help="rewardbench/rmb: add per-subset accuracies")
    p.add_argument("--subset", default=None, help="ppe: the correctness set of all the data")
    p.add_argument("--threshold", type=float, default=None,
                   help="realmistake: predict 'error' iff the per-sample mean score < threshold (default 5.5, "
                        "the midpoint of the 1-10 scale; the same for every k, as predictions are means)")
    p.add_argument("--viewer-limit", type=int, default=500, help="items shown in viewer.html (default 500)")
    from spct_jax.grm.judge import add_runtime_args

    add_runtime_args(p)
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, with --config's fields for the flags not given (grm/judge.py); SystemExit(2) if bad."""
    from spct_jax.grm.judge import parse_args as parse

    args = parse(build_parser(), list(argv), DEFAULTS)
    if isinstance(args.k, int):  # a config's inference.k / k_meta are single values
        args.k = [args.k]
    if isinstance(args.k_meta, int):
        args.k_meta = [args.k_meta]
    return args


@dataclasses.dataclass(frozen=True)
class Plan:
    """The validated run: the runs' (method, k, k_meta) in table order, and the sampling settings."""

    ks: list[int]
    k_metas: list[int] | None
    temperature: float

    @property
    def runs(self) -> list[tuple[str, int, int | None]]:
        out: list[tuple[str, int, int | None]] = [("voting", k, None) for k in self.ks]
        if self.k_metas is not None:
            out += [("metarm", k, km) for k, km in zip(self.ks, self.k_metas)]
        return out


def make_plan(args: argparse.Namespace) -> Plan:
    from spct_jax.grm.scorer import PAPER_TEMPERATURE
    from spct_jax.grm.voting import default_k_meta

    ks = args.k
    for flag, value in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens),
                        ("--batch-items", args.batch_items)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.viewer_limit < 0:
        raise ValueError(f"--viewer-limit must be >= 0, got {args.viewer_limit}")
    out = paths.as_path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")
    k_metas = None
    if args.k_meta is not None:
        if args.meta_rm is None:
            raise ValueError("--k-meta needs --meta-rm")
        k_metas = args.k_meta
        if len(k_metas) != len(ks):
            raise ValueError(f"--k-meta gives {len(k_metas)} values for {len(ks)} k values ({ks}); give one per k")
        for k, km in zip(ks, k_metas):
            if not 1 <= km <= k:
                raise ValueError(f"--k-meta {km} outside [1, k={k}]")
    elif args.meta_rm is not None:
        k_metas = [default_k_meta(k) for k in ks]
    temperature = args.temperature if args.temperature is not None else (PAPER_TEMPERATURE if ks[-1] > 1 else 0.0)
    return Plan(ks=ks, k_metas=k_metas, temperature=temperature)


def score_options(args: argparse.Namespace, method: str, k: int, k_meta: int | None) -> dict[str, Any]:
    """score_benchmark options for one method@k; only those the user gave, so each benchmark keeps its defaults."""
    opts: dict[str, Any] = {"ties": args.ties, "subset": args.subset}
    opts = {key: v for key, v in opts.items() if v is not None}
    if args.ties == "random":
        opts["seed"] = args.seed
    if args.prior_sets:
        opts["prior_sets"] = True
    if args.details:
        opts["details"] = True
    if args.threshold is not None:
        if args.benchmark != "realmistake":
            raise ValueError("--threshold applies to realmistake only")
        opts["threshold"] = args.threshold  # per sample: the predictions are per-sample means (judged_prediction)
    return opts


def judged_items(benchmark: str, items: Sequence[PreferenceItem]) -> list[PreferenceItem]:
    """The items the GRM judges: PPE correctness questions as their conflict pairs (module docstring)."""
    return ppe.pairwise_items(items) if benchmark == "ppe" else list(items)


def judged_prediction(benchmark: str, vote: Mapping[str, Any]) -> list[float] | None:
    """One judged item's prediction from its vote: the totals, or for ReaLMistake, whose metrics compare items with
    each other, the mean over the samples summed (None when no sample was: the item has no score)."""
    totals = [float(x) for x in vote["totals"]]
    if benchmark != "realmistake":
        return totals
    summed = len(vote["kept"])
    return [t / summed for t in totals] if summed else None


def votes_for(item: PreferenceItem, samples: Sequence[SampleRecord], plan: Plan, seed: int) -> list[dict[str, Any]]:
    """Voting@k and MetaRM@k over the first k samples, for every k of the plan (the nested-subset estimate)."""
    from spct_jax.grm.scorer import item_seed
    from spct_jax.grm.voting import vote

    # The same tie-break seed GenerativeRewardModel.score uses, so the largest-k vote equals its Judgement.
    tie_seed = (seed, item_seed(item))
    out = []
    for method, k, k_meta in plan.runs:
        head = samples[:k]
        v = vote([s.scores for s in head], seed=tie_seed, num_responses=item.num_responses,
                 meta_scores=None if method == "voting" else [s.meta_score for s in head], k_meta=k_meta)
        out.append({"method": method, "k": k, "k_meta": k_meta, "totals": list(v.totals), "best": v.best,
                    "kept": list(v.kept), "num_valid": v.num_valid, "num_failed": v.num_failed})
    return out


def item_dump(item: PreferenceItem, samples: Sequence[SampleRecord], votes: list[dict[str, Any]]) -> dict[str, Any]:
    """One items.jsonl row. A sample's `kept` is its mark in the headline vote (MetaRM, else Voting, at max k)."""
    headline = max(votes, key=lambda v: (v["k"], v["method"] == "metarm"))
    kept = set(headline["kept"])
    return {"uid": item.uid, "source": item.source, "meta": item.meta, "context": [dict(t) for t in item.context],
            "responses": list(item.responses), "rewards": item.rewards, "best": item.best,
            "samples": [{"permutation": list(s.permutation), "text": s.text, "principles": s.principles,
                         "critique": s.critique, "scores": None if s.scores is None else list(s.scores),
                         "error": s.error, "meta_score": s.meta_score, "kept": j in kept}
                        for j, s in enumerate(samples)],
            "votes": votes}


def predictions_name(method: str, k: int, several: bool) -> str:
    stem = "predictions" if method == "voting" else "predictions_metarm"
    return f"{stem}_k{k}.jsonl" if several else f"{stem}.jsonl"


def results_markdown(results: Mapping[str, Any]) -> str:
    runs = results["runs"]
    keys: list[str] = []
    for r in runs:
        keys += [key for key in r["scores"] if key not in keys]
    counted = f"{results['items']} items"
    if results.get("benchmark_items", results["items"]) != results["items"]:
        counted = f"{results['items']} judged items from {results['benchmark_items']} data items"
    lines = [f"# {results['benchmark']}: {results['model']}", "",
             f"{counted} · temperature {results['temperature']} · max_new_tokens "
             f"{results['max_new_tokens']} · seed {results['seed']} · parse rate "
             f"{100 * results['parse_rate']:.1f}% of {results['samples']} samples", "",
             "| method | k | k_meta | " + " | ".join(keys) + " |",
             "|---|---:|---:|" + "---:|" * len(keys)]
    for r in runs:
        cells = " | ".join(f"{100 * r['scores'][key]:.2f}" if key in r["scores"] else "-" for key in keys)
        name = {"voting": "Voting", "metarm": "MetaRM"}[r["method"]]
        lines.append(f"| {name} | {r['k']} | {r['k_meta'] if r['k_meta'] is not None else '-'} | {cells} |")
    lines += ["", "Scores in %, computed with each benchmark's official rules (spct_jax.eval.benchmarks). Several k "
              "vote over the first k of max(k) samples per item (nested subsets of one run)."]
    return "\n".join(lines) + "\n"


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    # ensure_ascii: generations can hold lone surrogates, which only an escaped form survives UTF-8 with.
    # default=str: a reader's meta may hold a value JSON lacks (a date); losing its type beats losing the run.
    return "".join(json.dumps(r, default=str) + "\n" for r in rows).encode("ascii")


def write_outputs(out: paths.PathLike, files: Mapping[str, bytes]) -> None:
    """Write every artifact so that none is ever seen half-written. Locally: each under a temporary name first, then
    all renamed (a crash leaves only hidden .tmp files, removed here on the way out). On an object store (gs://):
    each uploaded straight to its name, which publishes it only when the upload completes."""
    out = paths.makedirs(out)
    if paths.is_remote(out):
        for name, data in files.items():
            (out / name).write_bytes(data)
        return
    tmps = {name: out / f".{name}.tmp-{os.getpid()}" for name in files}
    try:
        for name, data in files.items():
            tmps[name].write_bytes(data)
        for name in files:
            os.replace(tmps[name], out / name)
    finally:
        for tmp in tmps.values():
            if tmp.exists():
                tmp.unlink()


def load_items(args: argparse.Namespace) -> list[PreferenceItem]:
    from spct_jax.eval.cli import _read

    items = _read(args.data, args.format, args.benchmark)
    if args.limit is not None:
        items = items[: args.limit]
    if not items:
        raise DataError(f"no items in {', '.join(args.data)}")
    return items


def load_judge(args: argparse.Namespace, runtime) -> GenerativeRewardModel:
    """The GRM and meta RM of --model / --meta-rm on the runtime's mesh, in its dtype (grm/judge.py)."""
    from spct_jax.grm.judge import load_judge as load

    return load(args.model, args.meta_rm, mesh=runtime.mesh, dtype=runtime.dtype, template=args.template)


def judge(grm: GenerativeRewardModel, items: Sequence[PreferenceItem], plan: Plan, args: argparse.Namespace,
          store, *, show_progress: bool = True):
    """items.jsonl rows of every item not yet in `store` (grm/judge_store.py), one GenerativeRewardModel.score call
    per chunk of --batch-items items, each chunk kept as it is done. -> judge_store.Progress."""
    from tqdm.auto import tqdm

    from spct_jax.grm.judge_store import judge_in_chunks

    k_max = plan.ks[-1]

    def one_chunk(indices: list[int]) -> list[dict[str, Any]]:
        chunk = [items[i] for i in indices]
        judgements = grm.score(chunk, k=k_max, k_meta=None if plan.k_metas is None else plan.k_metas[-1],
                               temperature=plan.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
                               template=args.template, progress=False)
        return [item_dump(item, j.samples, votes_for(item, j.samples, plan, args.seed))
                for item, j in zip(chunk, judgements)]

    with tqdm(total=len(items), desc=f"{PROG} {args.benchmark}", unit="item", disable=not show_progress) as bar:
        return judge_in_chunks(store, one_chunk, chunk_items=args.batch_items, progress=bar.update)


def score_runs(items: Sequence[PreferenceItem], rows: Sequence[Mapping[str, Any]], plan: Plan,
               args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """(results.json's runs, {predictions file name: bytes}) for every method@k of the plan. `items` are the data's
    items, `rows` the judged items' dumps (judged_items); the scorer is given the data's items and the judged
    predictions, as `spct eval score --data ... --predictions ...` is, so both give the same numbers."""
    several = len(plan.ks) > 1
    runs, files = [], {}
    for r, (method, k, k_meta) in enumerate(plan.runs):
        judged = {row["uid"]: judged_prediction(args.benchmark, row["votes"][r]) for row in rows}
        preds = {uid: s for uid, s in judged.items() if s is not None}
        name = predictions_name(method, k, several)
        files[name] = _jsonl([{"uid": uid, "scores": s} for uid, s in preds.items()])
        used = [row["votes"][r] for row in rows]
        n_valid = sum(v["num_valid"] for v in used)
        runs.append({"method": method, "k": k, "k_meta": k_meta, "predictions": name,
                     "parse_rate": n_valid / max(1, n_valid + sum(v["num_failed"] for v in used)),
                     "scores": score_benchmark(args.benchmark, items, preds,
                                               **score_options(args, method, k, k_meta))})
    return runs, files


def run_main(argv: Sequence[str]) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on bad usage (2); return it as a status
        return int(e.code or 0)
    try:
        plan = make_plan(args)
        items = load_items(args)
        judged = judged_items(args.benchmark, items)
        # Score all-zero predictions before loading the model: a data or option error the scorer would raise
        # (an unknown subset, a ReaLMistake file with one class) then costs seconds, not a whole GRM run.
        zeros = {it.uid: [0.0] * it.num_responses for it in judged}
        for method, k, k_meta in plan.runs:
            score_benchmark(args.benchmark, items, zeros, **score_options(args, method, k, k_meta))
    except (ValueError, OSError) as e:  # DataError, PredictionError, ConfigError, TokenizerError are ValueErrors
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    from spct_jax.grm.judge import JudgeError

    try:
        return _judge_and_write(args, plan, items, judged)
    except JudgeError as e:  # a --model / --meta-rm / --mesh that cannot be used, a resume that does not match
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code


def _judge_and_write(args: argparse.Namespace, plan: Plan, items: list[PreferenceItem],
                     judged: list[PreferenceItem]) -> int:
    """Every process judges (the sampler is a collective over the mesh); process 0 keeps the chunks, then writes
    the artifacts while the others wait for it."""
    from spct_jax.grm.judge import setup_runtime
    from spct_jax.grm.judge_store import JudgeStore, on_main

    runtime = setup_runtime(args.mesh, args.dtype, prog=PROG)
    grm = load_judge(args, runtime)
    out = paths.as_path(args.out)
    fingerprint = {"command": "eval run", "model": str(args.model), "meta_rm": args.meta_rm, "dtype": runtime.dtype,
                   "benchmark": args.benchmark, "ks": plan.ks, "k_metas": plan.k_metas,
                   "temperature": plan.temperature, "max_new_tokens": args.max_new_tokens,
                   "template": args.template, "seed": args.seed}
    store = JudgeStore(out / ".judging", fingerprint=fingerprint, items=judged).open()
    started = time.time()
    done = judge(grm, judged, plan, args, store, show_progress=runtime.is_main)
    if done.preempted:
        print(f"{PROG}: stopped by SIGTERM with {done.judged + done.reused} of {done.total} items judged (kept in "
              f"{store.directory}); the same command resumes", file=sys.stderr)
        return 0

    def finish() -> bytes:
        rows = store.lines()
        files = artifacts(args, plan, items, judged, rows, elapsed_s=time.time() - started)
        try:
            write_outputs(out, files)
        except OSError as e:
            raise JudgeError(f"cannot write {out}: {e}", exit_code=1) from None
        store.remove()
        print(f"{PROG}: wrote {len(files)} files to {out}", file=sys.stderr)
        return files["results.md"]

    results_md = on_main(finish, f"writing {out}")
    if runtime.is_main:
        print(results_md.decode("utf-8"), end="")
    return 0


def artifacts(args: argparse.Namespace, plan: Plan, items: Sequence[PreferenceItem], judged: Sequence[PreferenceItem],
              rows: list[dict[str, Any]], *, elapsed_s: float) -> dict[str, bytes]:
    """{file name: bytes} of every artifact in --out (module docstring), from the judged items' rows."""
    runs, files = score_runs(items, rows, plan, args)
    samples = sum(len(row["samples"]) for row in rows)
    valid = sum(s["scores"] is not None for row in rows for s in row["samples"])
    files["items.jsonl"] = _jsonl(rows)
    model_name = paths.as_path(str(args.model)).name
    if len(plan.ks) > 1:
        from spct_jax.eval.plots import scaling_png

        headlines = HEADLINES.get(args.benchmark) or tuple(runs[0]["scores"])  # a newer benchmark: every key
        files["scaling.png"] = scaling_png(runs, headlines, title=f"{args.benchmark}: {model_name}")
    from spct_jax.eval.report import render_report

    viewer_rows = rows[: args.viewer_limit]
    files["viewer.html"] = render_report(viewer_rows, title=f"{PROG}: {args.benchmark}", subtitle=str(args.model),
                                         runs=runs, total_items=len(rows)).encode("utf-8", errors="replace")
    results = {"benchmark": args.benchmark, "model": str(args.model), "meta_rm": args.meta_rm, "data": args.data,
               "items": len(judged), "benchmark_items": len(items), "k": plan.ks, "k_meta": plan.k_metas,
               "temperature": plan.temperature,
               "max_new_tokens": args.max_new_tokens, "seed": args.seed, "template": args.template,
               "samples": samples, "parse_rate": valid / max(1, samples), "elapsed_s": round(elapsed_s, 1),
               "runs": runs, "files": sorted([*files, "results.json", "results.md"])}
    files["results.md"] = results_markdown(results).encode("utf-8")
    files["results.json"] = (json.dumps(results, indent=2) + "\n").encode("utf-8")
    return files


if __name__ == "__main__":
    sys.exit(run_main(sys.argv[1:]))
