"""Drift per night: tonight's candidates, scores and frames against the training
set and against the nights before, with a check that fails past the thresholds.

The statistics are :mod:`astrid_assets.ml.drift`'s; this module reads the
tables through the DuckDB catalog of the ``parquet_io_manager`` (views
``candidates``, ``candidate_scores``, ``frames``, ``training_set``), so a
night compares with whatever earlier nights exist, without declaring them
as inputs. The upstream assets are listed as ``deps`` for lineage.
"""

import io
import math
import time
from typing import Literal

import polars as pl
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    Config,
    MetadataValue,
    Output,
    ResourceParam,
    multi_asset,
)
from pydantic import Field

from astrid_assets.defs.previews import png_bytes_markdown
from astrid_assets.ml.drift import (
    FRAME_QUANTITIES,
    SCORE_COLUMNS,
    DriftReport,
    DriftThresholds,
    NightSample,
    compare_night,
    drift_figure,
)
from astrid_assets.ml.training_data import FEATURE_COLUMNS
from astrid_assets.partitions import NIGHT, by_dimension, night_partitions
from astrid_assets.storage.catalog import Catalog
from astrid_assets.storage.io_managers import ParquetStore

__all__ = ["DRIFT_CHECK", "DriftConfig", "drift_report"]

DRIFT_CHECK = "drift_within_limits"
BY_NIGHT = by_dimension(NIGHT)


class DriftConfig(Config):
    """The reference and the thresholds of the drift check (see :class:`DriftThresholds`)."""

    n_nights: int = Field(
        default=7, ge=1, le=365, description="Earlier nights compared with, the latest first."
    )
    psi_threshold: float = Field(
        default=0.25, gt=0, description="PSI of a drifted feature or score (0.1 moderate)."
    )
    max_drifted_share: float = Field(
        default=0.3, gt=0, le=1, description="Share of drifted features that fails the check."
    )
    alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Largest p-value of a drifted feature's PSI."
    )
    min_samples: int = Field(
        default=30, ge=2, description="Fewest values a side for distribution statistics."
    )
    max_seeing_ratio: float = Field(
        default=1.5, gt=1, description="Tonight's median seeing over the earlier nights'."
    )
    max_depth_loss_mag: float = Field(
        default=0.75, gt=0, description="Magnitudes of 5σ depth lost against the earlier nights."
    )
    max_zero_point_shift_mag: float = Field(
        default=0.5, gt=0, description="Magnitudes of zero-point shift, either way."
    )
    max_sky_ratio: float | None = Field(
        default=None,
        gt=1,
        description="Tonight's median sky over the earlier nights'; null: no limit.",
    )
    severity: Literal["warn", "error"] = Field(
        default="warn", description="Severity of a failed drift check: warn or error."
    )

    def thresholds(self) -> DriftThresholds:
        return DriftThresholds(
            psi=self.psi_threshold,
            alpha=self.alpha,
            max_drifted_share=self.max_drifted_share,
            min_samples=self.min_samples,
            max_seeing_ratio=self.max_seeing_ratio,
            max_depth_loss=self.max_depth_loss_mag,
            max_zero_point_shift=self.max_zero_point_shift_mag,
            max_sky_ratio=self.max_sky_ratio,
        )

    def check_severity(self) -> AssetCheckSeverity:
        return AssetCheckSeverity.ERROR if self.severity == "error" else AssetCheckSeverity.WARN


_FEATURES = ", ".join(f'CAST("{name}" AS DOUBLE) AS "{name}"' for name in FEATURE_COLUMNS)
_SCORES = ", ".join(f's."{name}"' for name in SCORE_COLUMNS)
_FRAMES = ", ".join(f'"{name}"' for name in FRAME_QUANTITIES)


def _in(nights: list[str]) -> str:
    return ", ".join("?" for _ in nights)


def earlier_nights(catalog: Catalog, night: str, n: int) -> list[str]:
    """The latest ``n`` nights before ``night`` that have frames, oldest first."""
    if "frames" not in catalog.views():
        return []
    rows = catalog.query(
        "SELECT DISTINCT night FROM frames WHERE night < ? ORDER BY night DESC LIMIT ?",
        [night, n],
    )
    return sorted(rows["night"].to_list())


def night_sample(catalog: Catalog, nights: list[str]) -> NightSample:
    """Candidates' features, their scores (None where there are none) and
    frames of ``nights``, from the catalog's views."""
    views = set(catalog.views())
    frames = (
        catalog.query(
            f"SELECT night, field, {_FRAMES} FROM frames WHERE night IN ({_in(nights)})", nights
        )
        if "frames" in views
        else pl.DataFrame()
    )
    candidates = (
        catalog.query(
            f"SELECT candidate_id, night, field, {_FEATURES} FROM candidates "
            f"WHERE night IN ({_in(nights)})",
            nights,
        )
        if "candidates" in views
        else pl.DataFrame({"candidate_id": [], **{name: [] for name in FEATURE_COLUMNS}})
    )
    scores = None
    if "candidate_scores" in views and "candidates" in views:
        # Joined with the candidates, so a re-detected night's stale scores drop out.
        scored = catalog.query(
            f"SELECT s.candidate_id, {_SCORES} FROM candidate_scores s "
            f"JOIN candidates c USING (candidate_id) WHERE c.night IN ({_in(nights)})",
            nights,
        )
        if scored.height or candidates.height == 0:
            scores = scored
    return NightSample(candidates=candidates, frames=frames, scores=scores, nights=tuple(nights))


