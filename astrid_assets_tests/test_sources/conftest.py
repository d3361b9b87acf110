"""Every source test keeps its caches in a home of its own."""

import pytest


@pytest.fixture(autouse=True)
def own_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "astrid_home"))
