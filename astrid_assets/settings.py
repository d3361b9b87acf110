"""Where the embedded default keeps its files, and the survey it runs on.

Everything is read from environment variables, so the CLI, the Dagster
webserver, the daemon and every step process agree without passing paths
around:

``ASTRID_HOME``
    Project directory for the embedded default (default ``./astrid_home``):
    ``store/`` holds the images and tables, ``astrid.duckdb`` the catalog,
    ``landing/`` the nights a telescope delivers, ``dagster/`` Dagster's
    own storage.
``ASTRID_SIM_SIZE``, ``ASTRID_SIM_FIELDS``, ``ASTRID_SIM_SEED``, ``ASTRID_SIM_START``
    The simulated survey: detector side (2048), number of fields (4), seed,
    first night (2026-01-05).
``ASTRID_SOURCE``
    Where exposures come from: ``simulated`` (default), ``local`` (a folder
    or object-store prefix of FITS, :class:`~astrid_assets.sources.LocalFitsSource`;
    ``ASTRID_LOCAL_ROOT`` and optionally ``ASTRID_LOCAL_MANIFEST``), or the
    archives ``ztf``, ``ps1``, ``sdss``. ``ASTRID_SOURCE_CONFIG`` names a
    YAML file of the source's settings (its fields, archive URLs, ...).
``ASTRID_MAX_PROCESSES``
    Steps run at once inside one run (default: the number of CPUs).
``ASTRID_ENV``
    ``local`` (default): everything under ``ASTRID_HOME``, Dagster on SQLite.
    ``prod``: images and tables in an S3-compatible bucket (AWS S3,
    Cloudflare R2, SeaweedFS, MinIO), Dagster's storage and the label store on
    PostgreSQL, MLflow on a tracking server; ``DAGSTER_HOME`` defaults to
    ``deploy/dagster``. Prod reads:

    ``ASTRID_S3_BUCKET`` (required), ``ASTRID_S3_PREFIX`` (``astrid``),
    ``ASTRID_S3_ENDPOINT_URL`` (required; R2:
    ``https://ACCOUNT.r2.cloudflarestorage.com``), ``ASTRID_S3_REGION``
    (``auto``), and the secrets ``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``;
    ``ASTRID_PG_HOST``, ``ASTRID_PG_PORT`` (5432), ``ASTRID_PG_USER``,
    ``ASTRID_PG_DB`` and the secret ``ASTRID_PG_PASSWORD``;
    ``MLFLOW_TRACKING_URI`` and ``ASTRID_MLFLOW_EXPERIMENT`` (``astrid``).

    Secrets are handed to Dagster as :class:`dagster.EnvVar`, so they never
    appear in run configuration, logs or metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENVIRONMENTS",
    "SOURCES",
    "Settings",
    "configure_environment",
    "project_dir",
    "require",
    "settings",
]

ENVIRONMENTS = ("local", "prod")
SOURCES = ("simulated", "local", "ztf", "ps1", "sdss")


def _positive(name: str, default: int) -> int:
    value = _int(name, default)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from err


@dataclass(frozen=True)
class Settings:
    """The environment, read once per process."""

    home: Path
    sim_size: int
    sim_fields: int
    sim_seed: int
    sim_start: str
    max_processes: int
    retrain_after_labels: int = 100
    env: str = "local"
    s3_bucket: str | None = None
    s3_prefix: str = "astrid"
    s3_endpoint_url: str | None = None
    s3_region: str = "auto"
    mlflow_experiment: str = "astrid"
    source: str = "simulated"
    source_config: Path | None = None
    local_root: str | None = None
    local_manifest: str | None = None

    @property
    def prod(self) -> bool:
        return self.env == "prod"

    def object_root(self, folder: str) -> str:
        """``s3://bucket/prefix/folder`` in prod, a directory under the store locally."""
        if not self.prod:
            return str(self.store / folder)
        bucket = require("ASTRID_S3_BUCKET", "the bucket that holds the images and tables")
        return "/".join(p for p in (f"s3://{bucket}", self.s3_prefix.strip("/"), folder) if p)

    @property
    def store(self) -> Path:
        return self.home / "store"

    @property
    def catalog(self) -> Path:
        return self.home / "astrid.duckdb"

    @property
    def landing(self) -> Path:
        return self.home / "landing"


def require(name: str, what: str) -> str:
    """The value of the environment variable ``name``, or an error saying what it is for."""
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"ASTRID_ENV=prod needs {name}: {what}")
    return value


