"""``alerts[night]`` materialized on temporary storage, and ``astrid alerts export``."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from astrid_assets.alerts import read_packets
from astrid_assets.cli import main
from astrid_assets.defs.alerts import alerts
from astrid_assets.storage.io_managers import ParquetIOManager

from .conftest import DEC0, RA0, candidates, offset, scores, write_table

NIGHTS = ("2026-01-05", "2026-01-06", "2026-01-07")


def _survey(tables: Path) -> None:
    """A (F01) on three nights; on the last night also B (F02) and C (F02, score 0.1)."""
    for k, night in enumerate(NIGHTS):
        a = offset(RA0, DEC0, 0.2 * k, 0.0)
        frame = candidates(night, "F01", [a[0]], [a[1]], seed=k)
        write_table(tables, "candidates", night, "F01", frame)
        write_table(tables, "candidate_scores", night, "F01", scores(frame, [0.8]))
    b, c = offset(RA0, DEC0, 100.0, 0.0), offset(RA0, DEC0, 200.0, 0.0)
    frame = candidates(NIGHTS[2], "F02", [b[0], c[0]], [b[1], c[1]], seed=5)
    write_table(tables, "candidates", NIGHTS[2], "F02", frame)
    write_table(tables, "candidate_scores", NIGHTS[2], "F02", scores(frame, [0.6, 0.1]))


def _materialize(root: Path, night: str, config: dict | None = None):
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("night", list(NIGHTS))
    return dg.materialize(
        [alerts],
        partition_key=night,
        instance=instance,
        resources={
            "parquet_io_manager": ParquetIOManager(
                root=str(root / "tables"), catalog_path=str(root / "astrid.duckdb")
            )
        },
        run_config={"ops": {"alerts": {"config": config or {}}}},
        raise_on_error=False,
    )


def test_the_asset_writes_the_nights_packets_beside_the_tables(tmp_path):
    _survey(tmp_path / "tables")
    result = _materialize(tmp_path, NIGHTS[2])
    assert result.success
    (materialization,) = result.asset_materializations_for_node("alerts")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert (meta["packets"], meta["objects_new"], meta["objects_known"]) == (2, 1, 1)
    assert (meta["candidates"], meta["below_score_cut"], meta["earlier_detections"]) == (3, 1, 2)
    assert meta["unscored_fields"] == "none"
    assert meta["packets_per_second"] > 0
    folder = tmp_path / "alerts" / NIGHTS[2]
    packets = read_packets(sorted(folder.glob("*.avro")))
    assert len(packets) == 2
    a = next(p for p in packets if p["candidate"]["field"] == "F01")
    assert [p["night"] for p in a["prv_candidates"]] == list(NIGHTS[:2])


def test_the_asset_fails_naming_the_night_without_scores_unless_told_not_to(tmp_path):
    _survey(tmp_path / "tables")
    (tmp_path / "tables" / "candidate_scores" / NIGHTS[2] / "F02.parquet").unlink()
    failed = _materialize(tmp_path, NIGHTS[2])
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert f"night {NIGHTS[2]}: no candidate_scores for fields F02" in str(
        failure.step_failure_data.error
    )
    result = _materialize(tmp_path, NIGHTS[2], {"require_scores": False})
    assert result.success
    (materialization,) = result.asset_materializations_for_node("alerts")
    assert materialization.metadata["unscored_fields"].value == "F02"
    assert materialization.metadata["packets"].value == 3


@pytest.fixture
def astrid_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "astrid_home"
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    for name in (
        "ASTRID_ENV",
        "ASTRID_SIM_FIELDS",
        "ASTRID_DAGSTER_STORAGE",
        "ASTRID_DAGSTER_LOGS",
        "ASTRID_MAX_RUNS",
    ):
        monkeypatch.delenv(name, raising=False)
    _survey(home / "store" / "tables")
    return home


def test_the_cli_exports_a_nights_packets(astrid_home, tmp_path):
    out = tmp_path / "export"
    result = CliRunner().invoke(
        main, ["alerts", "export", "--night", NIGHTS[2], "--out", str(out), "--min-score", "0.05"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote 3 packets to {out}" in result.output
    assert len(list(out.glob("*.avro"))) == 3
    assert len(read_packets(sorted(out.glob("*.avro")))) == 3


def test_the_cli_names_a_night_without_candidates(astrid_home, tmp_path):
    result = CliRunner().invoke(
        main, ["alerts", "export", "--night", "2026-03-01", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 1
    assert "night 2026-03-01: no candidates table" in result.output
