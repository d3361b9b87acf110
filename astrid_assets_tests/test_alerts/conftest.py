"""Synthetic candidates tables, laid out as the graph writes them, for the alert tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from astropy.table import Table
from upath import UPath

from astrid_assets.defs.difference import candidate_frame
from astrid_assets.science.detection import CANDIDATE_COLUMNS
from astrid_assets.storage.catalog import Catalog
from astrid_assets.storage.io_managers import ParquetStore

SIZE = 63
RA0, DEC0 = 150.0, 2.0


def candidates(
    night: str,
    field: str,
    ra: list[float],
    dec: list[float],
    *,
    sign: list[int] | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """A candidates table (the graph's columns and dtypes) with random stamps."""
    n = len(ra)
    rng = np.random.default_rng(seed)
    table = Table()
    for name, (dtype, _, _) in CANDIDATE_COLUMNS.items():
        kind = {"i8": np.int64, "f8": np.float64, "?": bool}[dtype]
        table[name] = np.zeros(n, kind)
    table["id"] = np.arange(1, n + 1)
    table["x"] = rng.uniform(100, 400, n)
    table["y"] = rng.uniform(100, 400, n)
    table["sign"] = np.asarray(sign if sign is not None else [1] * n)
    table["score_peak"] = table["sign"] * rng.uniform(5, 30, n)
    table["flux_err"] = rng.uniform(50, 60, n)
    table["flux"] = table["sign"] * table["flux_err"] * rng.uniform(5, 30, n)
    table["snr"] = table["flux"] / table["flux_err"]
    table["mag"] = 28.0 - 2.5 * np.log10(np.abs(table["flux"]))
    table["mag_err"] = 1.0857 / np.abs(table["snr"])
    table["ra"] = np.asarray(ra, float)
    table["dec"] = np.asarray(dec, float)
    table["mjd"] = np.full(
        n, 61045.0 + (np.datetime64(night) - np.datetime64("2026-01-05")).item().days
    )
    table["chi2"] = rng.uniform(0.8, 1.5, n)
    table["fwhm"] = rng.uniform(2.5, 3.5, n)
    stamps = rng.normal(100.0, 10.0, (n, 3, SIZE, SIZE)).astype(np.float32)
    stamps[:, 0, :3] = np.nan  # off the image's edge
    frame = candidate_frame(table, stamps, night, field, {"frame_quality_ok": True})
    return frame.with_columns(pl.Series("truth", ["sn"] * n, dtype=pl.Utf8))


def scores(frame: pl.DataFrame, ensemble: list[float]) -> pl.DataFrame:
    """A candidate_scores table for ``frame``: the ensemble given, members random."""
    n = frame.height
    rng = np.random.default_rng(n)
    members = {
        name: rng.uniform(0, 1, n).astype(np.float32)
        for name in ("realbogus", "unet", "isolation_forest", "one_class_svm")
    }
    return pl.DataFrame(
        [
            frame["candidate_id"],
            frame["night"],
            frame["field"],
            *(pl.Series(name, values) for name, values in members.items()),
            pl.Series("ensemble", np.asarray(ensemble, np.float32)),
        ]
    )


def write_table(tables: Path, asset: str, night: str, field: str, frame: pl.DataFrame) -> None:
    path = tables / asset / night / f"{field}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)


def store(root: Path) -> ParquetStore:
    """The Parquet store over ``root/tables`` with a catalog at ``root/astrid.duckdb``."""
    return ParquetStore(UPath(root / "tables"), catalog=Catalog(root / "astrid.duckdb"))


def offset(ra: float, dec: float, east_arcsec: float, north_arcsec: float) -> tuple[float, float]:
    """The position ``east_arcsec`` east and ``north_arcsec`` north of (ra, dec)."""
    return (
        ra + east_arcsec / 3600.0 / np.cos(np.radians(dec)),
        dec + north_arcsec / 3600.0,
    )
