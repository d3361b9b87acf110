"""The one Dagster ``Definitions`` of AstrID: assets, checks, schedule, sensor, resources.

Load it with ``dagster dev -w workspace.yaml`` (or ``make ui``).
"""

from __future__ import annotations

from dagster import Definitions, multiprocess_executor

from astrid_assets.defs.automation import landing_sensor, nightly_schedule
from astrid_assets.defs.calibration import calibrated_exposures, calibration_masters
from astrid_assets.defs.difference import candidates, difference_images
from astrid_assets.defs.ingest import raw_exposures
from astrid_assets.defs.quality import completeness_report
from astrid_assets.defs.reference import reference_images
from astrid_assets.resources import default_resources
from astrid_assets.settings import settings

__all__ = ["defs"]

defs = Definitions(
    assets=[
        raw_exposures,
        calibration_masters,
        calibrated_exposures,
        reference_images,
        difference_images,
        candidates,
        completeness_report,
    ],
    schedules=[nightly_schedule],
    sensors=[landing_sensor],
    resources=default_resources(),
    executor=multiprocess_executor.configured(
        {
            "max_concurrent": settings().max_processes,
            "start_method": {"forkserver": {"preload_modules": ["astrid_assets.definitions"]}},
        }
    ),
)
