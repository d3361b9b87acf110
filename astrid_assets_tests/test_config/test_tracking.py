"""The MLflow resource: a run with a parameter, a metric and an artifact, read back."""

from astrid_assets.resources import mlflow_tracking
from astrid_assets.settings import settings


def test_local_mlflow_round_trip(monkeypatch, tmp_path):
    monkeypatch.delenv("ASTRID_ENV", raising=False)
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    tracking = mlflow_tracking(settings())
    import mlflow

    artifact = tmp_path / "note.txt"
    artifact.write_text("real-bogus threshold 0.5\n")
    with tracking.start_run("round-trip", tags={"astrid.test": "yes"}) as run:
        mlflow.log_param("threshold", 0.5)
        mlflow.log_metric("roc_auc", 0.97)
        mlflow.log_artifact(str(artifact))
    client = tracking.client()
    stored = client.get_run(run.info.run_id)
    assert stored.data.params == {"threshold": "0.5"}
    assert stored.data.metrics == {"roc_auc": 0.97}
    assert stored.data.tags["astrid.test"] == "yes"
    back = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back"))
    assert open(back).read() == artifact.read_text()
    # Artifacts stay under ASTRID_HOME.
    assert list((tmp_path / "mlflow-artifacts").rglob("note.txt"))
