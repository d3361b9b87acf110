"""The DuckDB catalog: one view per table over all of its Parquet partitions.

The catalog file holds no data, only views such as ``candidates`` over
``read_parquet('.../candidates/**/*.parquet', union_by_name = true)``, so a
query always sees every partition on disk, a re-materialized partition
replaces its rows, and ``duckdb astrid.duckdb`` in a terminal shows the
same views. Wide columns (the cutout stamps, ``cutout_*``) are left out of
the main view and kept in ``{name}_cutouts``.

DuckDB lets one process at a time open the file for writing, and no other
process read it meanwhile. Every connection here is short and taken under
an advisory lock on ``{path}.lock`` (exclusive to write, shared to read),
and DuckDB's own lock error, raised when a process outside this discipline
(a DuckDB shell, say) holds the file, is retried until ``timeout``.
Views live in the default schema ``main``; no schema is named like the
file's stem, which DuckDB uses as the catalog name.

Tables in an object store (``s3://...``) are read through an fsspec
filesystem registered on every connection (``filesystem``), so the
catalog needs no DuckDB extension and no keys in the file: the views name
only URLs. A DuckDB shell opening the file needs its own access to the
bucket (``httpfs`` and a secret) to query them.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

__all__ = ["DEFAULT_CATALOG_NAME", "Catalog", "format_table"]

DEFAULT_CATALOG_NAME = "astrid.duckdb"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _identifier(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"view name must be letters, digits and underscores, got {name!r}")
    return f'"{name}"'


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _absolute(glob: str) -> str:
    """A local glob made absolute (the view must not depend on the working
    directory of whoever queries it); a URL (``s3://...``) as it is."""
    if "://" in glob:
        if glob.startswith("file://"):
            return _absolute(glob.removeprefix("file://"))
        return glob
    return str(Path(glob).expanduser().absolute())


def _pause(attempt: int) -> None:
    time.sleep(min(0.05 * 2**attempt, 1.0))


class Catalog:
    """A DuckDB file of views over Parquet tables.

    Parameters
    ----------
    path : str or path-like
        The DuckDB file (default ``astrid.duckdb`` in the working directory);
        created with its folder when first written.
    timeout : float
        Seconds to wait for the file lock and for DuckDB's own lock.
    filesystem : fsspec.AbstractFileSystem, optional
        Registered on every connection, for views over an object store.
    """

    def __init__(
        self,
        path: str | os.PathLike = DEFAULT_CATALOG_NAME,
        *,
        timeout: float = 120.0,
        filesystem: Any = None,
    ):
        self.path = Path(path).expanduser().absolute()
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.timeout = float(timeout)
        self.filesystem = filesystem

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r})"

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        with open(self.lock_path, "a") as handle:
            deadline = time.monotonic() + self.timeout
            attempt = 0
            while True:
                try:
                    fcntl.flock(handle, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"catalog {self.path}: another process held {self.lock_path} "
                            f"for more than {self.timeout:g} s"
                        ) from None
                    _pause(attempt)
                    attempt += 1
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def connect(self, *, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection under the lock; a missing file is created
        (by a writing connection) first."""
        if read_only and not self.path.exists():
            with self.connect(read_only=False):
                pass
        with self._locked(exclusive=not read_only):
            deadline = time.monotonic() + self.timeout
            attempt = 0
            while True:
                try:
                    connection = duckdb.connect(str(self.path), read_only=read_only)
                    break
                except duckdb.IOException as err:
                    if "lock" not in str(err).lower():
                        raise
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"catalog {self.path}: held by another process for more than "
                            f"{self.timeout:g} s ({err})"
                        ) from err
                    _pause(attempt)
                    attempt += 1
            try:
                if self.filesystem is not None:
                    connection.register_filesystem(self.filesystem)
                yield connection
            finally:
                connection.close()

    def ensure_view(
        self,
        name: str,
        parquet_glob: str,
        exclude_prefix: str = "cutout_",
        *,
        written: str | None = None,
    ) -> bool:
        """Create or replace the view ``name`` over the Parquet files of ``parquet_glob``.

        Columns whose names start with ``exclude_prefix`` are left out of
        ``name`` and a second view ``{name}_cutouts`` has them all. Nothing
        happens while no file matches. Given the file just ``written``, the
        view is left alone when it already shows all of that file's columns:
        a view reads its glob anew at every query, and re-creating it costs a
        read of every partition's footer.

        Returns
        -------
        bool
            Whether the view was (re)created.
        """
        if written is not None and self._shows(name, written, exclude_prefix):
            return False
        return self.refresh({name: parquet_glob}, exclude_prefix=exclude_prefix) == [name]

    def _shows(self, name: str, parquet_file: str, exclude_prefix: str) -> bool:
        """Whether the view ``name`` (with its cutouts view) has every column of the file."""
        if not self.path.exists():
            return False
        with self.connect(read_only=True) as con:
            viewed = {
                row[0]
                for row in con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name IN (?, ?)",
                    [name, f"{name}_cutouts"],
                ).fetchall()
            }
            if not viewed:
                return False
            scan = f"read_parquet({_literal(_absolute(parquet_file))})"
            columns = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
        return columns <= viewed

    def refresh(self, views: Mapping[str, str], exclude_prefix: str = "cutout_") -> list[str]:
        """Re-create several views, ``{name: parquet_glob}``; returns those created."""
        created = []
        with self.connect(read_only=False) as con:
            for name, glob in views.items():
                if _create_view(con, name, _absolute(glob), exclude_prefix):
                    created.append(name)
        return created

    def query(self, sql: str, parameters: list | None = None) -> pl.DataFrame:
        """Run ``sql`` on a read-only connection; the result as a polars DataFrame."""
        with self.connect(read_only=True) as con:
            return con.execute(sql, parameters).pl()

    def views(self) -> list[str]:
        """The names of the catalog's views, sorted."""
        if not self.path.exists():
            return []
        rows = self.query(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name"
        )
        return rows["view_name"].to_list()


def _create_view(con: duckdb.DuckDBPyConnection, name: str, glob: str, exclude_prefix: str) -> bool:
    quoted = _identifier(name)
    (matches,) = con.execute("SELECT count(*) FROM glob(?)", [glob]).fetchone()  # type: ignore[misc]
    if not matches:
        return False
    scan = f"read_parquet({_literal(glob)}, union_by_name = true)"
    columns = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
    wide = [c for c in columns if exclude_prefix and c.startswith(exclude_prefix)]
    if wide:
        excluded = ", ".join(_quoted(c) for c in wide)
        con.execute(f"CREATE OR REPLACE VIEW {quoted} AS SELECT * EXCLUDE ({excluded}) FROM {scan}")
        con.execute(
            f"CREATE OR REPLACE VIEW {_identifier(name + '_cutouts')} AS SELECT * FROM {scan}"
        )
    else:
        con.execute(f"CREATE OR REPLACE VIEW {quoted} AS SELECT * FROM {scan}")
    return True


def format_table(df: pl.DataFrame, max_rows: int = 20, max_width: int = 160) -> str:
    """``df`` as a text table for a terminal: at most ``max_rows`` rows, all columns."""
    with pl.Config(
        tbl_rows=max_rows,
        tbl_cols=-1,
        tbl_width_chars=max_width,
        fmt_str_lengths=40,
        tbl_hide_dataframe_shape=False,
    ):
        return str(df)
