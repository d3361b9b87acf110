"""How nights get processed: backfills over night x field, a nightly schedule,
and a sensor on the landing directory.

All three hand Dagster an asset backfill over the chosen nights and fields
(every nightly asset, and the references of fields that have none yet), so
that Dagster's backfill daemon orders the steps across the night, night x
field and field partitions, and the UI's backfill page shows the progress.
"""

import datetime as dt
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from astrid_assets.partitions import (
    field_partitions,
    night_field_key,
    night_partitions,
    validate_night,
)

__all__ = [
    "FIELD_ASSETS",
    "NIGHT_ASSETS",
    "NIGHT_FIELD_ASSETS",
    "landing_sensor",
    "nightly_schedule",
    "nights_subset",
    "submit_backfill",
]

NIGHT_FIELD_ASSETS = (
    "raw_exposures",
    "exposure_table",
    "calibrated_exposures",
    "frame_table",
    "difference_images",
    "candidates",
)
NIGHT_ASSETS = ("calibration_masters", "completeness_report")
FIELD_ASSETS = ("reference_images",)


def _asset_graph():
    from astrid_assets.definitions import defs

    return defs.resolve_asset_graph()


def nights_subset(
    nights: Sequence[str],
    fields: Sequence[str] | None = None,
    *,
    references: Iterable[str] = (),
    asset_graph=None,
):
    """The asset partitions that process ``nights`` x ``fields``, plus the
    references of the fields in ``references``."""
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey

    fields = list(fields or field_partitions.get_partition_keys())
    unknown = sorted(set(fields) - set(field_partitions.get_partition_keys()))
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown}; the survey's fields are "
            f"{field_partitions.get_partition_keys()}"
        )
    pairs = set()
    for night in nights:
        validate_night(night)
        for name in NIGHT_ASSETS:
            pairs.add(AssetKeyPartitionKey(AssetKey(name), night))
        for field in fields:
            key = night_field_key(night, field)
            for name in NIGHT_FIELD_ASSETS:
                pairs.add(AssetKeyPartitionKey(AssetKey(name), key))
    for field in references:
        pairs.add(AssetKeyPartitionKey(AssetKey(FIELD_ASSETS[0]), field))
    return AssetGraphSubset.from_asset_partition_set(pairs, asset_graph or _asset_graph())


def missing_references(instance: DagsterInstance, fields: Sequence[str]) -> list[str]:
    """Fields whose reference has never been materialized."""
    done = instance.get_materialized_partitions(AssetKey(FIELD_ASSETS[0]))
    return [f for f in fields if f not in done]


def submit_backfill(
    instance: DagsterInstance,
    nights: Sequence[str],
    fields: Sequence[str] | None = None,
    *,
    rebuild_references: bool = False,
    title: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Add the nights as partitions and submit an asset backfill over them.

    The backfill daemon (``dagster-daemon run``, or ``dagster dev``) executes
    it; returns its id.
    """
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    nights = [validate_night(n) for n in nights]
    if not nights:
        raise ValueError("no nights to backfill")
    fields = list(fields or field_partitions.get_partition_keys())
    graph = _asset_graph()
    new = [n for n in nights if not instance.has_dynamic_partition(night_partitions.name, n)]
    if new:
        instance.add_dynamic_partitions(night_partitions.name, new)
    references = fields if rebuild_references else missing_references(instance, fields)
    subset = nights_subset(nights, fields, references=references, asset_graph=graph)
    backfill_id = make_new_backfill_id()
    label = (
        title
        or (f"nights {nights[0]}" + (f" to {nights[-1]}" if len(nights) > 1 else ""))
        + f" x {len(fields)} field(s)"
    )
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=backfill_id,
        backfill_timestamp=time.time(),
        tags=tags or {},
        dynamic_partitions_store=instance,
        asset_graph_subset=subset,
        title=label,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill_id


@schedule(
    cron_schedule="0 14 * * *",
    execution_timezone="UTC",
    target=list(NIGHT_FIELD_ASSETS),
    default_status=DefaultScheduleStatus.STOPPED,
    description="Each day at 14:00 UTC, once the night is over everywhere, process the night "
    "that just ended: add it as a partition and launch a backfill over its fields.",
)
def nightly_schedule(context: ScheduleEvaluationContext):
    scheduled = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    night = (scheduled.date() - dt.timedelta(days=1)).isoformat()
    backfill_id = submit_backfill(
        context.instance, [night], title=f"nightly {night}", tags={"astrid/trigger": "schedule"}
    )
    context.log.info(f"night {night}: backfill {backfill_id} launched")
    return SkipReason(f"night {night} handed to backfill {backfill_id}")


def _landed_nights(landing: Path) -> dict[str, list[str]]:
    """Night folders in the landing directory and the fields delivered in each."""
    found: dict[str, list[str]] = {}
    if not landing.is_dir():
        return found
    known = set(field_partitions.get_partition_keys())
    for folder in sorted(landing.iterdir()):
        try:
            validate_night(folder.name)
        except ValueError:
            continue
        fields = sorted(p.stem for p in folder.glob("*.fits") if p.stem in known)
        if fields:
            found[folder.name] = fields
    return found


def _unprocessed_source_nights(instance) -> dict[str, list[str]]:
    """The nights a folder (or archive) source holds whose candidates are not all made
    yet, with their fields; empty for the simulated survey."""
    from dagster import AssetKey

    from astrid_assets.resources import survey_source

    held = survey_source().night_fields()
    if not held:
        return {}
    known = set(field_partitions.get_partition_keys())
    done = {str(k) for k in instance.get_materialized_partitions(AssetKey("candidates"))}
    found = {}
    for night, fields in held.items():
        fields = [f for f in fields if f in known]  # a new field needs a code-location reload
        if any(str(night_field_key(night, f)) not in done for f in fields):
            found[night] = fields
    return found


@sensor(
    target=list(NIGHT_FIELD_ASSETS),
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Watches the landing directory for a new night's exposures "
    "(LANDING/YYYY-MM-DD/FIELD.fits), and a folder source (ASTRID_SOURCE=local) for nights "
    "not processed yet; adds the night and launches a backfill over its fields.",
)
def landing_sensor(context: SensorEvaluationContext):
    from astrid_assets.settings import settings

    landing = settings().landing
    seen = json.loads(context.cursor) if context.cursor else {}
    delivered = _landed_nights(landing)
    for night, fields in _unprocessed_source_nights(context.instance).items():
        delivered[night] = sorted(set(delivered.get(night, [])) | set(fields))
    fresh = {n: f for n, f in delivered.items() if seen.get(n) != f}
    if not fresh:
        return SkipReason(f"no new night in {landing} or the source")
    graph = _asset_graph()
    new_nights = [
        n for n in fresh if not context.instance.has_dynamic_partition(night_partitions.name, n)
    ]
    requests = []
    for night, fields in fresh.items():
        references = missing_references(context.instance, fields)
        requests.append(
            RunRequest.for_asset_graph_subset(
                nights_subset([night], fields, references=references, asset_graph=graph),
                tags={"astrid/trigger": "landing", "astrid/night": night},
            )
        )
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[night_partitions.build_add_request(new_nights)]
        if new_nights
        else [],
        cursor=json.dumps({**seen, **fresh}),
    )
