"""The asset graph materialized with the real IO managers on temporary storage."""

import dagster as dg
import pytest

from astrid_assets.definitions import defs
from astrid_assets.defs.automation import NIGHT_FIELD_ASSETS
from astrid_assets.defs.ml import ML_ASSETS
from astrid_assets.partitions import night_field_key
from astrid_assets.storage.catalog import Catalog
from astrid_assets_tests.test_defs.conftest import NIGHT, graph_resources

CHAIN = list(NIGHT_FIELD_ASSETS)


def _chain(root, instance, field, *, landing=None, run_config=None, raise_on_error=True):
    return dg.materialize(
        defs.assets,
        selection=CHAIN,
        partition_key=night_field_key(NIGHT, field),
        instance=instance,
        resources=graph_resources(root, landing),
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def _metadata(result, asset: str) -> dict:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _count(root, view: str, field: str) -> int:
    sql = f"SELECT count(*) AS n FROM {view} WHERE night = '{NIGHT}' AND field = '{field}'"
    return int(Catalog(root / "astrid.duckdb").query(sql)["n"][0])


def test_definitions_load_with_every_asset_check_schedule_and_sensor():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        *CHAIN,
        "calibration_masters",
        "reference_images",
        "completeness_report",
        *ML_ASSETS,
        "candidate_scores",
        "drift_report",
        "alerts",
    }
    groups = {graph.get(dg.AssetKey(n)).group_name for n in CHAIN}
    assert groups == {"ingest", "calibration", "difference"}
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("difference_images", "no_nan_outside_mask") in checks
    assert ("difference_images", "score_std_near_one") in checks
    assert ("candidates", "candidate_count_plausible") in checks
    assert ("calibrated_exposures", "frame_quality_within_limits") in checks
    assert ("drift_report", "drift_within_limits") in checks
    assert defs.resolve_schedule_def("nightly_schedule")
    for sensor in ("landing_sensor", "labels_sensor", "failure_summary_sensor"):
        assert defs.resolve_sensor_def(sensor)
    assert defs.resolve_job_def("retrain_models")
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, f"{key} has no description"


def test_a_partition_lands_in_the_store_and_the_catalog_with_its_checks(store):
    root, instance = store
    result = _chain(root, instance, "F01")
    for asset in ("raw_exposures", "calibrated_exposures", "difference_images"):
        assert (root / "images" / asset / NIGHT / "F01.fits").is_file()
    for asset in ("exposure_table", "frame_table", "candidates"):
        assert (root / "tables" / asset / NIGHT / "F01.parquet").is_file()
    rows = _metadata(result, "candidates")["rows"]
    assert _count(root, "candidates", "F01") == rows
    assert _count(root, "candidates_cutouts", "F01") == rows
    assert _count(root, "exposures", "F01") == 1
    assert _count(root, "frames", "F01") == 1
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {
        "frame_quality_within_limits": True,
        "no_nan_outside_mask": True,
        "score_std_near_one": True,
        "candidate_count_plausible": True,
    }
    assert _metadata(result, "candidates")["preview"].startswith("![")


def test_materializing_a_partition_again_replaces_its_rows(store):
    root, instance = store
    first = _metadata(_chain(root, instance, "F03"), "candidates")["rows"]
    second = _metadata(_chain(root, instance, "F03"), "candidates")["rows"]
    assert first == second == _count(root, "candidates", "F03")
    assert _count(root, "exposures", "F03") == 1


def test_a_frame_outside_the_limits_is_flagged_not_silently_used(store):
    root, instance = store
    strict = {"ops": {"calibrated_exposures": {"config": {"max_fwhm_arcsec": 1.0}}}}
    result = _chain(root, instance, "F04", run_config=strict)
    (check,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "frame_quality_within_limits"
    ]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert "FWHM" in check.description
    frames = Catalog(root / "astrid.duckdb").query(
        f"SELECT quality_ok, quality_reasons FROM frames WHERE field = 'F04' AND night = '{NIGHT}'"
    )
    assert frames["quality_ok"].to_list() == [False]
    flags = Catalog(root / "astrid.duckdb").query(
        "SELECT DISTINCT frame_quality_ok FROM candidates WHERE field = 'F04'"
    )
    assert flags["frame_quality_ok"].to_list() in ([], [False])
    _chain(root, instance, "F04")  # within the default limits again


def test_a_truncated_exposure_fails_its_partition_alone(store, tmp_path):
    root, instance = store
    _chain(root, instance, "F01")
    kept = (root / "images" / "raw_exposures" / NIGHT / "F01.fits").read_bytes()
    landing = tmp_path / "landing"
    bad = landing / NIGHT / "F02.fits"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    result = _chain(root, instance, "F02", landing=landing, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.to_string()
    assert str(bad) in message
    assert not (root / "images" / "raw_exposures" / NIGHT / "F02.fits").exists()
    assert (root / "images" / "raw_exposures" / NIGHT / "F01.fits").read_bytes() == kept
    assert _chain(root, instance, "F02").success


def test_completeness_report_recovers_the_fakes_of_every_field(store):
    root, instance = store
    for field in ("F01", "F02", "F03", "F04"):
        if not (root / "tables" / "candidates" / NIGHT / f"{field}.parquet").exists():
            _chain(root, instance, field)
    result = dg.materialize(
        defs.assets,
        selection=["completeness_report"],
        partition_key=NIGHT,
        instance=instance,
        resources=graph_resources(root),
        run_config={"ops": {"completeness_report": {"config": {"fakes_per_field": 60}}}},
    )
    meta = _metadata(result, "completeness_report")
    assert meta["fields"] == 4
    assert 4.0 < meta["snr50"] < 7.0
    assert meta["completeness_snr_ge_10"] > 0.85
    injections = Catalog(root / "astrid.duckdb").query(
        "SELECT field, count(*) AS n FROM injections GROUP BY field ORDER BY field"
    )
    assert injections["field"].to_list() == ["F01", "F02", "F03", "F04"]
    assert sum(injections["n"]) == meta["rows"]


@pytest.mark.parametrize("method", ["classic"])
def test_classic_subtraction_is_a_config_option(store, method):
    root, instance = store
    config = {"ops": {"difference_images": {"config": {"method": method}}}}
    result = _chain(root, instance, "F01", run_config=config)
    assert _metadata(result, "difference_images")["method"] == method
    _chain(root, instance, "F01")
