"""Judge a benchmark with a GRM (Voting@k, MetaRM@k), then score it with the official rules: `evaluate`, the
library behind `spct eval run` (whose command line, eval/cli.py, only builds an `EvalOptions` and calls it).

    from spct_jax.eval.run import EvalOptions, evaluate
    result = evaluate(EvalOptions(model="DIR", benchmark="rewardbench", data=["rb.jsonl"], k=(1, 8), out="OUT"))
    result.results["runs"]            # results.json's content (process 0)

    spct eval run --model DIR [--meta-rm DIR] --benchmark B --data PATH --k 1,8,32 [--k-meta 4] --out DIR

Several k: each item is sampled max(k) times ONCE, and Voting@k / MetaRM@k for every k vote over the FIRST k of
those samples (a nested-subset estimate). Sample j of an item depends only on (seed, item, j) - its response order
and its sampling seed (scorer.py, voting.py) - so the first k samples are exactly what a separate `--k k` run
would draw; the estimates for different k are therefore correlated (they share samples), not independent runs.
MetaRM@k keeps the top k_meta of those k by meta score; k_meta defaults to k/2 (rounded up) for each k.
A prediction is the vote totals, so ties between responses are scored by the benchmark's own rule, exactly as
`spct eval score` would score the same file; `--ties random` gives the paper's seeded random tie-break instead.

What is judged is not always the data's item (eval/judged.py): PPE correctness questions as their conflict pairs,
RM-Bench items as their 9 chosen-vs-rejected pairs, RewardBench 2 Ties items one response at a time (a 1-10 rating
each); results.json's `items` counts judged items, `benchmark_items` the data's. --limit counts data items, so
every judged item is scored whole. ReaLMistake and the Ties ratings predict per-sample means (a sum depends on how
many samples parsed); a ReaLMistake item none of whose samples parsed has no prediction ("Failed").

Two orders (eval/orders.py). JudgeBench is judged as its own code does: every pair shown (A, B) and again (B, A),
each order with its own k samples and the GRM's response shuffle off, so the order shown is the order seen;
`--single-game` judges (A, B) only. `--both-orders` does the same for the pairs of any other benchmark
(RewardBench, PPE, RMB pairwise, RM-Bench, items): its score is then Voting over both orders' samples (the AB
order alone shows the chosen response first in every pair of those data sets). Either way each run reports the
position consistency ("Inconsistent", "Flipped": eval/consistency.py) in results.json.

`--benchmark all --data-dir DIR` runs every benchmark whose files are under DIR (eval/run_all.py).

On a pod: `--mesh data=D,fsdp=F,tensor=T` (and `--dtype`, default bfloat16 with a mesh) shards the GRM and meta
RM over every device of every host, or `--config configs/X.py` takes the mesh, dtype, k, k_meta, temperature,
max_new_tokens and items per call from the run config (grm/judge.py). Start the same command on every host
(`launch/run.sh eval ...`): every process judges, process 0 writes. --out may be a gs:// folder.

Preemption: judged items are kept in chunks of --batch-items under `--out/.judging/` as they are done; a SIGTERM
stops after the chunk in flight (exit 0) and the same command resumes without judging them again
(grm/judge_store.py). The folder is removed once the artifacts are written.

Artifacts in --out (written only after every item is judged, each under a temporary name and then renamed, or on
gs:// uploaded whole, so a crash leaves no half-written file):
  predictions.jsonl            the Voting@k predictions in the benchmark's own format, scored by
                               `spct eval score --benchmark B --data ... --predictions FILE` to the numbers in
                               results.json: {"uid", "scores"} in the data's response order (JudgeBench: one
                               {"uid", "order", "scores"} line per order; RM-Bench: per pair, uid <uid>+c<i>r<j>;
                               PPE correctness: per conflict pair, uid question_id+j)
  predictions_orders.jsonl     with --both-orders: each order's totals as JudgeBench-style order lines
  predictions_metarm*.jsonl    the same for MetaRM@k (with --meta-rm)
    (several k: predictions_k{K}.jsonl, predictions_metarm_k{K}.jsonl, ... one per k)
  items.jsonl                  per judged item: uid, source, meta, context, responses (as shown, for a BA copy),
                               ground truth (rewards, best), order (two-order copies), samples [{permutation,
                               text, principles, critique, scores (the item's order) | null, error, meta_score,
                               kept (in the headline vote)}], votes [{method, k, k_meta, totals, best, kept,
                               num_valid, num_failed}]
  results.json / results.md    the official scores per method@k (and consistency), run settings, parse rate, files
  scaling.png                  the benchmark's headline score(s) vs k, Voting and MetaRM lines (only with several k)
  viewer.html                  the critique viewer (report.py), first --viewer-limit items

Exit status: 0 done (or stopped by SIGTERM, resumable); 1 bad data or options, or a checkpoint that cannot be
read (nothing is written); 2 bad command line, a --model / --meta-rm naming nothing loadable, or a mesh that does
not fit the devices or the model.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from spct_jax import paths

from spct_jax.data.schema import DataError, PreferenceItem
from spct_jax.eval.benchmarks import BENCHMARKS, HEADLINE_KEYS, read_benchmark_items, score_benchmark
from spct_jax.eval.judged import base_units, judged_units, orders_mode, run_predictions, shuffles
from spct_jax.eval.orders import order_of
from spct_jax.eval.run_outputs import jsonl, results_markdown, write_outputs

if TYPE_CHECKING:  # the GRM stack pulls in jax; keep `--help` and input errors fast
    from spct_jax.grm.judge import Runtime
    from spct_jax.grm.scorer import GenerativeRewardModel, SampleRecord

PROG = "spct eval run"
DEFAULTS = {"k": [8], "max_new_tokens": 512, "batch_items": 8, "seed": 0}  # when neither a flag nor --config sets them
ALL = "all"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """One evaluation run: what `spct eval run`'s flags say (module docstring), typed. Scoring options left at None
    keep the benchmark's own defaults."""

    model: Any  # the GRM: checkpoint folder, .gguf file, tiny-random or smollm2-135m
    benchmark: str  # a name of benchmarks.BENCHMARKS, or "all" (with data_dir; eval/run_all.py)
    out: str  # output folder, local or gs://
    data: Sequence[str] | None = None  # data files or folders (read recursively); not with "all"
    data_dir: str | None = None  # "all": one subfolder per benchmark
    meta_rm: Any = None  # meta RM folder (either kind: grm/judge.py)
    format: str | None = None  # data format for the reader (None: detected)
    k: Sequence[int] = (DEFAULTS["k"][0],)  # samples per item, ascending; several give a scaling curve
    k_meta: Sequence[int] | None = None  # one per k (None with a meta RM: k/2 rounded up)
    limit: int | None = None  # judge only the first N data items
    max_new_tokens: int = DEFAULTS["max_new_tokens"]
    temperature: float | None = None  # None: 0.5 (paper) if max k > 1, else 0
    seed: int = DEFAULTS["seed"]
    template: str = "default"  # GRM prompt template
    batch_items: int = DEFAULTS["batch_items"]  # items per sampler call, and per chunk kept for a resume
    both_orders: bool = False
    single_game: bool = False
    ties: str | None = None
    prior_sets: bool = False
    details: bool = False
    subset: str | None = None
    threshold: float | None = None
    viewer_limit: int = 500
    mesh: Any = None  # parallel.mesh.MeshConfig; None: one device (several processes: fsdp over all)
    dtype: str | None = None  # None: bfloat16 with a mesh, float32 on one device
    config: str | None = None  # the run config file (configs/*.py) whose fields filled the flags not given; a record


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What `evaluate` did: stopped by a SIGTERM (`preempted`: the same call resumes), else results.json's content
    and results.md's text (process 0; None on the others)."""

    preempted: bool
    results: dict[str, Any] | None = None
    markdown: str | None = None


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


