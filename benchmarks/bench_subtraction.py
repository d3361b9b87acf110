"""Speed of the whole ``astrid diff`` and of the peers, on one simulated 2048x2048 pair.

    .venv/bin/python benchmarks/bench_subtraction.py [--size 2048] [--memory-size 4096]
        [--peers sfft,zogyp,properimage] [--peer-timeout 300]

1. Builds a field reference (coadd of the best epochs) and one science night
   of the simulated survey with injected point sources (S/N 2-20), aligns the
   science image onto the reference grid and writes both as FITS, with a sky
   pedestal and the header keywords a camera writes, so that every code gets
   the same two files.
2. Times ``astrid diff`` on them in this process (best of ``--repeat``,
   imports excluded) and as a command (imports included).
3. Runs ``astrid diff`` at ``--memory-size`` in a fresh process and reports
   its peak resident memory.
4. Runs each peer that ``benchmarks/peers/setup_peers.sh`` installed on the
   same files (in its own virtualenv) and reports its time, the ratio to
   ours, and its completeness when its detection threshold is set to give as
   many false candidates as ours gives at 5 sigma.
5. Runs ``benchmarks/bench_zogy_fft.py`` (ZOGY against the FFTs it needs).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from astropy.io import fits

from astrid_assets.commands.diff import run_diff_files
from astrid_assets.science.align import align_to_grid
from astrid_assets.science.detection import DetectionConfig, detect_candidates
from astrid_assets.science.injection import match_to_truth
from astrid_assets.science.pipeline import bright_star_xy
from astrid_assets.science.simulate import SurveyConfig, field_names, field_wcs, survey_nights
from astrid_assets.science.subtraction import SubtractionResult
from astrid_assets.science.survey import (
    grid_stars,
    inject_fakes,
    process_simulated,
    simulated_reference,
    truth_on_grid,
)

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEDESTAL = 1000.0


def make_pair(size: int, out: Path, n_fakes: int, seed: int = 7) -> dict:
    """Write sci.fits and ref.fits for one simulated night; return the truth."""
    config = SurveyConfig(shape=(size, size))
    field = field_names(config)[0]
    nights = survey_nights(config, 5)
    reference = simulated_reference(config, field, nights[:4])
    exposure, processed = process_simulated(config, nights[4], field)
    grid = field_wcs(config, field)
    rng = np.random.default_rng(seed)
    science, fakes = inject_fakes(
        processed, exposure.psf, exposure.wcs, reference, grid, n_fakes, (2.0, 20.0), rng
    )
    aligned = align_to_grid(
        science.data,
        science.wcs,
        grid,
        config.shape,
        variance=science.variance,
        mask=science.mask,
        sources_from=bright_star_xy(science.sources),
        sources_to=grid_stars(config, field),
    )
    out.mkdir(parents=True, exist_ok=True)
    header = fits.Header()
    header.update(grid.to_header())
    for key in ("DATE-OBS", "MJD-OBS", "EXPTIME", "FILTER", "GAIN", "RDNOISE", "AIRMASS"):
        header[key] = exposure.header[key]
    # Pixels without data (saturated, bad, off the detector) are NaN; the
    # peers, which do not all cope with NaN, get copies with the sky there.
    sky = float(processed.background.global_background)
    sci = np.where(aligned.mask, np.nan, aligned.data + sky).astype(np.float32)
    fits.writeto(out / "sci.fits", sci, header, overwrite=True)
    fits.writeto(out / "sci_filled.fits", np.nan_to_num(sci, nan=sky), header, overwrite=True)
    ref_header = fits.Header()
    ref_header.update(grid.to_header())
    ref_header["GAIN"] = (processed.gain * 4, "coadd of best epochs: effective gain")
    ref = reference.prepared
    ref_data = np.where(ref.mask, np.nan, ref.data + PEDESTAL).astype(np.float32)
    fits.writeto(out / "ref.fits", ref_data, ref_header, overwrite=True)
    filled = np.nan_to_num(ref_data, nan=PEDESTAL)
    fits.writeto(out / "ref_filled.fits", filled, ref_header, overwrite=True)
    fits.writeto(out / "sci_psf.fits", exposure.psf, overwrite=True)
    fits.writeto(out / "ref_psf.fits", ref.psf, overwrite=True)
    truth = truth_on_grid(exposure.truth, grid)
    return {
        "fakes": fakes,
        "truth_xy": np.column_stack([truth["grid_x"], truth["grid_y"]]),
        "psf": exposure.psf,
    }


def classify(x: np.ndarray, y: np.ndarray, sign: np.ndarray, truth: dict, mask: np.ndarray):
    """Completeness (unmasked fakes found as positive) and false candidates."""
    fakes = truth["fakes"]
    gx, gy = np.asarray(fakes["grid_x"]), np.asarray(fakes["grid_y"])
    usable = ~mask[np.round(gy).astype(int), np.round(gx).astype(int)]
    fm = match_to_truth(x, y, gx, gy, 2.0)
    found = np.array([i >= 0 and sign[i] > 0 for i in fm.truth_to_candidate], bool)
    tm = match_to_truth(x, y, truth["truth_xy"][:, 0], truth["truth_xy"][:, 1], 2.0)
    false = int(np.sum(~fm.candidate_matched & ~tm.candidate_matched))
    snr = np.asarray(fakes["snr"])
    return {
        "completeness_all": float(found[usable].mean()),
        "completeness_snr_5_7": float(found[usable & (snr >= 5) & (snr < 7)].mean()),
        "completeness_snr_ge_10": float(found[usable & (snr >= 10)].mean()),
        "false": false,
    }


def robust_sigma(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def peer_candidates(out_fits: Path, psf: np.ndarray, mask: np.ndarray, threshold: float):
    """Our detector on a peer's products: its S_corr, or its D matched-filtered."""
    from scipy import signal

    with fits.open(out_fits) as hdul:
        diff = np.asarray(hdul["D"].data, np.float64)
        score = np.asarray(hdul["SCORR"].data, np.float64) if "SCORR" in hdul else None
    bad = mask | ~np.isfinite(diff)
    diff = np.where(bad, 0.0, diff)
    if score is None:
        score = signal.fftconvolve(diff, psf[::-1, ::-1], mode="same")
    bad |= ~np.isfinite(score)
    score = np.where(bad, 0.0, score)
    scale, noise = robust_sigma(score[~bad]), robust_sigma(diff[~bad])
    if not (np.isfinite(scale) and scale > 0 and np.isfinite(noise) and noise > 0):
        raise ValueError(f"{out_fits.name}: no usable pixels in the peer's output")
    score /= scale
    result = SubtractionResult(
        method="peer",
        difference=diff.astype(np.float32),
        difference_psf=psf,
        difference_noise=noise,
        score=score.astype(np.float32),
        mask=bad,
        flux_ratio=1.0,
        details={},
    )
    cands = detect_candidates(result, config=DetectionConfig(threshold=threshold))
    return np.asarray(cands["x"]), np.asarray(cands["y"]), np.asarray(cands["sign"])


