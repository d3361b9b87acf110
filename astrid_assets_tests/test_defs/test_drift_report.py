"""``drift_report[night]`` through the graph on a small simulated survey.

Three earlier nights and tonight of two fields are processed at 512 px; a
tiny training set is made. Tonight is compared with them once as simulated,
and once re-processed under forced bad weather (seeing x2, zero point
-1 mag, :class:`~astrid_assets.sources.simulated.NightWeather`): the drift
check passes on the first and fails on the second, naming the frame
quantities that moved. At 512 px a night has too few candidates for
feature statistics ("too few"), and no models are trained, so scores are
"not available": both are covered by ``test_ml/test_drift.py``.
"""

import dagster as dg
import pytest
from pydantic import ValidationError

from astrid_assets.definitions import defs
from astrid_assets.defs.automation import NIGHT_FIELD_ASSETS
from astrid_assets.defs.drift import DRIFT_CHECK
from astrid_assets.partitions import night_field_key
from astrid_assets.sources import SimulatedSurvey
from astrid_assets.sources.simulated import NightWeather
from astrid_assets.storage.catalog import Catalog
from astrid_assets_tests.test_defs.conftest import SIZE, graph_resources

# Clear nights of the simulated weather, seeing 1.7" to 2.7", and tonight like them.
EARLIER = ("2026-01-05", "2026-01-10", "2026-01-12")
TONIGHT = "2026-01-15"
FIELDS = ("F01", "F02")
ASSETS = defs.assets
TINY_TRAINING = {
    "training_set": {
        "config": {
            "fields": ["F01", "F02"],
            "nights": ["2026-01-05", "2026-01-06"],
            "validation_nights": ["2026-01-06"],
            "test_fields": ["F02"],
            "test_nights": [],
            "real_per_image": 20,
            "artefacts_per_kind": 3,
            "patches_per_image": 2,
        }
    }
}
BAD_WEATHER = NightWeather(night=TONIGHT, seeing_factor=2.0, zero_point_offset=-1.0)


def _process(nights, resources, instance) -> None:
    for night in nights:
        dg.materialize(
            ASSETS,
            selection=["calibration_masters"],
            partition_key=night,
            instance=instance,
            resources=resources,
        )
        for field in FIELDS:
            dg.materialize(
                ASSETS,
                selection=list(NIGHT_FIELD_ASSETS),
                partition_key=night_field_key(night, field),
                instance=instance,
                resources=resources,
            )


def _drift(night, resources, instance, config=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        selection=["drift_report"],
        partition_key=night,
        instance=instance,
        resources=resources,
        run_config={"ops": {"drift_report": {"config": config or {}}}},
    )


def _outcome(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = result.get_asset_materialization_events()
    checks = result.get_asset_check_evaluations()
    return {
        "metadata": {k: v.value for k, v in event.materialization.metadata.items()},
        "check": checks[0] if checks else None,
    }


@pytest.fixture(scope="module")
def survey_store(tmp_path_factory):
    """Nights processed, and tonight's drift report: first night, normal tonight, bad tonight."""
    root = tmp_path_factory.mktemp("drift")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("night", [*EARLIER, TONIGHT])
    resources = graph_resources(root)
    for field in FIELDS:
        dg.materialize(
            ASSETS,
            selection=["reference_images"],
            partition_key=field,
            instance=instance,
            resources=resources,
        )
    _process([*EARLIER, TONIGHT], resources, instance)
    outcomes = {"first": _outcome(_drift(EARLIER[0], resources, instance))}
    dg.materialize(
        ASSETS,
        selection=["training_set", "unet_patches"],
        instance=instance,
        resources=resources,
        run_config={"ops": TINY_TRAINING},
    )
    outcomes["normal"] = _outcome(_drift(TONIGHT, resources, instance))
    bad = {**resources, "survey": SimulatedSurvey(size=SIZE, night_overrides=[BAD_WEATHER])}
    _process([TONIGHT], bad, instance)
    outcomes["degraded"] = _outcome(_drift(TONIGHT, bad, instance, {"severity": "error"}))
    return root, resources, instance, outcomes


def test_a_first_night_without_reference_skips_the_check(survey_store):
    *_, outcomes = survey_store
    first = outcomes["first"]
    assert first["check"] is None
    assert first["metadata"]["drift_check"] == "skipped: no training set; no earlier night"
    assert first["metadata"]["rows"] == 0


def test_a_normal_night_passes_the_drift_check(survey_store):
    *_, outcomes = survey_store
    normal = outcomes["normal"]
    meta = normal["metadata"]
    print({k: v for k, v in meta.items() if k != "plot"})
    check = normal["check"]
    assert check.passed, check.description
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert meta["drifted"] == "none"
    assert 0.67 < meta["seeing_ratio"] < 1.5
    assert abs(meta["zero_point_shift_mag"]) < 0.5
    assert meta["depth_shift_mag"] > -0.75
    assert "training: " in meta["reference"] and "3 nights" in meta["reference"]
    assert meta["plot"].startswith(f"![drift {TONIGHT}](data:image/png;base64,")


def test_worse_seeing_and_a_lower_zero_point_fail_the_drift_check(survey_store):
    *_, outcomes = survey_store
    degraded = outcomes["degraded"]
    meta = degraded["metadata"]
    print({k: v for k, v in meta.items() if k != "plot"})
    check = degraded["check"]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.ERROR
    assert check.check_name == DRIFT_CHECK
    for quantity in ("nights/fwhm_arcsec", "nights/zero_point", "nights/limiting_mag"):
        assert quantity in meta["drifted"]
    assert "seeing" in check.description and "zero point" in check.description
    assert meta["seeing_ratio"] >= 1.5
    assert meta["zero_point_shift_mag"] < -0.8
    assert meta["depth_shift_mag"] < -0.75


def test_the_drift_table_is_a_duckdb_view(survey_store):
    root, *_ = survey_store
    catalog = Catalog(root / "astrid.duckdb")
    rows = catalog.query(
        "SELECT comparison, kind, quantity, status, drifted FROM drift_report "
        "WHERE night = ? ORDER BY comparison, kind, quantity",
        [TONIGHT],
    )
    assert set(rows["comparison"]) == {"training", "nights"}
    frames = rows.filter(rows["kind"] == "frame")
    assert set(frames.filter(frames["drifted"])["quantity"]) >= {"fwhm_arcsec", "zero_point"}
    scores = rows.filter(rows["kind"] == "score")
    assert set(scores["status"]) == {"not available"}  # no models were trained here
    features = rows.filter(rows["kind"] == "feature")
    assert features.height == 26 and set(features["status"]) == {"too few"}


def test_a_wrong_config_value_is_refused_with_its_name(survey_store):
    _, resources, instance, _ = survey_store
    with pytest.raises(dg.DagsterInvalidConfigError, match="severity"):
        _drift(TONIGHT, resources, instance, {"severity": "fatal"})
    with pytest.raises(ValidationError, match="psi_threshold"):
        _drift(TONIGHT, resources, instance, {"psi_threshold": -0.1})