def make_plan(args: EvalOptions) -> Plan:
    from spct_jax.grm.scorer import PAPER_TEMPERATURE
    from spct_jax.grm.voting import default_k_meta

    ks = sorted(set(args.k))
    if not ks or ks[0] < 1:
        raise ValueError(f"every k must be >= 1, got {list(args.k)}")
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
        k_metas = list(args.k_meta)
        if len(k_metas) != len(ks):
            raise ValueError(f"--k-meta gives {len(k_metas)} values for {len(ks)} k values ({ks}); give one per k")
        for k, km in zip(ks, k_metas):
            if not 1 <= km <= k:
                raise ValueError(f"--k-meta {km} outside [1, k={k}]")
    elif args.meta_rm is not None:
        k_metas = [default_k_meta(k) for k in ks]
    temperature = args.temperature if args.temperature is not None else (PAPER_TEMPERATURE if ks[-1] > 1 else 0.0)
    return Plan(ks=ks, k_metas=k_metas, temperature=temperature)


def score_options(args: EvalOptions, *, only_accepted: bool = False) -> dict[str, Any]:
    """score_benchmark options for args.benchmark; only those the user gave, so each benchmark keeps its defaults.
    only_accepted (--benchmark all): leave out what this benchmark's scorer does not take, instead of failing."""
    opts: dict[str, Any] = {"ties": args.ties, "subset": args.subset, "threshold": args.threshold}
    opts = {key: v for key, v in opts.items() if v is not None}
    if args.ties == "random":
        opts["seed"] = args.seed
    if args.prior_sets:
        opts["prior_sets"] = True
    if args.details:
        opts["details"] = True
    if only_accepted:
        import inspect

        scorer = inspect.signature(BENCHMARKS[args.benchmark]).parameters
        return {key: v for key, v in opts.items() if key in scorer}
    if "threshold" in opts and args.benchmark != "realmistake":
        raise ValueError("--threshold applies to realmistake only")
    return opts  # per sample for realmistake: its predictions are per-sample means (judged.py)


