"""A night's alerts from the tables already in the store: what the asset and the CLI share.

The night's candidates, with their cutouts, and their scores are read one
field at a time from the Parquet store
(:meth:`~astrid_assets.storage.io_managers.ParquetStore.read_partition`); the
earlier nights' detections, without cutouts, from the DuckDB catalog's
``candidates`` view (joined to ``candidate_scores`` where it exists), which
reads only the columns asked for from every earlier partition, on a disk or
in a bucket. Packets go to ``alerts/<night>/`` beside the store's tables
(``<store>/tables`` and ``<store>/alerts``, the same bucket in prod).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from upath import UPath

from astrid_assets.alerts.packets import (
    DETECTION_COLUMNS,
    DETECTION_SCHEMA,
    SCORES,
    AlertConfig,
    NightAlerts,
    build_alerts,
)

__all__ = ["NightTables", "alerts_folder", "earlier_detections", "load_night", "night_alerts"]

ALERTS_FOLDER = "alerts"


@dataclass
class NightTables:
    """A night's candidates (every field, cutouts and scores joined) and the earlier
    nights' detections; ``unscored_fields`` have candidates but no scores table."""

    night: str
    candidates: pl.DataFrame
    history: pl.DataFrame
    fields: list[str]
    unscored_fields: list[str]


def alerts_folder(store: Any, night: str) -> UPath:
    """``alerts/<night>`` beside the store's tables, with the store's credentials."""
    # UPathIOManager keeps its root, with its filesystem options, as _base_path.
    return store._base_path.parent / ALERTS_FOLDER / night


def load_night(store: Any, night: str, fields: Sequence[str]) -> NightTables:
    """Read a night's tables from ``store`` (a ParquetStore with a catalog).

    Raises
    ------
    ValueError
        When no field has a candidates table for ``night``, naming the night.
    """
    frames, present, unscored = [], [], []
    for field in fields:
        candidates = store.read_partition("candidates", night, field)
        if candidates is None:
            continue
        present.append(field)
        scores = store.read_partition("candidate_scores", night, field)
        if scores is None:
            unscored.append(field)
            candidates = candidates.with_columns(
                [pl.lit(None, dtype=pl.Float64).alias(name) for name in SCORES]
            )
        else:
            # Joined on the ids alone, then set beside the cutouts, which are not copied.
            joined = candidates.select("candidate_id").join(
                scores.select("candidate_id", *SCORES),
                on="candidate_id",
                how="left",
                maintain_order="left",
            )
            candidates = candidates.with_columns(joined.select(SCORES))
        frames.append(candidates)
    if not frames:
        raise ValueError(
            f"night {night}: no candidates table for any field ({', '.join(fields)}); "
            f"materialize candidates for night {night} first"
        )
    return NightTables(
        night=night,
        candidates=pl.concat(frames, how="diagonal_relaxed"),
        history=earlier_detections(store, night),
        fields=present,
        unscored_fields=unscored,
    )


def earlier_detections(store: Any, night: str) -> pl.DataFrame:
    """Every candidate of the nights before ``night``: :data:`DETECTION_COLUMNS` and
    :data:`SCORES` (null where a night x field has no scores), from the catalog."""
    catalog = store.catalog
    if catalog is None:
        raise ValueError(
            "alerts find the earlier nights' detections in the DuckDB catalog: give "
            "parquet_io_manager a catalog_path"
        )
    views = set(catalog.views())
    missing = {"candidates", "candidate_scores"} - views
    if missing:
        # Tables written without this catalog (copied in, or by another one).
        root = str(store._base_path)
        catalog.refresh({name: f"{root}/{name}/**/*.parquet" for name in sorted(missing)})
        views = set(catalog.views())
    if "candidates" not in views:  # no candidates table anywhere yet
        return pl.DataFrame(schema=DETECTION_SCHEMA)
    columns = ", ".join(f"c.{name}" for name in DETECTION_COLUMNS)
    if "candidate_scores" in views:
        scores = ", ".join(f"CAST(s.{name} AS DOUBLE) AS {name}" for name in SCORES)
        source = "candidates c LEFT JOIN candidate_scores s USING (candidate_id)"
    else:
        scores = ", ".join(f"CAST(NULL AS DOUBLE) AS {name}" for name in SCORES)
        source = "candidates c"
    return catalog.query(
        f"SELECT {columns}, {scores} FROM {source} WHERE c.night < ? "
        "ORDER BY c.night, c.field, c.id",
        [night],
    )


def night_alerts(
    store: Any, night: str, fields: Sequence[str], config: AlertConfig | None = None
) -> tuple[NightTables, NightAlerts]:
    """Read the night's tables and make its packets.

    Parameters
    ----------
    store
        The Parquet store (``ParquetStore``) with a catalog.
    night
        ``YYYY-MM-DD``.
    fields
        The survey's fields, in the order that numbers them.
    config
        :class:`AlertConfig`.

    Raises
    ------
    ValueError
        No candidates for the night; or a field with candidates but no
        scores while ``config.require_scores`` (both name the night).
    """
    config = config or AlertConfig()
    tables = load_night(store, night, fields)
    if tables.unscored_fields and config.require_scores:
        raise ValueError(
            f"night {night}: no candidate_scores for fields {', '.join(tables.unscored_fields)}; "
            f"materialize candidate_scores for night {night}, or set require_scores: false "
            "to alert on every candidate of those fields without a score cut"
        )
    alerts = build_alerts(
        tables.candidates,
        tables.history,
        fields=fields,
        config=config,
        unscored_fields=tables.unscored_fields,
    )
    return tables, alerts
