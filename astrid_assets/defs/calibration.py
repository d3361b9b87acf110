"""Calibration masters per night; calibrated, measured exposures and the frames table."""

import time

import polars as pl
from astropy.wcs import WCS
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Config,
    Output,
    asset,
    multi_asset,
)
from pydantic import Field

from astrid_assets.defs import checks
from astrid_assets.partitions import (
    NIGHT,
    by_dimension,
    night_and_field,
    night_field_partitions,
    night_partitions,
)
from astrid_assets.science.processing import (
    CalibrationMasters,
    ProcessedExposure,
    make_calibration_masters,
    process_exposure,
)
from astrid_assets.science.psf import InsufficientStarsError
from astrid_assets.science.quality import QualityLimits, assess
from astrid_assets.sources import CalibrationFrames, RawExposure, SurveySource

__all__ = [
    "FrameQualityConfig",
    "calibrate",
    "calibrated_exposures",
    "calibration_masters",
    "frame_row",
    "night_masters",
]


def night_masters(frames: CalibrationFrames) -> CalibrationMasters:
    """The night's masters from its frames; none for a night that has neither
    bias nor flat frames (its exposures must arrive calibrated)."""
    if not frames.biases and not frames.flats:
        return CalibrationMasters.delivered()
    if not frames.biases or not frames.flats:
        missing = "bias" if not frames.biases else "flat"
        raise ValueError(
            f"night {frames.night}: {len(frames.biases)} bias and {len(frames.flats)} flat "
            f"frames; masters need both (no {missing} frames)"
        )
    return make_calibration_masters(frames.biases, frames.flats)


def calibrate(
    raw: RawExposure,
    masters: CalibrationMasters,
    survey: SurveySource,
    *,
    fallback_zero_point: float | None = None,
) -> ProcessedExposure:
    """Calibrate and measure a raw exposure with the night's masters and the field's catalogue.

    The zero point is fitted against the catalogue; else it is the one the
    header states; else ``fallback_zero_point`` (None: the frame stays
    uncalibrated and the subtraction ties it to its reference).
    """
    wcs = WCS(raw.header)
    if not wcs.has_celestial:
        raise ValueError(f"raw exposure {raw.field} {raw.night}: header has no celestial WCS")
    if masters.empty and not raw.calibrated:
        raise ValueError(
            f"raw exposure {raw.field} {raw.night} needs bias and flat frames; the night has "
            "none (only exposures delivered calibrated can do without)"
        )
    if raw.calibrated:
        masters = CalibrationMasters.delivered()
    elif masters.bias.data.shape != raw.data.shape:
        raise ValueError(
            f"raw exposure {raw.field} {raw.night} is {raw.data.shape}, the night's masters "
            f"{masters.bias.data.shape}"
        )
    try:
        return process_exposure(
            raw.data,
            masters,
            gain=raw.require("GAIN"),
            read_noise=raw.require("RDNOISE"),
            saturation=raw.require("SATURATE"),
            wcs=wcs.celestial,
            catalog=survey.catalog(raw.field),
            pixel_scale=survey.pixel_scale(),
            header_zero_point=(
                stated
                if (stated := survey.stated_zero_point(raw)) is not None
                else fallback_zero_point
            ),
        )
    except InsufficientStarsError as err:
        raise ValueError(f"exposure {raw.field} {raw.night}: {err}") from err


class FrameQualityConfig(Config):
    """Limits a usable frame stays within; a frame outside them is flagged."""

    max_fwhm_arcsec: float | None = Field(default=4.0, description="Worst seeing, arcsec.")
    max_ellipticity: float | None = Field(default=0.3, description="Most elongated PSF.")
    min_stars: int | None = Field(default=10, description="Fewest point sources.")
    min_limiting_mag: float | None = Field(default=None, description="Shallowest 5σ depth.")
    max_masked_fraction: float | None = Field(default=0.25, description="Most masked.")

    def limits(self) -> QualityLimits:
        return QualityLimits(
            max_fwhm_arcsec=self.max_fwhm_arcsec,
            max_ellipticity=self.max_ellipticity,
            min_stars=self.min_stars,
            min_limiting_mag=self.min_limiting_mag,
            max_masked_fraction=self.max_masked_fraction,
        )


