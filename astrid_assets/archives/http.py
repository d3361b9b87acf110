"""HTTP for the survey archives: timeouts, retries, a polite pace, a download cache.

Every archive client fetches through one :class:`HttpClient`:

* each request has a connect and a read timeout;
* a connection error, a timeout, HTTP 429 or a 5xx is retried with
  exponential backoff; a ``Retry-After`` header (seconds or an HTTP date)
  replaces the backoff, and one longer than ``max_retry_after`` ends the
  attempts with an error saying how long the archive asked to wait;
* requests to one host are at least ``min_interval`` seconds apart, across
  the threads that share the client;
* a body shorter than its ``Content-Length``, or whose MD5 differs from the
  archive's (a ``Content-MD5`` header, RFC 1864, or an md5 the caller read
  from the archive's file table), is a :class:`DownloadError` naming the
  URL; it is retried like a dropped connection, since that is what it
  usually is;
* :meth:`HttpClient.download` keeps each file in a :class:`DownloadCache`
  keyed by the SHA-256 of its URL, in a local folder or an object store
  (``s3://bucket/prefix``). A cached file is returned without any request.

Metadata queries (:meth:`HttpClient.get_text`) are not cached: an archive's
answer to "what was observed on this field" grows as it publishes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from upath import UPath

from astrid_assets import __version__

__all__ = [
    "ArchiveError",
    "DownloadCache",
    "DownloadError",
    "HttpClient",
    "HttpConfig",
]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
LOCAL_PROTOCOLS = ("", "file", "local")
CHUNK_BYTES = 1 << 20


class ArchiveError(RuntimeError):
    """An archive did not deliver what was asked; the message names the URL."""


class DownloadError(ArchiveError):
    """A download arrived incomplete or with the wrong checksum."""


@dataclass(frozen=True)
class HttpConfig:
    """How patiently and how politely to talk to an archive.

    Attributes
    ----------
    connect_timeout, read_timeout : float
        Seconds to open a connection, and to wait for each chunk of a body.
    retries : int
        Further attempts after the first fails for a retryable reason.
    backoff : float
        Seconds before the first retry; doubled for each later one (with up
        to 25% random jitter, so parallel workers do not retry in step).
    max_backoff : float
        Longest wait between two attempts that the client chooses itself.
    max_retry_after : float
        Longest ``Retry-After`` the client will honour; a longer one gives up.
    min_interval : float
        Least seconds between the starts of two requests to the same host.
    user_agent : str
        Sent with every request, so an archive's operators know who calls.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 60.0
    max_retry_after: float = 300.0
    min_interval: float = 1.0
    user_agent: str = f"AstrID/{__version__} (transient survey pipeline; python-requests)"

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("retries", "backoff", "max_backoff", "max_retry_after", "min_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative, got {getattr(self, name)}")


def _is_local(path: UPath) -> bool:
    return getattr(path, "protocol", "") in LOCAL_PROTOCOLS