def training_rows(catalog: Catalog) -> pl.DataFrame | None:
    """The training set's features, split and vetting; None without a training set."""
    if "training_set" not in catalog.views():
        return None
    return catalog.query(f"SELECT split, vetted, kind, {_FEATURES} FROM training_set")


def _rounded(value: float | str) -> float | str:
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else value


def _metadata(
    report: DriftReport, tonight: NightSample, earlier: NightSample | None, seconds: float
) -> dict:
    described = [f"{name}: {text}" for name, text in report.references.items()]
    described += [f"{name}: none ({why})" for name, why in report.missing.items()]
    drifted = report.drifted_quantities()
    png = io.BytesIO()
    drift_figure(report, earlier.frames if earlier else None, tonight.frames).savefig(
        png, format="png"
    )
    if not report.available:
        verdict = "skipped: " + "; ".join(report.missing.values())
    else:
        verdict = "; ".join(report.reasons()) or "within limits"
    return {
        "rows": len(report.rows),
        "candidates_tonight": tonight.candidates.height,
        "frames_tonight": tonight.frames.height,
        "scored_tonight": tonight.scores is not None,
        "reference": MetadataValue.md("\n".join(f"* {line}" for line in described)),
        **{k: _rounded(v) for k, v in report.headline().items()},
        "drifted": ", ".join(drifted) if drifted else "none",
        "drift_check": verdict,
        "seconds": round(seconds, 2),
        "plot": png_bytes_markdown(png.getvalue(), f"drift {report.night}"),
    }


def drift_check_result(report: DriftReport, severity: AssetCheckSeverity) -> AssetCheckResult:
    """Passed unless a threshold is passed; the reasons and the headline numbers with it."""
    reasons = report.reasons()
    headline = report.headline()
    t = report.thresholds
    return AssetCheckResult(
        asset_key="drift_report",
        check_name=DRIFT_CHECK,
        passed=not reasons,
        severity=severity,
        description="; ".join(reasons) if reasons else "within limits",
        metadata={
            **{
                k: _rounded(v)
                for k, v in headline.items()
                if k.startswith("drifted_share") or k in ("seeing_ratio", "depth_shift_mag")
            },
            "zero_point_shift_mag": _rounded(headline["zero_point_shift_mag"]),
            "drifted": ", ".join(report.drifted_quantities()) or "none",
            "thresholds": MetadataValue.json(
                {
                    "psi": t.psi,
                    "alpha": t.alpha,
                    "max_drifted_share": t.max_drifted_share,
                    "max_seeing_ratio": t.max_seeing_ratio,
                    "max_depth_loss_mag": t.max_depth_loss,
                    "max_zero_point_shift_mag": t.max_zero_point_shift,
                    "max_sky_ratio": t.max_sky_ratio,
                }
            ),
        },
    )


@multi_asset(
    outs={
        "drift_report": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"parquet", "duckdb"},
            metadata={"table": "drift_report"},
            description="Tonight against the training set and the last nights: PSI (with "
            "its p-value), Kolmogorov-Smirnov and scaled Wasserstein distance of every "
            "candidate feature and model score, and the shift of seeing, depth, zero point "
            "and sky; one row per comparison and quantity, the DuckDB view `drift_report`.",
        )
    },
    deps=[
        AssetDep("candidates", partition_mapping=BY_NIGHT),
        AssetDep("candidate_scores", partition_mapping=BY_NIGHT),
        AssetDep("frame_table", partition_mapping=BY_NIGHT),
        AssetDep("training_set"),
    ],
    partitions_def=night_partitions,
    group_name="quality",
    check_specs=[
        AssetCheckSpec(
            DRIFT_CHECK,
            asset="drift_report",
            description="The share of drifted features, every model score's PSI and the "
            "frames' seeing, depth and zero point within the configured limits; skipped when "
            "there is nothing to compare with.",
        )
    ],
    # Lets the check be skipped (not yielded) when there is no reference at all.
    can_subset=True,
)
def drift_report(
    context: AssetExecutionContext,
    config: DriftConfig,
    parquet_io_manager: ResourceParam[ParquetStore],
):
    """Read tonight and its references from the catalog, compare, judge."""
    night = context.partition_key
    started = time.perf_counter()
    thresholds = config.thresholds()
    catalog = parquet_io_manager.catalog
    if catalog is None:
        raise ValueError(
            "drift_report reads the tables through the DuckDB catalog; "
            "set parquet_io_manager's catalog_path"
        )
    tonight = night_sample(catalog, [night])
    if tonight.frames.height == 0:
        raise ValueError(
            f"night {night} has no frames in the catalog: materialize its calibrated_exposures "
            "(and candidates) first"
        )
    before = earlier_nights(catalog, night, config.n_nights)
    earlier = night_sample(catalog, before) if before else None
    report = compare_night(
        night, tonight, training=training_rows(catalog), earlier=earlier, thresholds=thresholds
    )
    metadata = _metadata(report, tonight, earlier, time.perf_counter() - started)
    if AssetKey("drift_report") in context.selected_asset_keys:
        yield Output(report.table(), output_name="drift_report", metadata=metadata)
    if (
        AssetCheckKey(AssetKey("drift_report"), DRIFT_CHECK)
        not in context.selected_asset_check_keys
    ):
        return
    if not report.available:
        context.log.warning(f"drift check skipped for {night}: {metadata['drift_check']}")
        return
    result = drift_check_result(report, config.check_severity())
    if not result.passed:
        context.log.warning(f"drift on {night}: {result.description}")
    yield result
