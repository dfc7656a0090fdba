"""What `spct eval run` writes, and how: results.md from results.json's content, JSONL bytes, and the all-or-nothing
write of a run's artifacts (eval/run.py, eval/run_all.py)."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from spct_jax import paths

CONSISTENCY_KEYS: tuple[str, ...] = ("Inconsistent", "Flipped")
METHOD_NAMES = {"voting": "Voting", "metarm": "MetaRM"}


def run_label(run: Mapping[str, Any]) -> str:
    """"Voting@8", "MetaRM@8 (k_meta=4)"."""
    km = f" (k_meta={run['k_meta']})" if run.get("k_meta") is not None else ""
    return f"{METHOD_NAMES[run['method']]}@{run['k']}{km}"


def results_markdown(results: Mapping[str, Any]) -> str:
    runs = results["runs"]
    keys: list[str] = []
    for r in runs:
        keys += [key for key in r["scores"] if key not in keys]
    # A two-order run's position consistency, where the scores do not already hold it (JudgeBench's do).
    extra = [key for key in CONSISTENCY_KEYS if key not in keys and any("consistency" in r for r in runs)]
    counted = f"{results['items']} items"
    if results.get("benchmark_items", results["items"]) != results["items"]:
        counted = f"{results['items']} judged items from {results['benchmark_items']} data items"
    orders = {"both": " · both orders (k samples each)", "AB": " · AB order only (single game)"}.get(
        results.get("orders") or "", "")
    lines = [f"# {results['benchmark']}: {results['model']}", "",
             f"{counted}{orders} · temperature {results['temperature']} · max_new_tokens "
             f"{results['max_new_tokens']} · seed {results['seed']} · parse rate "
             f"{100 * results['parse_rate']:.1f}% of {results['samples']} samples", "",
             "| method | k | k_meta | " + " | ".join(keys + extra) + " |",
             "|---|---:|---:|" + "---:|" * len(keys + extra)]
    for r in runs:
        values = {**r.get("consistency", {}), **r["scores"]}
        cells = " | ".join(f"{100 * values[key]:.2f}" if key in values else "-" for key in keys + extra)
        lines.append(f"| {METHOD_NAMES[r['method']]} | {r['k']} | {r['k_meta'] if r['k_meta'] is not None else '-'} "
                     f"| {cells} |")
    lines += ["", "Scores in %, computed with each benchmark's official rules (spct_jax.eval.benchmarks). Several k "
              "vote over the first k of max(k) samples per item (nested subsets of one run)."]
    if extra or results.get("orders") == "both":
        lines.append("Inconsistent: pairs whose verdict differs between the two orders shown; Flipped: pairs whose "
                     "winner swaps with the order (eval/consistency.py).")
    return "\n".join(lines) + "\n"


def jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
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
