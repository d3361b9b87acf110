"""``astrid demo``: a survey night through the asset graph with a real daemon, twice.

Small images (512 x 512) keep it to a few minutes; most of that is the
backfill daemon's 30 s between evaluations. The night is the survey's
second, which has brightening candidates at this size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from astrid_assets.commands.demo import NightSummary, night_summary
from astrid_assets.storage.catalog import Catalog

REPO_ROOT = Path(__file__).resolve().parents[2]
ASTRID = Path(sys.executable).parent / "astrid"
NIGHT = "2026-01-06"
FIELDS = ["F01", "F02", "F03", "F04"]
INSTANCE_VARIABLES = ("ASTRID_DAGSTER_STORAGE", "ASTRID_DAGSTER_LOGS", "ASTRID_MAX_RUNS")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("demo")
    dagster_home = root / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    home = root / "astrid_home"
    env = {k: v for k, v in os.environ.items() if k not in INSTANCE_VARIABLES}
    env.update(
        DAGSTER_HOME=str(dagster_home),
        ASTRID_HOME=str(home),
        ASTRID_SIM_SIZE="512",
    )
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setenv("ASTRID_DAGSTER_STORAGE", str(home / "dagster"))
        mp.setenv("ASTRID_DAGSTER_LOGS", str(home / "dagster" / "logs"))
        mp.setenv("ASTRID_MAX_RUNS", "2")
        yield env


def _demo(env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(ASTRID), "demo", "--night", NIGHT],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _headline(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(f"night {NIGHT}:"))


def _summary() -> NightSummary:
    with DagsterInstance.get() as instance:
        return night_summary(instance, NIGHT)


def _rows(env: dict[str, str]) -> dict[str, int]:
    catalog = Catalog(Path(env["ASTRID_HOME"]) / "astrid.duckdb")
    counts = {}
    for view in ("exposures", "frames", "candidates", "injections"):
        counts[view] = int(catalog.query(f"SELECT count(*) AS n FROM {view}")["n"][0])
    return counts


@pytest.fixture(scope="module")
def first(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, NightSummary, dict]:
    result = _demo(env)
    return result, _summary(), _rows(env)


def test_demo_processes_a_night_and_prints_what_duckdb_holds(first) -> None:
    result, summary, rows = first
    out = result.stdout
    assert f"night {NIGHT}: {len(FIELDS)} field(s)" in out
    assert "COMPLETED_SUCCESS" in out
    assert summary.partitions["field"].to_list() == FIELDS
    assert rows["exposures"] == rows["frames"] == len(FIELDS)
    assert int(summary.partitions["candidates"].sum()) == rows["candidates"]
    assert (summary.partitions["matched"] <= summary.partitions["candidates"]).all()
    assert summary.partitions["matched"].sum() > 0  # simulated transients were found
    assert (summary.partitions["seconds"] > 0).all()
    assert summary.partitions["seeing_arcsec"].is_between(0.3, 5.0).all()
    # The night's completeness: the 50% point from the report's metadata, the
    # fraction above S/N 10 from the injections table.
    assert summary.snr50 is not None and 3.0 < summary.snr50 < 10.0
    assert f"recovered at S/N {summary.snr50:.2f}" in out
    assert summary.recovered_snr_ge_10 is not None and summary.recovered_snr_ge_10 > 0.8
    # The best candidates: brightening, by descending peak score, at most ten.
    best = summary.best
    assert 0 < len(best) <= 10
    assert best["score_peak"].to_list() == sorted(best["score_peak"].to_list(), reverse=True)
    assert best["candidate_id"][0] in out
    assert "make ui" in out and "http://127.0.0.1:3000" in out
    assert 'astrid sql "SELECT' in out


def test_running_the_demo_again_replaces_the_night_and_ends_in_the_same_summary(
    env: dict[str, str], first
) -> None:
    previous, summary, rows = first
    with DagsterInstance.get() as instance:
        before = len(instance.fetch_materializations(AssetKey("candidates"), limit=100).records)
    result = _demo(env)
    with DagsterInstance.get() as instance:
        after = len(instance.fetch_materializations(AssetKey("candidates"), limit=100).records)
        references = instance.fetch_materializations(AssetKey("reference_images"), limit=100)
    assert after == before + len(FIELDS)  # materialized again ...
    assert len(references.records) == len(FIELDS)  # ... with the references it had
    assert _rows(env) == rows  # ... and replaced, not appended
    again = _summary()
    assert again.partitions.drop("seconds").equals(summary.partitions.drop("seconds"))
    assert again.best.equals(summary.best)
    assert again.snr50 == summary.snr50
    assert _headline(result.stdout) == _headline(previous.stdout)
