"""Raw exposures from the survey source, and the exposures table."""

import time

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, AssetOut, Output, multi_asset

from astrid_assets.partitions import night_and_field, night_field_partitions
from astrid_assets.sources import RawExposure, SurveySource

__all__ = ["exposure_row", "raw_exposures"]

HEADER_COLUMNS = {
    "date_obs": ("DATE-OBS", str),
    "mjd": ("MJD-OBS", float),
    "exptime": ("EXPTIME", float),
    "filter": ("FILTER", str),
    "airmass": ("AIRMASS", float),
    "ra": ("RA", float),
    "dec": ("DEC", float),
    "gain": ("GAIN", float),
    "read_noise": ("RDNOISE", float),
    "saturation": ("SATURATE", float),
    # What a survey's pipeline measured, as the archive clients write it
    # (astrid_assets.archives.metadata): AB zero point, seeing FWHM in
    # arcseconds, 5-sigma depth. Null when the header does not say.
    "zero_point": ("MAGZP", float),
    "seeing": ("SEEING", float),
    "limiting_mag": ("MAGLIM", float),
}


def exposure_row(exposure: RawExposure) -> pl.DataFrame:
    """One row of the exposures table: what the header says about the exposure."""
    row: dict[str, object] = {"night": exposure.night, "field": exposure.field}
    for column, (keyword, kind) in HEADER_COLUMNS.items():
        value = exposure.header.get(keyword)
        try:
            row[column] = None if value in (None, "") else kind(value)
        except (TypeError, ValueError):
            row[column] = None  # a header value that is not what the column holds
    row["calibrated"] = bool(exposure.calibrated)
    ny, nx = exposure.data.shape
    row["nx"], row["ny"] = nx, ny
    row["n_truth"] = None if exposure.truth is None else len(exposure.truth)
    return pl.DataFrame([row])


@multi_asset(
    outs={
        "raw_exposures": AssetOut(
            io_manager_key="fits_io_manager",
            kinds={"fits"},
            description="The night's raw science exposure of the field, as the telescope "
            "wrote it (bias included), with the simulator's truth table when simulated.",
        ),
        "exposure_table": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"parquet", "duckdb"},
            metadata={"table": "exposures"},
            description="One row per exposure from its header (time, filter, airmass, "
            "pointing, gain); the DuckDB view `exposures`.",
        ),
    },
    partitions_def=night_field_partitions,
    group_name="ingest",
)
def raw_exposures(context: AssetExecutionContext, survey: SurveySource):
    """Fetch one exposure from the survey source."""
    night, field = night_and_field(context.partition_key)
    started = time.perf_counter()
    exposure = survey.exposure(night, field)
    if exposure.data.ndim != 2 or not np.isfinite(exposure.data).any():
        raise ValueError(f"raw exposure {field} {night}: no finite 2-D image")
    for keyword in ("GAIN", "RDNOISE", "SATURATE"):
        exposure.require(keyword)
    seconds = time.perf_counter() - started
    landed = survey.landed_path(night, field)
    yield Output(
        exposure,
        output_name="raw_exposures",
        metadata={
            "shape": f"{exposure.data.shape[1]} x {exposure.data.shape[0]}",
            "mjd": float(exposure.header.get("MJD-OBS", float("nan"))),
            "airmass": float(exposure.header.get("AIRMASS", float("nan"))),
            "source": str(landed) if landed else type(survey).__name__,
            "truth_entries": -1 if exposure.truth is None else len(exposure.truth),
            "seconds": round(seconds, 2),
        },
    )
    table = exposure_row(exposure)
    yield Output(table, output_name="exposure_table", metadata={"rows": len(table)})
