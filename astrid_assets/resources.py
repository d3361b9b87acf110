"""The resources of the embedded default, built from the environment."""

from __future__ import annotations

from typing import Any

from astrid_assets.settings import settings
from astrid_assets.sources import SimulatedSurvey, SurveySource

__all__ = ["default_resources", "survey_source"]


def survey_source() -> SurveySource:
    """The survey the graph runs on: the simulated survey, sized by the environment."""
    s = settings()
    return SimulatedSurvey(
        seed=s.sim_seed, n_fields=s.sim_fields, size=s.sim_size, start_night=s.sim_start
    )


def default_resources() -> dict[str, Any]:
    """Survey source, image store and table store rooted under ``ASTRID_HOME``."""
    from astrid_assets.storage.io_managers import FitsIOManager, ParquetIOManager

    s = settings()
    return {
        "survey": survey_source(),
        "fits_io_manager": FitsIOManager(root=str(s.store / "images")),
        "parquet_io_manager": ParquetIOManager(
            root=str(s.store / "tables"), catalog_path=str(s.catalog)
        ),
    }
