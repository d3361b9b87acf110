"""Small real products of the science code, made once for the storage tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from astropy.wcs import WCS

from astrid_assets.science.pipeline import Subtraction, subtract_pair
from astrid_assets.science.processing import (
    CalibrationMasters,
    FieldReference,
    ProcessedExposure,
    build_field_reference,
    make_calibration_masters,
    process_exposure,
)
from astrid_assets.sources import RawExposure, SimulatedSurvey

FIELD = "F01"


@dataclass
class Products:
    raw: RawExposure
    masters: CalibrationMasters
    processed: ProcessedExposure
    reference: FieldReference
    subtraction: Subtraction


@pytest.fixture(scope="session")
def products() -> Products:
    survey = SimulatedSurvey(size=512)

    def process(night: str) -> tuple[RawExposure, CalibrationMasters, ProcessedExposure]:
        frames = survey.calibration_frames(night)
        masters = make_calibration_masters(frames.biases, frames.flats)
        raw = survey.exposure(night, FIELD)
        processed = process_exposure(
            raw.data,
            masters,
            gain=raw.require("GAIN"),
            read_noise=raw.require("RDNOISE"),
            saturation=raw.require("SATURATE"),
            wcs=WCS(raw.header).celestial,
            catalog=survey.catalog(FIELD),
            pixel_scale=survey.pixel_scale(),
        )
        return raw, masters, processed

    epochs = [process(night)[2] for night in survey.template_nights(FIELD)]
    wcs, shape = survey.grid(FIELD)
    reference = build_field_reference(epochs, wcs, shape, grid_stars_xy=survey.grid_stars(FIELD))
    raw, masters, processed = process(survey.first_night())
    subtraction = subtract_pair(processed.prepared(), reference.prepared)
    return Products(raw, masters, processed, reference, subtraction)
