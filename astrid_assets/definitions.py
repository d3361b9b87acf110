"""The one Dagster ``Definitions`` of AstrID: assets, checks, schedule, sensor, resources.

Load it with ``dagster dev -w workspace.yaml`` (or ``make ui``). The
resources follow ``ASTRID_ENV`` (:mod:`astrid_assets.resources`); the
executor follows ``ASTRID_EXECUTOR``: ``multiprocess`` (default), steps as
processes of the run, or ``k8s``, each step a Kubernetes job (dagster-k8s),
as the Helm values in ``deploy/helm`` set it.
"""

from __future__ import annotations

import os

from dagster import Definitions, ExecutorDefinition, multiprocess_executor

from astrid_assets.defs.automation import landing_sensor, nightly_schedule
from astrid_assets.defs.calibration import calibrated_exposures, calibration_masters
from astrid_assets.defs.difference import candidates, difference_images
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

__all__ = ["defs", "executor"]

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


defs = Definitions(
    assets=[
        raw_exposures,
        calibration_masters,
        calibrated_exposures,
        reference_images,
        difference_images,
        candidates,
        completeness_report,
        training_set,
        realbogus_model,
        unet_model,
        anomaly_models,
        ensemble_model,
        candidate_scores,
    ],
    jobs=[retrain_models],
    schedules=[nightly_schedule],
    sensors=[landing_sensor, labels_sensor],
    resources=default_resources(),
    executor=executor(),
)
