#!/usr/bin/env python
"""Make an aligned science/reference pair of simulated star fields.

Writes four files into OUTDIR:

* ``ref.fits`` -- reference image: sharper seeing, lower noise (a "deep"
  template), sky background left in.
* ``sci.fits`` -- science image: broader seeing, higher noise, the same
  stars at the same positions, plus ONE injected transient.
* ``ref_psf.fits`` / ``sci_psf.fits`` -- the exact (normalised, odd-sized,
  centred) Moffat PSFs used to draw each image.

The two images share one pixel grid and one simple TAN WCS, so no alignment
is needed.  Pixel values are in ADU; ``GAIN`` (e-/ADU) is in each header.
Noise is Gaussian with the Poisson variance of sky + source (in electrons)
plus read noise, so ``SKYSIG`` in the header is the background rms.

The truth is written to both the science header (``TRANS_X``/``TRANS_Y``:
0-based numpy column/row; ``TRANSFLX``: flux in ADU) and ``truth.json``.

Only numpy and astropy are needed, so this runs in either virtualenv::

    python benchmarks/peers/make_test_pair.py /tmp/pair2048 --size 2048
    python benchmarks/peers/make_test_pair.py /tmp/pair512 --size 512
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np
from astropy.io import fits


def moffat_stamp(
    fwhm: float, beta: float, half: int, dx: float = 0.0, dy: float = 0.0
) -> np.ndarray:
    """Unit-sum Moffat profile on a (2*half+1)^2 grid, centred at (dx, dy)
    pixels from the central pixel."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    r2 = (x - dx) ** 2 + (y - dy) ** 2
    prof = (1.0 + r2 / alpha**2) ** (-beta)
    return prof / prof.sum()


def paint(img: np.ndarray, xs, ys, fluxes, fwhm: float, beta: float, half: int) -> None:
    """Add Moffat stars (sub-pixel centres xs, ys; fluxes in ADU) into img."""
    ny, nx = img.shape
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        ix, iy = int(round(x)), int(round(y))
        stamp = f * moffat_stamp(fwhm, beta, half, x - ix, y - iy)
        x0, x1 = ix - half, ix + half + 1
        y0, y1 = iy - half, iy + half + 1
        sx0, sy0 = max(0, -x0), max(0, -y0)
        sx1 = stamp.shape[1] - max(0, x1 - nx)
        sy1 = stamp.shape[0] - max(0, y1 - ny)
        if sx1 <= sx0 or sy1 <= sy0:
            continue
        img[max(0, y0) : min(ny, y1), max(0, x0) : min(nx, x1)] += stamp[sy0:sy1, sx0:sx1]


