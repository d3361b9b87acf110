"""A night's alert packets: Avro, ZTF's layout, one file per candidate above the score cut."""

import time

from dagster import (
    AssetDep,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
)
from pydantic import Field
from upath import UPath

from astrid_assets.alerts import AlertConfig, alerts_folder, night_alerts, write_packets
from astrid_assets.alerts.association import MATCH_RADIUS_ARCSEC
from astrid_assets.partitions import NIGHT, by_dimension, field_partitions, night_partitions
from astrid_assets.storage.io_managers import ParquetStore

__all__ = ["AlertsConfig", "alerts"]

NIGHT_OF_FIELDS = by_dimension(NIGHT)


class AlertsConfig(Config):
    """Which candidates become alerts, and where the packets go."""

    min_ensemble: float = Field(
        default=0.5, ge=0, le=1, description="Least ensemble probability real of an alert."
    )
    require_scores: bool = Field(
        default=True,
        description="Fail when a field of the night has candidates but no scores; false: "
        "alert on every candidate of such a field, without a score cut.",
    )
    match_radius_arcsec: float = Field(
        default=MATCH_RADIUS_ARCSEC, gt=0, description="Largest distance to an object."
    )
    band: str | None = Field(default="r", description="Filter name written to the packets.")
    gzip_level: int = Field(
        default=1, ge=0, le=3, description="Deflate level of the cutouts (ISA-L's, 0 to 3)."
    )
    folder: str | None = Field(
        default=None,
        description="Directory or URL that gets the night's folder; default: alerts/ beside "
        "the store's tables (the same bucket in prod).",
    )

    def alert_config(self) -> AlertConfig:
        return AlertConfig(
            min_ensemble=self.min_ensemble,
            require_scores=self.require_scores,
            match_radius_arcsec=self.match_radius_arcsec,
            band=self.band,
            gzip_level=self.gzip_level,
        )


@asset(
    partitions_def=night_partitions,
    deps=[
        AssetDep("candidates", partition_mapping=NIGHT_OF_FIELDS),
        AssetDep("candidate_scores", partition_mapping=NIGHT_OF_FIELDS),
    ],
    group_name="alerts",
    kinds={"avro"},
    description="One Avro alert packet per candidate of the night above the ensemble score "
    "cut, in a schema modelled on ZTF's (astrid_assets/alerts/schema/astrid.alert.avsc): "
    "objectId kept across nights, the detection, the object's earlier detections and the "
    "cutout triplet as gzipped FITS; files <candid>.avro in alerts/<night>/.",
)
def alerts(
    context: AssetExecutionContext,
    config: AlertsConfig,
    parquet_io_manager: ResourceParam[ParquetStore],
) -> MaterializeResult:
    """Read the night's candidates and scores and the earlier nights; associate; write."""
    night = context.partition_key
    started = time.perf_counter()
    settings = config.alert_config()
    tables, built = night_alerts(
        parquet_io_manager, night, field_partitions.get_partition_keys(), settings
    )
    if tables.unscored_fields:
        context.log.warning(
            f"night {night}: no scores for {', '.join(tables.unscored_fields)}; "
            "their candidates are alerted without a score cut"
        )
    folder = (
        UPath(config.folder) / night if config.folder else alerts_folder(parquet_io_manager, night)
    )
    written = write_packets(built.packets, folder, workers=settings.workers, replace=True)
    seconds = time.perf_counter() - started
    n = len(built.packets)
    return MaterializeResult(
        metadata={
            "packets": n,
            "objects_new": built.new_objects,
            "objects_known": built.known_objects,
            "candidates": built.candidates,
            "below_score_cut": built.below_cut,
            "without_position": built.without_position,
            "min_ensemble": settings.min_ensemble,
            "fields": ", ".join(tables.fields),
            "unscored_fields": ", ".join(tables.unscored_fields) or "none",
            "earlier_detections": tables.history.height,
            "size_mb": round(written.bytes / 1e6, 3),
            "old_packets_removed": written.removed,
            "seconds": round(seconds, 2),
            "packets_per_second": round(n / seconds, 1) if seconds > 0 else 0.0,
            "folder": MetadataValue.path(str(folder)),
        }
    )
