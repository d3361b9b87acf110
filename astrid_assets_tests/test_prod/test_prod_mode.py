"""Production mode against real servers: a simulated partition through the whole graph
with its products in an S3 bucket, Dagster's runs in PostgreSQL, the label store on
PostgreSQL and MLflow on a tracking server; then the faults (wrong keys, the store
going away in the middle of a run) and a search for the secrets in what Dagster keeps.
"""

import io
import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from astrid_assets.definitions import defs
from astrid_assets.defs.automation import NIGHT_FIELD_ASSETS
from astrid_assets.partitions import night_field_key
from astrid_assets.storage import fits_codec
from astrid_assets_tests.conftest import REPO_ROOT
from astrid_assets_tests.test_config.test_labels import exercise

# At 512 px this night's F02 has candidates (F01 has none): the main run uses F02,
# the fault test F01 and the wrong-keys test F03.
NIGHT = "2026-01-06"
FIELD = "F02"
SIZE = 512
DAGSTER_DB = "astrid"


@pytest.fixture(scope="module")
def prod(postgres_server, s3_server, mlflow_server, tmp_path_factory):
    """The environment of a production deployment, pointed at the test's servers."""
    from astrid_assets.settings import configure_environment

    postgres_server.create_database(DAGSTER_DB)
    dagster_home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(REPO_ROOT / "deploy" / "dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    environment = {
        "ASTRID_ENV": "prod",
        "ASTRID_HOME": str(tmp_path_factory.mktemp("astrid_home")),
        "DAGSTER_HOME": str(dagster_home),
        "ASTRID_SIM_SIZE": str(SIZE),
        "ASTRID_MAX_PROCESSES": "1",
        "ASTRID_S3_BUCKET": s3_server.bucket,
        "ASTRID_S3_PREFIX": "survey",
        "ASTRID_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "ASTRID_PG_HOST": postgres_server.host,
        "ASTRID_PG_PORT": str(postgres_server.port),
        "ASTRID_PG_USER": postgres_server.user,
        "ASTRID_PG_PASSWORD": postgres_server.password,
        "ASTRID_PG_DB": DAGSTER_DB,
        "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name in ("ASTRID_DAGSTER_STORAGE", "ASTRID_DAGSTER_LOGS", "ASTRID_DAGSTER_LOG_PREFIX"):
            patch.delenv(name, raising=False)
        for name, value in environment.items():
            patch.setenv(name, value)
        configure_environment()
        instance = dg.DagsterInstance.get()
        instance.add_dynamic_partitions("night", [NIGHT])
        yield instance
        instance.dispose()


def _resources():
    from astrid_assets.resources import default_resources

    return default_resources()


def _materialize(instance, selection, partition_key, *, raise_on_error=True):
    return dg.materialize(
        defs.assets,
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        resources=_resources(),
        raise_on_error=raise_on_error,
    )


def _rows(result, asset):
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return event.materialization.metadata["rows"].value


def _step_errors(result) -> str:
    return "\n".join(
        str(event.event_specific_data.error.to_string())
        for event in result.all_events
        if event.is_step_failure
    )


@pytest.fixture(scope="module")
def graph_run(prod):
    """Masters, a reference, a night x field partition and the completeness report."""
    runs = [
        _materialize(prod, ["calibration_masters"], NIGHT),
        _materialize(prod, ["reference_images"], FIELD),
        _materialize(prod, list(NIGHT_FIELD_ASSETS), night_field_key(NIGHT, FIELD)),
        _materialize(prod, ["completeness_report"], NIGHT),
    ]
    assert all(run.success for run in runs)
    return runs


def test_products_are_objects_in_the_bucket(graph_run, s3_server):
    fs = s3_server.filesystem()
    root = f"{s3_server.bucket}/survey"
    images = set(fs.glob(f"{root}/images/**/*.fits"))
    tables = set(fs.glob(f"{root}/tables/**/*.parquet"))
    for asset in ("raw_exposures", "calibrated_exposures", "difference_images"):
        assert f"{root}/images/{asset}/{NIGHT}/{FIELD}.fits" in images
    assert f"{root}/images/reference_images/{FIELD}.fits" in images
    assert f"{root}/images/calibration_masters/{NIGHT}.fits" in images
    for table in ("exposure_table", "frame_table", "candidates", "completeness_report"):
        assert any(path.startswith(f"{root}/tables/{table}/") for path in tables), table
    # Whole, readable objects: a FITS product decodes, a table parses.
    difference = fits_codec.from_bytes(
        fs.cat(f"{root}/images/difference_images/{NIGHT}/{FIELD}.fits")
    )
    assert difference.science.shape == (SIZE, SIZE)


def test_duckdb_counts_candidates_over_the_bucket(graph_run, s3_server):
    from astrid_assets.resources import catalog

    chain = graph_run[2]
    counted = catalog().query("SELECT count(*) AS n FROM candidates")["n"][0]
    assert counted == _rows(chain, "candidates") > 0
    view = catalog().query("SELECT sql FROM duckdb_views() WHERE view_name = 'candidates'")["sql"][
        0
    ]
    assert f"s3://{s3_server.bucket}/survey/tables/candidates/" in view
    injected = catalog().query("SELECT count(*) AS n FROM injections")["n"][0]
    assert injected > 0
    # `astrid sql` reads the same views over the bucket.
    from click.testing import CliRunner

    from astrid_assets.cli import main

    shown = CliRunner().invoke(main, ["sql", "--csv", "SELECT count(*) AS n FROM candidates"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.split() == ["n", str(counted)]


def test_dagster_runs_are_recorded_in_postgres(graph_run, postgres_server):
    with postgres_server.connect(DAGSTER_DB) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs")
        status = dict(cursor.fetchall())
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        (materializations,) = cursor.fetchone()
    for run in graph_run:
        assert status[run.run_id] == "SUCCESS"
    assert materializations >= len(NIGHT_FIELD_ASSETS) + 3


def test_step_logs_reach_the_bucket(graph_run, s3_server):
    fs = s3_server.filesystem()
    deadline = time.monotonic() + 60
    while not fs.glob(f"{s3_server.bucket}/survey/dagster-logs/**"):
        assert time.monotonic() < deadline, "no compute logs in the bucket"
        time.sleep(1)
        fs.invalidate_cache()


def test_labels_are_stored_in_postgres(prod, postgres_server):
    from astrid_assets.resources import label_store

    with dg.build_resources({"labels": label_store()}) as built:
        exercise(built.labels)
    with postgres_server.connect(DAGSTER_DB) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT vetter, label FROM labels ORDER BY id")
        assert cursor.fetchall()[0] == ("ada", "real")


def test_mlflow_run_round_trips_through_the_tracking_server(prod, s3_server, tmp_path):
    from astrid_assets.resources import mlflow_tracking

    with dg.build_resources({"mlflow": mlflow_tracking()}) as built:
        tracking = built.mlflow
        import mlflow

        plot = tmp_path / "roc.csv"
        plot.write_text("fpr,tpr\n0,0\n0.01,0.98\n1,1\n")
        with tracking.start_run("prod-round-trip") as run:
            mlflow.log_param("model", "realbogus")
            mlflow.log_metric("roc_auc", 0.991)
            mlflow.log_artifact(str(plot), artifact_path="curves")
        client = tracking.client()
        stored = client.get_run(run.info.run_id)
        back = client.download_artifacts(run.info.run_id, "curves/roc.csv", str(tmp_path / "b"))
    assert stored.data.metrics["roc_auc"] == 0.991
    assert Path(back).read_text() == plot.read_text()
    fs = s3_server.filesystem()
    assert any(p.endswith("curves/roc.csv") for p in fs.glob(f"{s3_server.bucket}/mlflow/**"))


def test_wrong_keys_fail_with_a_clear_error(prod, s3_server):
    wrong = "wrong-secret-" + "x" * 20
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
        result = _materialize(
            prod,
            ["raw_exposures", "exposure_table"],
            night_field_key(NIGHT, "F03"),
            raise_on_error=False,
        )
    assert not result.success
    errors = _step_errors(result)
    target = f"s3://{s3_server.bucket}/survey/images/raw_exposures/{NIGHT}/F03.fits"
    assert f"could not write {target}" in errors
    assert "refused the credentials" in errors
    assert s3_server.endpoint_url in errors
    assert wrong not in errors
    fs = s3_server.filesystem()
    assert not fs.exists(f"{s3_server.bucket}/survey/images/raw_exposures/{NIGHT}/F03.fits")


def _run_and_crash_store(prod, s3_server, field, *, down_for: float | None):
    """Materialize the night x field chain; SIGKILL the store as soon as the raw
    exposure is in the bucket, and bring it back after ``down_for`` seconds (None:
    once the run has ended)."""
    fs = s3_server.filesystem()
    first = f"{s3_server.bucket}/survey/images/raw_exposures/{NIGHT}/{field}.fits"
    outcome = {}

    def run():
        outcome["result"] = _materialize(
            prod, list(NIGHT_FIELD_ASSETS), night_field_key(NIGHT, field), raise_on_error=False
        )

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while not fs.exists(first):
        assert worker.is_alive(), "the run ended before its first object appeared"
        assert time.monotonic() < deadline, "the raw exposure never reached the bucket"
        time.sleep(0.05)
        fs.invalidate_cache()
    s3_server.stop(crash=True)
    if down_for is not None:
        time.sleep(down_for)
        s3_server.start()
    worker.join(timeout=600)
    if down_for is None:
        s3_server.start()
    fs.invalidate_cache()
    return outcome["result"], fs


def test_store_back_within_the_retries_lets_the_run_finish(prod, s3_server):
    """Requests are retried with backoff for about 45 s: a store that comes back
    within that costs a delay, not a failure."""
    assert _materialize(prod, ["reference_images"], "F04").success
    result, fs = _run_and_crash_store(prod, s3_server, "F04", down_for=3.0)
    assert result.success
    assert fs.exists(f"{s3_server.bucket}/survey/images/difference_images/{NIGHT}/F04.fits")


def test_store_down_in_the_middle_of_a_run(prod, s3_server):
    """The store dies once the run's first object is written: the step fails naming
    the endpoint, no partial object is visible, and a re-run completes."""
    assert _materialize(prod, ["reference_images"], "F01").success
    root = f"{s3_server.bucket}/survey"
    first = f"{root}/images/raw_exposures/{NIGHT}/F01.fits"
    result, fs = _run_and_crash_store(prod, s3_server, "F01", down_for=None)
    assert not result.success
    errors = _step_errors(result)
    assert "could not be reached" in errors and s3_server.endpoint_url in errors

    # Whatever the run left is whole: every F01 object decodes.
    fs.invalidate_cache()
    left = [p for p in fs.glob(f"{root}/**") if p.endswith(("/F01.fits", "/F01.parquet"))]
    assert first in left
    for path in left:
        data = fs.cat(path)
        if path.endswith(".fits"):
            fits_codec.from_bytes(data, source=path)
        else:
            pl.read_parquet(io.BytesIO(data))

    again = _materialize(prod, list(NIGHT_FIELD_ASSETS), night_field_key(NIGHT, "F01"))
    assert again.success
    fs.invalidate_cache()
    assert fs.exists(f"{root}/images/difference_images/{NIGHT}/F01.fits")


def test_secrets_never_reach_the_event_log_or_metadata(graph_run, prod, postgres_server, s3_server):
    secrets = [s3_server.secret_key, s3_server.access_key, postgres_server.password]
    with postgres_server.connect(DAGSTER_DB) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT event FROM event_logs")
        events = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("SELECT run_body FROM runs")
        runs = "\n".join(row[0] for row in cursor.fetchall())
    assert "ASSET_MATERIALIZATION" in events
    metadata = []
    for key in prod.get_asset_keys():
        event = prod.get_latest_materialization_event(key)
        if event is not None and event.asset_materialization is not None:
            metadata.extend(str(v.value) for v in event.asset_materialization.metadata.values())
    assert metadata
    fs = s3_server.filesystem()
    logs = b"".join(fs.cat(p) for p in fs.find(f"{s3_server.bucket}/survey/dagster-logs"))
    for secret in secrets:
        assert secret not in events
        assert secret not in runs
        assert all(secret not in value for value in metadata)
        assert secret.encode() not in logs
