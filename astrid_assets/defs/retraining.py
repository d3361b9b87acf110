"""Vetters' labels retrain the models: a job and the sensor that starts it.

``retrain_models`` materializes the training set (which joins the vetters'
labels, :mod:`astrid_assets.ml.vetting`) and every model after it. Each model
asset registers its new version as ``challenger``, scores it and the current
``champion`` on the same fixed held-out split, and moves ``champion`` only
when the challenger is better (:func:`astrid_assets.ml.registry.register_and_promote`);
the decision and both figures are the asset's metadata and the version's
MLflow tags.

``labels_sensor`` counts the labels given since the training set was last
made (or since it last asked for a retraining, whichever is later) and asks
for ``retrain_models`` once they reach ``ASTRID_RETRAIN_AFTER_LABELS``.
"""

from __future__ import annotations

import datetime as dt
import json

from dagster import (
    AssetKey,
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from astrid_assets.defs.ml import ML_ASSETS
from astrid_assets.labels import LabelStore

__all__ = ["labels_sensor", "last_training", "retrain_models"]

retrain_models = define_asset_job(
    "retrain_models",
    selection=AssetSelection.assets(*ML_ASSETS),
    description="The training set with the vetters' labels, then every model; each new "
    "model is a challenger and becomes champion only if it beats the current one on the "
    "held-out split.",
)


def last_training(context: SensorEvaluationContext) -> dt.datetime | None:
    """When the training set was last materialized, or when this sensor last asked for it."""
    times = []
    event = context.instance.get_latest_materialization_event(AssetKey("training_set"))
    if event is not None:
        times.append(dt.datetime.fromtimestamp(event.timestamp, dt.UTC))
    if context.cursor:
        times.append(dt.datetime.fromisoformat(json.loads(context.cursor)["requested_at"]))
    return max(times) if times else None


@sensor(
    job=retrain_models,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.STOPPED,
    description="Counts the vetters' labels since the last training and asks for "
    "`retrain_models` once there are ASTRID_RETRAIN_AFTER_LABELS of them (default 100).",
)
def labels_sensor(context: SensorEvaluationContext, labels: LabelStore):
    from astrid_assets.settings import settings

    threshold = settings().retrain_after_labels
    since = last_training(context)
    now = dt.datetime.now(dt.UTC)
    fresh = labels.count_since(since)
    when = "ever" if since is None else f"since {since.isoformat(timespec='seconds')}"
    if fresh < threshold:
        return SkipReason(f"{fresh} new labels {when}; retraining at {threshold}")
    context.log.info(f"{fresh} new labels {when}: retraining")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"labels-{now.isoformat()}",
                tags={"astrid/trigger": "labels", "astrid/new_labels": str(fresh)},
            )
        ],
        cursor=json.dumps({"requested_at": now.isoformat()}),
    )
