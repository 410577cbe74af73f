"""Shared fixtures: the dev data in ../shared/data and models loaded once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _require_shared() -> Path:
    if not SHARED_DATA.is_dir():
        msg = f"dev data not found at {SHARED_DATA} (expected ../shared/data beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; missing data fails under CI=true and skips elsewhere."""
    return _require_shared()
