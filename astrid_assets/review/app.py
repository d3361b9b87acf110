"""The review web app (FastAPI): vetters label candidates real, bogus or unsure.

:func:`create_app` takes the stores it works on, so the same app serves the
embedded default, production and the tests' temporary stores.

Security, in the order a request meets it:

* Sessions are a signed cookie (Starlette's ``SessionMiddleware``: HttpOnly,
  SameSite=Lax, Secure behind TLS) holding the user's name and a random
  CSRF token; the user's role is read from the ``users`` table on each
  request, so a removed user is out at once.
* A write without a signed-in session is refused with 401; one without
  the session's CSRF token (``X-CSRF-Token`` header from the page's
  script, or the ``csrf_token`` field of a form) with 403; one the user's
  role does not allow (a viewer labelling, a vetter exporting or managing
  users) with 403 (:mod:`astrid_assets.review.security`).
* Pages send a Content-Security-Policy that allows scripts, styles and
  images from the app itself only; templates are autoescaped; every
  filter reaches SQL as a bound parameter (:mod:`astrid_assets.review.queue`).
"""

from __future__ import annotations

import datetime as dt
import io
import math
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import polars as pl
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from astrid_assets.labels import LABELS
from astrid_assets.review.queue import CandidateQueries, QueueFilter, consensus_table
from astrid_assets.review.render import STAMP_KINDS, light_curve_svg, stamp_png
from astrid_assets.review.security import (
    CSRF_FIELD,
    SecurityHeaders,
    check_csrf,
    csrf_token,
    is_form,
    safe_next,
)
from astrid_assets.review.stamps import StampCache
from astrid_assets.review.users import LABELLING_ROLES, ROLES, User, UserStore

__all__ = ["SESSION_COOKIE", "create_app"]

HERE = Path(__file__).parent
SESSION_COOKIE = "astrid_review"
MAX_COMMENT = 2000


class LabelIn(BaseModel):
    """A label as the page (JSON) or a form sends it."""

    candidate_id: str = Field(min_length=1, max_length=64)
    label: Literal["real", "bogus", "unsure"]
    comment: str = Field(default="", max_length=MAX_COMMENT)


class SignInRequired(Exception):
    """A page was asked for without a session: the browser goes to the sign-in page."""

    def __init__(self, next_path: str):
        self.next_path = next_path


@dataclass
class Review:
    """What the routes share: the stores and the caches."""

    labels: Any
    users: UserStore
    queries: CandidateQueries
    stamps: StampCache

    def __post_init__(self) -> None:
        self._where: dict[str, tuple[str, str]] = {}
        self._where_lock = threading.Lock()

    def where_is(self, candidate_id: str) -> tuple[str, str] | None:
        """Night and field of a candidate (they never change, so they are remembered)."""
        with self._where_lock:
            known = self._where.get(candidate_id)
        if known is not None:
            return known
        found = self.queries.where_is(candidate_id)
        if found is not None:
            with self._where_lock:
                self._where[candidate_id] = found
        return found


