"""A stand-in for the survey archives: real HTTP on loopback, scripted answers, hit counts.

``ArchiveServer`` is a :class:`http.server.ThreadingHTTPServer` on a free
port of 127.0.0.1, run in a thread and stopped by its handle on leaving the
``with`` block. Each path is served by a fixed :class:`Reply` or by a
function of the request (which answers 400 when the query is not what the
archive's documentation calls for); replies queued with
:meth:`ArchiveServer.fail_first` are served first (a 503, a 429, a
truncated body). Every request is recorded, so tests assert on the exact
path and query a client sent and on how many requests reached the server.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["ArchiveServer", "Reply", "Request", "ipac_table"]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Request:
    """What a client asked for: the path and the decoded query (one value per name)."""

    path: str
    query: dict[str, str]


@dataclass(frozen=True)
class Reply:
    """An HTTP answer. ``content_length`` larger than the body makes a truncated one."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int | None = None


def bad_request(message: str) -> Reply:
    return Reply(400, message.encode(), {"Content-Type": "text/plain"})


Route = Reply | Callable[[Request], Reply]


class ArchiveServer:
    """Serve scripted archive answers on loopback; count and record every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.queued: dict[str, deque[Reply]] = defaultdict(deque)
        self.hits: Counter[str] = Counter()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "the server is not running"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, path: str, route: Route) -> None:
        """Answer GET ``path`` with ``route`` (a reply, or a function of the request)."""
        self.routes[path] = route

    def fail_first(self, path: str, *replies: Reply) -> None:
        """Answer the next requests of ``path`` with ``replies``, then as routed."""
        self.queued[path].extend(replies)

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            self.hits[request.path] += 1
            self.requests.append(request)
            if self.queued[request.path]:
                return self.queued[request.path].popleft()
        route = self.routes.get(request.path)
        if route is None:
            return Reply(404, f"no such file: {request.path}".encode())
        return route(request) if callable(route) else route

    def __enter__(self) -> Self:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
                reply = server._answer(Request(parts.path, query))
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                length = len(reply.body) if reply.content_length is None else reply.content_length
                self.send_header("Content-Length", str(length))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(reply.body)
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def ipac_table(
    columns: Sequence[tuple[str, str, str]],
    rows: Sequence[Sequence[object]],
    keywords: dict[str, object] | None = None,
) -> str:
    """An IPAC ASCII table as IRSA writes it
    (https://irsa.ipac.caltech.edu/applications/DDGEN/Doc/ipac_tbl.html).

    ``\\keyword = value`` lines, then four ``|``-delimited header lines (column
    names, data types, units, null values), then fixed-width rows whose
    values lie under their column's span between the bars.
    """
    texts = [[str(value) for value in row] for row in rows]
    widths = []
    for i, (name, kind, unit) in enumerate(columns):
        cells = [name, kind, unit, "null", *(row[i] for row in texts)]
        widths.append(max(len(cell) for cell in cells) + 1)
    lines = [f"\\{key} = {value}" for key, value in (keywords or {}).items()]
    for index in range(3):
        cells = [column[index].rjust(width) for column, width in zip(columns, widths, strict=True)]
        lines.append("|" + "|".join(cells) + "|")
    lines.append("|" + "|".join("null".rjust(width) for width in widths) + "|")
    for row in texts:
        lines.append(" " + " ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) + " ")
    return "\n".join(lines) + "\n"