def votes_for(item: PreferenceItem, samples: Sequence[SampleRecord], plan: Plan, seed: int) -> list[dict[str, Any]]:
    """Voting@k and MetaRM@k over the first k samples, for every k of the plan (the nested-subset estimate)."""
    from spct_jax.grm.scorer import item_seed
    from spct_jax.grm.voting import nested_votes

    runs = plan.runs
    metarm = any(method == "metarm" for method, _, _ in runs)
    # The same tie-break seed GenerativeRewardModel.score uses, so the largest-k vote equals its Judgement.
    votes = nested_votes([s.scores for s in samples], runs, seed=(seed, item_seed(item)),
                         meta_scores=[s.meta_score for s in samples] if metarm else None,
                         num_responses=item.num_responses)
    return [{"method": method, "k": k, "k_meta": k_meta, "totals": list(v.totals), "best": v.best,
             "kept": list(v.kept), "num_valid": v.num_valid, "num_failed": v.num_failed}
            for (method, k, k_meta), v in zip(runs, votes)]


def item_dump(item: PreferenceItem, samples: Sequence[SampleRecord], votes: list[dict[str, Any]]) -> dict[str, Any]:
    """One items.jsonl row. A sample's `kept` is its mark in the headline vote (MetaRM, else Voting, at max k)."""
    headline = max(votes, key=lambda v: (v["k"], v["method"] == "metarm"))
    kept = set(headline["kept"])
    row = {"uid": item.uid, "source": item.source, "meta": item.meta, "context": [dict(t) for t in item.context],
           "responses": list(item.responses), "rewards": item.rewards, "best": item.best,
           "samples": [{"permutation": list(s.permutation), "text": s.text, "principles": s.principles,
                        "critique": s.critique, "scores": None if s.scores is None else list(s.scores),
                        "error": s.error, "meta_score": s.meta_score, "kept": j in kept}
                       for j, s in enumerate(samples)],
           "votes": votes}
    if order_of(item) is not None:
        row["order"] = order_of(item)
    return row


