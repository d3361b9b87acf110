"""Completeness by injection and recovery, per night over its fields."""

import time

import numpy as np
import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Output,
    multi_asset,
)
from pydantic import Field

from astrid_assets.defs.difference import DifferenceConfig
from astrid_assets.defs.previews import completeness_plot
from astrid_assets.partitions import NIGHT, by_dimension, night_and_field, night_partitions
from astrid_assets.science.injection import completeness_curve
from astrid_assets.science.pipeline import difference_pair
from astrid_assets.science.processing import FieldReference, ProcessedExposure
from astrid_assets.science.survey import inject_fakes, recover_fakes, tie_to_reference
from astrid_assets.sources import SurveySource

__all__ = ["CompletenessConfig", "completeness_report"]

BY_NIGHT = by_dimension(NIGHT)
ALLOW_MISSING = {"allow_missing_partitions": True}


class CompletenessConfig(DifferenceConfig):
    """The fakes injected into each field's calibrated exposure."""

    fakes_per_field: int = Field(default=100, ge=1, le=2000, description="Fakes per image.")
    snr_min: float = Field(default=2.0, gt=0, description="Lowest injected S/N.")
    snr_max: float = Field(default=20.0, gt=0, description="Highest injected S/N.")
    threshold: float = Field(default=5.0, gt=0, description="Detection threshold, σ.")
    match_radius: float = Field(default=2.0, gt=0, description="Recovery radius, px.")


@multi_asset(
    outs={
        "completeness_report": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"parquet", "duckdb"},
            metadata={"table": "injections"},
            description="Point sources injected into every field's exposure with its measured "
            "PSF, subtracted and detected like the real data: one row per fake (S/N, "
            "magnitude, recovered); the 50% completeness point and the curve in the "
            "metadata; the DuckDB view `injections`.",
        )
    },
    ins={
        # A field that failed tonight leaves the others to report on.
        "calibrated": AssetIn(
            "calibrated_exposures", partition_mapping=BY_NIGHT, metadata=ALLOW_MISSING
        ),
        "references": AssetIn(
            "reference_images", partition_mapping=AllPartitionMapping(), metadata=ALLOW_MISSING
        ),
        "found": AssetIn("candidates", partition_mapping=BY_NIGHT, metadata=ALLOW_MISSING),
    },
    partitions_def=night_partitions,
    group_name="quality",
)
def completeness_report(
    context: AssetExecutionContext,
    config: CompletenessConfig,
    survey: SurveySource,
    calibrated: dict[str, ProcessedExposure],
    references: dict[str, FieldReference],
    found: dict[str, pl.DataFrame],
):
    """Inject, subtract, detect and match, field by field."""
    night = context.partition_key
    if config.snr_max <= config.snr_min:
        raise ValueError(f"snr_max {config.snr_max} must exceed snr_min {config.snr_min}")
    started = time.perf_counter()
    diff_config = config.diff_config(config.threshold)
    parts = []
    for key in sorted(calibrated):
        processed = calibrated[key]
        _, field = night_and_field(key)
        if field in references:  # a frame no catalogue calibrated takes its reference's scale
            processed = tie_to_reference(processed, references[field], diff_config)
        if field not in references or processed.wcs is None or processed.zero_point is None:
            context.log.warning(f"{field} {night}: skipped (no reference, WCS or zero point)")
            continue
        grid_wcs, _ = survey.grid(field)
        rng = np.random.default_rng([int(night.replace("-", "")), survey.fields().index(field)])
        science, fakes = inject_fakes(
            processed,
            processed.psf.stamp,
            processed.wcs,
            references[field],
            grid_wcs,
            config.fakes_per_field,
            (config.snr_min, config.snr_max),
            rng,
        )
        products = difference_pair(science.prepared(), references[field].prepared, diff_config)
        recovered = recover_fakes(fakes, products.candidates, products.result.mask)
        recovered.meta.clear()
        frame = pl.DataFrame({name: np.asarray(recovered[name]) for name in recovered.colnames})
        parts.append(frame.with_columns(pl.lit(night).alias("night"), pl.lit(field).alias("field")))
        context.log.info(
            f"{field}: {int(np.sum(recovered['recovered']))}/{len(recovered)} fakes recovered"
        )
    if not parts:
        raise ValueError(f"night {night}: no field could be injected into")
    table = pl.concat(parts).select(["night", "field", *parts[0].columns[:-2]])
    usable = table.filter(~pl.col("masked"))
    snr = usable["snr"].to_numpy()
    hit = usable["recovered"].to_numpy()
    curve = completeness_curve(snr, hit)
    per_field = {
        f"completeness_{f}": round(float(g["recovered"].mean()), 4)
        for (f,), g in usable.group_by(["field"], maintain_order=True)
    }
    false_per_image = {
        f: int((df["truth"] == "false").sum()) if "truth" in df.columns else -1
        for f, df in found.items()
    }
    yield Output(
        table,
        output_name="completeness_report",
        metadata={
            "rows": len(table),
            "fields": len(parts),
            "fakes_unmasked": len(usable),
            "snr50": round(float(curve.snr50), 3),
            "completeness_snr_ge_10": round(float(hit[snr >= 10].mean()), 4)
            if np.any(snr >= 10)
            else float("nan"),
            "false_candidates_per_image": round(float(np.mean(list(false_per_image.values()))), 2)
            if false_per_image
            else float("nan"),
            **per_field,
            "seconds": round(time.perf_counter() - started, 2),
            "curve": completeness_plot(curve, snr, hit, f"completeness {night}"),
        },
    )
