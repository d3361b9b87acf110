"""Who may use the review app: users, their roles and their password hashes.

A ``users`` table beside ``labels``, in the label store's database (SQLite
by default, PostgreSQL in production), through the same SQLAlchemy engine.
Passwords are kept only as argon2id hashes (argon2-cffi's defaults, RFC 9106);
a hash made with weaker parameters than today's is replaced at the next
sign-in.

Roles, from least to most:

``viewer``
    sees the queue, the candidates and the consensus; labels nothing.
``vetter``
    labels candidates and undoes their own labels.
``admin``
    a vetter who also exports the labels and manages users.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "LABELLING_ROLES",
    "ROLES",
    "User",
    "UserStore",
    "hash_password",
    "validate_name",
    "validate_password",
    "verify_password",
]

ROLES = ("viewer", "vetter", "admin")
LABELLING_ROLES = ("vetter", "admin")
MIN_PASSWORD_LENGTH = 8
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

METADATA = sa.MetaData()

USERS = sa.Table(
    "users",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(
        "role IN ({})".format(", ".join(f"'{role}'" for role in ROLES)), name="users_role_known"
    ),
)

_HASHER = PasswordHasher()
# Verified when the name is unknown, so that a wrong name takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` with a fresh random salt (PHC string format)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; False for a malformed hash too."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def validate_name(name: str) -> str:
    """``name`` when it is 1 to 64 letters, digits, ``_ . @ -``; else ValueError."""
    if not _NAME.match(name or ""):
        raise ValueError(
            f"a user name is 1 to 64 letters, digits, '_', '.', '@' or '-', got {name!r}"
        )
    return name


def validate_password(password: str) -> str:
    """``password`` when it is long enough; else ValueError."""
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


def _validate_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


@dataclass(frozen=True)
class User:
    """A signed-in person: name and role (never the hash)."""

    name: str
    role: str

    @property
    def can_label(self) -> bool:
        return self.role in LABELLING_ROLES

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class UserStore:
    """The ``users`` table on ``engine`` (created when missing).

    Parameters
    ----------
    engine : sqlalchemy.Engine
        Usually the label store's: ``UserStore(LabelStore(...).engine())``.
    """

    def __init__(self, engine: Any):
        self.engine = engine
        METADATA.create_all(engine)

    def add(self, name: str, password: str, role: str = "vetter") -> User:
        """Create a user; ValueError when the name is taken or a value is not allowed."""
        validate_name(name)
        validate_password(password)
        _validate_role(role)
        row = {
            "name": name,
            "role": role,
            "password_hash": hash_password(password),
            "created_at": dt.datetime.now(dt.UTC),
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(USERS.insert().values(**row))
        except sa.exc.IntegrityError as err:
            raise ValueError(f"user {name!r} exists already") from err
        return User(name, role)

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        query = sa.select(USERS.c.name, USERS.c.role).where(USERS.c.name == name)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else User(row.name, row.role)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs, else None (in about the same time)."""
        query = sa.select(USERS).where(USERS.c.name == name)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        if row is None:
            verify_password(_DUMMY_HASH, password)
            return None
        if not verify_password(row["password_hash"], password):
            return None
        if _HASHER.check_needs_rehash(row["password_hash"]):
            self._store_hash(name, hash_password(password))
        return User(row["name"], row["role"])

    def set_password(self, name: str, password: str) -> None:
        """Replace ``name``'s password; KeyError when there is no such user."""
        validate_password(password)
        if not self._store_hash(name, hash_password(password)):
            raise KeyError(name)

    def set_role(self, name: str, role: str) -> None:
        """Change ``name``'s role; KeyError when there is no such user."""
        _validate_role(role)
        with self.engine.begin() as connection:
            result = connection.execute(
                USERS.update().where(USERS.c.name == name).values(role=role)
            )
        if result.rowcount == 0:
            raise KeyError(name)

    def all(self) -> list[dict[str, Any]]:
        """Every user's name, role and creation time, by name."""
        query = sa.select(USERS.c.name, USERS.c.role, USERS.c.created_at).order_by(USERS.c.name)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def _store_hash(self, name: str, password_hash: str) -> bool:
        with self.engine.begin() as connection:
            result = connection.execute(
                USERS.update().where(USERS.c.name == name).values(password_hash=password_hash)
            )
        return result.rowcount > 0
