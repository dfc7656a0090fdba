"""The one run-config loader of every command (`spct rft|grpo|metarm`, `spct plan`, and `--config` of `spct score`,
`spct eval run`, `spct serve`): `--config path.py` plus `--config.a.b=value` or `--config.a.b value` overrides.

A config file defines `get_config()` returning a `ml_collections.ConfigDict` (configs/base.py; its `validate`, when
the file defines one, runs again after the overrides). Overrides are parsed against the existing field's type (bool,
int, float, str, tuple/list via Python literals), so a typo in a key or a value of the wrong type fails with an
error naming the key instead of silently adding a field. `split_overrides` is the one argv splitter: it takes the
overrides out of a command line, in either form, before argparse sees the rest.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import ml_collections


class ConfigFileError(ValueError):
    pass


def _config_module(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"--config {path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"spct_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if "get_config" not in vars(module):
        raise ConfigFileError(f"{path}: defines no get_config()")
    return module


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    cfg = vars(_config_module(path))["get_config"]()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigFileError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    return cfg


def _coerce(key: str, old, raw: str):
    if isinstance(old, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigFileError(f"bad override --config.{key}={raw}: expected a bool")
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        try:
            value = type(old)(ast.literal_eval(raw)) if isinstance(old, int) else float(raw)
        except (ValueError, SyntaxError):
            raise ConfigFileError(f"bad override --config.{key}={raw}: expected a {type(old).__name__}") from None
        return value
    if isinstance(old, (tuple, list)):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise ConfigFileError(f"bad override --config.{key}={raw}: expected a Python list/tuple literal") from None
        return type(old)(value if isinstance(value, (list, tuple)) else [value])
    if old is None:
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    return raw


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(`--config.key=value` overrides, other args); `--config.key value` becomes `--config.key=value`."""
    overrides, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config.") and "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            overrides.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        (overrides if arg.startswith("--config.") else rest).append(arg)
        i += 1
    return overrides, rest


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=value` strings (or `--config.a.b`, `value` pairs; the `--config.` prefix is optional
    in the first form)."""
    joined, stray = split_overrides(list(overrides))
    joined += stray  # "a.b=value" without the prefix; anything else is refused below
    for item in joined:
        body = item[len("--config."):] if item.startswith("--config.") else item
        if "=" not in body:
            raise ConfigFileError(f"bad override {item!r}: expected --config.key=value or --config.key value")
        key, raw = body.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise ConfigFileError(f"--config.{key} names no field {p!r} of the config")
            node = node[p]
        leaf = parts[-1]
        if leaf not in node:
            raise ConfigFileError(f"--config.{key} names no field {leaf!r}; known: {sorted(node.keys())}")
        with node.unlocked():
            node[leaf] = _coerce(key, node[leaf], raw)
    return cfg


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """get_config() of the file, overridden, then checked by the file's own `validate` when it defines one (its
    get_config validated the defaults; overrides can break them)."""
    members = vars(_config_module(path))
    cfg = members["get_config"]()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigFileError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    cfg = apply_overrides(cfg, overrides)
    if "validate" in members:
        members["validate"](cfg)
    return cfg
