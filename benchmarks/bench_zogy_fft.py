"""Timing of ZOGY against the FFTs it needs, and its peak memory.

Run with ``python benchmarks/bench_zogy_fft.py [--size 2048] [--repeat 3]
[--memory-size 4096]``.

For each precision, :func:`astrid_assets.science.zogy.zogy_subtract` runs on
a simulated pair (stars, noise, variance maps with the stars' photon noise,
a few masked pixels) with known PSFs and a given flux ratio, computing D and
S_corr with the source-noise and astrometric terms. The FFT-only time is
that of exactly as many ``scipy.fft.rfft2`` / ``irfft2`` calls as the run
made (``details["n_fft"]``), on arrays of the same shape and dtype, in the
same process. The budget is ZOGY <= 3x its FFTs. A second case without
variance maps and astrometric term (fewest transforms) is timed too.

The peak memory of one float32 call at ``--memory-size`` is measured in a
fresh subprocess: the tracemalloc peak of the call (NumPy's allocations)
and the growth of the process's maximum resident set size (which includes
the FFT library's own work buffers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft as sp_fft

from astrid_assets.science.psf import moffat_psf, psf_to_image_shape
from astrid_assets.science.zogy import ZogyConfig, zogy_subtract

_PAIR_NAMES = ("new", "ref", "psf_new", "psf_ref", "var_new", "var_ref", "mask")
FLUX_RATIO = 1.7
SIGMA_NEW, SIGMA_REF = 8.0, 4.0


def simulated_pair(size: int, dtype: str, seed: int = 0) -> dict:
    """A new/reference pair of one star field with different PSFs and noise."""
    rng = np.random.default_rng(seed)
    psf_new = moffat_psf(2.5, ellipticity=0.1, theta=0.3, size=25)
    psf_ref = moffat_psf(3.8, ellipticity=0.2, theta=1.0, size=25)
    sky = np.zeros((size, size))
    n_stars = size * size // 2000
    ys = rng.integers(0, size, n_stars)
    xs = rng.integers(0, size, n_stars)
    np.add.at(sky, (ys, xs), 10 ** rng.uniform(2.5, 5.5, n_stars))
    sky_hat = sp_fft.rfft2(sky)
    shape = sky.shape
    new_model = sp_fft.irfft2(sky_hat * sp_fft.rfft2(psf_to_image_shape(psf_new, shape)), s=shape)
    ref_model = FLUX_RATIO * sp_fft.irfft2(
        sky_hat * sp_fft.rfft2(psf_to_image_shape(psf_ref, shape)), s=shape
    )
    var_new = SIGMA_NEW**2 + np.clip(new_model, 0, None)
    var_ref = SIGMA_REF**2 + np.clip(ref_model, 0, None) * FLUX_RATIO
    new = new_model + rng.normal(size=shape) * np.sqrt(var_new)
    ref = ref_model + rng.normal(size=shape) * np.sqrt(var_ref)
    mask = np.zeros(shape, dtype=bool)
    mask[rng.integers(0, size, 200), rng.integers(0, size, 200)] = True
    return {
        "new": new.astype(dtype),
        "ref": ref.astype(dtype),
        "psf_new": psf_new,
        "psf_ref": psf_ref,
        "var_new": var_new.astype(dtype),
        "var_ref": var_ref.astype(dtype),
        "mask": mask,
    }


def time_zogy(pair: dict, dtype: str, full: bool, repeat: int) -> tuple[float, dict]:
    config = ZogyConfig(
        flux_ratio=FLUX_RATIO,
        dtype=dtype,
        astrometric_sigma=(0.05, 0.05) if full else (0.0, 0.0),
    )
    extra = {"var_new": pair["var_new"], "var_ref": pair["var_ref"]} if full else {}
    best, result = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = zogy_subtract(
            pair["new"],
            pair["ref"],
            pair["psf_new"],
            pair["psf_ref"],
            sigma_new=SIGMA_NEW,
            sigma_ref=SIGMA_REF,
            mask=pair["mask"],
            config=config,
            **extra,
        )
        best = min(best, time.perf_counter() - t0)
    return best, result.details["n_fft"]


def time_ffts(image: np.ndarray, n_forward: int, n_inverse: int, repeat: int) -> float:
    """Best time of ``n_forward`` rfft2 and ``n_inverse`` irfft2 calls."""
    shape = image.shape
    spectrum = sp_fft.rfft2(image, workers=-1)
    best = np.inf
    for _ in range(repeat):
        # The inverse transforms may overwrite their input, as in ZOGY.
        inputs = [spectrum.copy() for _ in range(n_inverse)]
        t0 = time.perf_counter()
        for _ in range(n_forward):
            sp_fft.rfft2(image, workers=-1)
        for spec in inputs:
            sp_fft.irfft2(spec, s=shape, workers=-1, overwrite_x=True)
        best = min(best, time.perf_counter() - t0)
        del inputs
    return best


def _peak_rss_kib() -> int:
    """High-water mark of this process's resident memory, KiB.

    ``VmHWM`` is reset by ``exec``, unlike ``ru_maxrss``, which a child
    inherits from the parent it was forked from.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(folder: str) -> None:
    """Print, as JSON, the peak memory of one float32 zogy_subtract call.

    The inputs are read from ``folder`` so that making them does not raise
    the process's resident-set high-water mark before the call.
    """
    import gc
    import tracemalloc

    pair = {name: np.load(Path(folder) / f"{name}.npy") for name in _PAIR_NAMES}
    gc.collect()
    rss0 = _peak_rss_kib()
    tracemalloc.start()
    t0 = time.perf_counter()
    zogy_subtract(
        pair["new"],
        pair["ref"],
        pair["psf_new"],
        pair["psf_ref"],
        sigma_new=SIGMA_NEW,
        sigma_ref=SIGMA_REF,
        var_new=pair["var_new"],
        var_ref=pair["var_ref"],
        mask=pair["mask"],
        config=ZogyConfig(flux_ratio=FLUX_RATIO, astrometric_sigma=(0.05, 0.05)),
    )
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = _peak_rss_kib()
    print(
        json.dumps(
            {
                "size": pair["new"].shape[0],
                "seconds": seconds,
                "tracemalloc_peak_mib": peak / 2**20,
                "maxrss_growth_mib": (rss1 - rss0) / 1024,
                "inputs_mib": sum(v.nbytes for v in pair.values()) / 2**20,
            }
        )
    )


