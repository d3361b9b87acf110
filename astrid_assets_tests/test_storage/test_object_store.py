"""Object store options and errors (the real server is exercised in test_prod)."""

import io

import botocore.exceptions
import fsspec
import polars as pl
import pytest

from astrid_assets.storage.catalog import Catalog
from astrid_assets.storage.object_store import S3Options, is_remote, storage_error


def test_r2_options():
    options = S3Options(
        endpoint_url="https://acct.r2.cloudflarestorage.com",
        access_key_id="AKIDEXAMPLE",
        secret_access_key="not-a-real-secret",
    ).fsspec_options()
    assert options["endpoint_url"] == "https://acct.r2.cloudflarestorage.com"
    assert options["client_kwargs"] == {"region_name": "auto"}
    config = options["config_kwargs"]
    assert config["request_checksum_calculation"] == "when_required"
    assert config["response_checksum_validation"] == "when_required"
    assert (options["key"], options["secret"]) == ("AKIDEXAMPLE", "not-a-real-secret")
    # Without keys, boto3's own chain (environment, profile, instance role) applies.
    assert "key" not in S3Options().fsspec_options()


def test_remote_roots():
    assert is_remote("s3://bucket/prefix")
    assert not is_remote("/data/store")
    assert not is_remote("file:///data/store")


def test_refused_credentials_are_named_without_the_keys():
    denied = botocore.exceptions.ClientError(
        {"Error": {"Code": "SignatureDoesNotMatch", "Message": "signature mismatch"}}, "PutObject"
    )
    try:
        raise PermissionError("signature mismatch") from denied
    except PermissionError as err:
        message = str(storage_error("write", "s3://b/x.fits", "http://127.0.0.1:9000", err))
    assert message.startswith("could not write s3://b/x.fits: the object store at ")
    assert "refused the credentials" in message
    assert "AWS_SECRET_ACCESS_KEY" in message


def test_unreachable_endpoint_is_named():
    err = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b/x")
    message = str(storage_error("read", "s3://b/x.fits", "http://127.0.0.1:1", err))
    assert "could not be reached" in message and "http://127.0.0.1:1" in message


def test_catalog_reads_tables_through_a_registered_filesystem(tmp_path):
    memory = fsspec.filesystem("memory")
    for night, rows in (("2026-01-05", 3), ("2026-01-06", 2)):
        buffer = io.BytesIO()
        pl.DataFrame({"night": [night] * rows, "flux": list(range(rows))}).write_parquet(buffer)
        memory.pipe(f"/tables/candidates/{night}/F01.parquet", buffer.getvalue())
    catalog = Catalog(tmp_path / "astrid.duckdb", filesystem=memory)
    assert catalog.ensure_view("candidates", "memory://tables/candidates/**/*.parquet")
    counts = catalog.query("SELECT night, count(*) AS n FROM candidates GROUP BY 1 ORDER BY 1")
    assert counts.rows() == [("2026-01-05", 3), ("2026-01-06", 2)]
    # Without the filesystem the same file cannot read the tables.
    with pytest.raises(Exception, match="memory"):
        Catalog(tmp_path / "astrid.duckdb").query("SELECT count(*) FROM candidates")
