"""Difference images (ZOGY, or classic) and the candidates detected on them."""

import time
from typing import Literal

import numpy as np
import polars as pl
from astropy.table import Table
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Config,
    Output,
    multi_asset,
)
from pydantic import Field

from astrid_assets.defs import checks
from astrid_assets.defs.previews import difference_preview
from astrid_assets.partitions import FIELD, by_dimension, night_and_field, night_field_partitions
from astrid_assets.science.pipeline import (
    DiffConfig,
    Subtraction,
    find_candidates,
    subtract_pair,
)
from astrid_assets.science.processing import FieldReference, ProcessedExposure
from astrid_assets.science.survey import classify_candidates, truth_on_grid
from astrid_assets.sources import RawExposure, SurveySource

__all__ = [
    "CandidateConfig",
    "DifferenceConfig",
    "candidate_frame",
    "candidates",
    "difference_images",
]

REFERENCE_BY_FIELD = by_dimension(FIELD)
CUTOUT_NAMES = ("cutout_science", "cutout_reference", "cutout_difference")


class DifferenceConfig(Config):
    """How the science image is subtracted from the reference."""

    method: Literal["zogy", "classic"] = Field(
        default="zogy", description="ZOGY (Zackay, Ofek & Gal-Yam 2016) or classic scaled."
    )
    align: Literal["auto", "wcs", "stars", "none"] = Field(
        default="auto", description="WCS, refined by stars where they disagree."
    )

    def diff_config(self, threshold: float = 5.0) -> DiffConfig:
        return DiffConfig(method=self.method, align=self.align, threshold=threshold)


class CandidateConfig(DifferenceConfig):
    """Detection threshold and the plausible range of candidates per image."""

    threshold: float = Field(default=5.0, gt=0, description="Detection threshold on S_corr, σ.")
    min_plausible: int = Field(default=0, ge=0, description="Fewest candidates expected.")
    max_plausible: int = Field(default=100, ge=1, description="Most candidates expected.")
    match_radius: float = Field(default=2.0, gt=0, description="Truth match radius, px.")


@multi_asset(
    outs={
        "difference_images": AssetOut(
            io_manager_key="fits_io_manager",
            kinds={"fits"},
            description="The science image minus the field's reference on the reference grid: "
            "D, its PSF, the score S_corr (in σ), the mask and the aligned science image. "
            "A preview of D with its candidates circled is in the candidates' metadata.",
        )
    },
    ins={
        "calibrated": AssetIn("calibrated_exposures"),
        "reference": AssetIn("reference_images", partition_mapping=REFERENCE_BY_FIELD),
    },
    partitions_def=night_field_partitions,
    group_name="difference",
    check_specs=checks.specs("difference_images"),
)
def difference_images(
    context: AssetExecutionContext,
    config: DifferenceConfig,
    calibrated: ProcessedExposure,
    reference: FieldReference,
):
    """Align and subtract; the data contract is checked on D and S_corr."""
    night, field = night_and_field(context.partition_key)
    started = time.perf_counter()
    subtraction = subtract_pair(calibrated.prepared(), reference.prepared, config.diff_config())
    seconds = time.perf_counter() - started
    result = subtraction.result
    reg = subtraction.registration
    context.log.info(
        f"{field} {night}: {result.method}, flux ratio {result.flux_ratio:.4f}, "
        f"aligned by {reg.get('method')} in {seconds:.1f} s"
    )
    yield Output(
        subtraction,
        output_name="difference_images",
        metadata={
            "method": result.method,
            "flux_ratio": round(float(result.flux_ratio), 4),
            "difference_noise": round(float(result.difference_noise), 3),
            "masked_fraction": round(float(result.mask.mean()), 5),
            "alignment": str(reg.get("method")),
            "alignment_rms_px": round(float(reg.get("residual_rms") or 0.0), 4),
            "seconds": round(seconds, 2),
            **{f"seconds_{k}": round(v, 2) for k, v in subtraction.timings.items()},
        },
    )
    yield checks.no_nan_outside_mask(
        "difference_images", result.difference, result.score, result.mask
    )
    yield checks.score_is_unit_normal("difference_images", result.score, result.mask)