def _write_atomically(path: UPath, data: bytes) -> None:
    """Write ``data`` so that a reader sees the whole file or none.

    Unlike :func:`astrid_assets.storage.atomic.atomic_write_bytes` this never
    removes other writers' temporaries: two workers may download the same
    URL at once into a shared cache, and both must be able to finish.
    """
    if not _is_local(path):
        path.write_bytes(data)  # an object store shows an object only once complete
        return
    target = Path(path.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class DownloadCache:
    """Downloaded files keyed by the SHA-256 of their URL.

    Parameters
    ----------
    root : str or path-like
        A local folder or an object store URL (``s3://bucket/prefix``).
    storage_options : mapping, optional
        fsspec options for ``root``; for an S3-compatible store pass
        ``S3Options(...).fsspec_options()`` from
        :mod:`astrid_assets.storage.object_store`.
    local_dir : str or path-like, optional
        Where files of a remote cache are copied to be opened by local
        readers (astropy); default ``$TMPDIR/astrid-archives``.

    Files lie at ``{root}/{key[:2]}/{key}{suffix}``: the suffix keeps the
    file type visible (``.fits``) and the two-letter folders keep listings
    of a large cache short.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = UPath(str(root), **dict(storage_options or {}))
        default_local = Path(tempfile.gettempdir()) / "astrid-archives"
        self.local_dir = Path(local_dir) if local_dir is not None else default_local

    @staticmethod
    def key(url: str) -> str:
        """The cache key of ``url``: the hex SHA-256 of the URL as requested."""
        return hashlib.sha256(url.encode("utf-8")).hexdigest()

    def path(self, url: str, suffix: str = "") -> UPath:
        """Where the file downloaded from ``url`` is (or would be) kept."""
        key = self.key(url)
        return self.root / key[:2] / f"{key}{suffix}"

    def get(self, url: str, suffix: str = "") -> Path | None:
        """The local path of the cached file from ``url``, or None when not cached."""
        path = self.path(url, suffix)
        if not path.exists():
            return None
        return self._local(path)

    def put(self, url: str, data: bytes, suffix: str = "") -> Path:
        """Keep ``data`` as the file from ``url``; returns its local path."""
        path = self.path(url, suffix)
        _write_atomically(path, data)
        return self._local(path, data)

    def _local(self, path: UPath, data: bytes | None = None) -> Path:
        if _is_local(path):
            return Path(path.path)
        local = self.local_dir / path.name
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            temporary = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex}")
            if data is None:
                with path.open("rb") as source, open(temporary, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK_BYTES)
            else:
                temporary.write_bytes(data)
            os.replace(temporary, local)
        return local


def _md5_hex(value: str) -> str:
    """An MD5 given as 32 hex digits or base64 (Content-MD5), as lower-case hex."""
    value = value.strip()
    if len(value) == 32 and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{value!r} is neither a hex nor a base64 MD5") from err
    if len(digest) != 16:
        raise ValueError(f"{value!r} is not an MD5 digest ({len(digest)} bytes)")
    return digest.hex()


def _retry_after(response: requests.Response) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


class HttpClient:
    """GET requests and cached downloads with retries, a pace per host and checksums.

    Parameters
    ----------
    config : HttpConfig
        Timeouts, retries and pace.
    cache : DownloadCache, optional
        Where downloads are kept; without one, :meth:`download` keeps files
        in a fresh temporary folder for this client's lifetime.
    session : requests.Session, optional
        Shared connection pool; one is made when not given.
    sleep : callable
        ``time.sleep``; replaceable in tests.
    """

    def __init__(
        self,
        config: HttpConfig | None = None,
        cache: DownloadCache | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config or HttpConfig()
        if cache is None:
            cache = DownloadCache(tempfile.mkdtemp(prefix="astrid-archives-"))
        self.cache = cache
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = self.config.user_agent
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_start: dict[str, float] = {}
        self.requests_sent = 0

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.session.close()

    @staticmethod
    def url(url: str, params: Mapping[str, Any] | None = None) -> str:
        """``url`` with ``params`` encoded as its query string, as it will be requested."""
        prepared = requests.Request("GET", url, params=dict(params or {})).prepare()
        return str(prepared.url)

    def get_text(self, url: str, params: Mapping[str, Any] | None = None) -> str:
        """The body of ``url`` as text (never cached)."""
        full = self.url(url, params)
        body, encoding = self._fetch(full, md5=None)
        return body.decode(encoding or "utf-8", errors="replace")

    def download(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        suffix: str = "",
        md5: str | None = None,
        decode: Callable[[bytes], bytes] | None = None,
    ) -> Path:
        """Download ``url`` through the cache and return the local file's path.

        Parameters
        ----------
        url, params : str, mapping
            What to fetch; the cache key is the URL with its query.
        suffix : str
            Ending of the cached file's name (``".fits"``).
        md5 : str, optional
            The archive's MD5 of the body (hex or base64), checked in
            addition to any ``Content-MD5`` header.
        decode : callable, optional
            Applied to the verified body before it is cached (``bz2.decompress``
            for SDSS's ``.fits.bz2``); a failure is a :class:`DownloadError`.
        """
        full = self.url(url, params)
        cached = self.cache.get(full, suffix)
        if cached is not None:
            return cached
        body, _ = self._fetch(full, md5=md5)
        if decode is not None:
            try:
                body = decode(body)
            except (OSError, ValueError, EOFError) as err:
                raise DownloadError(f"{full}: the body could not be decoded ({err})") from err
        return self.cache.put(full, body, suffix)

    def _wait_turn(self, url: str) -> None:
        host = urlsplit(url).netloc
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start.get(host, now))
            self._next_start[host] = start + self.config.min_interval
        if start > now:
            self._sleep(start - now)

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.max_backoff, self.config.backoff * 2**attempt)
        return delay * (1.0 + 0.25 * random.random())

    def _fetch(self, url: str, md5: str | None) -> tuple[bytes, str | None]:
        """The body of ``url`` after retries; raises :class:`ArchiveError` naming it."""
        config = self.config
        attempts = config.retries + 1
        last: Exception | None = None
        for attempt in range(attempts):
            self._wait_turn(url)
            self.requests_sent += 1
            delay = self._backoff(attempt)
            try:
                response = self.session.get(
                    url, timeout=(config.connect_timeout, config.read_timeout), stream=True
                )
            except (requests.ConnectionError, requests.Timeout) as err:
                last = ArchiveError(f"{url}: could not connect ({type(err).__name__}: {err})")
            else:
                with response:
                    if response.status_code in RETRY_STATUSES:
                        last = ArchiveError(
                            f"{url}: the archive answered HTTP {response.status_code} "
                            f"{response.reason}"
                        )
                        asked = _retry_after(response)
                        if asked is not None:
                            if asked > config.max_retry_after:
                                raise ArchiveError(
                                    f"{url}: the archive answered HTTP {response.status_code} "
                                    f"and asks to wait {asked:.0f} s, longer than "
                                    f"max_retry_after ({config.max_retry_after:.0f} s)"
                                )
                            delay = asked
                    elif response.status_code >= 400:
                        detail = response.text[:300].strip()
                        raise ArchiveError(
                            f"{url}: the archive answered HTTP {response.status_code} "
                            f"{response.reason}" + (f": {detail}" if detail else "")
                        )
                    else:
                        try:
                            return self._body(url, response, md5), response.encoding
                        except DownloadError as err:
                            last = err
            if attempt + 1 < attempts:
                self._sleep(delay)
        assert last is not None
        kind = DownloadError if isinstance(last, DownloadError) else ArchiveError
        raise kind(f"{last} (gave up after {attempts} attempts)") from last

    @staticmethod
    def _body(url: str, response: requests.Response, md5: str | None) -> bytes:
        declared = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding", "identity") != "identity"
        expected = int(declared) if declared and declared.isdigit() and not encoded else None
        chunks: list[bytes] = []
        received = 0
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                chunks.append(chunk)
                received += len(chunk)
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as err:
            of = f" of {expected}" if expected is not None else ""
            raise DownloadError(
                f"{url}: the download was cut short after {received}{of} bytes ({err})"
            ) from err
        if expected is not None and received != expected:
            raise DownloadError(
                f"{url}: the download is truncated: {received} of {expected} bytes arrived"
            )
        body = b"".join(chunks)
        checks = []
        if response.headers.get("Content-MD5"):
            checks.append(("Content-MD5 header", response.headers["Content-MD5"]))
        if md5:
            checks.append(("archive's file table", md5))
        actual = hashlib.md5(body).hexdigest() if checks else ""
        for source, value in checks:
            try:
                wanted = _md5_hex(value)
            except ValueError as err:
                raise ArchiveError(f"{url}: unusable MD5 from the {source}: {err}") from err
            if wanted != actual:
                raise DownloadError(
                    f"{url}: checksum mismatch: MD5 {actual} of the {len(body)} bytes received, "
                    f"{wanted} in the {source}"
                )
        return body
