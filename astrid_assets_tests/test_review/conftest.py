"""A small survey's candidate tables on temporary storage, and the review app serving them.

The candidates are written as the pipeline writes them (one Parquet file per
night x field with 63x63 cutout stamps as fixed-size arrays, DuckDB views
over all of them), without running the pipeline: the same ten sources per
field are detected on each of three nights, so each has a light curve.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from upath import UPath

from astrid_assets.labels import LabelStore
from astrid_assets.review.users import UserStore
from astrid_assets.storage.catalog import Catalog
from astrid_assets.storage.io_managers import ParquetStore

REPO_ROOT = Path(__file__).resolve().parents[2]
NIGHTS = ("2026-01-05", "2026-01-06", "2026-01-07")
FIELDS = ("F01", "F02")
SOURCES = 10
SIDE = 63
PASSWORD = "correct horse battery"
LOAD_CLIENTS = 20
PEOPLE = {"vera": "vetter", "val": "vetter", "ada": "admin", "vic": "viewer"}


def _stamp(rng: np.random.Generator, flux: float, sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[:SIDE, :SIDE] - SIDE // 2
    star = flux * np.exp(-(xx**2 + yy**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    return (star + rng.normal(0.0, 5.0, (SIDE, SIDE))).astype(np.float32)


def write_survey(home: Path, seed: int = 6) -> pl.DataFrame:
    """Candidates and their scores under ``home`` (``store/tables``, ``astrid.duckdb``).

    Returns the candidates without their stamps.
    """
    rng = np.random.default_rng(seed)
    tables = home / "store" / "tables"
    frames = []
    for f, field in enumerate(FIELDS):
        ra0, dec0 = 150.0 + 2.0 * f, 20.0
        ra = ra0 + rng.uniform(-0.1, 0.1, SOURCES)
        dec = dec0 + rng.uniform(-0.1, 0.1, SOURCES)
        for n, night in enumerate(NIGHTS):
            jitter = rng.normal(0.0, 0.2 / 3600, (2, SOURCES))  # 0.2 arcsec
            mag = 19.0 + rng.uniform(-1, 1, SOURCES) + 0.3 * n
            flux = 10 ** (-0.4 * (mag - 27.0))
            science = np.stack([_stamp(rng, 2 * v) for v in flux])
            reference = np.stack([_stamp(rng, v) for v in flux])
            difference = science - reference
            frame = pl.DataFrame(
                {
                    "candidate_id": [f"{night}_{field}_{i:04d}" for i in range(SOURCES)],
                    "night": [night] * SOURCES,
                    "field": [field] * SOURCES,
                    "id": np.arange(SOURCES),
                    "x": rng.uniform(40, 470, SOURCES),
                    "y": rng.uniform(40, 470, SOURCES),
                    "sign": np.where(np.arange(SOURCES) % 4 == 3, -1, 1),
                    "score_peak": rng.uniform(5, 40, SOURCES),
                    "snr": rng.uniform(5, 80, SOURCES),
                    "mag": mag,
                    "mag_err": rng.uniform(0.01, 0.2, SOURCES),
                    "ra": ra + jitter[0] / np.cos(np.radians(dec)),
                    "dec": dec + jitter[1],
                    "mjd": np.full(SOURCES, 61045.5 + n),
                    "fwhm": rng.uniform(2, 4, SOURCES),
                    "ellipticity": rng.uniform(0, 0.3, SOURCES),
                    "dipole": rng.uniform(0, 0.5, SOURCES),
                }
            )
            for name, stamps in (
                ("cutout_science", science),
                ("cutout_reference", reference),
                ("cutout_difference", difference),
            ):
                frame = frame.with_columns(
                    pl.Series(
                        name,
                        stamps.reshape(SOURCES, SIDE * SIDE),
                        dtype=pl.Array(pl.Float32, SIDE * SIDE),
                    )
                )
            path = tables / "candidates" / night / f"{field}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(path)
            scores = frame.select("candidate_id", "night", "field").with_columns(
                *(
                    pl.Series(name, rng.uniform(0, 1, SOURCES).astype(np.float32))
                    for name in ("realbogus", "unet", "isolation_forest", "one_class_svm")
                ),
                pl.Series("ensemble", rng.uniform(0, 1, SOURCES).astype(np.float32)),
            )
            path = tables / "candidate_scores" / night / f"{field}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            scores.write_parquet(path)
            frames.append(frame.drop("cutout_science", "cutout_reference", "cutout_difference"))
    Catalog(home / "astrid.duckdb").refresh(
        {
            "candidates": str(tables / "candidates" / "**" / "*.parquet"),
            "candidate_scores": str(tables / "candidate_scores" / "**" / "*.parquet"),
        }
    )
    return pl.concat(frames)


@dataclass(frozen=True)
class Survey:
    """The temporary stores of :func:`write_survey`."""

    home: Path
    candidates: pl.DataFrame

    @property
    def labels(self) -> LabelStore:
        return LabelStore(sqlite_path=str(self.home / "labels.sqlite"))

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.home / "astrid.duckdb")

    @property
    def tables(self) -> ParquetStore:
        return ParquetStore(UPath(self.home / "store" / "tables"), catalog=self.catalog)

    def users(self) -> UserStore:
        return UserStore(self.labels.engine())


@pytest.fixture(scope="session")
def survey(tmp_path_factory) -> Survey:
    home = tmp_path_factory.mktemp("review_home")
    candidates = write_survey(home)
    users = Survey(home, candidates).users()
    for name, role in PEOPLE.items():
        users.add(name, PASSWORD, role)
    for k in range(LOAD_CLIENTS):
        users.add(f"load{k:02d}", PASSWORD, "vetter")
    return Survey(home, candidates)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """``astrid review`` running in a process of its own on a loopback port."""

    url: str
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="session")
def server(survey, tmp_path_factory):
    """The real command, ``astrid review``, over the survey's stores; stopped by its PID."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "review.log"
    env = {
        **os.environ,
        "ASTRID_ENV": "local",
        "ASTRID_HOME": str(survey.home),
        "DAGSTER_HOME": str(survey.home),
        "ASTRID_REVIEW_SECRET": secrets.token_urlsafe(32),
    }
    command = [sys.executable, "-c", "from astrid_assets.cli import main; main()"]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "review", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"astrid review exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"astrid review did not answer within 90 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield Server(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def signed_in(url: str, name: str, password: str = PASSWORD) -> Iterator[tuple[httpx.Client, str]]:
    """A client with a signed-in session, and the session's CSRF token."""
    with httpx.Client(base_url=url, timeout=30) as client:
        token = client.get("/api/session").json()["csrf_token"]
        response = client.post(
            "/login", data={"name": name, "password": password, "csrf_token": token}
        )
        assert response.status_code == 303, response.text
        session = client.get("/api/session").json()
        assert session["user"] == name
        yield client, session["csrf_token"]