def predictions_name(method: str, k: int, several: bool, *, orders: bool = False) -> str:
    stem = ("predictions" if method == "voting" else "predictions_metarm") + ("_orders" if orders else "")
    return f"{stem}_k{k}.jsonl" if several else f"{stem}.jsonl"


def load_items(args: EvalOptions) -> list[PreferenceItem]:
    if not args.data:
        raise ValueError(f"benchmark {args.benchmark}: give its data files or folders")
    items = read_benchmark_items(args.data, args.benchmark, format=args.format)
    if args.limit is not None:
        items = items[: args.limit]
    if not items:
        raise DataError(f"no items in {', '.join(args.data)}")
    return items


def load_judge(args: EvalOptions, runtime) -> GenerativeRewardModel:
    """The GRM and meta RM of --model / --meta-rm on the runtime's mesh, in its dtype (grm/judge.py)."""
    from spct_jax.grm.judge import load_judge as load

    return load(args.model, args.meta_rm, mesh=runtime.mesh, dtype=runtime.dtype, template=args.template)


@dataclasses.dataclass
class Prepared:
    """One benchmark's run, checked before any model work: the options, the plan, the data's items and the units
    the GRM judges (eval/judged.py), and how they are ordered (None, "both" or "AB")."""

    args: EvalOptions
    plan: Plan
    items: list[PreferenceItem]
    units: list[PreferenceItem]
    orders: str | None
    lenient: bool = False  # --benchmark all: options go to the benchmarks they apply to (eval/run_all.py)

    @property
    def benchmark(self) -> str:
        return self.args.benchmark

    def score_options(self) -> dict[str, Any]:
        return score_options(self.args, only_accepted=self.lenient)


def prepare(args: EvalOptions, plan: Plan, *, lenient: bool = False) -> Prepared:
    """Read and check one benchmark's data and options; ValueError / OSError naming what is wrong. lenient
    (--benchmark all): --both-orders is dropped for a benchmark without pairs instead of refused."""
    items = load_items(args)
    both = args.both_orders and not (lenient and not any(u.num_responses == 2
                                                         for u in base_units(args.benchmark, items)))
    mode = orders_mode(args.benchmark, both_orders=both, single_game=args.single_game)
    prep = Prepared(args, plan, items, judged_units(args.benchmark, items, mode), mode, lenient)
    # Score all-zero votes before loading the model: a data or option error the scorer would raise (an unknown
    # subset, a ReaLMistake file with one class, a Ties prompt with one correct answer) then costs seconds, not a
    # whole GRM run.
    rows = [{"uid": u.uid, "meta": u.meta,
             "votes": [{"totals": [0] * u.num_responses, "kept": [0], "num_valid": 1, "num_failed": 0}
                       for _ in plan.runs]} for u in prep.units]
    score_runs(prep, rows)
    return prep


def fingerprint(prep: Prepared, dtype: str) -> dict[str, Any]:
    """The settings that decide a judgement (grm/judge_store.py adds the items' hash)."""
    a, plan = prep.args, prep.plan
    return {"command": "eval run", "model": str(a.model), "meta_rm": a.meta_rm, "dtype": dtype,
            "benchmark": a.benchmark, "ks": plan.ks, "k_metas": plan.k_metas, "temperature": plan.temperature,
            "max_new_tokens": a.max_new_tokens, "template": a.template, "seed": a.seed, "orders": prep.orders}


