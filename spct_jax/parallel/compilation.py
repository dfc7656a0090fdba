"""XLA compilation across restarts and phases: the persistent compilation cache, and compile counts per phase.

A 27B program takes minutes to compile, and a pod is restarted often (spot preemptions, resumed stages): JAX's
persistent compilation cache keeps every compiled executable on disk, keyed by the program, its shardings, the
devices and the compiler version, so a restarted command loads instead of compiling. Where it lives:

    1. the config's `runtime.compilation_cache` (stage commands), or the `directory` argument
    2. $SPCT_COMPILATION_CACHE
    3. run_dir/compilation_cache (stage commands: the run dir survives the VMs), else ~/.cache/spct-jax/xla
    "off" at any level disables it.

Every process of a multi-host run uses the same directory (a gcsfuse mount or gs:// works: JAX reads it through
etils.epath). Only programs that took at least `min_compile_secs` to compile are written, so the many tiny eager
programs do not fill it.

Compile counts. `compile_phase(name)` labels what runs inside it; a jax.monitoring listener counts every program
JAX hands to XLA (`/jax/core/compile/backend_compile_duration`: compiled, or loaded from the persistent cache,
which `/jax/compilation_cache/cache_hits` tells apart) and its seconds, under the OUTERMOST label active (so a
sampler call inside GRPO's rollout counts as "grpo_rollout", one outside any stage phase as "sampling").
`compile_counts()` reads them; the stage commands log them per phase when they finish.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import jax

log = logging.getLogger("spct.compile")

ENV_VAR = "SPCT_COMPILATION_CACHE"
OFF = ("off", "none", "false", "0")
MIN_COMPILE_SECS = 1.0  # JAX's own default: compiles faster than this are not worth a file
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


# -- the persistent cache -----------------------------------------------------------------------------------------
def cache_dir(configured: str | None = None, *, run_dir: str | None = None) -> str | None:
    """The persistent cache directory by the precedence of the module docstring; None = disabled."""
    for value in (configured, os.environ.get(ENV_VAR)):
        if value:
            return None if value.lower() in OFF else str(value)
    if run_dir:
        return f"{str(run_dir).rstrip('/')}/compilation_cache"
    return os.path.join(os.path.expanduser("~"), ".cache", "spct-jax", "xla")


_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")


def enable_compilation_cache(directory: str | None = None, *, run_dir: str | None = None,
                             min_compile_secs: float = MIN_COMPILE_SECS, min_entry_bytes: int = 0) -> str | None:
    """Point JAX's persistent compilation cache at `cache_dir(directory, run_dir=run_dir)` (None: leave it off)
    and start counting compiles. Call it once at start-up, before the first compile; the inference commands (score,
    eval, serve) call it with no arguments or a directory of their own. -> the directory used, or None."""
    install_compile_counter()
    path = cache_dir(directory, run_dir=run_dir)
    if path is None:
        return None
    if "://" not in path:
        os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_bytes))
    _reset_cache()  # JAX reads the directory once, at its first compile; this makes it read it again
    log.info("persistent compilation cache: %s (programs compiling in >= %.1f s)", path, min_compile_secs)
    return path


@contextlib.contextmanager
def preserved_cache_settings() -> Iterator[None]:
    """Restore the persistent-cache settings on exit (a command run in-process, e.g. by a test, leaves the
    process as it found it)."""
    before = {name: getattr(jax.config, name) for name in _SETTINGS}
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        _reset_cache()


def _reset_cache() -> None:
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


# -- compile counts -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PhaseCompiles:
    """Programs JAX handed to XLA in one phase: `programs` = compiled + loaded from the persistent cache."""

    programs: int = 0
    cache_hits: int = 0
    seconds: float = 0.0  # compiling (or loading) them

    @property
    def compiled(self) -> int:
        return self.programs - self.cache_hits


_lock = threading.Lock()
_counts: dict[str, PhaseCompiles] = {}
_phases: list[str] = []
_installed = False


def _phase() -> str:
    return _phases[0] if _phases else "other"


def _on_duration(event: str, duration: float, **_: Any) -> None:
    if event == _BACKEND_COMPILE:
        with _lock:
            c = _counts.setdefault(_phase(), PhaseCompiles())
            c.programs += 1
            c.seconds += duration


def _on_event(event: str, **_: Any) -> None:
    if event == _CACHE_HIT:
        with _lock:
            _counts.setdefault(_phase(), PhaseCompiles()).cache_hits += 1


def install_compile_counter() -> None:
    """Start counting (idempotent; compile_phase installs it too)."""
    global _installed
    with _lock:
        if _installed:
            return
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _installed = True


@contextlib.contextmanager
def compile_phase(name: str) -> Iterator[None]:
    """Count the compiles inside under `name` (unless an enclosing phase already names them)."""
    install_compile_counter()
    _phases.append(name)
    try:
        yield
    finally:
        _phases.pop()


def compile_counts() -> dict[str, PhaseCompiles]:
    """A snapshot: phase -> PhaseCompiles since the process started counting."""
    with _lock:
        return {k: dataclasses.replace(v) for k, v in _counts.items()}


def compile_delta(before: dict[str, PhaseCompiles], after: dict[str, PhaseCompiles] | None = None
                  ) -> dict[str, PhaseCompiles]:
    """after - before, per phase (phases without compiles in between are left out)."""
    after = compile_counts() if after is None else after
    out = {}
    for name, a in after.items():
        b = before.get(name, PhaseCompiles())
        d = PhaseCompiles(a.programs - b.programs, a.cache_hits - b.cache_hits, a.seconds - b.seconds)
        if d.programs:
            out[name] = d
    return out


def log_compile_counts(counts: dict[str, PhaseCompiles] | None = None, *, logger: logging.Logger = log) -> None:
    """One line per phase: programs, how many came from the persistent cache, seconds."""
    counts = compile_counts() if counts is None else counts
    for name, c in sorted(counts.items()):
        logger.info("compiles in %s: %d programs (%d compiled, %d from the persistent cache), %.1f s", name,
                    c.programs, c.compiled, c.cache_hits, c.seconds)


__all__ = ["ENV_VAR", "PhaseCompiles", "cache_dir", "compile_counts", "compile_delta", "compile_phase",
           "enable_compilation_cache", "install_compile_counter", "log_compile_counts", "preserved_cache_settings"]
