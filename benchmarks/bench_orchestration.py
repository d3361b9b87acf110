"""Orchestration overhead: one partition through the asset graph against its science alone.

Run with ``python benchmarks/bench_orchestration.py [--size 2048] [--repeat 3]``.

The partition is one night x field of the simulated survey, with the night's
calibration masters and the field's reference already materialized (they
are shared by every field of the night and every night of the field). Its
four steps are ``raw_exposures``, ``calibrated_exposures``,
``difference_images`` and ``candidates``.

* ``science``: the same science calls in one process, inputs in memory,
  nothing written: ``survey.exposure``, ``calibrate``, ``subtract_pair``,
  ``find_candidates``.
* ``materialize``: ``dagster.materialize`` of the four steps in this process
  with the real IO managers (compressed FITS and Parquet written
  atomically, the DuckDB catalog updated, each step reading its inputs back
  from the store), asset checks and metadata previews included.
* ``launched``: the same four steps as a real run in a fresh process,
  ``dagster asset materialize`` with the code location's multiprocess
  executor (forkserver with the definitions preloaded), as the daemon
  launches runs; the wall time includes starting Python and importing the
  code location.

Overhead is (graph - science) / science; the goal is at most 50%.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NIGHT, FIELD = "2026-01-05", "F01"


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="astrid-bench-"))
    os.environ.update(
        {"ASTRID_HOME": str(home), "ASTRID_SIM_SIZE": str(args.size), "DAGSTER_HOME": str(home)}
    )
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    import dagster as dg

    from astrid_assets.definitions import defs
    from astrid_assets.defs.automation import NIGHT_FIELD_ASSETS as STEPS
    from astrid_assets.defs.calibration import calibrate
    from astrid_assets.partitions import night_field_key
    from astrid_assets.science.pipeline import DiffConfig, find_candidates, subtract_pair
    from astrid_assets.science.processing import make_calibration_masters

    graph_assets = defs.assets
    resources = defs.resources
    survey = resources["survey"]
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("night", [NIGHT])

    print(f"{args.size}x{args.size}, best of {args.repeat}; setting up masters and reference")
    dg.materialize(
        graph_assets,
        selection=["calibration_masters"],
        partition_key=NIGHT,
        instance=instance,
        resources=resources,
    )
    dg.materialize(
        graph_assets,
        selection=["reference_images"],
        partition_key=FIELD,
        instance=instance,
        resources=resources,
    )

    # Science alone, with the same masters and reference held in memory.
    frames = survey.calibration_frames(NIGHT)
    masters = make_calibration_masters(frames.biases, frames.flats)
    from astrid_assets.storage.fits_codec import from_bytes

    stored = home / "store" / "images" / "reference_images" / f"{FIELD}.fits"
    reference = from_bytes(stored.read_bytes())

    def science() -> None:
        raw = survey.exposure(NIGHT, FIELD)
        processed = calibrate(raw, masters, survey)
        subtraction = subtract_pair(processed.prepared(), reference.prepared, DiffConfig())
        find_candidates(subtraction, processed.prepared(), reference.prepared, DiffConfig())

    t_science = best_of(args.repeat, science)
    key = night_field_key(NIGHT, FIELD)

    def in_process() -> None:
        result = dg.materialize(
            graph_assets,
            selection=STEPS,
            partition_key=key,
            instance=instance,
            resources=resources,
        )
        assert result.success

    t_materialize = best_of(args.repeat, in_process)

    dagster = Path(sys.executable).with_name("dagster")
    command = [
        str(dagster),
        "asset",
        "materialize",
        "-m",
        "astrid_assets.definitions",
        "--select",
        ",".join(STEPS),
        "--partition",
        f"{FIELD}|{NIGHT}",
    ]

    def launched() -> None:
        subprocess.run(command, check=True, capture_output=True)

    t_launched = best_of(args.repeat, launched)
    print(f"science alone           {t_science:7.2f} s")
    for label, t in (("materialize in-process", t_materialize), ("launched run", t_launched)):
        print(f"{label:23s} {t:7.2f} s   overhead {100 * (t - t_science) / t_science:5.0f}%")


if __name__ == "__main__":
    main()
