"""The embedded simulated survey as a source.

Everything is generated from the seed on request, so any night can be
materialized, backfilled or re-run and gives the same bytes. Each field's
reference is built from a template season: ``n_template_nights`` nights
before the survey starts, as surveys take their templates before they
search.

``night_overrides`` force bad weather on chosen nights (worse seeing, a
lower zero point; :class:`~astrid_assets.science.simulate.NightOverride`),
to see what the pipeline and its drift report make of such a night; every
other night is unchanged.
"""

from __future__ import annotations

import datetime as dt
from functools import cached_property
from pathlib import Path

from astropy.table import Table
from astropy.wcs import WCS
from dagster import Config
from pydantic import Field

from astrid_assets.sources.base import CalibrationFrames, RawExposure, SurveySource

__all__ = ["NightWeather", "SimulatedSurvey"]


class NightWeather(Config):
    """Weather forced on one night of the simulated survey."""

    night: str = Field(description="The night, YYYY-MM-DD.")
    seeing_factor: float = Field(default=1.0, gt=0, description="Seeing FWHM multiplied by this.")
    zero_point_offset: float = Field(
        default=0.0, description="Magnitudes added to the zero point; negative: grey cloud."
    )


class SimulatedSurvey(SurveySource):
    """A seeded simulated survey: stars, galaxies, transients, a real camera's flaws."""

    seed: int = Field(default=20260105, description="Seed of the whole survey.")
    n_fields: int = Field(default=4, ge=1, le=99, description="Number of pointings.")
    size: int = Field(default=2048, ge=128, le=8192, description="Detector side in pixels.")
    start_night: str = Field(
        default="2026-01-05", description="First survey night, YYYY-MM-DD (UTC evening)."
    )
    n_template_nights: int = Field(
        default=4, ge=1, le=30, description="Template-season nights before the start."
    )
    night_overrides: list[NightWeather] = Field(
        default_factory=list, description="Nights of forced bad weather; none by default."
    )

    @cached_property
    def survey_config(self):  # -> SurveyConfig
        from astrid_assets.science.simulate import NightOverride, SurveyConfig

        try:
            dt.date.fromisoformat(self.start_night)
        except ValueError as err:
            raise ValueError(
                f"SimulatedSurvey.start_night must be YYYY-MM-DD, got {self.start_night!r}"
            ) from err
        return SurveyConfig(
            seed=self.seed,
            n_fields=self.n_fields,
            shape=(self.size, self.size),
            start_night=self.start_night,
            night_overrides=tuple(
                NightOverride(o.night, o.seeing_factor, o.zero_point_offset)
                for o in self.night_overrides
            ),
        )

    def fields(self) -> list[str]:
        return [f"F{i + 1:02d}" for i in range(self.n_fields)]

    def first_night(self) -> str:
        return self.start_night

    def _check_field(self, field: str) -> None:
        if field not in self.fields():
            raise ValueError(f"unknown field {field!r}; the survey's fields are {self.fields()}")

    def exposure(self, night: str, field: str) -> RawExposure:
        from astrid_assets.science.simulate import simulate_exposure

        self._check_field(field)
        landed = self.landed_exposure(night, field)
        if landed is not None:
            return landed
        exposure = simulate_exposure(self.survey_config, night, field)
        return RawExposure(
            night=night,
            field=field,
            data=exposure.data,
            header=exposure.header,
            truth=exposure.truth,
        )

    def deliver(self, night: str, landing_dir: str | Path | None = None) -> list[Path]:
        """Write ``night``'s raw exposures of every field into the landing directory,
        as the telescope would at the end of the night."""
        from astrid_assets.science.simulate import simulate_exposure
        from astrid_assets.sources.base import write_raw_exposure

        root = Path(landing_dir or self.landing_dir or "")
        if not str(root):
            raise ValueError("no landing directory to deliver to")
        paths = []
        for field in self.fields():
            exposure = simulate_exposure(self.survey_config, night, field)
            raw = RawExposure(night, field, exposure.data, exposure.header, exposure.truth)
            paths.append(write_raw_exposure(raw, root / night / f"{field}.fits"))
        return paths

    def calibration_frames(self, night: str) -> CalibrationFrames:
        from astrid_assets.science.simulate import simulate_calibration_frames

        frames = simulate_calibration_frames(self.survey_config, night)
        return CalibrationFrames(night=night, biases=frames.biases, flats=frames.flats)

    def template_nights(self, field: str) -> list[str]:
        self._check_field(field)
        start = dt.date.fromisoformat(self.start_night)
        return [
            (start - dt.timedelta(days=k)).isoformat() for k in range(self.n_template_nights, 0, -1)
        ]

    def catalog(self, field: str) -> Table:
        from astrid_assets.science.simulate import reference_catalog

        self._check_field(field)
        return reference_catalog(self.survey_config, field)

    def grid(self, field: str) -> tuple[WCS, tuple[int, int]]:
        from astrid_assets.science.simulate import field_wcs

        self._check_field(field)
        return field_wcs(self.survey_config, field), (self.size, self.size)

    def pixel_scale(self) -> float | None:
        return float(self.survey_config.pixel_scale)
