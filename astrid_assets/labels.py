"""The label store: what human vetters said of candidates.

One table, ``labels``, in SQLite for the embedded default and in
PostgreSQL in production. Every label is a new row (who, when, what, an
optional comment), so a vetter's change of mind and several vetters'
disagreement are both kept; :meth:`LabelStore.latest` gives each
vetter's last word per candidate. SQLAlchemy Core, so the same statements
run on both databases.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

__all__ = ["LABELS", "LabelStore"]

LABELS = ("real", "bogus", "unsure")


METADATA = sa.MetaData()

TABLE = sa.Table(
    "labels",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("candidate_id", sa.String(64), nullable=False, index=True),
    sa.Column("night", sa.String(10), nullable=False),
    sa.Column("field", sa.String(64), nullable=False),
    sa.Column("label", sa.String(8), nullable=False),
    sa.Column("vetter", sa.String(64), nullable=False),
    sa.Column("comment", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(
        "label IN ({})".format(", ".join(f"'{label}'" for label in LABELS)),
        name="labels_label_known",
    ),
)


class LabelStore(ConfigurableResource):
    """Vetters' labels in SQLite (``sqlite_path``) or PostgreSQL (``pg_*``).

    Give ``pg_password`` as ``EnvVar("ASTRID_PG_PASSWORD")``: the password is
    never part of the configuration Dagster stores or shows.
    """

    sqlite_path: str | None = Field(default=None, description="SQLite file (embedded default).")
    pg_host: str | None = Field(default=None, description="PostgreSQL host (production).")
    pg_port: int = Field(default=5432)
    pg_user: str | None = Field(default=None)
    pg_password: str | None = Field(default=None, description="EnvVar('ASTRID_PG_PASSWORD').")
    pg_database: str | None = Field(default=None)

    _engine: Any = PrivateAttr(default=None)

    def where(self) -> str:
        """The database, for messages: never the password."""
        if self.pg_host:
            return f"postgresql://{self.pg_user}@{self.pg_host}:{self.pg_port}/{self.pg_database}"
        return f"sqlite:///{self.sqlite_path}"

    def engine(self) -> Any:
        """The SQLAlchemy engine, with the ``labels`` table created when missing."""
        if self._engine is None:
            if self.pg_host:
                url = sa.URL.create(
                    "postgresql+psycopg2",
                    username=self.pg_user,
                    password=self.pg_password,
                    host=self.pg_host,
                    port=self.pg_port,
                    database=self.pg_database,
                )
            elif self.sqlite_path:
                Path(self.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
                url = sa.URL.create("sqlite", database=self.sqlite_path)
            else:
                raise ValueError("LabelStore needs sqlite_path or pg_host")
            engine = sa.create_engine(url, pool_pre_ping=True)
            METADATA.create_all(engine)
            self._engine = engine
        return self._engine

    def add(
        self,
        candidate_id: str,
        night: str,
        field: str,
        label: str,
        vetter: str,
        comment: str = "",
        at: dt.datetime | None = None,
    ) -> int:
        """Store one label; returns its row id."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
        row = {
            "candidate_id": str(candidate_id),
            "night": night,
            "field": field,
            "label": label,
            "vetter": vetter,
            "comment": comment,
            "created_at": at or dt.datetime.now(dt.UTC),
        }
        with self.engine().begin() as connection:
            result = connection.execute(TABLE.insert().values(**row))
            return int(result.inserted_primary_key[0])

    def all(self) -> pl.DataFrame:
        """Every label ever given, oldest first."""
        table = TABLE
        with self.engine().connect() as connection:
            rows = connection.execute(sa.select(table).order_by(table.c.id)).mappings().all()
        schema = {
            "id": pl.Int64,
            "candidate_id": pl.String,
            "night": pl.String,
            "field": pl.String,
            "label": pl.String,
            "vetter": pl.String,
            "comment": pl.String,
            "created_at": pl.Datetime("us", "UTC"),
        }
        records = [{**row, "created_at": _utc(row["created_at"])} for row in rows]
        return pl.DataFrame(records, schema=schema, orient="row")

    def latest(self) -> pl.DataFrame:
        """Each vetter's last label of each candidate."""
        return (
            self.all()
            .sort("id")
            .group_by(["candidate_id", "vetter"], maintain_order=True)
            .last()
            .sort("id")
        )

    def count_since(self, since: dt.datetime | None = None) -> int:
        """How many labels were given after ``since`` (all of them when None)."""
        table = TABLE
        query = sa.select(sa.func.count()).select_from(table)
        if since is not None:
            query = query.where(table.c.created_at > since)
        with self.engine().connect() as connection:
            return int(connection.execute(query).scalar_one())

    def for_candidate(self, candidate_id: str) -> list[dict[str, Any]]:
        """Every label of one candidate, oldest first, as dicts."""
        table = TABLE
        query = sa.select(table).where(table.c.candidate_id == str(candidate_id))
        with self.engine().connect() as connection:
            rows = connection.execute(query.order_by(table.c.id)).mappings().all()
        return [{**row, "created_at": _utc(row["created_at"])} for row in rows]

    def labelled_by(self, vetter: str) -> set[str]:
        """The candidates ``vetter`` has labelled."""
        table = TABLE
        query = sa.select(table.c.candidate_id).where(table.c.vetter == vetter).distinct()
        with self.engine().connect() as connection:
            return set(connection.execute(query).scalars())

    def counts(self, vetter: str) -> dict[str, int]:
        """How far ``vetter`` and everyone have got.

        ``mine``: candidates ``vetter`` has labelled, and ``real``, ``bogus``,
        ``unsure``: how many of them by ``vetter``'s last word; ``candidates``:
        candidates labelled by anyone; ``labels``: rows stored by anyone.
        """
        table = TABLE
        last = (
            sa.select(sa.func.max(table.c.id))
            .where(table.c.vetter == vetter)
            .group_by(table.c.candidate_id)
        )
        by_label = (
            sa.select(table.c.label, sa.func.count())
            .where(table.c.id.in_(last))
            .group_by(table.c.label)
        )
        everyone = sa.select(
            sa.func.count(sa.distinct(table.c.candidate_id)), sa.func.count(table.c.id)
        )
        with self.engine().connect() as connection:
            mine = {label: int(n) for label, n in connection.execute(by_label)}
            candidates, labels = connection.execute(everyone).one()
        counts = {label: mine.get(label, 0) for label in LABELS}
        return {
            "mine": sum(counts.values()),
            **counts,
            "candidates": int(candidates),
            "labels": int(labels),
        }

    def undo_last(self, vetter: str) -> dict[str, Any] | None:
        """Delete ``vetter``'s most recent label; returns it, or None when there is none.

        One statement (``DELETE ... RETURNING``), so two undos at once never
        remove the same row twice and SQLite never has to upgrade a read lock.
        """
        table = TABLE
        newest = (
            sa.select(sa.func.max(table.c.id)).where(table.c.vetter == vetter).scalar_subquery()
        )
        statement = sa.delete(table).where(table.c.id == newest).returning(*table.c)
        with self.engine().begin() as connection:
            row = connection.execute(statement).mappings().first()
        return None if row is None else {**row, "created_at": _utc(row["created_at"])}

    def teardown_after_execution(self, context: Any) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; they were stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
