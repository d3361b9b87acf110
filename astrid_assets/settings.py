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
``ASTRID_MAX_PROCESSES``
    Steps run at once inside one run (default: the number of CPUs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "configure_environment", "project_dir", "settings"]


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

    @property
    def store(self) -> Path:
        return self.home / "store"

    @property
    def catalog(self) -> Path:
        return self.home / "astrid.duckdb"

    @property
    def landing(self) -> Path:
        return self.home / "landing"


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
    is kept. Returns the resulting settings.
    """
    root = project_dir() if "DAGSTER_HOME" not in os.environ else None
    if root is not None:
        os.environ["DAGSTER_HOME"] = str(root)
        os.environ.setdefault("ASTRID_HOME", str(root / "astrid_home"))
    home = Path(os.environ.get("ASTRID_HOME") or "astrid_home").resolve()
    os.environ["ASTRID_HOME"] = str(home)
    os.environ.setdefault("ASTRID_DAGSTER_STORAGE", str(home / "dagster"))
    os.environ.setdefault("ASTRID_DAGSTER_LOGS", str(home / "dagster" / "logs"))
    os.environ.setdefault("ASTRID_MAX_RUNS", "2")
    return settings()
