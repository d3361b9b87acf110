"""``astrid alerts ingest``: the real ZTF and Rubin packets into ``external_candidates``."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import fastavro
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from astrid_assets.alerts.ingest import (
    EXTERNAL_SCHEMA,
    ingest_alerts,
    load_external_candidates,
    read_external_alerts,
)
from astrid_assets.cli import main
from astrid_assets.storage.io_managers import ParquetIOManager

N_ZTF, N_RUBIN = 136, 40


def _store(root: Path):
    return ParquetIOManager(
        root=str(root / "tables"), catalog_path=str(root / "astrid.duckdb")
    ).create_io_manager(None)


def _avro(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.avro"))


@pytest.fixture(scope="module")
def ingested(real_data, tmp_path_factory):
    """Every real ZTF and Rubin alert, ingested once into a temporary store."""
    root = tmp_path_factory.mktemp("external")
    store = _store(root)
    result = ingest_alerts(store, [real_data / "ztf_alerts", real_data / "rubin_alerts"])
    return store, result, load_external_candidates(store)


def test_the_shared_folders_hold_the_alerts_counted_here(real_data):
    assert len(_avro(real_data / "ztf_alerts")) == N_ZTF
    assert len(_avro(real_data / "rubin_alerts")) == N_RUBIN


def test_every_real_alert_is_stored_once_with_its_survey(ingested):
    _, result, table = ingested
    assert result.problems == []
    assert result.read == {"ztf": N_ZTF, "rubin": N_RUBIN}
    assert result.stored == {"ztf": N_ZTF, "rubin": N_RUBIN}
    assert table.schema == pl.Schema(EXTERNAL_SCHEMA)
    assert table.group_by("survey").len().sort("survey").rows() == [
        ("rubin", N_RUBIN),
        ("ztf", N_ZTF),
    ]
    assert table.select("survey", "candid").is_unique().all()
    assert table["batch"].n_unique() == 1
    for column in ("candid", "ra", "dec", "mjd", "positive", "schema_version", "source_file"):
        assert table[column].null_count() == 0, column


def test_ztf_rows_carry_rb_and_drb_and_the_schema_versions(ingested):
    ztf = ingested[2].filter(pl.col("survey") == "ztf")
    assert ztf["rb"].null_count() == 0
    # A drb without drbversion (40 alerce packets) is a fill value: null, as ml.ztf reads it.
    assert ztf["drb"].is_not_null().sum() == 95
    assert ztf["drb"].drop_nulls().is_between(0, 1).all()
    assert ztf["magpsf"].null_count() == 0 and ztf["sigmapsf"].null_count() == 0
    assert ztf["reliability"].null_count() == N_ZTF
    assert set(ztf["schema_version"]) == {"3.0", "3.1", "3.2", "3.3", "4.01"}
    assert ztf["object_id"].str.starts_with("ZTF").all()
    # Every alerce packet is "f"; the kowalski and official ones mostly "t".
    assert (ztf["positive"] == ztf["isdiffpos"].is_in(["t", "1"])).all()
    ztf20aafsnpp = ztf.filter(pl.col("object_id") == "ZTF20aafsnpp")
    assert ztf20aafsnpp.height >= 1 and (ztf20aafsnpp["drb"] > 0.5).all()


def test_the_fifteen_kowalski_asteroids_are_known_by_ssdistnr(ingested):
    ztf = ingested[2].filter(pl.col("survey") == "ztf")
    asteroids = ztf.filter(pl.col("ssdistnr") < 10)
    assert asteroids.height == 15
    assert asteroids["source_file"].str.contains("/kowalski/").all()
    assert asteroids["ssnamenr"].null_count() == 0
    assert ztf.filter(pl.col("ssnamenr").is_not_null()).height == 15


def test_rubin_rows_carry_reliability_snr_and_dipoles(ingested):
    rubin = ingested[2].filter(pl.col("survey") == "rubin")
    reliability = rubin["reliability"]
    assert reliability.null_count() == 0
    assert 0.10 <= reliability.min() < 0.11 and 0.998 < reliability.max() <= 0.999
    assert (reliability > 0.5).sum() == 14 and (reliability < 0.2).sum() == 10
    assert rubin["isDipole"].sum() == 2
    assert (rubin["snr"] > 0).all()
    assert (rubin["positive"] == (rubin["psfFlux"] > 0)).all() and rubin["positive"].sum() == 38
    assert set(rubin["schema_version"]) == {"9.0"} and set(rubin["band"]) == {"i"}
    assert rubin["rb"].null_count() == rubin["drb"].null_count() == N_RUBIN
    # The file is named after the diaSourceId.
    stems = rubin["source_file"].map_elements(lambda s: Path(s).stem.split("_")[0], pl.Utf8)
    assert (stems == rubin["candid"].cast(pl.Utf8)).all()


def test_cutouts_are_63_pixel_stamps_centred_on_the_candidate(ingested):
    table = ingested[2]
    for survey in ("ztf", "rubin"):
        rows = table.filter(pl.col("survey") == survey)
        difference = rows["cutout_difference"].to_numpy()
        assert difference.shape == (rows.height, 63, 63)
        # Science - reference at the centre, brightening or fading alike once oriented.
        sign = np.where(rows["positive"].to_numpy(), 1.0, -1.0)
        centre = np.nanmean(difference[:, 30:33, 30:33], axis=(1, 2)) * sign
        assert (centre > 0).mean() > 0.9, survey
    # Rubin cuts 30 to 71 px: 37 smaller stamps sit in a NaN frame, 3 larger ones are cropped.
    science = table.filter(pl.col("survey") == "rubin")["cutout_science"].to_numpy()
    assert np.isnan(science[:, 0, 0]).sum() == 37 and np.isfinite(science[:, 31, 31]).all()


def test_a_malformed_packet_is_reported_by_name_and_the_others_are_stored(real_data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = _avro(real_data / "rubin_alerts")[:3] + _avro(real_data / "ztf_alerts" / "kowalski")[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    data = good[0].read_bytes()
    (folder / "truncated.avro").write_bytes(data[: len(data) // 2])
    (folder / "not_avro.avro").write_text("this is not an Avro file\n")
    schema = {"type": "record", "name": "alert", "fields": [{"name": "objectId", "type": "string"}]}
    with open(folder / "no_candidate.avro", "wb") as handle:
        fastavro.writer(handle, schema, [{"objectId": "ZTF00nothing"}])

    problems = []
    store = _store(tmp_path)
    result = ingest_alerts(store, [folder], on_error=lambda s, r: problems.append((s, r)))

    named = {Path(source).name: reason for source, reason in problems}
    assert set(named) == {"truncated.avro", "not_avro.avro", "no_candidate.avro"}
    assert named["truncated.avro"].startswith("unreadable Avro file")
    assert named["not_avro.avro"].startswith("unreadable Avro file")
    assert named["no_candidate.avro"] == (
        "packet 0: neither a ZTF candidate nor a Rubin diaSource record"
    )
    assert result.stored == {"ztf": 2, "rubin": 3}
    assert load_external_candidates(store).height == 5


def test_the_command_reads_a_tarball_skips_bad_files_and_never_duplicates(
    real_data, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    tarball = tmp_path / "rubin.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(real_data / "rubin_alerts", arcname="rubin_alerts")
    broken = tmp_path / "broken.avro"
    broken.write_bytes(b"Obj\x01 truncated")
    official = real_data / "ztf_alerts" / "official"
    runner = CliRunner()

    first = runner.invoke(main, ["alerts", "ingest", str(tarball), str(official), str(broken)])
    assert first.exit_code == 0, first.output
    assert f"rubin: {N_RUBIN} alerts read, {N_RUBIN} stored, 0 already stored" in first.output
    assert "ztf: 2 alerts read, 2 stored, 0 already stored" in first.output
    assert "1 warnings" in first.output
    assert f"warning: {broken}: unreadable Avro file" in first.output

    again = runner.invoke(main, ["alerts", "ingest", str(real_data / "rubin_alerts")])
    assert again.exit_code == 0, again.output
    assert f"rubin: {N_RUBIN} alerts read, 0 stored, {N_RUBIN} already stored" in again.output

    sql = runner.invoke(
        main,
        [
            "sql",
            "SELECT survey, count(*) AS n, count(DISTINCT candid) AS ids, "
            "min(reliability) AS lo FROM external_candidates GROUP BY survey ORDER BY survey",
            "--csv",
        ],
    )
    assert sql.exit_code == 0, sql.output
    lines = sql.output.strip().splitlines()
    assert lines[0] == "survey,n,ids,lo"
    assert lines[1].startswith(f"rubin,{N_RUBIN},{N_RUBIN},0.10")
    assert lines[2] == "ztf,2,2,"
    assert list((home / "store" / "tables" / "external_candidates" / "rubin").glob("*.parquet"))
    inside = read_external_alerts([tarball])
    assert inside["source_file"].str.starts_with(f"{tarball}:rubin_alerts/").all()


def test_nothing_readable_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    broken = tmp_path / "broken.avro"
    broken.write_text("not Avro")
    result = CliRunner().invoke(main, ["alerts", "ingest", str(broken)])
    assert result.exit_code == 1
    assert "no alert could be read" in result.output