def header_for(
    size: int, gain: float, sky: float, skysig: float, fwhm: float, beta: float, rdnoise: float
) -> fits.Header:
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 150.0, 2.0
    h["CRPIX1"], h["CRPIX2"] = size / 2.0 + 0.5, size / 2.0 + 0.5
    scale = 0.3 / 3600.0
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -scale, 0.0, 0.0, scale
    h["GAIN"] = (gain, "e-/ADU")
    h["RDNOISE"] = (rdnoise, "read noise, e-")
    h["SATURATE"] = (1.0e9, "no pixel is saturated")
    h["ESATUR"] = (1.0e9, "effective saturation after sky subtraction")
    h["SKYLEVEL"] = (sky, "sky background, ADU")
    h["SKYSIG"] = (skysig, "background rms, ADU")
    h["FWHM"] = (fwhm, "Moffat FWHM, pixels")
    h["MOFFBETA"] = (beta, "Moffat beta")
    return h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", help="directory to write the four FITS files")
    ap.add_argument("--size", type=int, default=2048, help="image side, px")
    ap.add_argument(
        "--stars-per-mpix",
        type=float,
        default=500.0,
        help="star density per 10^6 pixels (default 500)",
    )
    ap.add_argument("--ref-fwhm", type=float, default=3.0)
    ap.add_argument("--sci-fwhm", type=float, default=4.2)
    ap.add_argument("--beta", type=float, default=3.0, help="Moffat beta")
    ap.add_argument("--ref-sky", type=float, default=200.0, help="ADU")
    ap.add_argument("--sci-sky", type=float, default=400.0, help="ADU")
    ap.add_argument(
        "--ref-gain",
        type=float,
        default=4.0,
        help="e-/ADU; the higher gain makes the reference the less noisy (deeper) image",
    )
    ap.add_argument("--sci-gain", type=float, default=1.0, help="e-/ADU")
    ap.add_argument("--rdnoise", type=float, default=5.0, help="e-")
    ap.add_argument(
        "--flux-ratio",
        type=float,
        default=0.9,
        help="sci/ref photometric scale of the static stars",
    )
    ap.add_argument(
        "--transient-flux",
        type=float,
        default=3000.0,
        help="ADU in the science image (default 3000, ~S/N 20)",
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    out = pathlib.Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    n = args.size
    margin = 10

    nstar = int(round(args.stars_per_mpix * n * n / 1.0e6))
    xs = rng.uniform(margin, n - margin, nstar)
    ys = rng.uniform(margin, n - margin, nstar)
    # Power-law (dN/dF ~ F^-2) fluxes between 300 and 3e5 ADU (reference).
    u = rng.uniform(size=nstar)
    fmin, fmax = 300.0, 3.0e5
    fluxes = 1.0 / (1.0 / fmin - u * (1.0 / fmin - 1.0 / fmax))

    # The transient: away from the edges and from every star.
    for _ in range(10000):
        tx = rng.uniform(0.25 * n, 0.75 * n)
        ty = rng.uniform(0.25 * n, 0.75 * n)
        if np.min(np.hypot(xs - tx, ys - ty)) > 6.0 * args.sci_fwhm:
            break
    tx, ty = float(tx), float(ty)

    def render(fwhm, sky, gain, flux_scale, extra):
        half = int(math.ceil(4.0 * fwhm)) + 8
        img = np.zeros((n, n), dtype=np.float64)
        paint(img, xs, ys, fluxes * flux_scale, fwhm, args.beta, half)
        if extra:
            paint(img, [tx], [ty], [args.transient_flux], fwhm, args.beta, half)
        img += sky
        var_e = img * gain + args.rdnoise**2  # electrons^2
        img = img + rng.normal(size=img.shape) * np.sqrt(var_e) / gain
        skysig = math.sqrt(sky * gain + args.rdnoise**2) / gain
        psf = moffat_stamp(fwhm, args.beta, half)
        return img.astype(np.float32), psf.astype(np.float32), skysig

    ref, ref_psf, ref_sig = render(args.ref_fwhm, args.ref_sky, args.ref_gain, 1.0, False)
    sci, sci_psf, sci_sig = render(
        args.sci_fwhm, args.sci_sky, args.sci_gain, args.flux_ratio, True
    )

    # Expected peak matched-filter S/N of the transient in the science
    # image alone (background-limited): F / (sigma * sqrt(1/sum(P^2))).
    snr_sci = args.transient_flux * math.sqrt(float(np.sum(sci_psf.astype(float) ** 2))) / sci_sig

    hr = header_for(n, args.ref_gain, args.ref_sky, ref_sig, args.ref_fwhm, args.beta, args.rdnoise)
    hs = header_for(n, args.sci_gain, args.sci_sky, sci_sig, args.sci_fwhm, args.beta, args.rdnoise)
    hs["TRANS_X"] = (tx, "transient column, 0-based numpy index")
    hs["TRANS_Y"] = (ty, "transient row, 0-based numpy index")
    hs["TRANSFLX"] = (args.transient_flux, "transient flux, ADU")
    hs["TRANSSNR"] = (round(snr_sci, 2), "expected S/N, sci alone")
    hs["FLXRATIO"] = (args.flux_ratio, "sci/ref flux scale")

    fits.PrimaryHDU(ref, hr).writeto(out / "ref.fits", overwrite=True)
    fits.PrimaryHDU(sci, hs).writeto(out / "sci.fits", overwrite=True)
    fits.PrimaryHDU(ref_psf).writeto(out / "ref_psf.fits", overwrite=True)
    fits.PrimaryHDU(sci_psf).writeto(out / "sci_psf.fits", overwrite=True)

    truth = {
        "size": n,
        "n_stars": nstar,
        "seed": args.seed,
        "transient_x": tx,
        "transient_y": ty,
        "transient_flux_adu": args.transient_flux,
        "expected_snr_sci_only": round(snr_sci, 2),
        "ref": {
            "fwhm": args.ref_fwhm,
            "sky": args.ref_sky,
            "gain": args.ref_gain,
            "sigma": ref_sig,
        },
        "sci": {
            "fwhm": args.sci_fwhm,
            "sky": args.sci_sky,
            "gain": args.sci_gain,
            "sigma": sci_sig,
            "flux_ratio": args.flux_ratio,
        },
        "beta": args.beta,
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(json.dumps(truth))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
