"""``astrid sql``: a query over every materialized partition, through the DuckDB catalog."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import polars as pl

if TYPE_CHECKING:
    from astrid_assets.storage.catalog import Catalog

__all__ = ["open_catalog", "query_catalog", "render"]

# Wide enough that no column is squeezed: a wide result wraps in a terminal (or
# reads well in `less -S`), rather than every column shrinking to a few characters.
UNSQUEEZED_WIDTH = 30_000  # polars takes at most 65535


def open_catalog(path: Path) -> Catalog:
    """The catalog at ``path``, read-only, or a ClickException saying there is none yet.

    In prod mode it reads the tables from the object store."""
    from astrid_assets.resources import catalog as environment_catalog
    from astrid_assets.storage.catalog import Catalog

    if not path.exists():
        raise click.ClickException(
            f"no catalog yet at {path}: materialize some partitions first, e.g. make demo"
        )
    # Catalog.query opens the file read-only, under a shared lock.
    try:
        filesystem = environment_catalog().filesystem
    except ValueError as err:  # a prod setting is missing
        raise click.ClickException(str(err)) from err
    return Catalog(path, filesystem=filesystem)


def query_catalog(path: Path, sql: str) -> pl.DataFrame:
    """Run ``sql`` on the catalog at ``path``; DuckDB's message as a ClickException
    when the query fails."""
    import duckdb

    catalog = open_catalog(path)
    try:
        return catalog.query(sql)
    except (duckdb.Error, TimeoutError) as err:
        raise click.ClickException(str(err).strip()) from err


def render(frame: pl.DataFrame, *, max_rows: int = 50, as_csv: bool = False) -> str:
    """``frame`` as an aligned table of at most ``max_rows`` rows, every column at its
    full width, or as CSV (every row)."""
    from astrid_assets.storage.catalog import format_table

    if as_csv:
        return _flat(frame).write_csv().rstrip("\n")
    return format_table(frame, max_rows=max_rows, max_width=UNSQUEEZED_WIDTH)


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    """CSV has no nested values: lists and arrays (cutouts) become ``;``-joined text,
    structs JSON."""
    columns = []
    for name, dtype in frame.schema.items():
        column = pl.col(name)
        if isinstance(dtype, pl.Array):
            column = column.arr.eval(pl.element().cast(pl.String)).arr.join(";")
        elif isinstance(dtype, pl.List):
            column = column.list.eval(pl.element().cast(pl.String)).list.join(";")
        elif isinstance(dtype, pl.Struct):
            column = column.struct.json_encode()
        columns.append(column.alias(name))
    return frame.select(columns)
