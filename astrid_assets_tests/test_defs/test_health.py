"""Health: the nightly assets carry a freshness policy; a failed partition's run gets a
summary on disk and, when configured, on a webhook."""

import http.server
import json
import threading
from typing import ClassVar

import dagster as dg
import pytest

from astrid_assets.definitions import NIGHTLY, defs
from astrid_assets.defs.health import (
    NIGHTLY_FRESHNESS,
    WEBHOOK_VARIABLE,
    failure_summary_sensor,
)
from astrid_assets.partitions import night_field_key
from astrid_assets_tests.test_defs.conftest import graph_resources

NIGHT, FIELD = "2026-01-07", "F01"


def test_every_nightly_asset_shows_its_freshness_policy():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        policy = graph.get(key).freshness_policy
        if key.to_user_string() in NIGHTLY:
            assert policy == NIGHTLY_FRESHNESS, key
        else:
            assert policy is None, key


def test_every_asset_says_what_it_is():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert (graph.get(key).description or "").strip(), f"{key} has no description"


def _sense_failure(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    """The failure sensor's reaction to a failed run, as the daemon would call it."""
    run = instance.get_run_by_id(run_id)
    (failure,) = [
        r.event_log_entry.dagster_event
        for r in instance.get_records_for_run(
            run_id, of_type={dg.DagsterEventType.RUN_FAILURE}
        ).records
    ]
    with dg.build_run_status_sensor_context(
        sensor_name="failure_summary_sensor",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure,
    ) as context:
        failure_summary_sensor(context.for_run_failure())
    return run


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hook.received = []
    yield f"http://127.0.0.1:{server.server_port}/hooks/secret-token-123", _Hook.received
    server.shutdown()
    server.server_close()


def test_a_failed_partition_gets_a_summary_on_disk_and_on_the_webhook(
    tmp_path, monkeypatch, webhook
):
    url, received = webhook
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(WEBHOOK_VARIABLE, url)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("night", [NIGHT])
    # The difference image of a night whose exposures were never made: the step fails.
    result = dg.materialize(
        defs.assets,
        selection=["difference_images"],
        partition_key=night_field_key(NIGHT, FIELD),
        instance=instance,
        resources=graph_resources(tmp_path / "store"),
        raise_on_error=False,
    )
    assert not result.success
    run = _sense_failure(instance, result.run_id)

    summary = (tmp_path / "home" / "failures" / f"{result.run_id}.md").read_text()
    assert f"- partition: `{night_field_key(NIGHT, FIELD)}`" in summary
    assert "### `difference_images`" in summary
    assert "`difference_images`" in summary.split("not materialized:")[1].splitlines()[0]
    assert "No such file or directory" in summary
    assert f"calibrated_exposures/{NIGHT}/{FIELD}.fits" in summary  # names what is missing
    (posted,) = received
    assert posted["job"] == run.job_name
    assert posted["partition"] == night_field_key(NIGHT, FIELD)
    assert posted["failed_steps"][0]["step"] == "difference_images"
    assert posted["text"] == summary
    assert "secret-token-123" not in summary  # the webhook URL is a secret


def test_a_webhook_that_is_down_does_not_fail_the_sensor(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(WEBHOOK_VARIABLE, "http://127.0.0.1:9/unreachable")
    instance = dg.DagsterInstance.ephemeral()

    @dg.asset
    def broken():
        raise ValueError("raw_exposures/2026-01-07/F01.fits: truncated FITS")

    result = dg.materialize([broken], instance=instance, raise_on_error=False)
    _sense_failure(instance, result.run_id)
    summary = (tmp_path / "home" / "failures" / f"{result.run_id}.md").read_text()
    assert "truncated FITS" in summary
    assert "raw_exposures/2026-01-07/F01.fits" in summary
