"""The review app's defences: CSRF tokens, safe redirects, security headers.

A session (Starlette's signed ``SessionMiddleware`` cookie) carries a random
token; a write must send it back, in the ``X-CSRF-Token`` header (the page's
script) or the ``csrf_token`` field (a form). Another site can make a
browser send the cookie, but cannot read the token.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import HTTPException, Request

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SECURITY_HEADERS",
    "SecurityHeaders",
    "check_csrf",
    "csrf_token",
    "is_form",
    "safe_next",
]

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made at the first call."""
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def check_csrf(request: Request) -> None:
    """403 unless the request carries the session's CSRF token (header or form field)."""
    expected = request.session.get("csrf")
    given = request.headers.get(CSRF_HEADER)
    if given is None and is_form(request):
        given = (await request.form()).get(CSRF_FIELD)
    if not expected or not isinstance(given, str) or not secrets.compare_digest(given, expected):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")


def is_form(request: Request) -> bool:
    """Whether the body is an HTML form."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind in ("application/x-www-form-urlencoded", "multipart/form-data")


def safe_next(target: str) -> str:
    """``target`` when it is a path of this site, else the queue (no open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/queue"


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
