"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data samples: $SPCT_SHARED_DATA, default <repo>/../shared/data; the test skips without them."""
    root = Path(os.environ.get("SPCT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set SPCT_SHARED_DATA)")
    return root