def candidate_frame(
    table: Table, cutouts: np.ndarray, night: str, field: str, extra: dict[str, object]
) -> pl.DataFrame:
    """Candidates as a table row each: identifiers, measurements, features, cutouts."""
    n = len(table)
    ids = [f"{night}_{field}_{int(i):04d}" for i in table["id"]] if n else []
    columns = [
        pl.Series("candidate_id", ids, dtype=pl.Utf8),
        pl.Series("night", [night] * n, dtype=pl.Utf8),
        pl.Series("field", [field] * n, dtype=pl.Utf8),
    ]
    for name in table.colnames:
        values = np.asarray(table[name])
        if values.ndim == 1:
            columns.append(pl.Series(name, values))
    frame = pl.DataFrame(columns)
    for name, value in extra.items():
        frame = frame.with_columns(pl.lit(value).alias(name))
    size = cutouts.shape[-1] if cutouts.ndim == 4 else 0
    for k, name in enumerate(CUTOUT_NAMES):
        stamps = cutouts[:, k].astype(np.float32) if n else np.zeros((0, size, size), np.float32)
        frame = frame.with_columns(
            pl.Series(name, stamps.reshape(n, size * size), dtype=pl.Array(pl.Float32, size * size))
        )
    return frame


@multi_asset(
    outs={
        "candidates": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"parquet", "duckdb"},
            metadata={"table": "candidates"},
            description="Detections on S_corr above the threshold after vetting, with PSF "
            "photometry, magnitudes, RA/Dec, MJD, shape and dipole features and 63x63 "
            "science/reference/difference cutouts; the DuckDB view `candidates` (cutouts in "
            "`candidates_cutouts`).",
        )
    },
    ins={
        "difference": AssetIn("difference_images"),
        "calibrated": AssetIn("calibrated_exposures"),
        "reference": AssetIn("reference_images", partition_mapping=REFERENCE_BY_FIELD),
        "raw": AssetIn("raw_exposures"),
        "frame": AssetIn("frame_table"),
    },
    partitions_def=night_field_partitions,
    group_name="difference",
    check_specs=checks.specs("candidates"),
)
def candidates(
    context: AssetExecutionContext,
    config: CandidateConfig,
    survey: SurveySource,
    difference: Subtraction,
    calibrated: ProcessedExposure,
    reference: FieldReference,
    raw: RawExposure,
    frame: pl.DataFrame,
):
    """Detect, measure, vet; label each candidate with the simulator's truth when there is one."""
    night, field = night_and_field(context.partition_key)
    started = time.perf_counter()
    table, cutouts, timings = find_candidates(
        difference, calibrated.prepared(), reference.prepared, config.diff_config(config.threshold)
    )
    mjd = float(raw.header.get("MJD-OBS", np.nan)) + float(raw.header.get("EXPTIME", 0)) / 172800
    table["mjd"] = np.full(len(table), mjd)
    truth = None
    if raw.truth is not None:
        grid_wcs, _ = survey.grid(field)
        truth = classify_candidates(
            table, truth_on_grid(raw.truth, grid_wcs), config.match_radius
        ).astype(str)
    quality_ok = bool(frame["quality_ok"][0]) if len(frame) else False
    frame_out = candidate_frame(
        table, cutouts, night, field, {"frame_quality_ok": quality_ok}
    ).with_columns(
        pl.Series("truth", truth if truth is not None else [None] * len(table), dtype=pl.Utf8)
    )
    n = len(frame_out)
    counts = {} if truth is None else dict(zip(*np.unique(truth, return_counts=True), strict=True))
    yield Output(
        frame_out,
        output_name="candidates",
        metadata={
            "rows": n,
            "threshold_sigma": config.threshold,
            "positive": int(np.sum(np.asarray(table["sign"]) > 0)) if n else 0,
            "frame_quality_ok": quality_ok,
            **{f"truth_{k}": int(v) for k, v in counts.items()},
            "seconds": round(time.perf_counter() - started, 2),
            **{f"seconds_{k}": round(v, 2) for k, v in timings.items()},
            "preview": difference_preview(
                difference.result.difference,
                difference.result.mask,
                np.asarray(table["x"]),
                np.asarray(table["y"]),
                title=f"{n} candidates {field} {night}",
            ),
        },
    )
    yield checks.candidate_count("candidates", n, config.min_plausible, config.max_plausible)
