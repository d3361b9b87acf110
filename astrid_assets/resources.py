"""The graph's resources, chosen by ``ASTRID_ENV`` (see :mod:`astrid_assets.settings`).

``local`` (the embedded default)
    Images, tables, the DuckDB catalog, the label store (SQLite) and
    MLflow (SQLite) all under ``ASTRID_HOME``.
``prod``
    Images and tables in an S3-compatible bucket, the catalog's views over
    it, the label store on PostgreSQL, MLflow on a tracking server. Keys
    and passwords are :class:`dagster.EnvVar`.
"""

from __future__ import annotations

from typing import Any

from dagster import EnvVar

from astrid_assets.settings import Settings, require, settings
from astrid_assets.sources import SimulatedSurvey, SurveySource

__all__ = [
    "catalog",
    "default_resources",
    "label_store",
    "local_resources",
    "mlflow_tracking",
    "prod_resources",
    "s3_options",
    "survey_source",
]


def _source_options(s: Settings) -> dict[str, Any]:
    """The source's settings from the YAML file ``ASTRID_SOURCE_CONFIG`` names."""
    if s.source_config is None:
        return {}
    import yaml

    try:
        options = yaml.safe_load(s.source_config.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"ASTRID_SOURCE_CONFIG {s.source_config}: {err}") from err
    if not isinstance(options, dict):
        raise ValueError(f"ASTRID_SOURCE_CONFIG {s.source_config}: expected a mapping of settings")
    return _dates_as_text(options)


def _dates_as_text(value: Any) -> Any:
    """YAML reads ``2020-02-01`` as a date; the sources take nights as text."""
    import datetime as dt

    if isinstance(value, dict):
        return {k: _dates_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dates_as_text(v) for v in value]
    return value.isoformat() if isinstance(value, dt.date) else value


def survey_source() -> SurveySource:
    """The survey the graph runs on, as ``ASTRID_SOURCE`` names it: the simulated
    survey (sized by the environment), a folder of FITS, or an archive."""
    from pydantic import ValidationError

    s = settings()
    if s.source == "simulated":
        return SimulatedSurvey(
            seed=s.sim_seed, n_fields=s.sim_fields, size=s.sim_size, start_night=s.sim_start
        )
    options = _source_options(s)
    if s.source == "local":
        from astrid_assets.sources.local import LocalFitsSource as kind

        if s.local_root:
            options["root"] = s.local_root
        if s.local_manifest:
            options["manifest"] = s.local_manifest
        if "root" not in options:
            raise ValueError(
                "ASTRID_SOURCE=local needs ASTRID_LOCAL_ROOT (or root: in ASTRID_SOURCE_CONFIG): "
                "the folder or object-store prefix of the FITS files"
            )
        if str(options["root"]).startswith("s3://") and s.s3_endpoint_url:
            options.setdefault("endpoint_url", s.s3_endpoint_url)  # the store's own endpoint
    else:
        from astrid_assets.sources import archives

        kind = {"ztf": archives.ZtfSource, "ps1": archives.Ps1Source, "sdss": archives.SdssSource}[
            s.source
        ]
    try:
        return kind(**options)
    except ValidationError as err:
        where = s.source_config or "the environment"
        raise ValueError(f"ASTRID_SOURCE={s.source} settings in {where}: {err}") from err


def s3_options(s: Settings | None = None) -> Any:
    """The object store's endpoint (from the environment) and keys (as EnvVar)."""
    from astrid_assets.storage.object_store import S3Options

    s = s or settings()
    return S3Options(
        endpoint_url=require(
            "ASTRID_S3_ENDPOINT_URL",
            "the object store's URL, e.g. https://ACCOUNT.r2.cloudflarestorage.com",
        ),
        region=s.s3_region,
        access_key_id=EnvVar("AWS_ACCESS_KEY_ID"),
        secret_access_key=EnvVar("AWS_SECRET_ACCESS_KEY"),
    )


def label_store(s: Settings | None = None) -> Any:
    """The label store: SQLite under ``ASTRID_HOME``, or PostgreSQL in prod."""
    from astrid_assets.labels import LabelStore

    s = s or settings()
    if not s.prod:
        return LabelStore(sqlite_path=str(s.home / "labels.sqlite"))
    return LabelStore(
        pg_host=require("ASTRID_PG_HOST", "the PostgreSQL host"),
        pg_port=int(require("ASTRID_PG_PORT", "the PostgreSQL port")),
        pg_user=require("ASTRID_PG_USER", "the PostgreSQL user"),
        pg_password=EnvVar("ASTRID_PG_PASSWORD"),
        pg_database=require("ASTRID_PG_DB", "the PostgreSQL database"),
    )


def mlflow_tracking(s: Settings | None = None) -> Any:
    """MLflow: a SQLite store under ``ASTRID_HOME``, or the tracking server in prod."""
    from astrid_assets.tracking import MlflowTracking

    s = s or settings()
    if not s.prod:
        return MlflowTracking(
            tracking_uri=f"sqlite:///{s.home / 'mlflow.sqlite'}",
            experiment=s.mlflow_experiment,
            artifact_location=(s.home / "mlflow-artifacts").as_uri(),
        )
    require("MLFLOW_TRACKING_URI", "the MLflow tracking server, e.g. http://mlflow:5000")
    return MlflowTracking(
        tracking_uri=EnvVar("MLFLOW_TRACKING_URI"), experiment=s.mlflow_experiment
    )


def catalog(s: Settings | None = None) -> Any:
    """The DuckDB catalog, able to read the tables where they are."""
    from astrid_assets.storage.catalog import Catalog

    s = s or settings()
    if not s.prod:
        return Catalog(s.catalog)
    options = s3_options(s).fsspec_options()
    options["key"] = require("AWS_ACCESS_KEY_ID", "the object store's access key")
    options["secret"] = require("AWS_SECRET_ACCESS_KEY", "the object store's secret key")
    import s3fs

    return Catalog(s.catalog, filesystem=s3fs.S3FileSystem(**options))


def local_resources(s: Settings) -> dict[str, Any]:
    """Everything under ``ASTRID_HOME``."""
    from astrid_assets.storage.io_managers import FitsIOManager, ParquetIOManager

    return {
        "survey": survey_source(),
        "fits_io_manager": FitsIOManager(root=s.object_root("images")),
        "parquet_io_manager": ParquetIOManager(
            root=s.object_root("tables"), catalog_path=str(s.catalog)
        ),
        "labels": label_store(s),
        "mlflow": mlflow_tracking(s),
    }


def prod_resources(s: Settings) -> dict[str, Any]:
    """The bucket, PostgreSQL and the MLflow server, from the environment."""
    from astrid_assets.storage.io_managers import FitsIOManager, ParquetIOManager

    s3 = s3_options(s)
    return {
        "survey": survey_source(),
        "fits_io_manager": FitsIOManager(root=s.object_root("images"), s3=s3),
        "parquet_io_manager": ParquetIOManager(
            root=s.object_root("tables"), s3=s3, catalog_path=str(s.catalog)
        ),
        "labels": label_store(s),
        "mlflow": mlflow_tracking(s),
    }


def default_resources() -> dict[str, Any]:
    """The resources of the environment ``ASTRID_ENV`` names."""
    s = settings()
    return prod_resources(s) if s.prod else local_resources(s)
