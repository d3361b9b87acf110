"""What the vetters see: the queue of candidates, one candidate, its light curve, the consensus.

Reads the DuckDB catalog's views ``candidates`` and, once the models have
scored something, ``candidate_scores``. Every value a user typed (night,
field, score range, a candidate id) reaches DuckDB as a bound parameter;
the SQL text is built only from the constant fragments below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from astrid_assets.labels import LABELS

__all__ = [
    "LIGHT_CURVE_RADIUS_ARCSEC",
    "ORDERS",
    "SCORE_COLUMNS",
    "CandidateQueries",
    "QueueFilter",
    "consensus_table",
]

ORDERS = ("score", "uncertain", "snr")
SCORE_COLUMNS = ("realbogus", "unet", "isolation_forest", "one_class_svm", "ensemble")
CANDIDATE_COLUMNS = (
    "candidate_id",
    "night",
    "field",
    "x",
    "y",
    "ra",
    "dec",
    "mjd",
    "mag",
    "mag_err",
    "snr",
    "sign",
    "score_peak",
    "fwhm",
    "ellipticity",
    "dipole",
)
LIGHT_CURVE_RADIUS_ARCSEC = 1.5

_ORDER_SQL = {
    "score": "s.ensemble DESC NULLS LAST, c.snr DESC, c.candidate_id",
    "uncertain": "abs(s.ensemble - 0.5) ASC NULLS LAST, c.snr DESC, c.candidate_id",
    "snr": "c.snr DESC, c.candidate_id",
}


@dataclass(frozen=True)
class QueueFilter:
    """Which candidates, in which order.

    ``min_score`` and ``max_score`` bound the ensemble score (a candidate
    with no score is then left out); ``order`` is ``score`` (ensemble, best
    first), ``uncertain`` (|p - 0.5| smallest first: the labels a model
    learns most from) or ``snr``.
    """

    night: str | None = None
    field: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    order: Literal["score", "uncertain", "snr"] = "score"
    limit: int = 500

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")


class CandidateQueries:
    """Read-only queries on a :class:`~astrid_assets.storage.catalog.Catalog`."""

    def __init__(self, catalog: Any):
        self.catalog = catalog

    def _views(self) -> set[str]:
        return set(self.catalog.views())

    def _scored_from(self, views: set[str]) -> tuple[str, str]:
        """The score columns and the FROM clause: joined to the scores when there are any."""
        if "candidate_scores" in views:
            scores = ", ".join(f"s.{name}" for name in SCORE_COLUMNS)
            return scores, "candidates c LEFT JOIN candidate_scores s USING (candidate_id)"
        scores = ", ".join(f"CAST(NULL AS DOUBLE) AS {name}" for name in SCORE_COLUMNS)
        return scores, "candidates c, (SELECT CAST(NULL AS DOUBLE) AS ensemble) s"

    def queue(self, selection: QueueFilter) -> pl.DataFrame:
        """The candidates ``selection`` picks, in its order, at most ``limit`` of them."""
        views = self._views()
        if "candidates" not in views:
            return _empty_queue()
        scores, source = self._scored_from(views)
        where, parameters = [], []
        if selection.night:
            where.append("c.night = ?")
            parameters.append(selection.night)
        if selection.field:
            where.append("c.field = ?")
            parameters.append(selection.field)
        if selection.min_score is not None:
            where.append("s.ensemble >= ?")
            parameters.append(selection.min_score)
        if selection.max_score is not None:
            where.append("s.ensemble <= ?")
            parameters.append(selection.max_score)
        columns = ", ".join(f"c.{name}" for name in CANDIDATE_COLUMNS)
        sql = (
            f"SELECT {columns}, {scores} FROM {source}"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY {_ORDER_SQL[selection.order]} LIMIT ?"
        )
        return self.catalog.query(sql, [*parameters, selection.limit])

    def candidate(self, candidate_id: str) -> dict[str, Any] | None:
        """One candidate's row with its scores, or None when there is no such candidate."""
        views = self._views()
        if "candidates" not in views:
            return None
        scores, source = self._scored_from(views)
        rows = self.catalog.query(
            f"SELECT c.*, {scores} FROM {source} WHERE c.candidate_id = ? LIMIT 1",
            [candidate_id],
        )
        return rows.to_dicts()[0] if rows.height else None

    def light_curve(
        self, candidate: dict[str, Any], radius_arcsec: float = LIGHT_CURVE_RADIUS_ARCSEC
    ) -> pl.DataFrame:
        """Detections at ``candidate``'s position (within ``radius_arcsec``) on every night.

        The candidate itself and the nearest detection of each other night,
        by MJD. Separations use the small-angle formula, right ascension
        scaled by cos(dec) and wrapped at 0/360 deg.
        """
        ra, dec = float(candidate["ra"]), float(candidate["dec"])
        radius = radius_arcsec / 3600.0
        cos_dec = max(math.cos(math.radians(dec)), 1e-6)
        sql = """
            WITH near AS (
                SELECT candidate_id, night, field, mjd, mag, mag_err, snr, sign,
                       3600 * sqrt(
                           power(((ra - ? + 540) % 360 - 180) * ?, 2) + power(dec - ?, 2)
                       ) AS separation_arcsec
                FROM candidates
                WHERE dec BETWEEN ? AND ? AND (night <> ? OR candidate_id = ?)
            )
            SELECT * EXCLUDE (rank) FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY night ORDER BY candidate_id <> ?, separation_arcsec
                ) AS rank
                FROM near WHERE separation_arcsec <= ?
            ) WHERE rank = 1 ORDER BY mjd, night
        """
        candidate_id = str(candidate["candidate_id"])
        parameters = [
            ra,
            cos_dec,
            dec,
            dec - radius,
            dec + radius,
            candidate["night"],
            candidate_id,
            candidate_id,
            radius_arcsec,
        ]
        return self.catalog.query(sql, parameters)

    def nights_and_fields(self) -> tuple[list[str], list[str]]:
        """The nights and the fields that have candidates, for the filter form."""
        if "candidates" not in self._views():
            return [], []
        nights = self.catalog.query("SELECT DISTINCT night FROM candidates ORDER BY night")
        fields = self.catalog.query("SELECT DISTINCT field FROM candidates ORDER BY field")
        return nights["night"].to_list(), fields["field"].to_list()

    def where_is(self, candidate_id: str) -> tuple[str, str] | None:
        """The night and field of ``candidate_id``, or None."""
        if "candidates" not in self._views():
            return None
        rows = self.catalog.query(
            "SELECT night, field FROM candidates WHERE candidate_id = ? LIMIT 1", [candidate_id]
        )
        return (rows["night"][0], rows["field"][0]) if rows.height else None


