"""Alert packets written per second on this machine's CPU.

Run with ``python benchmarks/bench_alerts.py [--n 5000] [--history 3] [--repeat 3]``.

A night of ``--n`` candidates over four fields, every one above the score
cut and each seen on ``--history`` earlier nights, becomes packets: the
association with the earlier nights, the records, three 63x63 cutouts each
(a noisy sky with a star and the transient, NaN beyond an image edge for one
in ten) as gzipped FITS, and ``--history`` prv_candidates; then one
``<candid>.avro`` file each in a temporary folder (``--folder`` to choose
where: its disk is part of the figure). The time counted is
:func:`~astrid_assets.alerts.packets.build_alerts` plus
:func:`~astrid_assets.alerts.avro.write_packets`, the asset's work once the
tables are read; the process's CPU time is printed beside it, since on a
shared machine the wall-clock rate says as much about the other processes.
Goal: >= 2,000 packets per second (LSST's average alert rate is about 300).
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from bench_orchestration import best_of  # this folder is on sys.path when run as a script

FIELDS = ("F01", "F02", "F03", "F04")
SIZE = 63


def _stamps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Science, reference, difference: sky noise, a star, the transient in science only."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE // 2
    star = np.exp(-(xx**2 + (yy - 9) ** 2) / (2 * 1.3**2))
    point = np.exp(-(xx**2 + yy**2) / (2 * 1.3**2))
    flux = rng.uniform(500, 5000, (n, 1, 1))
    reference = 200 + 3000 * star + rng.normal(0, 8, (n, SIZE, SIZE))
    science = 200 + 3000 * star + flux * point + rng.normal(0, 12, (n, SIZE, SIZE))
    stamps = np.stack([science, reference, science - reference], axis=1).astype(np.float32)
    stamps[::10, :, :, :12] = np.nan
    return stamps


def night_tables(n: int, history: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Tonight's candidates with cutouts and scores, and ``history`` earlier nights of them."""
    from astropy.table import Table

    from astrid_assets.alerts.packets import DETECTION_COLUMNS, SCORES
    from astrid_assets.defs.difference import candidate_frame
    from astrid_assets.science.detection import CANDIDATE_COLUMNS

    rng = np.random.default_rng(seed)
    per_field = n // len(FIELDS)
    nights = [str(np.datetime64("2026-01-05") + k) for k in range(history + 1)]
    frames = []
    for k, night in enumerate(nights):
        for f, field in enumerate(FIELDS):
            table = Table()
            for name, (dtype, _, _) in CANDIDATE_COLUMNS.items():
                table[name] = np.zeros(per_field, {"i8": np.int64, "f8": float, "?": bool}[dtype])
            table["id"] = np.arange(1, per_field + 1)
            field_rng = np.random.default_rng(f)  # the same sources every night
            table["ra"] = 150.0 + 2.0 * f + field_rng.uniform(0, 1.5, per_field)
            table["dec"] = 2.0 + field_rng.uniform(0, 1.5, per_field)
            table["ra"] += rng.normal(0, 0.2 / 3600, per_field)
            table["x"], table["y"] = rng.uniform(40, 2000, (2, per_field))
            table["sign"] = np.where(rng.random(per_field) < 0.8, 1, -1)
            table["flux_err"] = rng.uniform(40, 60, per_field)
            table["snr"] = table["sign"] * rng.uniform(5, 50, per_field)
            table["flux"] = table["snr"] * table["flux_err"]
            table["score_peak"] = table["snr"] * 1.05
            table["mag"] = 28.0 - 2.5 * np.log10(np.abs(table["flux"]))
            table["mag_err"] = 1.0857 / np.abs(table["snr"])
            table["mjd"] = np.full(per_field, 61045.2 + k)
            table["chi2"] = rng.uniform(0.8, 1.5, per_field)
            table["fwhm"] = np.full(per_field, 3.0)
            tonight = k == len(nights) - 1
            stamps = _stamps(rng, per_field) if tonight else np.zeros((per_field, 3, 1, 1))
            frame = candidate_frame(table, stamps, night, field, {"frame_quality_ok": True})
            scores = rng.uniform(0.5, 1.0, (len(SCORES), per_field))
            frame = frame.with_columns(
                [pl.Series(name, v) for name, v in zip(SCORES, scores, strict=True)]
            )
            frames.append(frame if tonight else frame.select(*DETECTION_COLUMNS, *SCORES))
    tonight = pl.concat(frames[-len(FIELDS) :])
    return tonight, pl.concat(frames[: -len(FIELDS)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--history", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gzip-level", type=int, default=1)
    parser.add_argument("--folder", type=Path, default=None, help="Where to write (a temp dir).")
    args = parser.parse_args()

    from astrid_assets.alerts.avro import packet_bytes, write_packets
    from astrid_assets.alerts.packets import AlertConfig, build_alerts

    tonight, history = night_tables(args.n, args.history)
    config = AlertConfig(gzip_level=args.gzip_level, workers=args.workers)
    root = Path(tempfile.mkdtemp(prefix="bench_alerts_", dir=args.folder))
    timings: dict[str, float] = {}
    splits: list[dict[str, float]] = []

    def build():
        return build_alerts(tonight, history, fields=FIELDS, config=config)

    def run() -> None:
        cpu, started = time.process_time(), time.perf_counter()
        built = build()
        timings["build"] = time.perf_counter() - started
        started = time.perf_counter()
        write_packets(built.packets, root / f"night{len(splits)}", workers=args.workers)
        timings["write"] = time.perf_counter() - started
        timings["cpu"] = time.process_time() - cpu
        splits.append(dict(timings))

    try:
        built = build()
        n = len(built.packets)
        sizes = [len(packet_bytes(p)) for p in built.packets[:200]]
        prv = np.mean([len(p["prv_candidates"] or ()) for p in built.packets])
        total = best_of(args.repeat, run)
        best = min(splits, key=lambda s: s["build"] + s["write"])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rate = n / total
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"{len(os.sched_getaffinity(0))} cores, load average {load}; {args.workers} workers, "
        f"gzip level {args.gzip_level}; best of {args.repeat}; written under {root.parent}"
    )
    print(
        f"{n} packets, {prv:.1f} prv_candidates each, {np.mean(sizes) / 1e3:.1f} kB each: "
        f"build {best['build']:.2f} s ({n / best['build']:,.0f}/s), "
        f"write {best['write']:.2f} s ({n / best['write']:,.0f}/s)"
    )
    print(
        f"CPU time (every thread of the process): {best['cpu'] / n * 1e3:.2f} ms a packet; "
        "a wall-clock rate below n / CPU time means other processes had the cores"
    )
    print(
        f"packets written: {rate:,.0f} per second (goal >= 2,000): "
        f"{'PASS' if rate >= 2000 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
