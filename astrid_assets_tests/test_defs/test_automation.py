"""The nightly schedule and the landing sensor, evaluated on a test instance."""

import datetime as dt

import dagster as dg
import pytest

from astrid_assets.defs.automation import (
    NIGHT_FIELD_ASSETS,
    landing_sensor,
    nightly_schedule,
    nights_subset,
    submit_backfill,
)
from astrid_assets.partitions import night_field_key
from astrid_assets.sources import SimulatedSurvey


def _pairs(subset) -> set[tuple[str, str]]:
    return {
        (ap.asset_key.to_user_string(), str(ap.partition_key))
        for ap in subset.iterate_asset_partitions()
    }


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_nights_subset_covers_every_nightly_asset_and_the_references_asked_for():
    subset = nights_subset(["2026-01-05", "2026-01-06"], ["F01", "F02"], references=["F02"])
    pairs = {
        (ap.asset_key.to_user_string(), str(ap.partition_key))
        for ap in subset.iterate_asset_partitions()
    }
    for name in NIGHT_FIELD_ASSETS:
        assert (name, str(night_field_key("2026-01-06", "F02"))) in pairs
        assert (name, str(night_field_key("2026-01-06", "F03"))) not in pairs
    assert ("calibration_masters", "2026-01-05") in pairs
    assert ("completeness_report", "2026-01-06") in pairs
    assert ("reference_images", "F02") in pairs
    assert ("reference_images", "F01") not in pairs
    assert len(pairs) == 2 * 2 * len(NIGHT_FIELD_ASSETS) + 2 * 2 + 1


def test_nights_subset_rejects_unknown_fields_and_bad_nights():
    with pytest.raises(ValueError, match="unknown field"):
        nights_subset(["2026-01-05"], ["F99"])
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        nights_subset(["5 Jan"], ["F01"])


def test_submit_backfill_adds_the_nights_and_a_backfill_with_missing_references(instance):
    backfill_id = submit_backfill(instance, ["2026-01-05", "2026-01-06"], ["F01"])
    assert instance.get_dynamic_partitions("night") == ["2026-01-05", "2026-01-06"]
    backfill = instance.get_backfill(backfill_id)
    assert backfill is not None
    targeted = _pairs(backfill.asset_backfill_data.target_subset)
    assert ("reference_images", "F01") in targeted
    assert ("candidates", str(night_field_key("2026-01-06", "F01"))) in targeted
    assert "2026-01-05" in backfill.title


def test_nightly_schedule_processes_the_night_that_just_ended(instance):
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=dt.datetime(2026, 1, 8, 14, 0, tzinfo=dt.UTC),
    )
    result = nightly_schedule.evaluate_tick(context)
    assert instance.get_dynamic_partitions("night") == ["2026-01-07"]
    backfills = instance.get_backfills()
    assert len(backfills) == 1
    assert backfills[0].tags["astrid/trigger"] == "schedule"
    assert "2026-01-07" in (result.skip_message or "")


def test_landing_sensor_adds_and_runs_a_delivered_night_once(instance, tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    context = dg.build_sensor_context(instance=instance)
    empty = landing_sensor(context)
    assert isinstance(empty, dg.SkipReason)

    survey = SimulatedSurvey(size=256)
    for field in ("F01", "F03"):
        raw = survey.exposure("2026-01-09", field)
        from astrid_assets.sources.base import write_raw_exposure

        write_raw_exposure(raw, tmp_path / "landing" / "2026-01-09" / f"{field}.fits")
    (tmp_path / "landing" / "notes").mkdir()

    result = landing_sensor(context)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests
    assert request.asset_graph_subset is not None
    targeted = _pairs(request.asset_graph_subset)
    assert ("raw_exposures", str(night_field_key("2026-01-09", "F03"))) in targeted
    assert ("raw_exposures", str(night_field_key("2026-01-09", "F02"))) not in targeted
    assert ("reference_images", "F01") in targeted
    (add,) = result.dynamic_partitions_requests
    assert add.partition_keys == ["2026-01-09"]

    again = landing_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert isinstance(again, dg.SkipReason)


def test_a_delivered_exposure_is_read_from_the_landing_directory(tmp_path):
    survey = SimulatedSurvey(size=256, landing_dir=str(tmp_path))
    (path,) = [p for p in survey.deliver("2026-01-09") if p.stem == "F02"]
    assert survey.landed_path("2026-01-09", "F02") == path
    landed = survey.exposure("2026-01-09", "F02")
    simulated = SimulatedSurvey(size=256).exposure("2026-01-09", "F02")
    assert (landed.data == simulated.data).all()
    assert len(landed.truth) == len(simulated.truth)


def test_landing_sensor_runs_the_unprocessed_nights_of_a_folder_source(
    instance, tmp_path, monkeypatch, real_data
):
    """A folder source's nights are runs until their candidates exist; the folder's
    field is named F01 so that it is one of this code location's field partitions."""
    from astrid_assets.sources import LocalFitsSource

    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "only_listed: true\ndefaults: {field: F01}\nfiles:\n"
        "  - {path: Stack-DEC-OBS18.fits, night: 2016-08-17, role: reference}\n"
        "  - {path: Stack-DEC-OBS04.fits, night: 2018-08-03}\n"
    )
    folder = LocalFitsSource(root=str(real_data / "images" / "decam_sfft"), manifest=str(manifest))
    monkeypatch.setattr("astrid_assets.resources.survey_source", lambda: folder)

    result = landing_sensor(dg.build_sensor_context(instance=instance))
    (request,) = result.run_requests
    targeted = _pairs(request.asset_graph_subset)
    assert ("candidates", str(night_field_key("2018-08-03", "F01"))) in targeted
    assert not any("2016-08-17" in key for _, key in targeted)  # the reference's night
    (add,) = result.dynamic_partitions_requests
    assert add.partition_keys == ["2018-08-03"]
    again = landing_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert isinstance(again, dg.SkipReason)

    # Once its candidates are made the night is done, whatever the cursor says.
    instance.add_dynamic_partitions("night", ["2018-08-03"])
    instance.report_runless_asset_event(
        dg.AssetMaterialization("candidates", partition=str(night_field_key("2018-08-03", "F01")))
    )
    done = landing_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(done, dg.SkipReason)
