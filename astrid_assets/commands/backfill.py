"""``astrid backfill``: hand Dagster an asset backfill over nights x fields, and follow it.

The backfill is a real Dagster backfill: Dagster's backfill daemon launches
its runs in waves as their inputs appear (raw exposures, masters and missing
references first, then calibration, subtraction and detection, then the
nights' completeness), and the UI's backfill page shows it, stops it or
resumes it. This module submits it, follows it with a progress bar and
says what failed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import click
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

from astrid_assets.commands.daemon import DaemonError, DaemonHandle, ensure_daemon

__all__ = [
    "TERMINAL_STATUSES",
    "BackfillProgress",
    "BackfillWatcher",
    "RunFailure",
    "Stopped",
    "backfill_url",
    "follow_backfill",
    "parse_fields",
    "run_failures",
    "stop_on",
    "wait_for_backfill",
]

TERMINAL_STATUSES = frozenset(
    {
        BulkActionStatus.COMPLETED,
        BulkActionStatus.COMPLETED_SUCCESS,
        BulkActionStatus.COMPLETED_FAILED,
        BulkActionStatus.FAILED,
        BulkActionStatus.CANCELED,
    }
)
UI_URL = "http://127.0.0.1:3000"
PARTITION_TAG = "dagster/partition"


def backfill_url(backfill_id: str) -> str:
    """The backfill's page in the Dagster UI that ``make ui`` serves."""
    return f"{UI_URL}/overview/backfills/{backfill_id}"


def parse_fields(value: str | None, known: Sequence[str]) -> list[str] | None:
    """``F01,F02`` as a list of the survey's fields (None: all), or a ValueError naming
    the unknown ones."""
    if value is None or not value.strip():
        return None
    fields = list(dict.fromkeys(f.strip() for f in value.split(",") if f.strip()))
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)}; the survey's fields are {', '.join(known)}"
        )
    return fields


@dataclass(frozen=True)
class BackfillProgress:
    """Where a backfill stands, counted in asset partitions."""

    backfill_id: str
    status: BulkActionStatus
    targeted: int
    materialized: int
    failed: int
    runs: int
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def settled(self) -> int:
        """Asset partitions that are materialized or failed (or downstream of a failure)."""
        return min(self.targeted, self.materialized + self.failed)

    @property
    def succeeded(self) -> bool:
        return self.status in (BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED) and (
            self.failed == 0
        )


@dataclass(frozen=True)
class RunFailure:
    """Why one run of a backfill failed."""

    run_id: str
    partition: str | None
    step: str | None
    message: str

    def describe(self) -> str:
        where = " ".join(p for p in (self.partition, self.step) if p)
        return f"run {self.run_id[:8]} {where}: {self.message}"


def _pairs(subset) -> set[tuple[str, str | None]]:
    if subset is None:
        return set()
    return {
        (ap.asset_key.to_user_string(), None if ap.partition_key is None else str(ap.partition_key))
        for ap in subset.iterate_asset_partitions()
    }


def _get_backfill(instance: DagsterInstance, backfill_id: str) -> PartitionBackfill:
    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise click.ClickException(f"no backfill {backfill_id} in {instance.root_directory}")
    return backfill


