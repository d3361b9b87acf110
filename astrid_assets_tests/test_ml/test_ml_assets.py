"""The ML assets end to end on a tiny simulated training set, with a real (SQLite) MLflow
store: models trained, judged on held-out rows, registered with aliases, loaded back by
``models:/NAME@champion`` to score a partition's candidates; energy on every run."""

import dagster as dg
import pytest

from astrid_assets.definitions import defs
from astrid_assets.defs.automation import NIGHT_FIELD_ASSETS
from astrid_assets.defs.ml import ML_ASSETS
from astrid_assets.partitions import night_field_key
from astrid_assets.storage.catalog import Catalog
from astrid_assets.tracking import MlflowTracking
from astrid_assets_tests.test_defs.conftest import graph_resources

NIGHT, FIELD = "2026-01-06", "F02"  # at 512 px this partition has candidates
TINY = {
    "training_set": {
        "config": {
            "fields": ["F01", "F02", "F03"],
            "nights": ["2026-01-05", "2026-01-06", "2026-01-07", "2026-01-08"],
            "validation_nights": ["2026-01-07"],
            "test_fields": ["F03"],
            "test_nights": ["2026-01-08"],
            "real_per_image": 40,
            "artefacts_per_kind": 6,
            "patches_per_image": 24,
        }
    },
}
ENERGY = ("energy_cpu_kwh", "energy_ram_kwh", "energy_gpu_kwh", "energy_kwh", "emissions_kg")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    tracking = MlflowTracking(
        tracking_uri=f"sqlite:///{root / 'mlflow.sqlite'}",
        artifact_location=(root / "artifacts").as_uri(),
    )
    resources = {**graph_resources(root), "mlflow": tracking}
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        defs.assets,
        selection=list(ML_ASSETS),
        instance=instance,
        resources=resources,
        run_config={"ops": TINY},
    )
    assert result.success
    return root, instance, resources, tracking, result


def _metadata(result, asset):
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_models_beat_chance_on_held_out_rows(trained):
    *_, result = trained
    cnn = _metadata(result, "realbogus_model")
    for asset in ("realbogus_model", "unet_model", "anomaly_models", "ensemble_model"):
        print(asset, {k: v for k, v in _metadata(result, asset).items() if "auc" in k})
    # Tiny set, a few epochs: a clear margin over chance (0.5), not the full-size goal.
    assert cnn["test_roc_auc"] >= 0.9
    assert _metadata(result, "unet_model")["test_roc_auc"] >= 0.65
    anomaly = _metadata(result, "anomaly_models")
    assert anomaly["test_isolation_forest_roc_auc"] >= 0.8
    assert anomaly["test_one_class_svm_roc_auc"] >= 0.8
    ensemble_meta = _metadata(result, "ensemble_model")
    assert ensemble_meta["test_pr_auc"] >= ensemble_meta["test_best_member_pr_auc"] - 0.01
    ensemble = _metadata(result, "ensemble_model")
    assert "held_out" in ensemble


def test_every_run_records_energy_and_registers_a_champion(trained):
    import mlflow

    from astrid_assets.ml import registry

    *_, tracking, result = trained
    client = tracking.client()
    for kind, name in registry.MODEL_NAMES.items():
        champion = client.get_model_version_by_alias(name, registry.CHAMPION)
        challenger = client.get_model_version_by_alias(name, registry.CHALLENGER)
        assert str(champion.version) == str(challenger.version) == "1", kind
        assert "promoted" in champion.tags["astrid.decision"]
        run = client.get_run(champion.run_id)
        parent = run.data.tags.get("mlflow.parentRunId")
        metrics = client.get_run(parent).data.metrics if parent else run.data.metrics
        for key in ENERGY:
            assert key in metrics, (kind, key)
        assert metrics["energy_kwh"] > 0
    mlflow.set_tracking_uri(tracking.tracking_uri)
    model = registry.load_champion(registry.MODEL_NAMES["realbogus"], "pytorch")
    assert model.parameter_count() > 0
    meta = _metadata(result, "realbogus_model")
    assert meta["astrid-realbogus-cnn_decision"] == "promoted: no champion yet"


