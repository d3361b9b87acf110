"""The labels sensor asks for a retraining once enough labels came in since the last one."""

import dagster as dg
import pytest

from astrid_assets.defs.retraining import labels_sensor
from astrid_assets.labels import LabelStore


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRID_RETRAIN_AFTER_LABELS", "3")
    return LabelStore(sqlite_path=str(tmp_path / "labels.sqlite"))


def _label(store, k):
    store.add(f"2026-01-06_F01_{k:04d}", "2026-01-06", "F01", "real", "ana")


def _tick(instance, store, cursor=None):
    with dg.build_sensor_context(
        instance=instance, resources={"labels": store}, cursor=cursor
    ) as context:
        return labels_sensor(context)


def test_no_request_below_the_threshold_one_at_it_and_none_right_after(store):
    instance = dg.DagsterInstance.ephemeral()
    for k in range(2):
        _label(store, k)
    below = _tick(instance, store)
    assert isinstance(below, dg.SkipReason)
    assert "2 new labels ever; retraining at 3" in below.skip_message

    _label(store, 2)
    result = _tick(instance, store)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests
    assert request.tags["astrid/new_labels"] == "3"
    assert result.cursor

    # The same labels do not ask twice.
    again = _tick(instance, store, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason)
    assert again.skip_message.startswith("0 new labels since")


def test_labels_count_from_the_last_training_set(store):
    instance = dg.DagsterInstance.ephemeral()
    for k in range(5):
        _label(store, k)
    instance.report_runless_asset_event(dg.AssetMaterialization("training_set"))
    assert isinstance(_tick(instance, store), dg.SkipReason)  # all 5 came before it
    for k in range(5, 8):
        _label(store, k)
    assert isinstance(_tick(instance, store), dg.SensorResult)


def test_a_wrong_threshold_is_refused(store, monkeypatch):
    monkeypatch.setenv("ASTRID_RETRAIN_AFTER_LABELS", "0")
    with pytest.raises(Exception, match="ASTRID_RETRAIN_AFTER_LABELS must be at least 1"):
        _tick(dg.DagsterInstance.ephemeral(), store)
