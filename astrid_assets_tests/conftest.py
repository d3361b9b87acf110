"""Shared fixtures: where the real survey data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    """``../shared/data/real`` beside the checkout, or ``$ASTRID_REAL_DATA``."""
    env = os.environ.get("ASTRID_REAL_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    path = real_data_dir()
    if not path.is_dir():
        pytest.fail(f"real survey data not found at {path}; set ASTRID_REAL_DATA")
    return path