def _environment() -> str:
    env = (os.environ.get("ASTRID_ENV") or "local").strip().lower()
    if env not in ENVIRONMENTS:
        raise ValueError(f"ASTRID_ENV must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")
    return env


def _source() -> str:
    source = (os.environ.get("ASTRID_SOURCE") or "simulated").strip().lower()
    if source not in SOURCES:
        raise ValueError(f"ASTRID_SOURCE must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def settings() -> Settings:
    """The current environment's settings."""
    home = Path(os.environ.get("ASTRID_HOME") or "astrid_home").resolve()
    return Settings(
        home=home,
        sim_size=_int("ASTRID_SIM_SIZE", 2048),
        sim_fields=_int("ASTRID_SIM_FIELDS", 4),
        sim_seed=_int("ASTRID_SIM_SEED", 20260105),
        sim_start=os.environ.get("ASTRID_SIM_START") or "2026-01-05",
        max_processes=_int("ASTRID_MAX_PROCESSES", os.cpu_count() or 2),
        retrain_after_labels=_positive("ASTRID_RETRAIN_AFTER_LABELS", 100),
        env=_environment(),
        s3_bucket=os.environ.get("ASTRID_S3_BUCKET") or None,
        s3_prefix=os.environ.get("ASTRID_S3_PREFIX", "astrid"),
        s3_endpoint_url=os.environ.get("ASTRID_S3_ENDPOINT_URL") or None,
        s3_region=os.environ.get("ASTRID_S3_REGION") or "auto",
        mlflow_experiment=os.environ.get("ASTRID_MLFLOW_EXPERIMENT") or "astrid",
        source=_source(),
        source_config=Path(os.environ["ASTRID_SOURCE_CONFIG"]).resolve()
        if os.environ.get("ASTRID_SOURCE_CONFIG")
        else None,
        local_root=os.environ.get("ASTRID_LOCAL_ROOT") or None,
        local_manifest=os.environ.get("ASTRID_LOCAL_MANIFEST") or None,
    )


def project_dir() -> Path:
    """The directory with ``dagster.yaml``: the working directory when it has one,
    else the source checkout this package was installed from."""
    cwd = Path.cwd()
    if (cwd / "dagster.yaml").exists():
        return cwd
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "dagster.yaml").exists():
        return checkout
    raise FileNotFoundError(
        "no dagster.yaml in the working directory or the AstrID checkout; run from the "
        "project directory or set DAGSTER_HOME"
    )


def configure_environment() -> Settings:
    """Fill in the environment that ``dagster.yaml`` and every process read.

    Variables already set win, so a user's ``ASTRID_HOME`` or ``DAGSTER_HOME``
    is kept. In prod mode ``DAGSTER_HOME`` defaults to ``deploy/dagster``
    (Dagster on PostgreSQL) and the settings boto3 needs for R2 are filled
    in. Returns the resulting settings.
    """
    env = _environment()
    root = project_dir() if "DAGSTER_HOME" not in os.environ else None
    if root is not None:
        home_dir = root / "deploy" / "dagster" if env == "prod" else root
        os.environ["DAGSTER_HOME"] = str(home_dir)
        os.environ.setdefault("ASTRID_HOME", str(root / "astrid_home"))
    home = Path(os.environ.get("ASTRID_HOME") or "astrid_home").resolve()
    os.environ["ASTRID_HOME"] = str(home)
    os.environ.setdefault("ASTRID_DAGSTER_STORAGE", str(home / "dagster"))
    os.environ.setdefault("ASTRID_DAGSTER_LOGS", str(home / "dagster" / "logs"))
    os.environ.setdefault("ASTRID_MAX_RUNS", "2")
    if env == "prod":
        for name, value in PROD_DEFAULTS.items():
            os.environ.setdefault(name, value)
        prefix = os.environ["ASTRID_S3_PREFIX"].strip("/")
        os.environ.setdefault("ASTRID_DAGSTER_LOG_PREFIX", f"{prefix}/dagster-logs".lstrip("/"))
    return settings()


# Prod defaults. R2 takes region "auto" and rejects the checksums that boto3
# adds to every request since 1.36 unless told to add them only when required.
PROD_DEFAULTS = {
    "ASTRID_S3_PREFIX": "astrid",
    "ASTRID_S3_REGION": "auto",
    "ASTRID_PG_PORT": "5432",
    "ASTRID_PG_DB": "astrid",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}
