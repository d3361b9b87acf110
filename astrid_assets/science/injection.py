"""Injection and recovery: how complete and how clean the candidate list is.

Point sources of known flux are added to a calibrated science image with its
own PSF, the image goes through the same subtraction and detection as any
other, and the candidates are matched back to what was injected. The
completeness curve is measured against the signal-to-noise ratio that an
ideal subtraction would reach for each source, so a perfect pipeline
thresholded at 5 sigma reaches 50% at S/N = 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage, optimize, special
from scipy.spatial import cKDTree

__all__ = [
    "CompletenessCurve",
    "Injection",
    "TruthMatch",
    "completeness_curve",
    "difference_snr",
    "inject_point_sources",
    "match_to_truth",
    "place_sources",
    "shifted_psf",
]


@dataclass
class Injection:
    """Point sources added to an image.

    Attributes
    ----------
    image : numpy.ndarray
        The image with the sources added (a copy; float32 if the input was).
    x, y : numpy.ndarray
        Positions (0-based pixels).
    flux : numpy.ndarray
        Injected total flux of each source (ADU).
    model : numpy.ndarray
        The noiseless sum of the injected sources (ADU), for variance updates.
    """

    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    model: np.ndarray


@dataclass
class TruthMatch:
    """The result of matching candidates to truth positions.

    Attributes
    ----------
    truth_matched : numpy.ndarray
        bool per truth entry: a candidate lies within the radius.
    candidate_matched : numpy.ndarray
        bool per candidate: it lies within the radius of some truth entry.
    truth_to_candidate : numpy.ndarray
        index of the nearest candidate for each truth entry, -1 if none.
    """

    truth_matched: np.ndarray
    candidate_matched: np.ndarray
    truth_to_candidate: np.ndarray


@dataclass
class CompletenessCurve:
    """Completeness against S/N, binned and fitted.

    The fit is ``c(s) = c_max / 2 * erfc((s50 - s) / (sqrt(2) * width))``, a
    Gaussian detection threshold, by maximum binomial likelihood on the
    unbinned sources; ``snr50`` is where ``c(s)`` reaches 0.5.

    Attributes
    ----------
    bin_edges, bin_centres, completeness, n_injected, n_recovered : numpy.ndarray
        The binned curve (completeness is NaN in empty bins).
    snr50 : float
        The S/N at 50% completeness (NaN if the curve never reaches 50%).
    c_max, width, s50 : float
        Fitted parameters.
    """

    bin_edges: np.ndarray
    bin_centres: np.ndarray
    completeness: np.ndarray
    n_injected: np.ndarray
    n_recovered: np.ndarray
    snr50: float
    c_max: float
    width: float
    s50: float

    def model(self, snr: np.ndarray) -> np.ndarray:
        """The fitted completeness at ``snr``."""
        return _erfc_model(np.asarray(snr, float), self.c_max, self.s50, self.width)

    def completeness_above(self, snr: np.ndarray, recovered: np.ndarray, limit: float) -> float:
        """Fraction recovered among sources with S/N >= ``limit`` (unbinned)."""
        sel = np.asarray(snr) >= limit
        return float(np.mean(np.asarray(recovered)[sel])) if sel.any() else float("nan")


def shifted_psf(psf: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """A PSF stamp moved by a sub-pixel ``(dx, dy)`` with the Fourier shift theorem.

    Exact for a band-limited PSF, flux-conserving, and free of the smoothing
    that spline interpolation adds.
    """
    spectrum = sfft.fft2(psf)
    moved = sfft.ifft2(ndimage.fourier_shift(spectrum, (dy, dx))).real
    return moved * (psf.sum() / moved.sum())


def place_sources(
    shape: tuple[int, int],
    n: int,
    rng: np.random.Generator,
    *,
    margin: int = 40,
    min_separation: float = 25.0,
    avoid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random positions at least ``min_separation`` px apart, away from edges.

    Parameters
    ----------
    shape : (int, int)
        Image shape (ny, nx).
    n : int
        Number wanted; fewer are returned when the image cannot hold them.
    rng : numpy.random.Generator
        Source of randomness.
    margin : int
        Distance from the image edge, px.
    min_separation : float
        Smallest distance between two positions, px.
    avoid : numpy.ndarray, optional
        bool mask; positions on True pixels are rejected.
    """
    ny, nx = shape
    if nx <= 2 * margin or ny <= 2 * margin:
        raise ValueError(f"image {shape} is too small for a margin of {margin} px")
    xs: list[float] = []
    ys: list[float] = []
    tries = 0
    while len(xs) < n and tries < 50 * n + 100:
        batch = max(n, 64)
        cx = rng.uniform(margin, nx - margin - 1, batch)
        cy = rng.uniform(margin, ny - margin - 1, batch)
        for x, y in zip(cx, cy, strict=True):
            tries += 1
            if avoid is not None and avoid[int(round(y)), int(round(x))]:
                continue
            if xs and np.min(np.hypot(np.asarray(xs) - x, np.asarray(ys) - y)) < min_separation:
                continue
            xs.append(float(x))
            ys.append(float(y))
            if len(xs) == n:
                break
    return np.asarray(xs), np.asarray(ys)


