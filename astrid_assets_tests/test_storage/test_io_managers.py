"""The IO managers under dagster.materialize, on temporary storage."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.table import MaskedColumn, Table
from dagster import (
    AssetIn,
    BetaWarning,
    DagsterInstance,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
    StaticPartitionsDefinition,
    asset,
    materialize,
)

from astrid_assets.sources import RawExposure
from astrid_assets.storage import Catalog, FitsIOManager, ParquetIOManager
from astrid_assets.storage.io_managers import as_polars

NIGHT = "2026-01-05"
nights = DynamicPartitionsDefinition(name="night")
fields = StaticPartitionsDefinition(["F01", "F02"])
# Field listed first: the files must still be laid out night first.
night_field = MultiPartitionsDefinition({"field": fields, "night": nights})
with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)
    per_night = MultiToSingleDimensionPartitionMapping(partition_dimension_name="night")


def key(field: str, night: str = NIGHT) -> MultiPartitionKey:
    return MultiPartitionKey({"night": night, "field": field})


@asset(partitions_def=night_field, io_manager_key="parquet", metadata={"table": "candidates"})
def candidates(context) -> pl.DataFrame:
    keys = context.partition_key.keys_by_dimension
    n = {"F01": 3, "F02": 2}[keys["field"]]
    return pl.DataFrame(
        {
            "night": [keys["night"]] * n,
            "field": [keys["field"]] * n,
            "flux": np.arange(n, dtype=float),
            "cutout_science": pl.Series(np.ones((n, 4), np.float32), dtype=pl.Array(pl.Float32, 4)),
        }
    )


@asset(
    partitions_def=nights,
    ins={"candidates": AssetIn(partition_mapping=per_night)},
    io_manager_key="parquet",
    metadata={"table": "nightly"},
)
def nightly(candidates: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return pl.DataFrame(
        {"partition": sorted(candidates), "rows": [len(candidates[k]) for k in sorted(candidates)]}
    )


@asset(partitions_def=night_field, io_manager_key="fits")
def raw(context) -> RawExposure:
    keys = context.partition_key.keys_by_dimension
    data = np.arange(48, dtype=np.float32).reshape(6, 8)
    return RawExposure(keys["night"], keys["field"], data, fits.Header({"GAIN": 1.6}))


@asset(
    partitions_def=nights,
    ins={"raw": AssetIn(partition_mapping=per_night, metadata={"allow_missing_partitions": True})},
    io_manager_key="parquet",
)
def raw_summary(raw: dict[str, RawExposure]) -> pl.DataFrame:
    return pl.DataFrame({"field": sorted(r.field for r in raw.values())})


@asset(
    partitions_def=nights,
    ins={"raw": AssetIn(partition_mapping=per_night)},
    io_manager_key="parquet",
)
def raw_summary_strict(raw: dict[str, RawExposure]) -> pl.DataFrame:
    return pl.DataFrame({"n": [len(raw)]})


@asset(io_manager_key="parquet", metadata={"table": "survey"})
def survey() -> Table:
    return Table({"field": ["F01", "F02"], "ra": [10.0, 20.0]})


@pytest.fixture
def instance():
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("night", [NIGHT])
    return instance


@pytest.fixture
def resources(tmp_path):
    return {
        "parquet": ParquetIOManager(
            root=str(tmp_path / "tables"), catalog_path=str(tmp_path / "astrid.duckdb")
        ),
        "fits": FitsIOManager(root=str(tmp_path / "images")),
    }


def count(tmp_path, sql: str):
    return Catalog(tmp_path / "astrid.duckdb").query(sql).row(0)


def test_table_lands_night_first_and_gets_a_view(tmp_path, instance, resources):
    result = materialize(
        [candidates], partition_key=key("F01"), instance=instance, resources=resources
    )
    path = tmp_path / "tables" / "candidates" / NIGHT / "F01.parquet"
    assert path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["F01.parquet"]
    metadata = result.asset_materializations_for_node("candidates")[0].metadata
    assert metadata["path"].value == str(path)
    assert metadata["size_mb"].value > 0
    assert Catalog(tmp_path / "astrid.duckdb").views() == ["candidates", "candidates_cutouts"]
    assert count(tmp_path, "SELECT count(*), sum(flux) FROM candidates") == (3, 3.0)


def test_rematerializing_a_partition_replaces_its_rows(tmp_path, instance, resources):
    for field in ("F01", "F02", "F01"):
        materialize([candidates], partition_key=key(field), instance=instance, resources=resources)
    assert count(tmp_path, "SELECT count(*) FROM candidates") == (5,)
    assert count(tmp_path, "SELECT count(*) FROM candidates WHERE field = 'F01'") == (3,)
    assert count(tmp_path, "SELECT count(*) FROM candidates_cutouts") == (5,)


def test_night_asset_loads_all_fields_as_a_dict(tmp_path, instance, resources):
    for field in ("F01", "F02"):
        materialize([candidates], partition_key=key(field), instance=instance, resources=resources)
    materialize(
        [candidates, nightly],
        selection=[nightly],
        partition_key=NIGHT,
        instance=instance,
        resources=resources,
    )
    path = tmp_path / "tables" / "nightly" / f"{NIGHT}.parquet"
    table = pl.read_parquet(path)
    assert table["rows"].to_list() == [3, 2]
    assert table["partition"].to_list() == [str(key("F01")), str(key("F02"))]
    assert count(tmp_path, "SELECT sum(rows) FROM nightly") == (5,)


def test_fits_products_round_trip_between_assets(tmp_path, instance, resources):
    result = materialize([raw], partition_key=key("F02"), instance=instance, resources=resources)
    path = tmp_path / "images" / "raw" / NIGHT / "F02.fits"
    assert fits.getheader(path)["ASTRPROD"] == "RawExposure"
    assert result.asset_materializations_for_node("raw")[0].metadata["size_mb"].value > 0
    materialize(
        [raw, raw_summary],
        selection=[raw_summary],
        partition_key=NIGHT,
        instance=instance,
        resources=resources,
    )
    summary = pl.read_parquet(tmp_path / "tables" / "raw_summary" / f"{NIGHT}.parquet")
    assert summary["field"].to_list() == ["F02"]


def test_missing_partition_fails_without_allow_missing(tmp_path, instance, resources):
    materialize([raw], partition_key=key("F02"), instance=instance, resources=resources)
    result = materialize(
        [raw, raw_summary_strict],
        selection=[raw_summary_strict],
        partition_key=NIGHT,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert f"raw/{NIGHT}/F01.fits" in failure.event_specific_data.error.to_string()


def test_unpartitioned_astropy_table(tmp_path, instance, resources):
    materialize([survey], instance=instance, resources=resources)
    frame = pl.read_parquet(tmp_path / "tables" / "survey.parquet")
    assert frame["field"].to_list() == ["F01", "F02"]
    assert count(tmp_path, "SELECT sum(ra) FROM survey") == (30.0,)


def test_as_polars_converts_tables():
    table = Table(
        {
            "stamp": np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3),
            "mag": MaskedColumn([20.5, 21.0], mask=[False, True]),
            "name": np.array([b"a", b"b"]),
        }
    )
    frame = as_polars(table)
    assert frame.schema["stamp"] == pl.Array(pl.Float32, (3, 3))
    assert frame["mag"].to_list() == [20.5, None]
    assert frame["name"].to_list() == ["a", "b"]
    assert as_polars(pa.table({"x": [1, 2]}))["x"].to_list() == [1, 2]
    with pytest.raises(TypeError, match="polars DataFrame"):
        as_polars({"x": [1]})
