"""``astrid sql`` over a small catalog of real Parquet partitions and DuckDB views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from astrid_assets.cli import main
from astrid_assets.storage.catalog import Catalog


def _candidates(night: str, field: str, n: int) -> pl.DataFrame:
    rng = np.random.default_rng(n)
    return pl.DataFrame(
        {
            "candidate_id": [f"{night}_{field}_{i:04d}" for i in range(n)],
            "night": [night] * n,
            "field": [field] * n,
            "snr": np.round(rng.uniform(5, 50, n), 2),
            "truth": ["false"] + ["sn"] * (n - 1),
        }
    ).with_columns(
        pl.Series(
            "cutout_difference",
            np.arange(n * 4, dtype=np.float32).reshape(n, 4),
            dtype=pl.Array(pl.Float32, 4),
        )
    )


@pytest.fixture
def astrid_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "astrid_home"
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    for name in ("ASTRID_DAGSTER_STORAGE", "ASTRID_DAGSTER_LOGS", "ASTRID_MAX_RUNS"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def catalog(astrid_home: Path) -> Catalog:
    """Three candidate partitions (2 + 3 + 4 rows) and their view."""
    tables = astrid_home / "store" / "tables" / "candidates"
    for night, field, n in [
        ("2026-01-05", "F01", 2),
        ("2026-01-05", "F02", 3),
        ("2026-01-06", "F01", 4),
    ]:
        path = tables / night / f"{field}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        _candidates(night, field, n).write_parquet(path)
    catalog = Catalog(astrid_home / "astrid.duckdb")
    assert catalog.ensure_view("candidates", str(tables / "**" / "*.parquet"))
    return catalog


def _sql(*args: str):
    return CliRunner().invoke(main, ["sql", *args])


def test_sql_prints_every_column_of_the_rows_across_partitions(catalog: Catalog) -> None:
    result = _sql("SELECT night, field, count(*) AS n FROM candidates GROUP BY ALL ORDER BY ALL")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "shape: (3, 3)" in lines[0]
    assert any("night" in line and "field" in line and "n" in line for line in lines)
    rows = [line for line in lines if "2026-01-0" in line]
    assert len(rows) == 3
    assert "F02" in rows[1] and "3" in rows[1].split("F02")[1]
    assert "4" in rows[2].split("F01")[1]


def test_sql_shows_at_most_max_rows_and_says_how_many_there_are(catalog: Catalog) -> None:
    result = _sql("SELECT candidate_id FROM candidates ORDER BY 1", "--max-rows", "4")
    assert result.exit_code == 0, result.output
    assert "shape: (9, 1)" in result.output
    shown = [line for line in result.output.splitlines() if "_F0" in line]
    assert len(shown) == 4
    assert "2026-01-05_F01_0000" in result.output
    assert "2026-01-06_F01_0003" in result.output  # the last row is shown below the gap


def test_sql_csv_prints_every_row_and_flattens_the_cutouts(catalog: Catalog) -> None:
    result = _sql(
        "SELECT candidate_id, truth, cutout_difference FROM candidates_cutouts "
        "WHERE night = '2026-01-06' ORDER BY 1",
        "--csv",
        "--max-rows",
        "1",
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "candidate_id,truth,cutout_difference"
    assert len(lines) == 1 + 4
    assert lines[1] == "2026-01-06_F01_0000,false,0.0;1.0;2.0;3.0"


def test_the_candidates_view_leaves_the_cutouts_out(catalog: Catalog) -> None:
    result = _sql("SELECT * FROM candidates LIMIT 1", "--csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "candidate_id,night,field,snr,truth"


def test_a_bad_query_gives_duckdbs_message_without_a_traceback(catalog: Catalog) -> None:
    result = _sql("SELECT * FROM no_such_table")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert "no_such_table" in result.output
    assert "Traceback" not in result.output
    result = _sql("SELEC 1")
    assert result.exit_code == 1
    assert "syntax error" in result.output.lower()


def test_no_catalog_yet_says_to_materialize_first_and_creates_nothing(astrid_home: Path) -> None:
    result = _sql("SELECT 1")
    assert result.exit_code == 1
    path = astrid_home / "astrid.duckdb"
    assert f"no catalog yet at {path}: materialize some partitions first" in result.output
    assert "make demo" in result.output
    assert not path.exists()


def test_a_wide_result_keeps_every_column_whole(catalog: Catalog) -> None:
    names = [f"a_rather_long_column_name_{i:02d}" for i in range(30)]
    result = _sql("SELECT " + ", ".join(f"{i} AS {n}" for i, n in enumerate(names)))
    assert result.exit_code == 0, result.output
    for name in names:
        assert name in result.output
