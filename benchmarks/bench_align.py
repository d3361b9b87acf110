"""Timing of alignment and reference building on full-size (2048x2048) images.

Run with ``python benchmarks/bench_align.py [--size 2048] [--repeat 3]``.
Prints the best wall time of each case. The difference pipeline's budget
for alignment is about 0.5 s per 2048x2048 image on 2 cores.

Cases (science image with variance and a sparse bad-pixel mask, resampled
onto the reference grid of a TAN WCS):

* ``integer-shift``: pointing offset of whole pixels (a copy);
* ``subpixel-shift``: (12.3, -7.6) px, separable cubic spline;
* ``affine``: the same shift and a 0.2 deg rotation, cubic spline;
* ``polynomial``: as ``affine`` plus SIP distortion (cubic fit, map_coordinates);
* ``exact``: every output pixel through the WCS (the fallback);
* ``reproject_interp``: reproject's bicubic resampling, data only, as the
  baseline (variance and mask would cost as much again).

and ``build_reference`` on 8 epochs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from astropy.wcs import WCS, Sip

from astrid_assets.science.align import AlignConfig, align_to_grid
from astrid_assets.science.psf import moffat_psf
from astrid_assets.science.reference import build_reference


def tan_wcs(shape, shift=(0.0, 0.0), rotation_deg=0.0, sip=False):
    """A TAN WCS of 0.26"/px whose reference pixel is moved by ``shift``."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [(nx + 1) / 2 + shift[0], (ny + 1) / 2 + shift[1]]
    scale = 0.26 / 3600
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    w.wcs.cd = scale * np.array([[-c, s], [s, c]])
    if sip:
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[2, 0], a[0, 2], b[1, 1], a[3, 0] = 2e-6, -1e-6, 1.5e-6, 1e-9
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def best_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def bench_alignment(size: int, repeat: int) -> None:
    shape = (size, size)
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 10.0, shape).astype(np.float32)
    variance = np.full(shape, 100.0, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask[::97, ::31] = True
    w_to = tan_wcs(shape)
    cases = [
        ("integer-shift", tan_wcs(shape, (12.0, -7.0)), AlignConfig()),
        ("subpixel-shift", tan_wcs(shape, (12.3, -7.6)), AlignConfig()),
        ("affine", tan_wcs(shape, (12.3, -7.6), 0.2), AlignConfig()),
        ("polynomial", tan_wcs(shape, (12.3, -7.6), 0.2, sip=True), AlignConfig()),
        ("exact", tan_wcs(shape, (12.3, -7.6), 0.2), AlignConfig(method="exact")),
    ]
    print(f"alignment, {size}x{size}, data + variance + mask, best of {repeat}")
    for name, w_from, config in cases:
        n = 1 if name == "exact" else repeat
        t, res = best_time(
            lambda w=w_from, c=config: align_to_grid(
                image, w, w_to, shape, variance=variance, mask=mask, config=c
            ),
            n,
        )
        print(f"  {name:16s} {t:7.3f} s   {res.method}")

    from reproject import reproject_interp

    w_from = tan_wcs(shape, (12.3, -7.6), 0.2)
    for order in ("bilinear", "bicubic"):
        t, _ = best_time(
            lambda o=order: reproject_interp((image, w_from), w_to, shape_out=shape, order=o), 1
        )
        print(f"  reproject_interp {t:7.3f} s   {order}, data only")


def bench_reference(size: int, repeat: int, n_epochs: int = 8) -> None:
    shape = (size, size)
    rng = np.random.default_rng(1)
    n_stars = size * size // 4000
    xy = rng.uniform(20, size - 20, (n_stars, 2))
    flux = 10 ** rng.uniform(2.5, 5.0, n_stars)
    images, variances, psfs, zps = [], [], [], []
    for k in range(n_epochs):
        fwhm = 2.5 + 0.4 * k
        psf = moffat_psf(fwhm, size=31)
        image = np.zeros(shape, dtype=np.float32)
        ix, iy = np.round(xy[:, 0]).astype(int), np.round(xy[:, 1]).astype(int)
        for x0, y0, f in zip(ix, iy, flux, strict=True):
            image[y0 - 15 : y0 + 16, x0 - 15 : x0 + 16] += (f * psf).astype(np.float32)
        sigma = 5.0 + k
        image += rng.normal(0.0, sigma, shape).astype(np.float32)
        images.append(image)
        variances.append(np.full(shape, sigma**2, dtype=np.float32))
        psfs.append(psf)
        zps.append(25.0 + 0.1 * k)
    t, ref = best_time(lambda: build_reference(images, variances, psfs, zps), repeat)
    print(f"build_reference, {n_epochs} epochs of {size}x{size}: {t:.3f} s (best of {repeat})")
    print(f"  epochs used {ref.epochs_used}, coadd FWHM {ref.fwhm:.2f} px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench_alignment(args.size, args.repeat)
    bench_reference(args.size, args.repeat)


if __name__ == "__main__":
    main()
