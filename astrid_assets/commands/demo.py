"""``astrid demo``: one survey night through the whole asset graph, then what it found.

The night is processed the way every night is: a Dagster asset backfill over
the night x every field (and the references of fields that have none),
executed by the daemon, stored as FITS and Parquet, catalogued in DuckDB.
What is printed afterwards is read back from there (DuckDB for the tables,
Dagster's materialization metadata for timings and the 50% completeness
point), so the demo shows what ``make ui`` and ``astrid sql`` show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from astrid_assets.commands.backfill import UI_URL, backfill_url
from astrid_assets.commands.sql import render

if TYPE_CHECKING:
    from astrid_assets.storage.catalog import Catalog

__all__ = [
    "NightSummary",
    "best_candidates",
    "latest_metadata",
    "night_summary",
    "partition_table",
]

# The steps of a night x field partition whose ``seconds`` metadata add up to its compute time.
TIMED_ASSETS = ("raw_exposures", "calibrated_exposures", "difference_images", "candidates")
BEST_COLUMNS = (
    "candidate_id",
    "field",
    "ra",
    "dec",
    "mag",
    "mag_err",
    "snr",
    "score_peak",
    "truth",
)


def _value(metadata_value):
    return getattr(metadata_value, "value", metadata_value)


def latest_metadata(
    instance: DagsterInstance, asset: str, partition: str
) -> Mapping[str, object] | None:
    """The metadata of the latest materialization of ``asset`` for ``partition``
    (None if it has none), values unwrapped."""
    result = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    )
    if not result.records:
        return None
    materialization = result.records[0].asset_materialization
    if materialization is None:
        return None
    return {k: _value(v) for k, v in materialization.metadata.items()}


def partition_table(catalog: Catalog, instance: DagsterInstance, night: str) -> pl.DataFrame:
    """One row per field of ``night``: seeing, depth, candidates, how many matched a
    simulated transient, and the compute seconds of the partition."""
    from astrid_assets.partitions import night_field_key

    frames = catalog.query(
        f"""
        SELECT f.night, f.field,
               f.fwhm_arcsec AS seeing_arcsec,
               f.limiting_mag,
               f.quality_ok
        FROM frames f WHERE f.night = '{night}' ORDER BY f.field
        """
    )
    counts = catalog.query(
        f"""
        SELECT field,
               count(*) AS candidates,
               count(*) FILTER (WHERE truth IS NOT NULL AND truth <> 'false') AS matched
        FROM candidates WHERE night = '{night}' GROUP BY field
        """
    )
    table = frames.join(counts, on="field", how="left")
    seconds, detected = [], []
    for field in table["field"]:
        key = str(night_field_key(night, field))
        metadata = {asset: latest_metadata(instance, asset, key) or {} for asset in TIMED_ASSETS}
        seconds.append(round(sum(float(m.get("seconds") or 0.0) for m in metadata.values()), 1))
        detected.append(bool(metadata["candidates"]))
    # A partition whose detection never ran has no count; one that found nothing has 0.
    ran = pl.Series("ran", detected)
    return table.with_columns(
        pl.col("seeing_arcsec").round(2),
        pl.col("limiting_mag").round(2),
        pl.when(ran).then(pl.col("candidates").fill_null(0)).alias("candidates"),
        pl.when(ran).then(pl.col("matched").fill_null(0)).alias("matched"),
        pl.Series("seconds", seconds),
    )


def best_candidates(catalog: Catalog, night: str, n: int = 10) -> pl.DataFrame:
    """The ``n`` brightening candidates of ``night`` with the highest peak score."""
    return catalog.query(
        f"""
        SELECT {", ".join(BEST_COLUMNS)}
        FROM candidates
        WHERE night = '{night}' AND sign > 0
        ORDER BY score_peak DESC
        LIMIT {int(n)}
        """
    ).with_columns(
        pl.col("ra").round(5),
        pl.col("dec").round(5),
        pl.col("mag", "mag_err", "snr", "score_peak").round(2),
    )


@dataclass(frozen=True)
class NightSummary:
    """What the demo prints about a processed night."""

    night: str
    partitions: pl.DataFrame
    best: pl.DataFrame
    snr50: float | None
    fakes_snr_ge_10: int
    recovered_snr_ge_10: float | None
    simulated: bool = True

    def describe(self, backfill_id: str | None = None) -> str:
        p = self.partitions
        found = f"\nnight {self.night}: {len(p)} field(s), {int(p['candidates'].sum())} candidates "
        if self.simulated:
            found += f"above 5σ, {int(p['matched'].sum())} of them matched to a simulated transient"
        else:
            found += "above 5σ (real exposures: no truth to match them to)"
            p = p.drop("matched")
        lines = [found, render(p, max_rows=100)]
        completeness = []
        if self.snr50 is not None and math.isfinite(self.snr50):
            completeness.append(f"50% of injected point sources recovered at S/N {self.snr50:.2f}")
        if self.recovered_snr_ge_10 is not None:
            completeness.append(
                f"{100 * self.recovered_snr_ge_10:.1f}% of the {self.fakes_snr_ge_10} at S/N >= 10"
            )
        if completeness:
            lines.append("\ncompleteness: " + "; ".join(completeness))
        if len(self.best):
            lines += [
                f"\nthe {len(self.best)} brightening candidate(s) with the highest S_corr peak:",
                render(self.best, max_rows=len(self.best)),
            ]
        else:
            lines.append("\nno brightening candidate this night")
        lines += [
            "\nlook further:",
            f"  make ui          the Dagster UI at {UI_URL}: assets, partitions, runs, metadata"
            + (
                f"\n                   this night's backfill: {backfill_url(backfill_id)}"
                if backfill_id
                else ""
            ),
            '  .venv/bin/astrid sql "SELECT field, truth, count(*) AS n FROM candidates '
            f"WHERE night = '{self.night}' GROUP BY ALL ORDER BY ALL\"",
            "                   tables: exposures, frames, candidates, injections",
        ]
        return "\n".join(lines)


def night_summary(instance: DagsterInstance, night: str, *, simulated: bool = True) -> NightSummary:
    """Read back what the graph stored for ``night``."""
    import duckdb

    from astrid_assets.commands.sql import open_catalog
    from astrid_assets.settings import settings

    catalog = open_catalog(settings().catalog)
    partitions = partition_table(catalog, instance, night)
    best = best_candidates(catalog, night)
    try:
        injected = catalog.query(
            f"""
            SELECT count(*) AS n, avg(recovered::INTEGER) AS recovered
            FROM injections
            WHERE night = '{night}' AND NOT masked AND snr >= 10
            """
        )
    except duckdb.CatalogException:  # no completeness report has been written yet
        injected = pl.DataFrame({"n": [0], "recovered": [None]})
    report = latest_metadata(instance, "completeness_report", night) or {}
    snr50 = report.get("snr50")
    n10 = int(injected["n"][0]) if len(injected) else 0
    return NightSummary(
        night=night,
        partitions=partitions,
        best=best,
        snr50=None if snr50 is None else float(snr50),
        fakes_snr_ge_10=n10,
        recovered_snr_ge_10=float(injected["recovered"][0]) if n10 else None,
        simulated=simulated,
    )
