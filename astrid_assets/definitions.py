"""The one Dagster ``Definitions`` of AstrID: assets, checks, schedule, sensor, resources.

Load it with ``dagster dev -w workspace.yaml`` (or ``make ui``). The
resources follow ``ASTRID_ENV`` (:mod:`astrid_assets.resources`); the
executor follows ``ASTRID_EXECUTOR``: ``multiprocess`` (default), steps as
processes of the run, or ``k8s``, each step a Kubernetes job (dagster-k8s),
as the Helm values in ``deploy/helm`` set it.
"""

from __future__ import annotations

import os

from dagster import (
    AssetSpec,
    Definitions,
    ExecutorDefinition,
    apply_freshness_policy,
    map_asset_specs,
    multiprocess_executor,
)

from astrid_assets.defs.alerts import alerts
from astrid_assets.defs.automation import (
    NIGHT_ASSETS,
    NIGHT_FIELD_ASSETS,
    landing_sensor,
    nightly_schedule,
)
from astrid_assets.defs.calibration import calibrated_exposures, calibration_masters
from astrid_assets.defs.difference import candidates, difference_images
from astrid_assets.defs.drift import drift_report
from astrid_assets.defs.health import NIGHTLY_FRESHNESS, failure_summary_sensor
from astrid_assets.defs.ingest import raw_exposures
from astrid_assets.defs.ml import (
    anomaly_models,
    candidate_scores,
    ensemble_model,
    realbogus_model,
    training_set,
    unet_model,
)
from astrid_assets.defs.quality import completeness_report
from astrid_assets.defs.reference import reference_images
from astrid_assets.defs.retraining import labels_sensor, retrain_models
from astrid_assets.resources import default_resources
from astrid_assets.settings import settings

__all__ = ["NIGHTLY", "defs", "executor"]

# The assets every night renews; the UI shows their freshness against NIGHTLY_FRESHNESS.
NIGHTLY = (*NIGHT_FIELD_ASSETS, *NIGHT_ASSETS, "candidate_scores")

EXECUTORS = ("multiprocess", "k8s")


def executor() -> ExecutorDefinition:
    """The executor ``ASTRID_EXECUTOR`` names."""
    name = (os.environ.get("ASTRID_EXECUTOR") or "multiprocess").strip().lower()
    if name not in EXECUTORS:
        raise ValueError(f"ASTRID_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured({"max_concurrent": settings().max_processes})
    return multiprocess_executor.configured(
        {
            "max_concurrent": settings().max_processes,
            "start_method": {"forkserver": {"preload_modules": ["astrid_assets.definitions"]}},
        }
    )


def nightly_freshness(spec: AssetSpec) -> AssetSpec:
    """The nightly assets carry :data:`NIGHTLY_FRESHNESS`; the others as they are."""
    if spec.key.to_user_string() in NIGHTLY:
        return apply_freshness_policy(spec, NIGHTLY_FRESHNESS)
    return spec


defs = Definitions(
    assets=map_asset_specs(
        nightly_freshness,
        [
            raw_exposures,
            calibration_masters,
            calibrated_exposures,
            reference_images,
            difference_images,
            candidates,
            completeness_report,
            drift_report,
            training_set,
            realbogus_model,
            unet_model,
            anomaly_models,
            ensemble_model,
            candidate_scores,
            alerts,
        ],
    ),
    jobs=[retrain_models],
    schedules=[nightly_schedule],
    sensors=[landing_sensor, labels_sensor, failure_summary_sensor],
    resources=default_resources(),
    executor=executor(),
)
