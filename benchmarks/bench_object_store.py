"""Production mode's cost: one partition with its products on local disk against an S3
bucket (and Dagster's instance on SQLite against PostgreSQL).

Run with ``python benchmarks/bench_object_store.py [--size 2048] [--repeat 3]``.

Both sides run the night x field steps (``raw_exposures`` to ``candidates``)
with ``dagster.materialize`` in this process, the night's masters and the
field's reference already made. ``local`` is the embedded default;
``prod`` is ``ASTRID_ENV=prod`` against a SeaweedFS server (``weed mini``)
and a PostgreSQL 15 server started here on loopback, as the tests start
them. Loopback hides network latency and bandwidth: against R2 over the
internet, add the transfer of each partition's objects (listed below).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

NIGHT, FIELD = "2026-01-05", "F01"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the servers the tests use


def timed_chain(repeat: int) -> tuple[float, object]:
    """Masters and reference once, then the best of ``repeat`` runs of the chain."""
    import dagster as dg

    from astrid_assets.definitions import defs
    from astrid_assets.defs.automation import NIGHT_FIELD_ASSETS
    from astrid_assets.partitions import night_field_key
    from astrid_assets.resources import default_resources

    resources = default_resources()
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("night", [NIGHT])
    for selection, key in ((["calibration_masters"], NIGHT), (["reference_images"], FIELD)):
        dg.materialize(
            defs.assets,
            selection=selection,
            partition_key=key,
            instance=instance,
            resources=resources,
        )
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = dg.materialize(
            defs.assets,
            selection=list(NIGHT_FIELD_ASSETS),
            partition_key=night_field_key(NIGHT, FIELD),
            instance=instance,
            resources=resources,
        )
        best = min(best, time.perf_counter() - start)
        assert result.success
    instance.dispose()
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from astrid_assets.settings import configure_environment
    from astrid_assets_tests.servers import PostgresServer, S3Server

    work = Path(tempfile.mkdtemp(prefix="astrid-bench-store-"))
    base = {"ASTRID_SIM_SIZE": str(args.size), "ASTRID_MAX_PROCESSES": "1"}

    os.environ.update(base | {"ASTRID_HOME": str(work / "local"), "DAGSTER_HOME": str(work)})
    (work / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    configure_environment()
    t_local, _ = timed_chain(args.repeat)

    with PostgresServer() as postgres, S3Server() as s3:
        postgres.create_database("astrid")
        dagster_home = work / "prod-dagster"
        dagster_home.mkdir()
        shutil.copy(REPO / "deploy" / "dagster" / "dagster.yaml", dagster_home)
        for name in ("ASTRID_DAGSTER_STORAGE", "ASTRID_DAGSTER_LOGS"):
            os.environ.pop(name, None)
        os.environ.update(
            {
                "ASTRID_ENV": "prod",
                "ASTRID_HOME": str(work / "prod"),
                "DAGSTER_HOME": str(dagster_home),
                "ASTRID_S3_BUCKET": s3.bucket,
                "ASTRID_S3_ENDPOINT_URL": s3.endpoint_url,
                "AWS_ACCESS_KEY_ID": s3.access_key,
                "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "ASTRID_PG_HOST": postgres.host,
                "ASTRID_PG_PORT": str(postgres.port),
                "ASTRID_PG_USER": postgres.user,
                "ASTRID_PG_PASSWORD": postgres.password,
                "ASTRID_PG_DB": "astrid",
                "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # not used by these steps
            }
        )
        configure_environment()
        t_prod, _ = timed_chain(args.repeat)
        fs = s3.filesystem()
        objects = [p for p in fs.find(s3.bucket) if f"/{NIGHT}/{FIELD}." in p]
        megabytes = sum(fs.size(p) for p in objects) / 1e6

    shutil.rmtree(work, ignore_errors=True)
    print(f"{args.size}x{args.size}, one night x field partition, best of {args.repeat}")
    print(f"local disk, SQLite instance         {t_local:7.2f} s")
    print(
        f"S3 (weed mini), PostgreSQL instance {t_prod:7.2f} s   "
        f"{100 * (t_prod - t_local) / t_local:+5.0f}%"
    )
    print(f"objects of the partition: {len(objects)}, {megabytes:.1f} MB")


if __name__ == "__main__":
    main()