def _empty_queue() -> pl.DataFrame:
    schema: dict[str, Any] = {name: pl.Float64 for name in (*CANDIDATE_COLUMNS, *SCORE_COLUMNS)}
    schema.update(candidate_id=pl.String, night=pl.String, field=pl.String, sign=pl.Int64)
    return pl.DataFrame(schema=schema)


def consensus_table(latest: pl.DataFrame, *, disagreements_only: bool = False) -> pl.DataFrame:
    """Per candidate: each vetter's last label, the votes, and whether they disagree.

    ``latest`` is :meth:`LabelStore.latest <astrid_assets.labels.LabelStore.latest>`.
    Returns ``candidate_id``, ``night``, ``field``, ``n_real``, ``n_bogus``,
    ``n_unsure``, ``votes`` (``vetter: label``, by vetter), ``consensus``
    (the majority of real against bogus; ``tie`` when equal, ``unsure``
    when nobody said either) and ``disagree`` (someone said real and
    someone bogus), disagreements first.
    """
    counts = [
        (pl.col("label") == label).sum().cast(pl.Int32).alias(f"n_{label}") for label in LABELS
    ]
    table = (
        latest.sort("vetter")
        .group_by(["candidate_id", "night", "field"])
        .agg(
            *counts,
            pl.concat_str(pl.col("vetter"), pl.lit(": "), pl.col("label")).alias("votes"),
            pl.col("created_at").max().alias("last_label_at"),
        )
        .with_columns(
            pl.when(pl.col("n_real") > pl.col("n_bogus"))
            .then(pl.lit("real"))
            .when(pl.col("n_bogus") > pl.col("n_real"))
            .then(pl.lit("bogus"))
            .when(pl.col("n_real") > 0)
            .then(pl.lit("tie"))
            .otherwise(pl.lit("unsure"))
            .alias("consensus"),
            ((pl.col("n_real") > 0) & (pl.col("n_bogus") > 0)).alias("disagree"),
        )
        .sort(["disagree", "candidate_id"], descending=[True, False])
    )
    return table.filter(pl.col("disagree")) if disagreements_only else table
