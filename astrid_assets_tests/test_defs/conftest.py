"""A small simulated survey materialized through the graph on temporary storage."""

import dagster as dg
import pytest

from astrid_assets.labels import LabelStore
from astrid_assets.sources import SimulatedSurvey
from astrid_assets.storage.io_managers import FitsIOManager, ParquetIOManager
from astrid_assets.tracking import MlflowTracking

NIGHT = "2026-01-05"
SIZE = 512


def graph_resources(root, landing=None) -> dict:
    return {
        "survey": SimulatedSurvey(size=SIZE, landing_dir=str(landing) if landing else None),
        "fits_io_manager": FitsIOManager(root=str(root / "images")),
        "parquet_io_manager": ParquetIOManager(
            root=str(root / "tables"), catalog_path=str(root / "astrid.duckdb")
        ),
        "labels": LabelStore(sqlite_path=str(root / "labels.sqlite")),
        "mlflow": MlflowTracking(
            tracking_uri=f"sqlite:///{root / 'mlflow.sqlite'}",
            artifact_location=(root / "mlflow-artifacts").as_uri(),
        ),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The root of a store where one night's masters and two references exist."""
    from astrid_assets.definitions import defs

    root = tmp_path_factory.mktemp("store")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("night", [NIGHT])
    resources = graph_resources(root)
    assets = defs.assets
    dg.materialize(
        assets,
        selection=["calibration_masters"],
        partition_key=NIGHT,
        instance=instance,
        resources=resources,
    )
    for field in ("F01", "F02", "F03", "F04"):
        dg.materialize(
            assets,
            selection=["reference_images"],
            partition_key=field,
            instance=instance,
            resources=resources,
        )
    return root, instance
