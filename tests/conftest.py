"""Shared pytest fixtures."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# One persistent XLA compilation cache for the run's stage commands: the tests launch `spct rft / grpo / metarm /
# demo ...` subprocesses that compile the same tiny-config programs again and again, each in its own run dir.
# Through $SPCT_COMPILATION_CACHE (parallel/compilation.py) they share one fresh directory, removed at exit, so no
# run reads programs of an earlier checkout. A caller's own setting (a directory, or "off") is kept.
if "SPCT_COMPILATION_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="spct-test-xla-")
    os.environ["SPCT_COMPILATION_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data samples: $SPCT_SHARED_DATA, default <repo>/../shared/data; the test skips without them."""
    root = Path(os.environ.get("SPCT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set SPCT_SHARED_DATA)")
    return root
