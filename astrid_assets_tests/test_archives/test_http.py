"""The shared HTTP layer over real HTTP: retries, Retry-After, pace, cache, checksums."""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from pathlib import Path

import pytest

from astrid_assets.archives import (
    ArchiveError,
    DownloadCache,
    DownloadError,
    HttpClient,
    HttpConfig,
)
from astrid_assets_tests.test_archives.archive_server import ArchiveServer, Reply
from astrid_assets_tests.test_archives.conftest import FAST

PATH = "/data/image.fits"


class RecordingSleep:
    """``time.sleep`` that remembers how long it was asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def image_bytes(decam: Path) -> bytes:
    return (decam / "Stack-DEC-OBS04.fits").read_bytes()


def test_a_503_is_retried_and_the_second_answer_kept(
    server: ArchiveServer, http: HttpClient, image_bytes: bytes
) -> None:
    server.serve(PATH, Reply(body=image_bytes))
    server.fail_first(PATH, Reply(503))
    path = http.download(server.base_url + PATH, suffix=".fits")
    assert path.read_bytes() == image_bytes
    assert server.hits[PATH] == 2


def test_429_retry_after_replaces_the_backoff(
    server: ArchiveServer, cache_dir: Path, image_bytes: bytes
) -> None:
    server.serve(PATH, Reply(body=image_bytes))
    server.fail_first(PATH, Reply(429, headers={"Retry-After": "0"}))
    sleep = RecordingSleep()
    config = HttpConfig(retries=1, backoff=30.0, min_interval=0)  # a backoff would take 30 s
    with HttpClient(config, DownloadCache(cache_dir), sleep=sleep) as client:
        path = client.download(server.base_url + PATH)
    assert path.read_bytes() == image_bytes
    assert server.hits[PATH] == 2
    assert sleep.waits == [0.0]


def test_a_retry_after_longer_than_allowed_gives_up_saying_so(
    server: ArchiveServer, cache_dir: Path
) -> None:
    server.fail_first(PATH, Reply(503, headers={"Retry-After": "3600"}))
    config = HttpConfig(retries=3, max_retry_after=60, min_interval=0)
    with HttpClient(config, DownloadCache(cache_dir)) as client:
        with pytest.raises(ArchiveError, match="asks to wait 3600 s") as err:
            client.download(server.base_url + PATH)
    assert server.base_url + PATH in str(err.value)
    assert server.hits[PATH] == 1


def test_persistent_5xx_gives_up_after_the_configured_attempts(
    server: ArchiveServer, http: HttpClient
) -> None:
    server.serve(PATH, Reply(502))
    with pytest.raises(ArchiveError, match=r"HTTP 502.*gave up after 3 attempts") as err:
        http.download(server.base_url + PATH)
    assert server.base_url + PATH in str(err.value)
    assert server.hits[PATH] == FAST.retries + 1


def test_a_404_is_not_retried_and_names_the_url(server: ArchiveServer, http: HttpClient) -> None:
    with pytest.raises(ArchiveError, match="HTTP 404") as err:
        http.download(server.base_url + "/missing.fits")
    assert f"{server.base_url}/missing.fits" in str(err.value)
    assert server.hits["/missing.fits"] == 1


def test_a_refused_connection_is_retried_then_reported(cache_dir: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleep = RecordingSleep()
    with HttpClient(FAST, DownloadCache(cache_dir), sleep=sleep) as client:
        with pytest.raises(ArchiveError, match="could not connect") as err:
            client.get_text(f"http://127.0.0.1:{port}/ibe/search")
    assert f"127.0.0.1:{port}/ibe/search" in str(err.value)
    assert len(sleep.waits) == FAST.retries
    assert sleep.waits[1] > sleep.waits[0]  # exponential backoff


def test_the_second_download_is_served_from_the_cache(
    server: ArchiveServer, http: HttpClient, cache_dir: Path, image_bytes: bytes
) -> None:
    server.serve(PATH, Reply(body=image_bytes))
    url = server.base_url + PATH
    first = http.download(url, suffix=".fits")
    second = http.download(url, suffix=".fits")
    assert first == second
    assert server.hits[PATH] == 1
    key = hashlib.sha256(url.encode()).hexdigest()
    assert first == cache_dir / key[:2] / f"{key}.fits"
    # Another client (another worker) on the same cache does not ask either.
    with HttpClient(FAST, DownloadCache(cache_dir)) as other:
        assert other.download(url, suffix=".fits").read_bytes() == image_bytes
        assert other.requests_sent == 0
    assert server.hits[PATH] == 1


def test_a_cache_on_an_fsspec_store_serves_hits_without_the_network(
    server: ArchiveServer, tmp_path: Path, image_bytes: bytes
) -> None:
    # memory:// stands in for s3://: the same non-local UPath code path, no server.
    root = f"memory://astrid-cache-{tmp_path.name}"
    server.serve(PATH, Reply(body=image_bytes))
    url = server.base_url + PATH
    with HttpClient(FAST, DownloadCache(root, local_dir=tmp_path / "a")) as client:
        local = client.download(url, suffix=".fits")
    assert local.read_bytes() == image_bytes
    assert DownloadCache(root).path(url, ".fits").read_bytes() == image_bytes
    with HttpClient(FAST, DownloadCache(root, local_dir=tmp_path / "b")) as client:
        again = client.download(url, suffix=".fits")
    assert again.parent == tmp_path / "b"
    assert again.read_bytes() == image_bytes
    assert server.hits[PATH] == 1


def test_a_truncated_download_is_an_error_naming_the_url(
    server: ArchiveServer, http: HttpClient, cache_dir: Path, image_bytes: bytes
) -> None:
    half = image_bytes[: len(image_bytes) // 2]
    server.serve(PATH, Reply(body=half, content_length=len(image_bytes)))
    url = server.base_url + PATH
    with pytest.raises(DownloadError, match=r"cut short|truncated") as err:
        http.download(url, suffix=".fits")
    assert url in str(err.value)
    assert server.hits[PATH] == FAST.retries + 1
    assert not list(cache_dir.rglob("*.fits"))  # nothing half-written is cached


def test_a_truncation_is_retried_like_a_dropped_connection(
    server: ArchiveServer, http: HttpClient, image_bytes: bytes
) -> None:
    server.serve(PATH, Reply(body=image_bytes))
    server.fail_first(PATH, Reply(body=image_bytes[:1000], content_length=len(image_bytes)))
    assert http.download(server.base_url + PATH).read_bytes() == image_bytes
    assert server.hits[PATH] == 2


def test_content_md5_is_checked(
    server: ArchiveServer, http: HttpClient, image_bytes: bytes
) -> None:
    good = base64.b64encode(hashlib.md5(image_bytes).digest()).decode()
    server.serve(PATH, Reply(body=image_bytes, headers={"Content-MD5": good}))
    assert http.download(server.base_url + PATH).read_bytes() == image_bytes

    wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    server.serve("/bad.fits", Reply(body=image_bytes, headers={"Content-MD5": wrong}))
    with pytest.raises(DownloadError, match=r"checksum mismatch.*Content-MD5") as err:
        http.download(server.base_url + "/bad.fits")
    assert f"{server.base_url}/bad.fits" in str(err.value)


def test_an_md5_from_the_archives_file_table_is_checked(
    server: ArchiveServer, http: HttpClient, image_bytes: bytes
) -> None:
    server.serve(PATH, Reply(body=image_bytes))
    url = server.base_url + PATH
    with pytest.raises(DownloadError, match="file table") as err:
        http.download(url, md5="0" * 32)
    assert url in str(err.value)
    assert http.download(url, md5=hashlib.md5(image_bytes).hexdigest()).exists()


def test_requests_to_one_host_keep_the_minimum_interval(
    server: ArchiveServer, cache_dir: Path
) -> None:
    server.serve("/q", Reply(body=b"ok"))
    config = HttpConfig(min_interval=0.2, retries=0)
    with HttpClient(config, DownloadCache(cache_dir)) as client:
        started = time.monotonic()
        for _ in range(3):
            assert client.get_text(server.base_url + "/q") == "ok"
        elapsed = time.monotonic() - started
    assert elapsed >= 0.38
    assert server.hits["/q"] == 3


def test_metadata_queries_are_not_cached(server: ArchiveServer, http: HttpClient) -> None:
    server.serve("/q", Reply(body=b"rows"))
    http.get_text(server.base_url + "/q", {"WHERE": "field=633"})
    http.get_text(server.base_url + "/q", {"WHERE": "field=633"})
    assert server.hits["/q"] == 2
    assert server.requests[0].query == {"WHERE": "field=633"}