def inject_point_sources(
    image: np.ndarray,
    psf: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    *,
    gain: float | None = None,
    rng: np.random.Generator | None = None,
) -> Injection:
    """Add point sources of known flux with the image's PSF.

    Parameters
    ----------
    image : numpy.ndarray
        Calibrated image (ADU); not modified.
    psf : numpy.ndarray
        Odd, unit-sum PSF stamp of this image, centred.
    x, y, flux : numpy.ndarray
        Positions (0-based px) and total fluxes (ADU).
    gain : float, optional
        e-/ADU. When given, the sources' own photon noise is added so that an
        injected source is as noisy as a real one.
    rng : numpy.random.Generator, optional
        For the photon noise.

    Returns
    -------
    Injection
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    flux = np.broadcast_to(np.asarray(flux, float), x.shape).copy()
    if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise ValueError(f"PSF stamp must be 2-D with odd sides, got {psf.shape}")
    ny, nx = image.shape
    hy, hx = psf.shape[0] // 2, psf.shape[1] // 2
    model = np.zeros(image.shape, dtype=np.float64)
    for xi, yi, fi in zip(x, y, flux, strict=True):
        ix, iy = int(round(xi)), int(round(yi))
        stamp = fi * shifted_psf(psf, xi - ix, yi - iy)
        y0, y1 = iy - hy, iy + hy + 1
        x0, x1 = ix - hx, ix + hx + 1
        sy0, sx0 = max(0, -y0), max(0, -x0)
        sy1 = stamp.shape[0] - max(0, y1 - ny)
        sx1 = stamp.shape[1] - max(0, x1 - nx)
        if sy1 <= sy0 or sx1 <= sx0:
            continue
        model[max(y0, 0) : min(y1, ny), max(x0, 0) : min(x1, nx)] += stamp[sy0:sy1, sx0:sx1]
    out = image.astype(np.float64, copy=True) + model
    if gain is not None:
        if gain <= 0:
            raise ValueError(f"gain must be positive, got {gain}")
        rng = rng or np.random.default_rng()
        positive = np.clip(model, 0, None)
        touched = positive > 0
        out[touched] += rng.normal(0.0, np.sqrt(positive[touched] / gain))
    return Injection(image=out.astype(image.dtype, copy=False), x=x, y=y, flux=flux, model=model)


def difference_snr(
    flux: np.ndarray,
    psf_new: np.ndarray,
    psf_ref: np.ndarray,
    var_new: np.ndarray,
    var_ref: np.ndarray,
    flux_ratio: float = 1.0,
    grid: int = 64,
) -> np.ndarray:
    """The S/N of a point source in an ideal difference of two images.

    For a source of flux ``flux`` (new-image units) on local background
    variances ``var_new`` and ``var_ref`` (ADU², per pixel, ref in its own
    units) the optimal statistic reaches (Zackay, Ofek & Gal-Yam 2016, the
    denominator of eq. 13 with eq. 15)::

        SNR² = flux² / N Σ_k |P̂n|² F_r² |P̂r|² / (σn² F_r² |P̂r|² + σr² |P̂n|²)

    with ``F_r = flux_ratio`` and ``N`` the number of grid pixels (Parseval).
    When ``var_ref`` is 0 this is the S/N of optimal PSF photometry on the new
    image alone, ``flux * sqrt(Σ P² / σn²)``.
    """
    flux = np.asarray(flux, float)
    var_new = np.broadcast_to(np.asarray(var_new, float), flux.shape)
    var_ref = np.broadcast_to(np.asarray(var_ref, float), flux.shape)
    size = max(grid, *psf_new.shape, *psf_ref.shape)

    def power(psf: np.ndarray) -> np.ndarray:
        padded = np.zeros((size, size))
        padded[: psf.shape[0], : psf.shape[1]] = psf
        return np.abs(sfft.fft2(padded)) ** 2

    pn2, pr2 = power(psf_new), power(psf_ref)
    fr2 = flux_ratio**2
    out = np.empty(flux.shape)
    for i, (vn, vr) in enumerate(zip(var_new.ravel(), var_ref.ravel(), strict=True)):
        denom = vn * fr2 * pr2 + vr * pn2
        info = np.sum(pn2 * fr2 * pr2 / np.maximum(denom, 1e-300)) / pn2.size
        out.flat[i] = np.sqrt(info)
    return np.abs(flux) * out


def match_to_truth(
    cand_x: np.ndarray,
    cand_y: np.ndarray,
    truth_x: np.ndarray,
    truth_y: np.ndarray,
    radius: float,
) -> TruthMatch:
    """Match candidates to truth positions within ``radius`` pixels."""
    cand = np.column_stack([np.asarray(cand_x, float), np.asarray(cand_y, float)])
    truth = np.column_stack([np.asarray(truth_x, float), np.asarray(truth_y, float)])
    truth_to_cand = np.full(len(truth), -1, dtype=int)
    cand_matched = np.zeros(len(cand), dtype=bool)
    if len(cand) and len(truth):
        dist, idx = cKDTree(cand).query(truth, distance_upper_bound=radius)
        hit = np.isfinite(dist)
        truth_to_cand[hit] = idx[hit]
        near = cKDTree(truth).query(cand, distance_upper_bound=radius)[0]
        cand_matched = np.isfinite(near)
    return TruthMatch(
        truth_matched=truth_to_cand >= 0,
        candidate_matched=cand_matched,
        truth_to_candidate=truth_to_cand,
    )


def _erfc_model(s: np.ndarray, c_max: float, s50: float, width: float) -> np.ndarray:
    return c_max * 0.5 * special.erfc((s50 - s) / (np.sqrt(2.0) * width))


def completeness_curve(
    snr: np.ndarray, recovered: np.ndarray, bin_edges: np.ndarray | None = None
) -> CompletenessCurve:
    """Bin and fit completeness against S/N.

    Parameters
    ----------
    snr : numpy.ndarray
        Expected S/N of each injected source (see :func:`difference_snr`).
    recovered : numpy.ndarray
        bool, whether each source was recovered.
    bin_edges : numpy.ndarray, optional
        S/N bin edges; by default 0.5-wide bins from 1 to 20.
    """
    snr = np.asarray(snr, float)
    recovered = np.asarray(recovered, bool)
    if snr.shape != recovered.shape or snr.size == 0:
        raise ValueError("snr and recovered must be non-empty and of the same length")
    edges = np.arange(1.0, 20.01, 0.5) if bin_edges is None else np.asarray(bin_edges, float)
    n_inj, _ = np.histogram(snr, edges)
    n_rec, _ = np.histogram(snr[recovered], edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n_inj > 0, n_rec / np.maximum(n_inj, 1), np.nan)

    def nll(params: np.ndarray) -> float:
        c_max, s50, width = params
        p = np.clip(_erfc_model(snr, c_max, s50, width), 1e-9, 1 - 1e-9)
        return -float(np.sum(np.where(recovered, np.log(p), np.log1p(-p))))

    fit = optimize.minimize(
        nll,
        x0=np.array([0.98, 5.0, 0.5]),
        bounds=[(0.05, 1.0), (0.0, 50.0), (0.05, 10.0)],
        method="L-BFGS-B",
    )
    c_max, s50, width = (float(v) for v in fit.x)
    if c_max > 0.5:
        snr50 = s50 - np.sqrt(2.0) * width * special.erfcinv(1.0 / c_max)
    else:
        snr50 = float("nan")
    return CompletenessCurve(
        bin_edges=edges,
        bin_centres=0.5 * (edges[1:] + edges[:-1]),
        completeness=frac,
        n_injected=n_inj,
        n_recovered=n_rec,
        snr50=float(snr50),
        c_max=c_max,
        width=width,
        s50=s50,
    )
