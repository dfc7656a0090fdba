"""`spct score --model M --input items.jsonl --output judgements.jsonl --k 8 [--meta-rm DIR --k-meta 4]`.

Input lines are `{"context": str | [{"role","content"}], "responses": [...]}` (optionally "uid", "rewards",
"best"), or any preference format `spct data check` knows. When ground truth is present the summary reports
accuracy (the voted best equals the ground-truth best).

On a pod: `--mesh data=D,fsdp=F,tensor=T` shards the GRM and meta RM over every device of every host (`--dtype`,
default bfloat16 with a mesh), or `--config configs/X.py` takes the mesh, dtype and inference settings from a run
config (grm/judge.py). Start the same command on every host (`launch/run.sh score ...`); every process computes,
process 0 writes.

Preemption: finished items are kept in chunks of --batch-items in `.<output>.judging/` beside the output; a SIGTERM
stops after the chunk in flight (exit 0) and the same command resumes without judging them again
(grm/judge_store.py). The output file appears whole, only when every item is judged; the chunks are then removed.

Exit status: 0 done (or stopped by SIGTERM, resumable); 1 unreadable input or checkpoint; 2 bad command line,
`--model` / `--meta-rm` naming nothing loadable, or a mesh that does not fit.
"""
from __future__ import annotations

import argparse
import json
import sys

from spct_jax.data.schema import DataError, PreferenceItem

PROG = "spct score"
DEFAULTS = {"k": 1, "max_new_tokens": 512, "batch_items": 8, "seed": 0}


def read_items(path: str) -> list[PreferenceItem]:
    from spct_jax.grm.scorer import as_item

    items = []
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        head = json.loads(first)
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict) and "context" in head and "responses" in head and "source" not in head:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    items.append(as_item(json.loads(line), lineno - 1))
                except (json.JSONDecodeError, ValueError, TypeError) as e:
                    raise DataError(f"{path}:{lineno}: {e}") from None
        return items
    from spct_jax.data.formats import read_preferences

    return read_preferences(path)


def build_parser() -> argparse.ArgumentParser:
    from spct_jax.grm.judge import add_runtime_args

    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder (local or gs://), .gguf file, tiny-random or "
                                                  "smollm2-135m")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="judgements JSONL (local or gs://)")
    p.add_argument("--k", type=int, default=None, help="samples per item (Voting@k; default 1)")
    p.add_argument("--k-meta", type=int, default=None, help="samples kept by the meta RM (paper: k/2)")
    p.add_argument("--meta-rm", default=None,
                   help="meta RM folder: an HF sequence-classification checkpoint (read with its own tokenizer "
                        "when it has one), or a likelihood meta RM (likelihood_meta_rm.json, as `spct demo` writes)")
    p.add_argument("--temperature", type=float, default=None, help="default: 0.5 for k > 1 (paper), 0 for k = 1")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 512")
    p.add_argument("--template", default="default")
    p.add_argument("--limit", type=int, default=None, help="score only the first N items")
    p.add_argument("--batch-items", type=int, default=None,
                   help="items per sampler call, and per chunk kept for a resume (default 8)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--no-samples", action="store_true", help="omit per-sample texts from the output")
    add_runtime_args(p)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    from spct_jax.grm.judge import parse_args as parse

    return parse(build_parser(), argv, DEFAULTS)


def check_args(args: argparse.Namespace) -> str | None:
    if args.k_meta is not None and args.meta_rm is None:
        return "--k-meta needs --meta-rm"
    for flag, value in (("--k", args.k), ("--max-new-tokens", args.max_new_tokens),
                        ("--batch-items", args.batch_items), ("--limit", args.limit)):
        if value is not None and value < 1:
            return f"{flag} must be >= 1, got {value}"
    if args.k_meta is not None and not 1 <= args.k_meta <= args.k:
        return f"--k-meta {args.k_meta} outside [1, k={args.k}]"
    return None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if (err := check_args(args)) is not None:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    try:
        items = read_items(args.input)
    except (DataError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    if args.limit is not None:
        items = items[: args.limit]
    from spct_jax.grm.judge import JudgeError

    try:
        return _run(args, items)
    except JudgeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code


def _run(args: argparse.Namespace, items: list[PreferenceItem]) -> int:
    from spct_jax import paths
    from spct_jax.grm.judge import load_judge, setup_runtime
    from spct_jax.grm.judge_store import JudgeStore, judge_in_chunks, jsonl_bytes, on_main, write_bytes_atomic
    from spct_jax.grm.scorer import PAPER_TEMPERATURE

    runtime = setup_runtime(args.mesh, args.dtype, prog=PROG)
    out = paths.as_path(args.output)
    if out.is_dir():
        print(f"{PROG}: --output {args.output}: is a folder; give a file name", file=sys.stderr)
        return 2
    grm = load_judge(args.model, args.meta_rm, mesh=runtime.mesh, dtype=runtime.dtype, template=args.template)
    temperature = args.temperature if args.temperature is not None else (PAPER_TEMPERATURE if args.k > 1 else 0.0)
    fingerprint = {"command": "score", "model": str(args.model), "meta_rm": args.meta_rm, "dtype": runtime.dtype,
                   "k": args.k, "k_meta": args.k_meta, "temperature": temperature,
                   "max_new_tokens": args.max_new_tokens, "template": args.template, "seed": args.seed,
                   "with_samples": not args.no_samples}
    store = JudgeStore(out.parent / f".{out.name}.judging", fingerprint=fingerprint, items=items).open()

    def judge(indices: list[int]) -> list[dict]:
        chunk = [items[i] for i in indices]
        judgements = grm.score(chunk, k=args.k, k_meta=args.k_meta, temperature=temperature,
                               max_new_tokens=args.max_new_tokens, seed=args.seed, progress=False)
        return [j.to_json(with_samples=not args.no_samples) for j in judgements]

    from tqdm.auto import tqdm

    with tqdm(total=len(items), desc="scoring", unit="item", disable=not runtime.is_main) as bar:
        done = judge_in_chunks(store, judge, chunk_items=args.batch_items, progress=bar.update)
    if done.preempted:
        print(f"{PROG}: stopped by SIGTERM with {done.judged + done.reused} of {done.total} items judged (kept in "
              f"{store.directory}); the same command resumes", file=sys.stderr)
        return 0

    def finish() -> dict:
        lines = store.lines()
        paths.makedirs(out.parent)
        write_bytes_atomic(out, jsonl_bytes(lines))
        store.remove()
        return summarize(items, lines, done)

    summary = on_main(finish, f"writing {out}")
    if runtime.is_main:
        print(json.dumps(summary))
    return 0


def summarize(items: list[PreferenceItem], lines: list[dict], done) -> dict:
    n_valid = sum(j["num_valid"] for j in lines)
    n_samples = sum(j["num_valid"] + j["num_failed"] for j in lines)
    labelled = [(item, j) for item, j in zip(items, lines) if item.best is not None]
    summary = {"items": len(items), "parse_rate": n_valid / max(n_samples, 1)}
    if labelled:
        summary["accuracy"] = sum(j["best"] == item.best for item, j in labelled) / len(labelled)
        summary["labelled_items"] = len(labelled)
    if done.reused:
        summary["resumed_items"] = done.reused
    return summary
