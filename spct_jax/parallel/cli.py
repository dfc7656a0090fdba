"""`spct plan --config configs/X.py [--config.KEY=VALUE ...] [--json] [--stage S]`, and run-config loading.

A run config is a Python file with `get_config() -> ConfigDict` and `validate(config)` (configs/base.py). Overrides
use ml_collections' own flag syntax (`--config.grpo.beta=0.02` or `--config.grpo.beta 0.02`), typed by the field
they replace, exactly as `launch/run.sh` passes them; the config is validated again after them.
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from spct_jax.parallel.plan import STAGES, plan, plan_json


class ConfigLoadError(ValueError):
    """A config file that cannot be loaded, or an override naming no field; the message says which."""


def _load_module(path: str):
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigLoadError(f"config file {path!r} not found")
    spec = importlib.util.spec_from_file_location(f"spct_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("get_config", "validate"):
        if name not in vars(module):
            raise ConfigLoadError(f"config file {path!r} defines no {name}() (see configs/base.py)")
    return module


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(--config.KEY overrides with their values, everything else). `--config.KEY VALUE` keeps its VALUE."""
    overrides, rest = [], []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg.startswith("--config."):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(argv[i + 1])
                next(it)
        else:
            rest.append(arg)
    return overrides, rest


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """get_config() of the file at `path`, with `--config.KEY=VALUE` overrides applied, then validated."""
    module = _load_module(path)
    config = module.get_config()
    if overrides:
        values = flags.FlagValues()  # private flag registry: never touches absl's global FLAGS
        argv = ["spct", *overrides]
        try:
            config_flags.DEFINE_config_dict("config", config, flag_values=values, sys_argv=argv)
            values(argv)
        except (AttributeError, KeyError) as e:
            raise ConfigLoadError(f"override names no field of {path}: {e}") from None
        except flags.Error as e:
            raise ConfigLoadError(f"bad override for {path}: {e}") from None
        config = values.config
    module.validate(config)
    return config


def plan_main(argv: Sequence[str]) -> int:
    """Entry point of `spct plan`; argv excludes the program and subcommand. Returns the exit status."""
    overrides, rest = split_config_args(argv)
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
