"""`spct plan --config configs/X.py [--config.KEY=VALUE | --config.KEY VALUE ...] [--json] [--stage S]`.

A run config is a Python file with `get_config() -> ConfigDict` and `validate(config)` (configs/base.py), loaded by
the loader every command shares (spct_jax/config_files.py): overrides are typed by the field they replace, exactly
as `launch/run.sh` passes them, and the config is validated again after them.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spct_jax.config_files import load_config, split_overrides
from spct_jax.parallel.plan import STAGES, plan, plan_json


def plan_main(argv: Sequence[str]) -> int:
    """Entry point of `spct plan`; argv excludes the program and subcommand. Returns the exit status."""
    overrides, rest = split_overrides(argv)
    parser = argparse.ArgumentParser(prog="spct plan", description="Per-device memory plan of a run config "
                                     "by phase (no devices used; see spct_jax/parallel/plan.py and plan_phases.py).")
    parser.add_argument("--config", required=True, help="run config file, e.g. configs/gemma2_27b_v5p.py")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")
    parser.add_argument("--stage", choices=STAGES, default="grpo",
                        help="the stage whose bytes_per_device / peak / fits lead the JSON (default grpo)")
    parser.add_argument("--no-search", action="store_true", help="skip the smallest-fitting-slice search")
    args = parser.parse_args(rest)
    try:
        config = load_config(args.config, overrides)
        result = plan(config, search_smallest=not args.no_search)
    except ValueError as e:  # config, mesh and sharding-rule errors all name the field or parameter
        print(f"spct plan: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(plan_json(result, args.stage))
    else:
        print(result.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(plan_main(sys.argv[1:]))