class BackfillWatcher:
    """Counts a backfill's materialized and failed asset partitions.

    The backfill daemon records its progress once per evaluation (every 30
    s); the materializations its runs log are counted as they happen, so
    that the count moves between evaluations too. A finished run's
    materializations are read once.
    """

    def __init__(self, instance: DagsterInstance, backfill_id: str) -> None:
        self.instance = instance
        self.backfill_id = backfill_id
        self._finished_runs: dict[str, set[tuple[str, str | None]]] = {}

    def _materialized_by_runs(self) -> tuple[set[tuple[str, str | None]], int]:
        runs = self.instance.get_runs(filters=RunsFilter.for_backfill(self.backfill_id))
        pairs: set[tuple[str, str | None]] = set()
        for run in runs:
            if run.run_id in self._finished_runs:
                pairs |= self._finished_runs[run.run_id]
                continue
            entries = self.instance.all_logs(
                run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
            )
            found = {
                (e.dagster_event.asset_key.to_user_string(), e.dagster_event.partition)
                for e in entries
                if e.dagster_event is not None and e.dagster_event.asset_key is not None
            }
            if run.is_finished:
                self._finished_runs[run.run_id] = found
            pairs |= found
        return pairs, len(runs)

    def progress(self) -> BackfillProgress:
        backfill = _get_backfill(self.instance, self.backfill_id)
        data = backfill.asset_backfill_data
        target = _pairs(data.target_subset) if data else set()
        recorded = _pairs(data.materialized_subset) if data else set()
        failed = _pairs(data.failed_and_downstream_subset) if data else set()
        by_runs, runs = self._materialized_by_runs()
        materialized = (recorded | by_runs) & target
        return BackfillProgress(
            backfill_id=self.backfill_id,
            status=backfill.status,
            targeted=len(target),
            materialized=len(materialized),
            failed=len((failed & target) - materialized),
            runs=runs,
            error=backfill.error.to_string() if backfill.error else None,
        )


def _user_error(error) -> str:
    """The first exception under Dagster's own wrappers, as ``Type: message``."""
    while error.cause is not None and error.cls_name and error.cls_name.startswith("Dagster"):
        error = error.cause
    message = error.message.strip()
    head, sep, rest = message.partition(": ")
    if sep and error.cls_name and head.split(".")[-1] == error.cls_name:
        message = f"{error.cls_name}: {rest}"
    elif error.cls_name and not message.startswith(error.cls_name):
        message = f"{error.cls_name}: {message}"
    return message


def run_failures(instance: DagsterInstance, backfill_id: str) -> list[RunFailure]:
    """The failed or canceled runs of a backfill and, per failed step, its error."""
    runs = instance.get_runs(
        filters=RunsFilter(
            tags={"dagster/backfill": backfill_id},
            statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED],
        )
    )
    failures = []
    for run in reversed(runs):
        partition = run.tags.get(PARTITION_TAG)
        entries = instance.all_logs(
            run.run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
        )
        steps = [
            e for e in entries if e.dagster_event is not None and e.dagster_event.is_step_failure
        ]
        for entry in steps:
            error = entry.dagster_event.step_failure_data.error
            message = _user_error(error) if error else entry.message
            failures.append(RunFailure(run.run_id, partition, entry.step_key, message))
        if not steps:
            message = f"run {run.status.value.lower()}"
            for entry in entries:
                data = entry.dagster_event.event_specific_data if entry.dagster_event else None
                error = getattr(data, "error", None)
                message = _user_error(error) if error else (entry.message or message)
            failures.append(RunFailure(run.run_id, partition, None, message))
    return failures


def wait_for_backfill(
    instance: DagsterInstance,
    backfill_id: str,
    *,
    poll_seconds: float = 2.0,
    label: str = "backfill",
    daemon: DaemonHandle | None = None,
) -> BackfillProgress:
    """Follow the backfill with a progress bar over its asset partitions until
    its status is terminal; returns the final count. With ``daemon``, a
    daemon is started if the one in use stops."""
    watcher = BackfillWatcher(instance, backfill_id)
    progress = watcher.progress()
    with click.progressbar(
        length=max(progress.targeted, 1),
        label=label,
        show_pos=True,
        show_eta=False,
        item_show_func=lambda item: item,
    ) as bar:
        while True:
            note = f"{progress.runs} runs"
            if progress.failed:
                note += f", {progress.failed} failed"
            bar.update(max(0, progress.settled - bar.pos), note)
            if progress.finished:
                break
            time.sleep(poll_seconds)
            if daemon is not None and daemon.ensure():
                click.echo(f"\nthe dagster-daemon in use stopped; started one (pid {daemon.pid})")
            progress = watcher.progress()
    return progress


