"""``astrid review`` and ``astrid users``: the review app over the environment's stores."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["environment_app", "environment_users", "session_secret"]

SECRET_VARIABLE = "ASTRID_REVIEW_SECRET"
SECRET_FILE = "review-secret"


def session_secret(home: Path) -> str:
    """The key that signs session cookies: ``$ASTRID_REVIEW_SECRET``, else a random key
    kept (owner-only) in ``home/review-secret``, made at the first start, so that a
    restart does not sign everyone out."""
    given = os.environ.get(SECRET_VARIABLE)
    if given:
        return given
    path = home / SECRET_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def environment_users() -> Any:
    """The ``users`` table in the environment's label store database."""
    from astrid_assets.resources import label_store
    from astrid_assets.review.users import UserStore
    from astrid_assets.settings import configure_environment

    return UserStore(label_store(configure_environment()).engine())


def environment_app(*, secure_cookies: bool = False) -> Any:
    """The review app over the stores that ``ASTRID_ENV`` names."""
    from astrid_assets.resources import catalog, default_resources, label_store
    from astrid_assets.review.app import create_app
    from astrid_assets.settings import configure_environment

    s = configure_environment()
    labels = label_store(s)
    tables = default_resources()["parquet_io_manager"].create_io_manager(None)
    return create_app(
        labels,
        catalog(s),
        tables,
        secret_key=session_secret(s.home),
        secure_cookies=secure_cookies,
    )
