"""The DuckDB catalog of views over Parquet partitions."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from astrid_assets.storage.catalog import Catalog, format_table


def write_partition(root, night: str, field: str, n: int, **extra) -> None:
    folder = root / night
    folder.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {"night": [night] * n, "field": [field] * n, "flux": np.arange(n, dtype=float)}
    )
    frame.with_columns(**{k: pl.lit(v) for k, v in extra.items()}).write_parquet(
        folder / f"{field}.parquet"
    )


def test_view_is_created_only_once_files_exist(tmp_path):
    catalog = Catalog(tmp_path / "astrid.duckdb")
    glob = str(tmp_path / "candidates" / "**" / "*.parquet")
    assert catalog.views() == []
    assert catalog.ensure_view("candidates", glob) is False
    assert catalog.views() == []
    write_partition(tmp_path / "candidates", "2026-01-05", "F01", 3)
    assert catalog.ensure_view("candidates", glob) is True
    assert catalog.views() == ["candidates"]
    assert catalog.query("SELECT count(*) AS n FROM candidates")["n"][0] == 3


def test_view_sees_new_partitions_and_new_columns(tmp_path):
    catalog = Catalog(tmp_path / "astrid.duckdb")
    root = tmp_path / "frames"
    write_partition(root, "2026-01-05", "F01", 2)
    catalog.ensure_view("frames", str(root / "**" / "*.parquet"))
    write_partition(root, "2026-01-06", "F02", 4, airmass=1.2)
    catalog.ensure_view("frames", str(root / "**" / "*.parquet"))
    counts = catalog.query(
        "SELECT night, count(*) AS n, max(airmass) AS airmass FROM frames GROUP BY night "
        "ORDER BY night"
    )
    assert counts["n"].to_list() == [2, 4]
    assert counts["airmass"].to_list() == [None, 1.2]


def test_cutout_columns_go_to_their_own_view(tmp_path):
    catalog = Catalog(tmp_path / "astrid.duckdb")
    folder = tmp_path / "candidates" / "2026-01-05"
    folder.mkdir(parents=True)
    stamps = np.zeros((2, 9), np.float32)
    pl.DataFrame(
        {
            "candidate_id": ["a", "b"],
            "cutout_science": pl.Series(stamps, dtype=pl.Array(pl.Float32, 9)),
        }
    ).write_parquet(folder / "F01.parquet")
    catalog.ensure_view("candidates", str(tmp_path / "candidates" / "**" / "*.parquet"))
    assert catalog.views() == ["candidates", "candidates_cutouts"]
    assert catalog.query("SELECT * FROM candidates").columns == ["candidate_id"]
    wide = catalog.query("SELECT * FROM candidates_cutouts")
    assert wide.columns == ["candidate_id", "cutout_science"]
    assert len(wide["cutout_science"][0]) == 9


def test_plain_duckdb_sees_the_views_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_partition(tmp_path / "tables" / "exposures", "2026-01-05", "F01", 5)
    catalog = Catalog("astrid.duckdb")
    catalog.refresh({"exposures": "tables/exposures/**/*.parquet"})
    monkeypatch.chdir("/")
    with duckdb.connect(str(tmp_path / "astrid.duckdb")) as con:
        assert con.execute("SELECT count(*) FROM exposures").fetchone() == (5,)
        (sql,) = con.execute(
            "SELECT sql FROM duckdb_views() WHERE view_name = 'exposures'"
        ).fetchone()
    assert str(tmp_path / "tables" / "exposures") in sql


def test_refresh_creates_several_views(tmp_path):
    catalog = Catalog(tmp_path / "astrid.duckdb")
    write_partition(tmp_path / "a", "2026-01-05", "F01", 1)
    created = catalog.refresh(
        {"a": str(tmp_path / "a" / "**" / "*.parquet"), "b": str(tmp_path / "b" / "*.parquet")}
    )
    assert created == ["a"]
    assert catalog.views() == ["a"]


def test_view_names_must_be_identifiers(tmp_path):
    with pytest.raises(ValueError, match="view name"):
        Catalog(tmp_path / "c.duckdb").ensure_view("drop table; --", str(tmp_path / "*.parquet"))


def test_format_table_limits_rows():
    text = format_table(pl.DataFrame({"flux": range(100)}), max_rows=5)
    assert "flux" in text
    assert "(100, 1)" in text
    assert text.count("\n") < 20


def test_a_view_is_kept_while_new_files_bring_no_new_column(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    first = folder / "a.parquet"
    pl.DataFrame({"x": [1, 2]}).write_parquet(first)
    catalog = Catalog(tmp_path / "c.duckdb")
    assert catalog.ensure_view("t", f"{folder}/*.parquet", written=str(first))
    second = folder / "b.parquet"
    pl.DataFrame({"x": [3]}).write_parquet(second)
    assert not catalog.ensure_view("t", f"{folder}/*.parquet", written=str(second))
    assert catalog.query("SELECT count(*) AS n FROM t")["n"][0] == 3
    third = folder / "c.parquet"
    pl.DataFrame({"x": [4], "y": [0.5]}).write_parquet(third)
    assert catalog.ensure_view("t", f"{folder}/*.parquet", written=str(third))
    assert catalog.query("SELECT count(y) AS n FROM t")["n"][0] == 1
