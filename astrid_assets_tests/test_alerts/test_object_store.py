"""``alerts[night]`` when the store is a bucket: tables read and packets written over S3."""

from __future__ import annotations

import io
from collections.abc import Iterator

import dagster as dg
import fastavro
import pytest

from astrid_assets.defs.alerts import alerts
from astrid_assets.storage.io_managers import ParquetIOManager
from astrid_assets.storage.object_store import S3Options
from astrid_assets_tests.servers import S3Server

from .conftest import DEC0, RA0, candidates, offset, scores

NIGHTS = ("2026-01-05", "2026-01-06")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with S3Server(bucket="astrid") as server:
        yield server


def test_the_asset_reads_and_writes_a_bucket(s3_server, tmp_path):
    options = S3Options(
        endpoint_url=s3_server.endpoint_url,
        region="us-east-1",
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )
    fs = options.filesystem()
    root = "astrid/run/tables"
    for k, night in enumerate(NIGHTS):
        a = offset(RA0, DEC0, 0.2 * k, 0.0)
        frame = candidates(night, "F01", [a[0]], [a[1]], seed=k)
        for asset, table in (("candidates", frame), ("candidate_scores", scores(frame, [0.9]))):
            buffer = io.BytesIO()
            table.write_parquet(buffer)
            fs.pipe(f"{root}/{asset}/{night}/F01.parquet", buffer.getvalue())
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("night", list(NIGHTS))
    resources = {
        "parquet_io_manager": ParquetIOManager(
            root=f"s3://{root}", s3=options, catalog_path=str(tmp_path / "astrid.duckdb")
        )
    }
    for night in NIGHTS:
        result = dg.materialize(
            [alerts], partition_key=night, instance=instance, resources=resources
        )
        assert result.success
    fs.invalidate_cache()
    (path,) = fs.glob(f"astrid/run/alerts/{NIGHTS[1]}/*.avro")
    (packet,) = fastavro.reader(io.BytesIO(fs.cat(path)))
    assert [p["night"] for p in packet["prv_candidates"]] == [NIGHTS[0]]
    (first,) = fs.glob(f"astrid/run/alerts/{NIGHTS[0]}/*.avro")
    assert next(fastavro.reader(io.BytesIO(fs.cat(first))))["objectId"] == packet["objectId"]
