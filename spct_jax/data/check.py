"""`spct data check PATH... [--format F]`: read preference files, print counts and every bad row.

Exit status: 0 when every row is usable, 1 when any row (or file) is bad, a file has no rows at all, or no
preference file was found, 2 on a usage error. Rows dropped by policy (ties) are counted in the summary but are not errors.

Items without ground truth (no `rewards` and no `best`, e.g. the `{"context", "responses"}` lines `spct score`
reads) are good rows: they can be scored, but not evaluated (no accuracy, no Eq. 10 reward). Each file with such
items says how many, and the total line counts them.
"""
from __future__ import annotations

import argparse
import collections
import sys
from typing import Sequence, TextIO

from spct_jax.data.formats import (FORMAT_NAMES, count_by_subset, data_files, read_preferences_with_report,
                                   uid_base_for)
from spct_jax.data.schema import DataError, PreferenceItem


def has_ground_truth(item: PreferenceItem) -> bool:
    """Whether evaluation can judge the item: PreferenceItem.gt_rewards() needs `rewards` or `best`."""
    return item.rewards is not None or item.best is not None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spct data check", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="a preference file or a folder of them (recursive)")
    p.add_argument("--format", choices=FORMAT_NAMES, default=None, help="skip detection and read as this format")
    return p


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on usage errors (2); the CLI wants a code
        return int(e.code or 0)
    bad = 0
    files = 0
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    dropped: collections.Counter[str] = collections.Counter()
    unlabelled = 0  # items without ground truth: fit for scoring, not for evaluation
    seen: dict[tuple[str, str], str] = {}  # (source, uid) must be unique across everything checked together
    for path in args.paths:
        try:
            paths = data_files(path)
        except DataError as e:
            print(f"BAD {e}", file=out)
            bad += 1
            continue
        for f in paths:
            files += 1
            try:
                items, report = read_preferences_with_report(f, args.format, on_error="skip", seen_uids=seen,
                                                             uid_base=uid_base_for(path, f))
            except DataError as e:  # the whole file is unreadable (truncated JSON, broken gzip, unknown format)
                print(f"BAD {e}", file=out)
                bad += 1
                continue
            for b in report.bad:
                print(f"BAD {b.loc}: {b.reason}", file=out)
            bad += len(report.bad)
            if report.rows == 0 and not report.bad:  # nothing to check is not a pass: a truncated copy looks so
                print(f"BAD {f}: no rows (an empty file)", file=out)
                bad += 1
            dropped.update(report.dropped)
            counts.update(count_by_subset(items))
            print(report.summary(), file=out)
            no_gt = [it.uid for it in items if not has_ground_truth(it)]
            unlabelled += len(no_gt)
            if no_gt:
                shown = ", ".join(repr(u) for u in no_gt[:3]) + (", ..." if len(no_gt) > 3 else "")
                print(f"  {len(no_gt)} of {len(items)} items have no ground truth ('rewards' or 'best'; uid {shown}): "
                      f"fit for scoring (spct score), not for evaluation; {len(items) - len(no_gt)} fit for "
                      "evaluation", file=out)
    if files == 0:
        print("no preference files found (.json, .jsonl, .gz, .parquet)", file=out)
        return 1
    width = max([len(s) for s, _ in counts] + [6])
    print(f"\n{'source':<{width}}  {'items':>7}  subset", file=out)
    for (source, subset), n in sorted(counts.items()):
        print(f"{source:<{width}}  {n:>7}  {subset}", file=out)
    drops = ", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "none"
    unlabelled_note = f"; without ground truth (scoring only): {unlabelled}" if unlabelled else ""
    print(f"total: {sum(counts.values())} items in {files} files; dropped by policy: {drops}; bad rows: {bad}"
          f"{unlabelled_note}", file=out)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())


def cli(argv: Sequence[str]) -> int:
    """`spct data SUBCOMMAND`: currently `check`."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: spct data check PATH [--format F] [--skip]")
        return 0 if argv else 2
    if argv[0] != "check":
        print(f"spct data: unknown subcommand {argv[0]!r} (known: check)", file=sys.stderr)
        return 2
    return main(list(argv[1:]))
