"""How long a folder of FITS takes to become a survey, cold and from the header index.

Every Dagster step process loads the code location, and with it the
source's fields (the field partitions): a ``LocalFitsSource`` reads every
header under its root the first time and keeps them in its index, so later
loads read only new or changed files. This writes ``--files`` copies of
the real DECam stack of ../shared/data/real/images/decam_sfft (a third
plain, a third gzip, a third tile-compressed), each with its own field
and night, and times:

* the cold scan (every header read),
* a load from the index (nothing read),
* a load after ``--changed`` files were rewritten,
* reading one exposure of each compression.

    .venv/bin/python benchmarks/bench_local_source.py --files 600
"""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from astrid_assets.sources.local import LocalFitsSource  # noqa: E402

STACK = REPO.parent / "shared" / "data" / "real" / "images" / "decam_sfft" / "Stack-DEC-OBS04.fits"


def write_frame(root: Path, k: int, data: np.ndarray, header: fits.Header, mjd: float) -> Path:
    header = header.copy()
    header["OBJECT"] = f"FIELD{k % 50:02d}"
    header["MJD-OBS"] = mjd
    kind = k % 3
    if kind == 0:
        path = root / f"f{k:05d}.fits"
        fits.PrimaryHDU(data, header).writeto(path)
    elif kind == 1:
        path = root / f"f{k:05d}.fits.gz"
        buffer = io.BytesIO()
        fits.PrimaryHDU(data, header).writeto(buffer)
        path.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=1))
    else:
        path = root / f"f{k:05d}.fits.fz"
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header)]).writeto(path)
    return path


def timed(function, repeat: int = 1) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--changed", type=int, default=10)
    args = parser.parse_args()
    with fits.open(STACK) as hdul:
        data, header = hdul[0].data.astype(np.float32), hdul[0].header.copy()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "frames"
        root.mkdir()
        index = Path(folder) / "index.json"
        started = time.perf_counter()
        for k in range(args.files):
            write_frame(root, k, data, header, 58000.3 + k // 50)
        print(f"wrote {args.files} frames in {time.perf_counter() - started:.1f} s")

        def load(cache: str | None = str(index)):
            source = LocalFitsSource(root=str(root), index_cache=cache)
            return source, source.fields()

        cold, (source, fields) = timed(load)
        warm, _ = timed(load, repeat=3)
        for k in range(args.changed):
            for old in root.glob(f"f{k:05d}.*"):
                old.unlink()
            write_frame(root, k, data, header, 59000.3)
        changed, _ = timed(load)
        unindexed, _ = timed(lambda: load(""))
        print(f"{len(fields)} fields, {len(source.nights() or [])} nights")
        per_file = 1e3 * cold / args.files
        print(f"cold scan (every header read)  {cold:7.2f} s  {per_file:.2f} ms/file")
        print(f"from the index                 {warm:7.2f} s")
        print(f"{args.changed} files changed              {changed:7.2f} s")
        print(f"index turned off               {unindexed:7.2f} s")
        for suffix in (".fits", ".fits.gz", ".fits.fz"):
            frame = next(f for f in source.frames if f.path.endswith(suffix))
            seconds, _ = timed(lambda f=frame: source.exposure(f.night, f.field), repeat=5)
            print(f"one exposure, {suffix:9s}          {1e3 * seconds:7.1f} ms")


if __name__ == "__main__":
    main()