def measure_memory(size: int) -> dict:
    """Run :func:`memory_child` in a fresh interpreter on a saved pair."""
    with tempfile.TemporaryDirectory() as folder:
        pair = simulated_pair(size, "float32")
        for name in _PAIR_NAMES:
            np.save(Path(folder) / f"{name}.npy", pair[name])
        del pair
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", folder],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side, pixels")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument(
        "--memory-size", type=int, default=4096, help="image side for the memory check; 0 skips"
    )
    parser.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    print(f"ZOGY on {args.size}x{args.size}, best of {args.repeat}; PSFs known, flux ratio given")
    header = (
        f"{'case':<34} {'dtype':<8} {'fwd':>3} {'inv':>3} {'zogy s':>8} {'FFTs s':>8} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for dtype in ("float32", "float64"):
        pair = simulated_pair(args.size, dtype)
        for full, label in (
            (True, "D, S_corr (var maps, astrometric)"),
            (False, "D, S_corr (background only)"),
        ):
            seconds, n_fft = time_zogy(pair, dtype, full, args.repeat)
            fft_seconds = time_ffts(pair["new"], n_fft["forward"], n_fft["inverse"], args.repeat)
            print(
                f"{label:<34} {dtype:<8} {n_fft['forward']:>3} {n_fft['inverse']:>3} "
                f"{seconds:>8.3f} {fft_seconds:>8.3f} {seconds / fft_seconds:>6.2f}"
            )
        del pair

    if args.memory_size:
        mem = measure_memory(args.memory_size)
        print(
            f"\nPeak memory, one float32 call at {mem['size']}x{mem['size']} "
            f"(var maps, mask, astrometric term; {mem['seconds']:.2f} s): "
            f"tracemalloc {mem['tracemalloc_peak_mib']:.0f} MiB, "
            f"max RSS growth {mem['maxrss_growth_mib']:.0f} MiB "
            f"(inputs, not counted: {mem['inputs_mib']:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
