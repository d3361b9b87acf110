"""Champion and challenger: a new version always becomes the challenger; the champion
alias moves only to a better one, and the decision is tagged on the version."""

import pytest
from sklearn.dummy import DummyClassifier

from astrid_assets.ml import registry
from astrid_assets.tracking import MlflowTracking


@pytest.fixture
def tracking(tmp_path):
    return MlflowTracking(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.sqlite'}",
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )


def _new_version(tracking, name, value, champion_value):
    with tracking.start_run("promotion-test"):
        uri = registry.log_sklearn_model(DummyClassifier().fit([[0], [1]], [0, 1]))
    return registry.register_and_promote(
        tracking.client(),
        uri,
        name,
        metric="pr_auc",
        challenger_value=value,
        champion_value=champion_value,
    )


def test_the_champion_moves_only_to_a_better_challenger(tracking):
    client = tracking.client()
    name = "astrid-test-model"

    first = _new_version(tracking, name, 0.90, None)
    assert first.promoted and first.decision == "promoted: no champion yet"

    worse = _new_version(tracking, name, 0.85, 0.90)
    assert not worse.promoted
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias(name, registry.CHALLENGER).version) == "2"
    tags = client.get_model_version(name, "2").tags
    assert tags["astrid.decision"].startswith("kept")
    assert tags["astrid.pr_auc"] == "0.85"
    assert tags["astrid.champion_pr_auc"] == "0.9"
    assert tags["astrid.champion_version"] == "1"

    equal = _new_version(tracking, name, 0.90, 0.90)  # a tie is no reason to move
    assert not equal.promoted

    better = _new_version(tracking, name, 0.95, 0.90)
    assert better.promoted
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION).version) == "4"
    assert str(client.get_model_version_by_alias(name, registry.CHALLENGER).version) == "4"
    assert client.get_model_version(name, "4").tags["astrid.decision"].startswith("promoted")


def test_a_champion_needs_its_figure_on_the_same_data(tracking):
    name = "astrid-test-model"
    _new_version(tracking, name, 0.9, None)
    with pytest.raises(ValueError, match="give champion_value"):
        _new_version(tracking, name, 0.95, None)
