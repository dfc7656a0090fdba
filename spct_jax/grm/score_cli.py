"""`spct score --model M --input items.jsonl --output judgements.jsonl --k 8 [--meta-rm DIR --k-meta 4]`.

Input lines are `{"context": str | [{"role","content"}], "responses": [...]}` (optionally "uid", "rewards",
"best"), or any preference format `spct data check` knows. When ground truth is present the summary reports
accuracy (the voted best equals the ground-truth best). Items follow `spct serve`'s rules (grm/judge.py): the
same field checks, and a GRM prompt may use the model's positions less --max-new-tokens; an item over it is
refused before the model loads, naming its line.

On a pod: `--mesh data=D,fsdp=F,tensor=T` shards the GRM and meta RM over every device of every host (`--dtype`,
default bfloat16 with a mesh), or `--config configs/X.py` takes the mesh, dtype and inference settings from a run
config (grm/judge.py). Start the same command on every host (`launch/run.sh score ...`); every process computes,
process 0 writes.

Preemption: finished items are kept in chunks of --batch-items in `.<output>.judging/` beside the output; a SIGTERM
stops after the chunk in flight (exit 0) and the same command resumes without judging them again
(grm/judge_store.py). The output file appears whole, only when every item is judged; the chunks are then removed.

Before any model loads: the flags, the output path (not the input, not a folder, in a folder that exists or can
be made) and every input line are checked. Every expected failure is one line on stderr naming the flag, file,
line or field. Exit status: 0 done (or stopped by SIGTERM, resumable); 1 unreadable or unusable input (a line
that is not UTF-8, not JSON, misses a field or is too long for the model) or checkpoint (a truncated
model.safetensors); 2 bad command line, `--model` / `--meta-rm` naming nothing loadable, a mesh that does not
fit, or settings that leave no room for a prompt.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from spct_jax.data.schema import DataError, PreferenceItem

PROG = "spct score"
DEFAULTS = {"k": 1, "max_new_tokens": 512, "batch_items": 8, "seed": 0}


def _utf8_lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of the file's non-blank lines; DataError naming the first line that is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    out = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM is an editor artefact, not content
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:  # the words `spct data check` uses for the same line
            raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                            ) from None
        if text.strip():
            out.append((lineno, text))
    return out


def _native_item(row: dict, index: int) -> PreferenceItem:
    """One `{"context", "responses", ...}` line, checked field by field as /v1/score checks a request."""
    from spct_jax.grm.judge import check_context, check_strings
    from spct_jax.grm.scorer import as_item

    check_context(row["context"])
    check_strings(row["responses"], "responses")
    return as_item(row, index)


def read_items(path: str) -> tuple[list[PreferenceItem], list[str]]:
    """(items, where): where[i] names item i's place for error messages ("file:line", or its uid in a file of
    another format). DataError (one line naming file and line) for anything unusable."""
    lines = _utf8_lines(path)
    try:
        head = json.loads(lines[0][1]) if lines else None
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict) and "context" in head and "responses" in head and "source" not in head:
        items, where = [], []
        for lineno, line in lines:
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or "context" not in row or "responses" not in row:
                    raise ValueError("needs a JSON object with fields 'context' and 'responses'")
                items.append(_native_item(row, lineno - 1))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
            except (ValueError, TypeError) as e:  # FieldError names the field, e.g. "responses[1]: must be ..."
                raise DataError(f"{path}:{lineno}: {e}") from None
            where.append(f"{path}:{lineno}")
        return items, where
    from spct_jax.data.formats import read_preferences

    items = read_preferences(path)
    return items, [f"{path}: item {it.uid!r}" for it in items]


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


def check_output(args: argparse.Namespace) -> str | None:
    """Why --output cannot be written, found before any model loads; None when it can. Creates nothing."""
    from spct_jax import paths

    out = paths.as_path(args.output)
    if paths.is_remote(out):
        return None  # an object store: nothing to check without writing
    if os.path.isdir(args.output):
        return f"--output {args.output}: is a folder; give a file name"
    if os.path.realpath(args.output) == os.path.realpath(args.input) or (
            os.path.exists(args.output) and os.path.exists(args.input) and os.path.samefile(args.output, args.input)):
        return f"--output {args.output} is the --input file; judgements would replace the items: give another name"
    folder = os.path.dirname(os.path.abspath(args.output))
    while not os.path.exists(folder):  # made at the end (paths.makedirs): its nearest existing ancestor must allow it
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"--output {args.output}: {folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--output {args.output}: cannot write in {folder} (permission denied)"
    return None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if (err := check_args(args)) is not None or (err := check_output(args)) is not None:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    try:
        items, where = read_items(args.input)
    except DataError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    if not items:
        print(f"{PROG}: {args.input}: no items", file=sys.stderr)
        return 1
    if args.limit is not None:
        items, where = items[: args.limit], where[: args.limit]
    from spct_jax.grm.judge import JudgeError

    try:
        return _run(args, items, where)
    except JudgeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # writing the chunks or the output (disk full, a bucket that refuses): finished chunks stay
        print(f"{PROG}: error: {e}; the judged chunks are kept, and the same command resumes", file=sys.stderr)
        return 1


def check_prompts(args: argparse.Namespace, items: list[PreferenceItem], where: list[str]) -> int:
    """The prompt budget (`spct serve`'s rule), checked on every item before the model loads: JudgeError (exit 2)
    for settings that leave no room, DataError naming the first item over it."""
    from spct_jax.grm.judge import check_template_fits, describe, prompt_check

    config, tokenizer = describe(args.model)
    budget = check_template_fits(config, tokenizer, template=args.template, max_new_tokens=args.max_new_tokens,
                                 spec=args.model)
    check = prompt_check(tokenizer, template=args.template, budget=budget, positions=config.max_position_embeddings,
                         max_new_tokens=args.max_new_tokens)
    for item, place in zip(items, where):
        try:
            check(item)
        except ValueError as e:
            raise DataError(f"{place}: {e}") from None
    return budget


def _run(args: argparse.Namespace, items: list[PreferenceItem], where: list[str]) -> int:
    from spct_jax import paths
    from spct_jax.grm.judge import load_judge, setup_runtime
    from spct_jax.grm.judge_store import JudgeStore, judge_in_chunks, jsonl_bytes, on_main, write_bytes_atomic
    from spct_jax.grm.scorer import PAPER_TEMPERATURE

    runtime = setup_runtime(args.mesh, args.dtype, prog=PROG)
    try:
        budget = check_prompts(args, items, where)
    except DataError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    out = paths.as_path(args.output)
    grm = load_judge(args.model, args.meta_rm, mesh=runtime.mesh, dtype=runtime.dtype, template=args.template,
                     max_prompt_tokens=budget)
    temperature = args.temperature if args.temperature is not None else (PAPER_TEMPERATURE if args.k > 1 else 0.0)
    fingerprint = {"command": "score", "model": str(args.model), "meta_rm": args.meta_rm, "dtype": runtime.dtype,
                   "k": args.k, "k_meta": args.k_meta, "temperature": temperature,
                   "max_new_tokens": args.max_new_tokens, "template": args.template, "seed": args.seed,
                   "with_samples": not args.no_samples}
    store = JudgeStore(out.parent / f".{out.name}.judging", fingerprint=fingerprint, items=items).open()

    def judge(indices: list[int]) -> list[dict]:
        chunk = [items[i] for i in indices]
        try:
            judgements = grm.score(chunk, k=args.k, k_meta=args.k_meta, temperature=temperature,
                                   max_new_tokens=args.max_new_tokens, seed=args.seed, progress=False)
        except ValueError as e:  # a shuffled prompt a token or two over the budget (BPE): name the chunk's lines
            raise DataError(f"{', '.join(where[i] for i in indices)}: {e}") from None
        return [j.to_json(with_samples=not args.no_samples) for j in judgements]

    from tqdm.auto import tqdm

    try:
        with tqdm(total=len(items), desc="scoring", unit="item", disable=not runtime.is_main) as bar:
            done = judge_in_chunks(store, judge, chunk_items=args.batch_items, progress=bar.update)
    except DataError as e:
        print(f"{PROG}: {e}; the judged chunks are kept in {store.directory}", file=sys.stderr)
        return 1
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
