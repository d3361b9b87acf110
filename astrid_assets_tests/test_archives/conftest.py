"""Fixtures of the archive-client tests: a local archive server and a fast, cached client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from astrid_assets.archives import DownloadCache, HttpClient, HttpConfig
from astrid_assets_tests.test_archives.archive_server import ArchiveServer

# Retries, pace and backoff short enough for tests; the logic is the production one.
FAST = HttpConfig(
    connect_timeout=2.0, read_timeout=5.0, retries=2, backoff=0.01, max_backoff=0.05, min_interval=0
)


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    with ArchiveServer() as running:
        yield running


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive-cache"


@pytest.fixture
def http(cache_dir: Path) -> Iterator[HttpClient]:
    with HttpClient(FAST, DownloadCache(cache_dir)) as client:
        yield client


@pytest.fixture(scope="session")
def decam(real_data: Path) -> Path:
    """Real DECam cut-outs: Stack-DEC-OBS04 (science) and Stack-DEC-OBS18 (reference)."""
    return real_data / "images" / "decam_sfft"
