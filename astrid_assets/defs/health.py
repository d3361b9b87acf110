"""Pipeline health: freshness of the nightly assets and a summary of every failed run.

Freshness
    The nightly schedule launches the night that just ended at 14:00 UTC
    (:mod:`astrid_assets.defs.automation`). Every night x field asset should
    then be materialized again by 20:00 UTC: :data:`NIGHTLY_FRESHNESS`, a
    cron freshness policy, turns an asset red in the UI's asset view when it
    was not materialized since 20:00 UTC the day before (the daemon
    evaluates it; ``dagster.yaml`` enables freshness).

Failures
    ``failure_summary_sensor`` reacts to every failed run: it writes a short
    Markdown summary (the job, the partition, each failed step with its
    error's first lines, the asset keys that did not materialize, a pointer
    to the run in the UI) to ``ASTRID_HOME/failures/RUN_ID.md`` and to the
    sensor's log, and posts it as JSON to ``ASTRID_ALERT_WEBHOOK_URL`` when
    that is set (Slack- and Mattermost-style ``{"text": ...}``, plus the
    fields). The URL is a secret (a webhook URL is its own key): it is read
    from the environment only and never written anywhere.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    FreshnessPolicy,
    RunFailureSensorContext,
    run_failure_sensor,
)

__all__ = [
    "NIGHTLY_FRESHNESS",
    "WEBHOOK_VARIABLE",
    "FailureSummary",
    "failure_summary",
    "failure_summary_sensor",
    "post_webhook",
]

WEBHOOK_VARIABLE = "ASTRID_ALERT_WEBHOOK_URL"

NIGHTLY_FRESHNESS = FreshnessPolicy.cron(
    deadline_cron="0 20 * * *", lower_bound_delta=dt.timedelta(hours=24), timezone="UTC"
)

_LINES_PER_ERROR = 6


@dataclass
class FailureSummary:
    """What a person needs to know about a failed run, and where to look."""

    run_id: str
    job: str
    partition: str | None
    failed_steps: list[dict[str, str]] = field(default_factory=list)
    assets_not_materialized: list[str] = field(default_factory=list)
    message: str = ""
    when: str = ""

    @property
    def title(self) -> str:
        where = f" partition {self.partition}" if self.partition else ""
        return f"AstrID run failed: {self.job}{where} ({self.run_id[:8]})"

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", f"- run: `{self.run_id}` at {self.when}"]
        if self.partition:
            lines.append(f"- partition: `{self.partition}`")
        if self.assets_not_materialized:
            lines.append(
                "- not materialized: " + ", ".join(f"`{a}`" for a in self.assets_not_materialized)
            )
        lines += ["", "## Failed steps", ""]
        for step in self.failed_steps or [{"step": "(run)", "error": self.message}]:
            lines.append(f"### `{step['step']}`")
            lines += ["", "```", step["error"], "```", ""]
        lines.append(
            "Open the run in the Dagster UI (Runs, then this id) for the full logs; "
            "re-execute from failure once the cause is fixed."
        )
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        return {"text": self.markdown(), **asdict(self), "title": self.title}


def _first_lines(text: str, n: int = _LINES_PER_ERROR) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def _messages(error: Any) -> str:
    """An error and its causes, one message each, without the stack traces."""
    lines, seen = [], 0
    while error is not None and seen < 8:
        lines.append((error.message or "").strip())
        error = error.cause or error.context
        seen += 1
    # Dagster's wrapper says which input failed; the innermost error says why.
    return "\n".join(lines[:1] + [f"caused by: {line}" for line in lines[1:]])


def failure_summary(instance: DagsterInstance, run: DagsterRun, message: str) -> FailureSummary:
    """The failed steps and their errors, read from the run's event log."""
    failed: list[dict[str, str]] = []
    records = instance.get_records_for_run(
        run.run_id, of_type={DagsterEventType.STEP_FAILURE}
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        error = event.step_failure_data.error if event.step_failure_data else None
        text = _messages(error) if error is not None else event.message or ""
        failed.append({"step": event.step_key or "?", "error": _first_lines(text)})
    planned = instance.get_records_for_run(
        run.run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION_PLANNED}
    ).records
    done = instance.get_records_for_run(
        run.run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION}
    ).records

    def keys(found) -> set[str]:
        out = set()
        for record in found:
            event = record.event_log_entry.dagster_event
            if event is not None and event.asset_key is not None:
                out.add(event.asset_key.to_user_string())
        return out

    return FailureSummary(
        run_id=run.run_id,
        job=run.job_name,
        partition=run.tags.get("dagster/partition"),
        failed_steps=failed,
        assets_not_materialized=sorted(keys(planned) - keys(done)),
        message=_first_lines(message),
        when=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def post_webhook(url: str, summary: FailureSummary, timeout: float = 10.0) -> int:
    """POST the summary as JSON; returns the HTTP status. The URL is never logged."""
    request = urllib.request.Request(
        url,
        data=json.dumps(summary.as_json()).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)


@run_failure_sensor(
    name="failure_summary_sensor",
    monitor_all_code_locations=False,
    default_status=DefaultSensorStatus.RUNNING,
    description="Writes a summary of every failed run (failed steps, their errors, the "
    "assets left unmaterialized) to ASTRID_HOME/failures/ and posts it to "
    "ASTRID_ALERT_WEBHOOK_URL when that is set.",
)
def failure_summary_sensor(context: RunFailureSensorContext) -> None:
    from astrid_assets.settings import settings

    summary = failure_summary(
        context.instance, context.dagster_run, context.failure_event.message or ""
    )
    folder = Path(settings().home) / "failures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{summary.run_id}.md"
    path.write_text(summary.markdown())
    context.log.error(f"{summary.title}; summary in {path}\n{summary.markdown()}")
    url = os.environ.get("ASTRID_ALERT_WEBHOOK_URL")  # WEBHOOK_VARIABLE
    if url:
        try:
            status = post_webhook(url, summary)
            context.log.info(f"failure summary posted to the webhook (HTTP {status})")
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or type(err).__name__
            context.log.warning(f"could not post the failure summary to the webhook: {reason}")