def test_a_worse_challenger_leaves_the_champion(trained):
    from astrid_assets.ml import registry

    _, instance, resources, tracking, _ = trained
    worse = {"realbogus_model": {"config": {"epochs": 1, "learning_rate": 1e-6}}}
    result = dg.materialize(
        defs.assets,
        selection=["realbogus_model"],
        instance=instance,
        resources=resources,
        run_config={"ops": worse},
    )
    client = tracking.client()
    name = registry.MODEL_NAMES["realbogus"]
    challenger = client.get_model_version_by_alias(name, registry.CHALLENGER)
    champion = client.get_model_version_by_alias(name, registry.CHAMPION)
    assert str(challenger.version) == "2"
    meta = _metadata(result, "realbogus_model")
    decision = meta[f"{name}_decision"]
    challenger_value = meta[f"{name}_challenger_pr_auc"]
    champion_value = meta[f"{name}_champion_pr_auc"]  # v1, on the same held-out rows
    if decision.startswith("kept"):
        assert challenger_value <= champion_value
        assert str(champion.version) == "1"
    else:
        assert challenger_value > champion_value
        assert str(champion.version) == "2"


@pytest.fixture(scope="module")
def scored(trained):
    """One night x field through the graph, scored by the champions."""
    _, instance, resources, *_ = trained
    instance.add_dynamic_partitions("night", [NIGHT])
    dg.materialize(
        defs.assets,
        selection=["calibration_masters"],
        partition_key=NIGHT,
        instance=instance,
        resources=resources,
    )
    dg.materialize(
        defs.assets,
        selection=["reference_images"],
        partition_key=FIELD,
        instance=instance,
        resources=resources,
    )
    result = dg.materialize(
        defs.assets,
        selection=[*NIGHT_FIELD_ASSETS, "candidate_scores"],
        partition_key=night_field_key(NIGHT, FIELD),
        instance=instance,
        resources=resources,
    )
    assert result.success
    return trained


def test_candidate_scores_from_the_champions(scored):
    root, *_ = scored
    catalog = Catalog(root / "astrid.duckdb")
    joined = catalog.query(
        "SELECT c.candidate_id, s.realbogus, s.unet, s.isolation_forest, s.one_class_svm, "
        "s.ensemble FROM candidates c JOIN candidate_scores s USING (candidate_id)"
    )
    n = catalog.query("SELECT count(*) AS n FROM candidates")["n"][0]
    assert joined.height == n > 0
    assert joined["ensemble"].is_between(0, 1).all()
    assert joined["realbogus"].is_between(0, 1).all()


def test_vetters_labels_join_the_training_set(scored):
    root, instance, resources, *_ = scored
    catalog = Catalog(root / "astrid.duckdb")
    ids = catalog.query(
        "SELECT candidate_id FROM candidates WHERE night = ? AND field = ? ORDER BY candidate_id",
        [NIGHT, FIELD],
    )["candidate_id"].to_list()
    assert len(ids) >= 2
    labels = resources["labels"]
    labels.add(ids[0], NIGHT, FIELD, "real", "ana")
    labels.add(ids[1], NIGHT, FIELD, "bogus", "ana")
    labels.add(ids[1], NIGHT, FIELD, "real", "ben")
    labels.add(ids[1], NIGHT, FIELD, "bogus", "cy")  # two against one: bogus
    result = dg.materialize(
        defs.assets,
        selection=["training_set", "unet_patches"],
        instance=instance,
        resources=resources,
        run_config={"ops": TINY},
    )
    meta = _metadata(result, "training_set")
    assert meta["human_labels"] == {
        "candidates": 2,
        "tied": 0,
        "held_out": 0,
        "not_found": 0,
        "joined_real": 1,
        "joined_bogus": 1,
    }
    human = catalog.query(
        "SELECT label, split, night, field FROM training_set WHERE kind = 'human' ORDER BY label"
    )
    assert human["label"].to_list() == [0, 1]
    assert set(human["split"]) == {"train"}
    assert set(human["night"]) == {NIGHT} and set(human["field"]) == {FIELD}
    assert meta["class_balance"]["train"]["kinds"]["human"] == 2