def describe(progress: BackfillProgress, failures: Sequence[RunFailure], seconds: float) -> str:
    """The summary printed when a backfill has finished."""
    lines = [
        f"backfill {progress.backfill_id}: {progress.status.value} in {seconds:.0f} s, "
        f"{progress.materialized} of {progress.targeted} asset partitions materialized, "
        f"{progress.failed} failed or not run because an input failed ({progress.runs} runs)"
    ]
    if progress.error:
        lines.append(f"the backfill daemon reported: {progress.error.strip()}")
    if failures:
        lines.append(f"{len(failures)} failure(s):")
        lines.extend(f"  {f.describe()}" for f in failures)
    return "\n".join(lines)


class Stopped(KeyboardInterrupt):
    """The command was told to stop by ``signum`` (SIGTERM, SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_on(*signums: int) -> Iterator[None]:
    """Turn ``signums`` into :class:`Stopped` while the block runs, as Ctrl-C is
    turned into KeyboardInterrupt, so that the daemon started here is stopped
    however the command is stopped (its own session would outlive it)."""

    def stop(signum: int, frame) -> None:
        raise Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def follow_backfill(
    instance: DagsterInstance, backfill_id: str, *, label: str = "backfill"
) -> BackfillProgress:
    """Run the backfill to its end with a daemon (the running one, or one started
    for it), print the summary and return the final progress.

    Ctrl-C (or SIGTERM, SIGHUP) stops waiting and stops the daemon this
    started; the backfill stays, for the UI to resume. Raises
    ``click.exceptions.Exit(128 + signal)`` then.
    """
    started = time.perf_counter()
    handle: DaemonHandle | None = None
    try:
        with stop_on(signal.SIGTERM, signal.SIGHUP), ensure_daemon(instance) as daemon:
            handle = daemon
            if daemon.started_here:
                click.echo(f"started dagster-daemon (pid {daemon.pid}, log {daemon.log})")
            else:
                click.echo("using the dagster-daemon that is already running")
            progress = wait_for_backfill(instance, backfill_id, label=label, daemon=daemon)
    except DaemonError as err:
        raise click.ClickException(str(err)) from err
    except KeyboardInterrupt as err:
        status = _get_backfill(instance, backfill_id).status.value
        stopped = (
            "Runs in flight were stopped with the daemon this command started. "
            if handle is not None and handle.started
            else "The running daemon goes on with it. "
        )
        click.echo(
            f"\nstopped waiting; backfill {backfill_id} stays {status}. {stopped}"
            f"Resume or cancel it in the UI: make ui, then {backfill_url(backfill_id)}",
            err=True,
        )
        signum = err.signum if isinstance(err, Stopped) else signal.SIGINT
        raise click.exceptions.Exit(128 + signum) from None
    click.echo(
        describe(progress, run_failures(instance, backfill_id), time.perf_counter() - started)
    )
    return progress


def submit(
    instance: DagsterInstance,
    nights: Sequence[str],
    fields: Sequence[str] | None,
    *,
    rebuild_references: bool = False,
    title: str | None = None,
) -> str:
    """Submit the backfill and say where to watch it; returns its id."""
    from astrid_assets.defs.automation import submit_backfill

    backfill_id = submit_backfill(
        instance,
        nights,
        fields,
        rebuild_references=rebuild_references,
        title=title,
        tags={"astrid/trigger": "cli"},
    )
    click.echo(
        f"backfill {backfill_id}: {len(nights)} night(s) {nights[0]}"
        + (f" to {nights[-1]}" if len(nights) > 1 else "")
        + f" x {len(fields) if fields else 'all'} field(s)"
    )
    click.echo(f"the UI shows it (make ui): {backfill_url(backfill_id)}")
    return backfill_id
