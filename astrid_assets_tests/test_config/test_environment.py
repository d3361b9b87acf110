"""ASTRID_ENV and ASTRID_EXECUTOR pick resources and executor; wrong values say so."""

import pytest
from dagster import EnvVar

from astrid_assets import resources
from astrid_assets.labels import LabelStore
from astrid_assets.settings import configure_environment, settings
from astrid_assets.storage.io_managers import FitsIOManager, ParquetIOManager
from astrid_assets.tracking import MlflowTracking

PROD = {
    "ASTRID_ENV": "prod",
    "ASTRID_S3_BUCKET": "survey-products",
    "ASTRID_S3_ENDPOINT_URL": "https://example.r2.cloudflarestorage.com",
    "ASTRID_PG_HOST": "db.internal",
    "ASTRID_PG_USER": "astrid",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
}


@pytest.fixture
def prod_env(monkeypatch, tmp_path):
    for name in ("DAGSTER_HOME", "ASTRID_DAGSTER_LOG_PREFIX", "ASTRID_PG_PORT", "ASTRID_PG_DB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    for name, value in PROD.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_unknown_environment_is_refused(monkeypatch):
    monkeypatch.setenv("ASTRID_ENV", "staging")
    with pytest.raises(ValueError, match="ASTRID_ENV must be one of local, prod, got 'staging'"):
        settings()


def test_local_resources_live_under_the_home(monkeypatch, tmp_path):
    monkeypatch.delenv("ASTRID_ENV", raising=False)
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    chosen = resources.default_resources()
    assert chosen["fits_io_manager"].root == str(tmp_path / "store" / "images")
    assert chosen["labels"].sqlite_path == str(tmp_path / "labels.sqlite")
    assert chosen["mlflow"].tracking_uri == f"sqlite:///{tmp_path / 'mlflow.sqlite'}"


def test_prod_resources_use_the_bucket_and_keep_secrets_as_env_vars(prod_env):
    s = configure_environment()
    assert s.prod
    chosen = resources.default_resources()
    fits, tables = chosen["fits_io_manager"], chosen["parquet_io_manager"]
    assert isinstance(fits, FitsIOManager) and isinstance(tables, ParquetIOManager)
    assert fits.root == "s3://survey-products/astrid/images"
    assert tables.root == "s3://survey-products/astrid/tables"
    assert fits.s3.endpoint_url == PROD["ASTRID_S3_ENDPOINT_URL"]
    assert fits.s3.region == "auto"
    # EnvVar: Dagster stores and shows the variable's name, never its value.
    assert isinstance(fits.s3.access_key_id, EnvVar)
    assert isinstance(fits.s3.secret_access_key, EnvVar)
    labels = chosen["labels"]
    assert isinstance(labels, LabelStore)
    assert (labels.pg_host, labels.pg_port, labels.pg_database) == ("db.internal", 5432, "astrid")
    assert isinstance(labels.pg_password, EnvVar)
    assert isinstance(chosen["mlflow"], MlflowTracking)
    assert isinstance(chosen["mlflow"].tracking_uri, EnvVar)
    import os

    assert os.environ["DAGSTER_HOME"].endswith("deploy/dagster")
    assert os.environ["AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_required"
    assert os.environ["ASTRID_DAGSTER_LOG_PREFIX"] == "astrid/dagster-logs"


def test_prod_without_a_bucket_says_which_variable_is_missing(prod_env):
    prod_env.delenv("ASTRID_S3_BUCKET")
    with pytest.raises(ValueError, match="ASTRID_ENV=prod needs ASTRID_S3_BUCKET"):
        resources.default_resources()


def test_prod_without_an_endpoint_says_so(prod_env):
    prod_env.delenv("ASTRID_S3_ENDPOINT_URL")
    with pytest.raises(ValueError, match="ASTRID_S3_ENDPOINT_URL"):
        resources.default_resources()


def test_executor_is_chosen_by_environment(monkeypatch):
    from astrid_assets.definitions import executor

    monkeypatch.setenv("ASTRID_EXECUTOR", "k8s")
    assert executor().name == "k8s"
    monkeypatch.setenv("ASTRID_EXECUTOR", "multiprocess")
    assert executor().name == "multiprocess"
    monkeypatch.setenv("ASTRID_EXECUTOR", "celery")
    with pytest.raises(ValueError, match="ASTRID_EXECUTOR must be one of multiprocess, k8s"):
        executor()