def judge(grm: GenerativeRewardModel, prep: Prepared, store, *, show_progress: bool = True):
    """items.jsonl rows of every unit not yet in `store` (grm/judge_store.py), one GenerativeRewardModel.score call
    per chunk of --batch-items units (two when a chunk mixes copies shown in a fixed order with shuffled items),
    each chunk kept as it is done. -> judge_store.Progress."""
    from tqdm.auto import tqdm

    from spct_jax.grm.judge_store import judge_in_chunks

    args, plan, units = prep.args, prep.plan, prep.units
    k_max = plan.ks[-1]

    def one_chunk(indices: list[int]) -> list[dict[str, Any]]:
        chunk = [units[i] for i in indices]
        judgements: list[Any] = [None] * len(chunk)
        for shuffle in (True, False):  # every process splits alike: the sampler call is a collective
            part = [j for j, unit in enumerate(chunk) if shuffles(unit) == shuffle]
            if not part:
                continue
            got = grm.score([chunk[j] for j in part], k=k_max,
                            k_meta=None if plan.k_metas is None else plan.k_metas[-1], temperature=plan.temperature,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, template=args.template,
                            shuffle=shuffle, progress=False)
            for j, judgement in zip(part, got, strict=True):
                judgements[j] = judgement
        return [item_dump(unit, j.samples, votes_for(unit, j.samples, plan, args.seed))
                for unit, j in zip(chunk, judgements)]

    with tqdm(total=len(units), desc=f"{PROG} {args.benchmark}", unit="item", disable=not show_progress) as bar:
        return judge_in_chunks(store, one_chunk, chunk_items=args.batch_items, progress=bar.update)