def create_app(
    labels: Any,
    catalog: Any,
    tables: Any,
    *,
    users: UserStore | None = None,
    secret_key: str | None = None,
    secure_cookies: bool = False,
    session_max_age: int = 12 * 3600,
) -> FastAPI:
    """The review app over a label store, a catalog and a table store.

    Parameters
    ----------
    labels : LabelStore
        Where labels go; its database also holds the ``users`` table.
    catalog : Catalog
        The DuckDB catalog with the ``candidates`` (and ``candidate_scores``) views.
    tables : ParquetStore
        The candidates tables with their cutouts.
    users : UserStore, optional
        Default: the ``users`` table of the label store's database.
    secret_key : str, optional
        Signs the session cookies; give the same one to every process that
        serves the app. Default: a random key (sessions end with the process).
    secure_cookies : bool
        Mark the session cookie Secure (the app is served over HTTPS).
    session_max_age : int
        Seconds a session lasts after its last change.
    """
    review = Review(
        labels=labels,
        users=users or UserStore(labels.engine()),
        queries=CandidateQueries(catalog),
        stamps=StampCache(tables),
    )
    app = FastAPI(title="AstrID review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = review
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key or secrets.token_urlsafe(32),
        session_cookie=SESSION_COOKIE,
        max_age=session_max_age,
        same_site="lax",
        https_only=secure_cookies,
    )
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")

    def page(request: Request, name: str, user: User | None, status: int = 200, **context):
        return templates.TemplateResponse(
            request,
            name,
            {"user": user, "csrf_token": csrf_token(request), "labels": LABELS, **context},
            status_code=status,
        )

    def signed_in(request: Request) -> User | None:
        name = request.session.get("user")
        if not name:
            return None
        user = review.users.get(name)
        if user is None:
            request.session.clear()
        return user

    def reader(request: Request) -> User:
        """The signed-in user of a read: 401 for the API, the sign-in page for a page."""
        user = signed_in(request)
        if user is None:
            if _wants_html(request):
                raise SignInRequired(_local_path(request))
            raise HTTPException(401, "sign in first")
        return user

    async def writer(request: Request, roles: tuple[str, ...] = LABELLING_ROLES) -> User:
        """The signed-in user of a write, once the CSRF token and the role are checked."""
        user = await run_in_threadpool(signed_in, request)
        if user is None:
            raise HTTPException(401, "sign in first")
        await check_csrf(request)
        if user.role not in roles:
            raise HTTPException(403, f"a {user.role} may not do this")
        return user

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse("/login?" + urlencode({"next": exc.next_path}), status_code=303)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()
        )
        return _error(request, 422, problems or "invalid request")

    def _error(request: Request, status: int, detail: str) -> Response:
        if _wants_html(request):
            return page(
                request, "error.html", None, status=status, status_code=status, detail=detail
            )
        return JSONResponse({"detail": detail}, status_code=status)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/queue", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/queue") -> Response:
        return page(request, "login.html", signed_in(request), next=safe_next(next), error=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        await check_csrf(request)
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        next_path = safe_next(str(form.get("next", "/queue")))
        user = await run_in_threadpool(review.users.authenticate, name, password)
        if user is None:
            return page(
                request,
                "login.html",
                None,
                status=401,
                next=next_path,
                error="Unknown name or wrong password.",
            )
        request.session.clear()  # a fresh session and token for the signed-in user
        request.session["user"] = user.name
        request.session["csrf"] = secrets.token_urlsafe(32)
        return RedirectResponse(next_path, status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await writer(request, ROLES)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/api/session")
    def session(request: Request) -> dict[str, Any]:
        """Who is signed in and the session's CSRF token (for scripts and the API)."""
        user = signed_in(request)
        return {
            "user": user.name if user else None,
            "role": user.role if user else None,
            "csrf_token": csrf_token(request),
        }

    @app.get("/queue", response_class=HTMLResponse)
    def queue_page(
        request: Request,
        selection: Annotated[QueueParams, Query()],
    ) -> Response:
        user = reader(request)
        rows = _queue_rows(review, user, selection)
        nights, fields = review.queries.nights_and_fields()
        return page(
            request,
            "queue.html",
            user,
            queue=rows,
            params=selection,
            nights=nights,
            fields=fields,
            counts=review.labels.counts(user.name),
            consensus_query=urlencode(_filter_query(selection)),
        )

    @app.get("/api/queue")
    def queue_api(request: Request, selection: Annotated[QueueParams, Query()]) -> dict:
        user = reader(request)
        return {"candidates": _queue_rows(review, user, selection)}

    @app.get("/api/candidates/{candidate_id}")
    def candidate_api(request: Request, candidate_id: str) -> dict:
        user = reader(request)
        row = review.queries.candidate(candidate_id)
        if row is None:
            raise HTTPException(404, f"no candidate {candidate_id!r}")
        curve = review.queries.light_curve(row)
        given = review.labels.for_candidate(candidate_id)
        mine = [g for g in given if g["vetter"] == user.name]
        return {
            "candidate": _jsonable(row),
            "light_curve": [_jsonable(p) for p in curve.to_dicts()],
            "labels": [_label_json(g) for g in given],
            "mine": _label_json(mine[-1]) if mine else None,
        }

    @app.get("/cutouts/{candidate_id}/{kind}.png")
    def cutout(request: Request, candidate_id: str, kind: str) -> Response:
        reader(request)
        if kind not in STAMP_KINDS:
            raise HTTPException(404, f"no stamp {kind!r}; one of {', '.join(STAMP_KINDS)}")
        where = review.where_is(candidate_id)
        stamp = None if where is None else review.stamps.stamp(*where, candidate_id, kind)
        if stamp is None:
            raise HTTPException(404, f"no {kind} stamp of {candidate_id!r}")
        return Response(
            stamp_png(stamp, symmetric=kind == "difference"),
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=300"},
        )

    @app.get("/lightcurve/{candidate_id}.svg")
    def light_curve(request: Request, candidate_id: str) -> Response:
        reader(request)
        row = review.queries.candidate(candidate_id)
        if row is None:
            raise HTTPException(404, f"no candidate {candidate_id!r}")
        curve = review.queries.light_curve(row)
        ids = curve["candidate_id"].to_list()
        svg = light_curve_svg(
            curve["mjd"].to_list(),
            curve["mag"].to_list(),
            curve["mag_err"].to_list(),
            curve["sign"].to_list(),
            current=ids.index(candidate_id) if candidate_id in ids else None,
            labels=[
                f"{c} {n}: {m:.2f} ± {e:.2f} mag" if m is not None and e is not None else str(c)
                for c, n, m, e in zip(
                    ids, curve["night"], curve["mag"], curve["mag_err"], strict=True
                )
            ],
        )
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    @app.get("/api/counts")
    def counts(request: Request) -> dict[str, int]:
        user = reader(request)
        return review.labels.counts(user.name)

    @app.post("/api/labels", status_code=201)
    async def add_label(request: Request) -> dict[str, Any]:
        user = await writer(request)
        try:
            given = LabelIn.model_validate(await _payload(request))
        except ValidationError as err:
            raise RequestValidationError(err.errors()) from err
        return await run_in_threadpool(_store_label, review, user, given)

    @app.post("/api/labels/undo")
    async def undo(request: Request) -> dict[str, Any]:
        user = await writer(request)

        def work() -> dict[str, Any]:
            undone = review.labels.undo_last(user.name)
            return {
                "undone": _label_json(undone) if undone else None,
                "counts": review.labels.counts(user.name),
            }

        return await run_in_threadpool(work)

    @app.get("/consensus", response_class=HTMLResponse)
    def consensus_page(
        request: Request,
        night: Annotated[str | None, Query(max_length=64)] = None,
        field: Annotated[str | None, Query(max_length=64)] = None,
        disagreements: bool = False,
    ) -> Response:
        user = reader(request)
        table = _consensus(review, night, field, disagreements)
        return page(
            request,
            "consensus.html",
            user,
            rows=table.to_dicts(),
            night=night or "",
            field=field or "",
            disagreements=disagreements,
            n_disagree=int(table["disagree"].sum()) if table.height else 0,
        )

    @app.get("/api/consensus")
    def consensus_api(
        request: Request,
        night: Annotated[str | None, Query(max_length=64)] = None,
        field: Annotated[str | None, Query(max_length=64)] = None,
        disagreements: bool = False,
    ) -> dict:
        reader(request)
        table = _consensus(review, night, field, disagreements)
        return {"candidates": [_jsonable(r) for r in table.to_dicts()]}

    @app.get("/export")
    def export(
        request: Request,
        format: Literal["csv", "parquet"] = "csv",
        latest: bool = False,
    ) -> Response:
        user = reader(request)
        if not user.is_admin:
            raise HTTPException(403, "exporting labels is for admins")
        table = review.labels.latest() if latest else review.labels.all()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"astrid-labels{'-latest' if latest else ''}-{stamp}.{format}"
        buffer = io.BytesIO()
        if format == "csv":
            table.write_csv(buffer)
            media = "text/csv; charset=utf-8"
        else:
            table.write_parquet(buffer)
            media = "application/vnd.apache.parquet"
        return Response(
            buffer.getvalue(),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/admin/users", response_class=HTMLResponse)
    def users_page(request: Request) -> Response:
        user = reader(request)
        if not user.is_admin:
            raise HTTPException(403, "managing users is for admins")
        return page(request, "users.html", user, people=review.users.all(), roles=ROLES, error=None)

    @app.post("/admin/users")
    async def add_user(request: Request) -> Response:
        user = await writer(request, ("admin",))
        form = await request.form()
        name = str(form.get("name", ""))
        role = str(form.get("role", "vetter"))
        password = str(form.get("password", ""))
        try:
            await run_in_threadpool(review.users.add, name, password, role)
        except ValueError as err:
            people = await run_in_threadpool(review.users.all)
            return page(
                request, "users.html", user, status=400, people=people, roles=ROLES, error=str(err)
            )
        return RedirectResponse("/admin/users", status_code=303)

    return app


class QueueParams(BaseModel):
    """The queue's filters as query parameters."""

    night: str | None = Field(default=None, max_length=64)
    field: str | None = Field(default=None, max_length=64)
    min_score: float | None = Field(default=None, ge=0, le=1)
    max_score: float | None = Field(default=None, ge=0, le=1)
    order: Literal["score", "uncertain", "snr"] = "score"
    unlabelled: bool = False
    limit: int = Field(default=500, ge=1, le=5000)
    start: str | None = Field(default=None, max_length=64)


def _filter_query(params: QueueParams) -> dict[str, str]:
    return {k: str(v) for k, v in (("night", params.night), ("field", params.field)) if v}


def _queue_rows(review: Review, user: User, params: QueueParams) -> list[dict[str, Any]]:
    selection = QueueFilter(
        night=params.night or None,
        field=params.field or None,
        min_score=params.min_score,
        max_score=params.max_score,
        order=params.order,
        limit=params.limit,
    )
    rows = review.queries.queue(selection)
    if params.unlabelled and rows.height:
        done = review.labels.labelled_by(user.name)
        rows = rows.filter(~pl.col("candidate_id").is_in(list(done)))
    records = [_jsonable(r) for r in rows.to_dicts()]
    if params.start and params.start not in {r["candidate_id"] for r in records}:
        row = review.queries.candidate(params.start)
        if row is not None:
            records.insert(0, _jsonable({k: row.get(k) for k in rows.columns}))
    return records


def _consensus(review: Review, night: str | None, field: str | None, only: bool) -> pl.DataFrame:
    latest = review.labels.latest()
    if night:
        latest = latest.filter(pl.col("night") == night)
    if field:
        latest = latest.filter(pl.col("field") == field)
    return consensus_table(latest, disagreements_only=only)


def _store_label(review: Review, user: User, given: LabelIn) -> dict[str, Any]:
    where = review.where_is(given.candidate_id)
    if where is None:
        raise HTTPException(404, f"no candidate {given.candidate_id!r}")
    night, field = where
    at = dt.datetime.now(dt.UTC)
    row_id = review.labels.add(
        given.candidate_id, night, field, given.label, user.name, given.comment, at=at
    )
    return {
        "label": {
            "id": row_id,
            "candidate_id": given.candidate_id,
            "label": given.label,
            "vetter": user.name,
            "comment": given.comment,
            "created_at": at.isoformat(),
        },
        "counts": review.labels.counts(user.name),
    }


def _label_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "candidate_id": row["candidate_id"],
        "label": row["label"],
        "vetter": row["vetter"],
        "comment": row["comment"],
        "created_at": row["created_at"].isoformat(),
    }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A row with NaN and infinities as None and times as ISO strings."""
    out = {}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        elif isinstance(value, dt.datetime | dt.date):
            value = value.isoformat()
        out[key] = value
    return out


async def _payload(request: Request) -> dict[str, Any]:
    if is_form(request):
        form = await request.form()
        return {k: v for k, v in form.items() if k != CSRF_FIELD and isinstance(v, str)}
    try:
        body = await request.json()
    except ValueError as err:
        raise HTTPException(400, "the body is neither a form nor a JSON object") from err
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith("/api/") or path.endswith((".png", ".svg")):
        return False
    return "text/html" in request.headers.get("accept", "")


def _local_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")
