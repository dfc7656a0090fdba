"""`spct score --model M --input items.jsonl --output judgements.jsonl --k 8 [--meta-rm DIR --k-meta 4]`.

Input lines are `{"context": str | [{"role","content"}], "responses": [...]}` (optionally "uid", "rewards",
"best"), or any preference format `spct data check` knows. When ground truth is present the summary reports
accuracy (the voted best equals the ground-truth best). The output file appears only when every item is done.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from spct_jax.data.schema import DataError, PreferenceItem


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
    p = argparse.ArgumentParser(prog="spct score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder, .gguf file, tiny-random or smollm2-135m")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--k", type=int, default=1, help="samples per item (Voting@k)")
    p.add_argument("--k-meta", type=int, default=None, help="samples kept by the meta RM (paper: k/2)")
    p.add_argument("--meta-rm", default=None,
                   help="meta RM folder: an HF sequence-classification checkpoint, or a likelihood meta RM "
                        "(likelihood_meta_rm.json, as `spct demo` writes)")
    p.add_argument("--temperature", type=float, default=None, help="default: 0.5 for k > 1 (paper), 0 for k = 1")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--template", default="default")
    p.add_argument("--limit", type=int, default=None, help="score only the first N items")
    p.add_argument("--batch-items", type=int, default=8, help="items per sampler call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-samples", action="store_true", help="omit per-sample texts from the output")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from spct_jax.grm.scorer import PAPER_TEMPERATURE, GenerativeRewardModel
    from spct_jax.models.registry import load_model

    try:
        items = read_items(args.input)
    except (DataError, OSError) as e:
        print(f"spct score: {e}", file=sys.stderr)
        return 1
    if args.limit is not None:
        items = items[: args.limit]
    if args.k_meta is not None and args.meta_rm is None:
        print("spct score: --k-meta needs --meta-rm", file=sys.stderr)
        return 2
    model, tok = load_model(args.model)
    meta_rm = None
    if args.meta_rm:
        from spct_jax.grm.likelihood_meta_rm import load_meta_rm

        meta_rm = load_meta_rm(args.meta_rm)
    grm = GenerativeRewardModel(model, tok, meta_rm=meta_rm, template=args.template)
    temperature = args.temperature if args.temperature is not None else (PAPER_TEMPERATURE if args.k > 1 else 0.0)

    out = Path(args.output)
    tmp = out.with_name(out.name + ".partial")
    n_valid = n_samples = n_correct = n_labelled = 0
    with open(tmp, "w", encoding="utf-8") as f, tqdm(total=len(items), desc="scoring", unit="item") as bar:
        for start in range(0, len(items), args.batch_items):
            chunk = items[start:start + args.batch_items]
            judgements = grm.score(chunk, k=args.k, k_meta=args.k_meta, temperature=temperature,
                                   max_new_tokens=args.max_new_tokens, seed=args.seed, progress=False)
            for item, j in zip(chunk, judgements):
                n_valid += j.num_valid
                n_samples += j.num_valid + j.num_failed
                if item.best is not None:
                    n_labelled += 1
                    n_correct += int(j.best == item.best)
                f.write(json.dumps(j.to_json(with_samples=not args.no_samples)) + "\n")
            bar.update(len(chunk))
    os.replace(tmp, out)
    summary = {"items": len(items), "parse_rate": n_valid / max(n_samples, 1)}
    if n_labelled:
        summary["accuracy"] = n_correct / n_labelled
        summary["labelled_items"] = n_labelled
    print(json.dumps(summary))
    return 0