def frame_row(
    night: str, field: str, processed: ProcessedExposure, reasons: list[str], seconds: float
) -> pl.DataFrame:
    """One row of the frames table: the frame's measured quality and its verdict."""
    zp = processed.zero_point
    row: dict[str, object] = {"night": night, "field": field}
    row.update({k: float(v) for k, v in processed.quality.as_dict().items()})
    row["zero_point_error"] = float("nan") if zp is None else float(zp.error)
    row["zero_point_stars"] = 0 if zp is None else int(zp.n_matched)
    row["psf_stars"] = int(processed.psf.n_stars)
    row["quality_ok"] = not reasons
    row["quality_reasons"] = "; ".join(reasons)
    row["seconds"] = float(seconds)
    return pl.DataFrame([row])


@asset(
    partitions_def=night_partitions,
    io_manager_key="fits_io_manager",
    group_name="calibration",
    kinds={"fits"},
)
def calibration_masters(context: AssetExecutionContext, survey: SurveySource) -> Output:
    """The night's master bias, master flat and bad-pixel mask, from its bias and flat frames.

    A night with neither (a source whose exposures arrive calibrated) gets
    an empty set of masters, which only such exposures accept.
    """
    night = context.partition_key
    started = time.perf_counter()
    masters = night_masters(survey.calibration_frames(night))
    if masters.empty:
        context.log.info(f"night {night}: no bias or flat frames; exposures arrive calibrated")
        return Output(
            masters,
            metadata={
                "bias_frames": 0,
                "flat_frames": 0,
                "delivered_calibrated": True,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
    bpm = masters.bad_pixels
    return Output(
        masters,
        metadata={
            "bias_frames": masters.bias.n_frames,
            "flat_frames": masters.flat.n_frames,
            "read_noise_adu": round(float(masters.bias.read_noise), 3),
            "hot_pixels": int(bpm.n_hot),
            "bad_columns": len(bpm.bad_columns),
            "bad_pixel_fraction": round(float(bpm.mask.mean()), 5),
            "seconds": round(time.perf_counter() - started, 2),
        },
    )


@multi_asset(
    outs={
        "calibrated_exposures": AssetOut(
            io_manager_key="fits_io_manager",
            kinds={"fits"},
            description="Bias-subtracted, flat-fielded, cosmic-ray-masked, sky-subtracted "
            "exposure with its variance, mask, PSF, sources, zero point and WCS.",
        ),
        "frame_table": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"parquet", "duckdb"},
            metadata={"table": "frames"},
            description="One row per calibrated frame: seeing, sky, depth, zero point, star "
            "count, masked fraction and whether it is within the quality limits; the DuckDB "
            "view `frames`.",
        ),
    },
    ins={
        "raw": AssetIn("raw_exposures"),
        "masters": AssetIn(
            "calibration_masters",
            partition_mapping=by_dimension(NIGHT),
        ),
    },
    partitions_def=night_field_partitions,
    group_name="calibration",
    check_specs=checks.specs("calibrated_exposures"),
)
def calibrated_exposures(
    context: AssetExecutionContext,
    config: FrameQualityConfig,
    survey: SurveySource,
    raw: RawExposure,
    masters: CalibrationMasters,
):
    """Calibrate the exposure, measure it, and judge its quality."""
    night, field = night_and_field(context.partition_key)
    started = time.perf_counter()
    processed = calibrate(raw, masters, survey)
    seconds = time.perf_counter() - started
    reasons = assess(processed.quality, config.limits())
    if reasons:
        context.log.warning(f"{field} {night} flagged: {'; '.join(reasons)}")
    q = processed.quality
    yield Output(
        processed,
        output_name="calibrated_exposures",
        metadata={
            "seeing_arcsec": round(float(q.fwhm_arcsec), 3),
            "limiting_mag": round(float(q.limiting_mag), 3),
            "zero_point": round(float(q.zero_point), 4),
            "sky_adu": round(float(q.sky), 2),
            "sources": int(q.n_sources),
            "stars": int(q.n_stars),
            "masked_fraction": round(float(q.masked_fraction), 5),
            "quality_ok": not reasons,
            "seconds": round(seconds, 2),
        },
    )
    table = frame_row(night, field, processed, reasons, seconds)
    yield Output(table, output_name="frame_table", metadata={"rows": len(table)})
    measured = {
        "seeing_arcsec": q.fwhm_arcsec,
        "ellipticity": q.ellipticity,
        "stars": q.n_stars,
        "limiting_mag": q.limiting_mag,
        "masked_fraction": q.masked_fraction,
    }
    yield checks.frame_quality("calibrated_exposures", reasons, measured)