def peak_rss_of_diff(size: int, workdir: Path, reuse: bool = False) -> float:
    """Peak resident memory (MB) of ``astrid diff`` on a size x size pair, fresh process.

    Read from the child's own ``VmHWM``: ``ru_maxrss`` would carry over the
    high-water mark of this (larger) process across fork and exec.
    """
    if not (reuse and (workdir / "sci.fits").exists()):
        make_pair(size, workdir, n_fakes=50)
    code = (
        "from pathlib import Path;"
        "from astrid_assets.commands.diff import run_diff_files;"
        f"run_diff_files(Path('{workdir}/sci.fits'), Path('{workdir}/ref.fits'),"
        f" Path('{workdir}/out.fits'));"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--memory-size", type=int, default=4096)
    parser.add_argument("--fakes", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peers", default="sfft,zogyp,properimage")
    parser.add_argument("--peer-timeout", type=int, default=300)
    parser.add_argument("--reuse-pair", action="store_true", help="keep the pair of a last run")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench" / "pair")
    args = parser.parse_args()

    print(
        f"date {date.today()}  {platform.machine()}  cores {os.cpu_count()}  "
        f"python {platform.python_version()}"
    )
    t0 = time.perf_counter()
    cached = args.work / "truth.pkl"
    if args.reuse_pair and cached.exists():
        truth = pickle.loads(cached.read_bytes())
        print(f"pair reused from {args.work}")
    else:
        truth = make_pair(args.size, args.work, args.fakes)
        cached.write_bytes(pickle.dumps(truth))
        print(
            f"pair {args.size}x{args.size} written in {time.perf_counter() - t0:.0f} s: {args.work}"
        )
    sci, ref, out = args.work / "sci.fits", args.work / "ref.fits", args.work / "ours.fits"

    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        summary = run_diff_files(sci, ref, out)
        times.append(time.perf_counter() - t0)
    ours = min(times)
    steps = ", ".join(f"{k} {v:.2f}" for k, v in summary.products.timings.items())
    print(
        f"astrid diff in-process: best {ours:.2f} s of {args.repeat} "
        f"(read, measure both images, {steps}, write)"
    )
    t0 = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv/bin/astrid"), "diff", str(sci), str(ref), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    print(f"astrid diff as a command (with imports): {time.perf_counter() - t0:.2f} s")
    mask = summary.products.result.mask
    cands = summary.products.candidates
    mine = classify(
        np.asarray(cands["x"]), np.asarray(cands["y"]), np.asarray(cands["sign"]), truth, mask
    )
    print(f"ours at 5 sigma: {json.dumps(mine)}")

    peers = [p for p in args.peers.split(",") if p]
    if peers and not PEERS_PYTHON.exists():
        print("peers not installed: run bash benchmarks/peers/setup_peers.sh")
        peers = []
    for peer in peers:
        peer_out = args.work / f"{peer}.fits"
        cmd = [
            str(PEERS_PYTHON),
            str(ROOT / "benchmarks/peers/run_peer.py"),
            "--method",
            peer,
            "--sci",
            str(args.work / "sci_filled.fits"),
            "--ref",
            str(args.work / "ref_filled.fits"),
            "--sci-psf",
            str(args.work / "sci_psf.fits"),
            "--ref-psf",
            str(args.work / "ref_psf.fits"),
            "--out",
            str(peer_out),
            "--timeout",
            str(args.peer_timeout),
        ]
        if peer == "properimage":
            cmd += ["--opt", "beta=False", "--opt", "shift=False"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        report = (
            json.loads(lines[-1]) if lines else {"status": "error", "stderr": done.stderr[-300:]}
        )
        if report.get("status") != "ok":
            print(f"{peer}: {report.get('status')} {report.get('error', '')}")
            continue
        seconds = float(report["seconds"])
        print(
            f"{peer} {report.get('version', '')}: {seconds:.1f} s = {seconds / ours:.1f}x ours, "
            f"peak {report.get('peak_rss_mb', float('nan')):.0f} MB"
        )
        try:
            at5 = classify(*peer_candidates(peer_out, truth["psf"], mask, 5.0), truth, mask)
        except ValueError as exc:
            print(f"  {exc}")
            continue
        best = None
        for threshold in np.arange(5.0, 30.01, 0.5):
            got = classify(*peer_candidates(peer_out, truth["psf"], mask, threshold), truth, mask)
            if got["false"] <= mine["false"]:
                best = (float(threshold), got)
                break
        print(f"  at 5 sigma: {json.dumps(at5)}")
        found = f"threshold {best[0]}: {json.dumps(best[1])}" if best else "none up to 30 sigma"
        print(f"  at equal false candidates ({mine['false']}): {found}")

    rss = peak_rss_of_diff(
        args.memory_size, args.work.parent / f"pair{args.memory_size}", args.reuse_pair
    )
    print(
        f"astrid diff peak resident memory at {args.memory_size}x{args.memory_size}: {rss:.0f} MB"
    )
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/bench_zogy_fft.py"), "--size", str(args.size)],
        check=False,
    )


if __name__ == "__main__":
    main()