def score_runs(prep: Prepared, rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """(results.json's runs, {predictions file name: bytes}) for every method@k of the plan, from the judged rows.
    The scorer gets the data's items and the predictions file's content, as `spct eval score --data ...
    --predictions ...` does, so both give the same numbers."""
    plan = prep.plan
    several = len(plan.ks) > 1
    runs, files = [], {}
    for r, (method, k, k_meta) in enumerate(plan.runs):
        got = run_predictions(prep.benchmark, rows, r)
        name = predictions_name(method, k, several)
        files[name] = jsonl(got.lines)
        used = [row["votes"][r] for row in rows]
        n_valid = sum(v["num_valid"] for v in used)
        run = {"method": method, "k": k, "k_meta": k_meta, "predictions": name,
               "parse_rate": n_valid / max(1, n_valid + sum(v["num_failed"] for v in used)),
               "scores": score_benchmark(prep.benchmark, prep.items, got.preds, **prep.score_options())}
        if got.order_lines is not None:
            run["order_predictions"] = predictions_name(method, k, several, orders=True)
            files[run["order_predictions"]] = jsonl(got.order_lines)
        if got.consistency is not None:
            run["consistency"] = got.consistency
        runs.append(run)
    return runs, files


def evaluate(options: EvalOptions, *, grm: GenerativeRewardModel | None = None, runtime: Runtime | None = None,
             show_progress: bool = True) -> EvalResult:
    """Judge and score one benchmark (module docstring) and write its artifacts to `options.out`. `grm`: a judge
    already loaded (else `options.model` / `meta_rm` are loaded on the runtime); `runtime`: where it runs (else set
    up from `options.mesh` / `dtype`). Raises ValueError / OSError for bad data or options (before any model
    work) and JudgeError (a ValueError with an exit code) for a model, mesh or resume that cannot be used.
    `options.benchmark == "all"`: see eval/run_all.py's `evaluate_all`."""
    if options.benchmark == ALL:
        raise ValueError("benchmark 'all' runs through spct_jax.eval.run_all.evaluate_all")
    prep = prepare(options, make_plan(options))
    if runtime is None:
        from spct_jax.grm.judge import setup_runtime

        runtime = setup_runtime(options.mesh, options.dtype, prog=PROG)
    return judge_and_write(prep, runtime, (lambda: grm) if grm is not None else (lambda: load_judge(options, runtime)),
                           show_progress=show_progress and runtime.is_main)


def judge_and_write(prep: Prepared, runtime: Runtime, grm: Callable[[], GenerativeRewardModel], *,
                    show_progress: bool = True) -> EvalResult:
    """Judge every unit not yet judged and write the artifacts to --out (EvalResult). Every process
    judges (the sampler is a collective over the mesh); process 0 keeps the chunks, then writes the artifacts while
    the others wait for it. `grm` loads the judge (called once, here)."""
    from spct_jax.grm.judge import JudgeError
    from spct_jax.grm.judge_store import JudgeStore, on_main

    out = paths.as_path(prep.args.out)
    store = JudgeStore(out / ".judging", fingerprint=fingerprint(prep, runtime.dtype), items=prep.units).open()
    started = time.time()
    done = judge(grm(), prep, store, show_progress=show_progress)
    if done.preempted:
        print(f"{PROG}: stopped by SIGTERM with {done.judged + done.reused} of {done.total} items judged (kept in "
              f"{store.directory}); the same command resumes", file=sys.stderr)
        return EvalResult(preempted=True)

    def finish() -> dict[str, bytes]:
        files = artifacts(prep, store.lines(), fingerprint=store.fingerprint, elapsed_s=time.time() - started)
        try:
            write_outputs(out, files)
        except OSError as e:
            raise JudgeError(f"cannot write {out}: {e}", exit_code=1) from None
        store.remove()
        print(f"{PROG}: wrote {len(files)} files to {out}", file=sys.stderr)
        return files

    files = on_main(finish, f"writing {out}")
    if files is None:  # not process 0
        return EvalResult(preempted=False)
    return EvalResult(preempted=False, results=json.loads(files["results.json"]),
                      markdown=files["results.md"].decode("utf-8"))


def artifacts(prep: Prepared, rows: list[dict[str, Any]], *, fingerprint: Mapping[str, Any],
              elapsed_s: float) -> dict[str, bytes]:
    """{file name: bytes} of every artifact in --out (module docstring), from the judged units' rows."""
    args, plan = prep.args, prep.plan
    runs, files = score_runs(prep, rows)
    samples = sum(len(row["samples"]) for row in rows)
    valid = sum(s["scores"] is not None for row in rows for s in row["samples"])
    files["items.jsonl"] = jsonl(rows)
    model_name = paths.as_path(str(args.model)).name
    if len(plan.ks) > 1:
        from spct_jax.eval.plots import scaling_png

        # The headline keys only: a result's other keys are sections or, for JudgeBench, shares of pairs.
        files["scaling.png"] = scaling_png(runs, HEADLINE_KEYS[args.benchmark], title=f"{args.benchmark}: {model_name}")
    from spct_jax.eval.report import render_report

    files["viewer.html"] = render_report(rows[: args.viewer_limit], title=f"{PROG}: {args.benchmark}",
                                         subtitle=str(args.model), runs=runs,
                                         total_items=len(rows)).encode("utf-8", errors="replace")
    results = {"benchmark": args.benchmark, "model": str(args.model), "meta_rm": args.meta_rm, "data": args.data,
               "items": len(prep.units), "benchmark_items": len(prep.items), "orders": prep.orders,
               "k": plan.ks, "k_meta": plan.k_metas, "temperature": plan.temperature,
               "max_new_tokens": args.max_new_tokens, "seed": args.seed, "template": args.template,
               "samples": samples, "parse_rate": valid / max(1, samples), "elapsed_s": round(elapsed_s, 1),
               "score_options": prep.score_options(), "fingerprint": dict(fingerprint),
               "runs": runs, "files": sorted([*files, "results.json", "results.md"])}
    files["results.md"] = results_markdown(results).encode("utf-8")
    files["results.json"] = (json.dumps(results, indent=2) + "\n").encode("utf-8")
    return files
