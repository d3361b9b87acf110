"""Transient candidates: detection on the subtraction's score and measurement on D.

Detection runs on the score image of a subtraction, for ZOGY the corrected
statistic ``S_corr`` (Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27), which is
already the matched-filtered difference divided by its standard deviation.
A threshold of ``n`` on it is therefore an ``n``-sigma point-source detection,
and SEP (Barbary 2016, JOSS 1, 58) extracts the connected pixels above it
with no further smoothing. Brightening sources are positive peaks;
fading ones are found the same way on ``-score``.

Each candidate's position is the score's peak refined to sub-pixel precision
by a quadratic fit to the 3 x 3 pixels around it; for a matched-filtered
image the peak is the maximum-likelihood position of a point source. Its
flux is measured on the difference image ``D`` by PSF photometry at that
fixed position: ``flux * P_D`` is fitted by least squares with the white
noise of ``D``, in a circle of :attr:`DetectionConfig.fit_radius` FWHM. The
result is in the new image's counts, since ``D`` is scaled that way.

Features for the real-bogus classifiers and for vetting (shape, sharpness,
negative pixels, dipole, masked pixels, the nearest reference source, the
science and reference values) come from the same small stamps; their
definitions are listed in :data:`CANDIDATE_COLUMNS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import sep
from astropy.table import Table
from scipy.spatial import cKDTree

from astrid_assets.science.background import sep_ready
from astrid_assets.science.cutouts import nearest_pixel, stamps_at_pixels

if TYPE_CHECKING:
    from astropy.wcs import WCS

    from astrid_assets.science.subtraction import SubtractionResult

__all__ = [
    "CANDIDATE_COLUMNS",
    "DetectionConfig",
    "detect_candidates",
    "psf_equivalent_fwhm",
]

_GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
_MAG_PER_LN = 2.5 / math.log(10.0)

CANDIDATE_COLUMNS: dict[str, tuple[str, str | None, str]] = {
    "id": ("i8", None, "running number, 1 for the strongest |score_peak|"),
    "x": ("f8", "pix", "column of the score peak, sub-pixel (0-based)"),
    "y": ("f8", "pix", "row of the score peak, sub-pixel (0-based)"),
    "x_peak": ("i8", "pix", "column of the score's peak pixel"),
    "y_peak": ("i8", "pix", "row of the score's peak pixel"),
    "sign": ("i8", None, "+1 brightening (positive score), -1 fading (negative score)"),
    "score_peak": ("f8", None, "score at the peak pixel, signed, in sigma"),
    "npix": ("i8", "pix", "score pixels beyond the threshold in the detection"),
    "flux": ("f8", None, "PSF-fit flux on D, signed, new-image counts"),
    "flux_err": ("f8", None, "1-sigma error of flux from the white noise of D"),
    "snr": ("f8", None, "flux / flux_err, signed"),
    "mag": ("f8", "mag", "zero_point - 2.5 log10(|flux|); NaN without a zero point"),
    "mag_err": ("f8", "mag", "1.0857 flux_err / |flux|; NaN without a zero point"),
    "ra": ("f8", "deg", "right ascension of (x, y); NaN without a WCS"),
    "dec": ("f8", "deg", "declination of (x, y); NaN without a WCS"),
    "mjd": ("f8", "d", "MJD of the new exposure; NaN when not given"),
    "chi2": ("f8", None, "chi-square per degree of freedom of the PSF fit"),
    "fwhm": ("f8", "pix", "Gaussian-equivalent FWHM in D from weighted second moments"),
    "fwhm_ratio": ("f8", None, "fwhm over the same measure of the PSF: 1 point-like"),
    "ellipticity": ("f8", None, "1 - b/a from the same moments"),
    "sharpness": ("f8", None, "peak pixel / PSF-fit model there: 1 point-like, >>1 spike"),
    "neg_frac": ("f8", None, "fraction of pixels with sign * D < 0 within neg_radius"),
    "dipole": ("f8", None, "opposite-sign / same-sign flux beyond dipole_clip, fit circle"),
    "n_bad": ("i8", "pix", "masked or invalid pixels of D in the fit circle"),
    "dist_ref_source": ("f8", "pix", "distance to the nearest reference source; NaN if none"),
    "ref_match": ("?", None, "a reference source lies within match_radius"),
    "sci_peak": ("f8", None, "science image at the peak pixel; NaN when not given"),
    "ref_peak": ("f8", None, "reference image at the peak pixel; NaN when not given"),
    "near_bright": ("?", None, "within bright_radius of a bright or saturated star"),
    "dipole_pair": ("?", None, "an opposite-sign candidate lies within dipole_radius"),
    "partner_id": ("i8", None, "id of that opposite-sign candidate, -1 if none"),
}
"""Columns of the candidate table: name -> (dtype, unit, description)."""


@dataclass(frozen=True)
class DetectionConfig:
    """Parameters of :func:`detect_candidates`.

    Attributes
    ----------
    threshold : float
        Detection threshold on the score, in sigma (the score has unit
        variance).
    min_area : int
        Least number of connected score pixels beyond the threshold. The
        score is already matched-filtered, so a single pixel is a detection;
        larger values lose sources just above the threshold.
    deblend : bool
        Split blended peaks of the score (SEP multi-threshold deblending).
    deblend_nthresh : int
        Number of deblending sub-thresholds.
    deblend_cont : float
        Least flux fraction of a branch to be split off.
    both_signs : bool
        Also detect fading sources as negative peaks of the score.
    edge : int
        Width in pixels of the image border where nothing is detected.
    max_candidates : int
        Safety cap; beyond it only the strongest ``|score_peak|`` are kept
        and the table's ``meta["truncated"]`` is True.
    stamp_size : int
        Odd side in pixels of the cutout triplets made for each candidate
        (see :func:`astrid_assets.science.cutouts.cutout_triplets`).
    fit_radius : float
        Radius of the PSF-fit circle, in units of the PSF FWHM; ``dipole``,
        ``n_bad`` and ``chi2`` use the same circle.
    neg_radius : float
        Radius, in PSF FWHM, of the circle in which ``neg_frac`` counts
        negative pixels (a diameter of two FWHM by default, where a real
        source dominates the noise).
    merge_radius : float
        Same-sign peaks closer than this, in PSF FWHM, are one source; the
        stronger is kept.
    dipole_radius : float
        Opposite-sign candidates closer than this, in PSF FWHM, are flagged
        as a dipole pair; both are kept. A misaligned star's score has its
        lobes about 1.2 FWHM apart.
    dipole_clip : float
        Only pixels of D beyond this many sigma count towards ``dipole``,
        so that noise alone gives a value near 0.
    match_radius : float
        Radius in pixels for ``ref_match`` against the reference sources.
    bright_radius : float
        Radius in pixels around bright or saturated stars for
        ``near_bright``.
    """

    threshold: float = 5.0
    min_area: int = 1
    deblend: bool = True
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    both_signs: bool = True
    edge: int = 10
    max_candidates: int = 5000
    stamp_size: int = 63
    fit_radius: float = 2.0
    neg_radius: float = 1.0
    merge_radius: float = 1.0
    dipole_radius: float = 2.0
    dipole_clip: float = 3.0
    match_radius: float = 2.0
    bright_radius: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive number of sigma, got {self.threshold}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be at least 1 pixel, got {self.min_area}")
        if self.deblend_nthresh < 1:
            raise ValueError(f"deblend_nthresh must be at least 1, got {self.deblend_nthresh}")
        if not 0.0 <= self.deblend_cont <= 1.0:
            raise ValueError(f"deblend_cont must be in [0, 1], got {self.deblend_cont}")
        if self.edge < 0:
            raise ValueError(f"edge must be a non-negative number of pixels, got {self.edge}")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be at least 1, got {self.max_candidates}")
        if self.stamp_size < 1 or self.stamp_size % 2 == 0:
            raise ValueError(f"stamp_size must be odd and positive, got {self.stamp_size}")
        for name in ("fit_radius", "neg_radius", "merge_radius", "dipole_radius", "dipole_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ("match_radius", "bright_radius"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number of pixels, got {value}")


def psf_equivalent_fwhm(psf: np.ndarray) -> float:
    """Gaussian-equivalent FWHM of a PSF stamp from its noise-equivalent area.

    The noise-equivalent area ``1 / sum(P**2)`` of a unit-sum PSF is
    ``4 pi sigma**2`` for a Gaussian; the FWHM of the Gaussian with the same
    area is returned. It sets the scale of the matched filter, and is robust
    to noise and pixelisation where a half-maximum contour is not.

    Parameters
    ----------
    psf : numpy.ndarray
        2-D PSF stamp; it is normalised to unit sum first.

    Returns
    -------
    float
        FWHM in pixels.
    """
    p = np.asarray(psf, dtype=np.float64)
    total = p.sum()
    if p.ndim != 2 or not np.isfinite(total) or total <= 0:
        raise ValueError("PSF must be a finite 2-D stamp with a positive sum")
    nea = 1.0 / np.sum((p / total) ** 2)
    return float(_GAUSS_FWHM * math.sqrt(nea / (4.0 * math.pi)))


def _validated_inputs(
    result: SubtractionResult,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    score = np.asarray(result.score)
    difference = np.asarray(result.difference)
    mask = np.asarray(result.mask)
    if score.ndim != 2:
        raise ValueError(f"score must be a 2-D array, got shape {score.shape}")
    if difference.shape != score.shape:
        raise ValueError(
            f"difference shape {difference.shape} differs from score shape {score.shape}"
        )
    if mask.shape != score.shape:
        raise ValueError(f"mask shape {mask.shape} differs from score shape {score.shape}")
    if mask.dtype != bool:
        raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
    psf = np.asarray(result.difference_psf, dtype=np.float64)
    if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise ValueError(f"difference_psf must be a 2-D stamp with odd sides, got {psf.shape}")
    if psf.shape[0] != psf.shape[1]:
        raise ValueError(f"difference_psf must be square, got {psf.shape}")
    if not np.all(np.isfinite(psf)) or psf.sum() <= 0:
        raise ValueError("difference_psf must be finite with a positive sum")
    noise = float(result.difference_noise)
    if not (math.isfinite(noise) and noise > 0):
        raise ValueError(f"difference_noise must be a positive number, got {noise}")
    return score, difference, mask, psf / psf.sum(), noise


def _quadratic_peak(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel offset of the maximum of a quadratic fitted to 3 x 3 stamps.

    Falls back to the central pixel where a neighbour is invalid or the fit
    has no maximum; offsets are clipped to half a pixel, since the central
    pixel is the highest.
    """
    v, u = np.mgrid[-1:2, -1:2]
    u, v = u.ravel().astype(float), v.ravel().astype(float)
    design = np.column_stack([np.ones(9), u, v, u * u, u * v, v * v])
    values = stamps.reshape(len(stamps), 9)
    ok = np.all(np.isfinite(values), axis=1)
    coeff = np.where(ok[:, None], values, 0.0) @ np.linalg.pinv(design).T
    _, b, c, d, e, f = coeff.T
    hxx, hxy, hyy = 2.0 * d, e, 2.0 * f
    det = hxx * hyy - hxy * hxy
    ok &= (det > 0) & (hxx < 0)
    safe = np.where(ok, det, 1.0)
    dx = np.where(ok, (-hyy * b + hxy * c) / safe, 0.0)
    dy = np.where(ok, (hxy * b - hxx * c) / safe, 0.0)
    return np.clip(dx, -0.5, 0.5), np.clip(dy, -0.5, 0.5)


def _find_peaks(
    score: np.ndarray, invalid: np.ndarray, config: DetectionConfig
) -> dict[str, np.ndarray]:
    """Peaks of the score beyond the threshold, of both signs if asked."""
    data = sep_ready(score, name="score")
    signs = (1, -1) if config.both_signs else (1,)
    parts: list[dict[str, np.ndarray]] = []
    for sign in signs:
        image = data if sign > 0 else -data
        try:
            objects = sep.extract(
                image,
                config.threshold,
                mask=invalid,
                minarea=config.min_area,
                filter_kernel=None,
                deblend_nthresh=config.deblend_nthresh,
                deblend_cont=config.deblend_cont if config.deblend else 1.0,
                clean=False,
            )
        except Exception as exc:
            raise RuntimeError(
                f"SEP could not extract the {'positive' if sign > 0 else 'negative'} peaks "
                f"of the score ({exc}); the score is probably not normalised or large "
                "regions of it are invalid and unmasked"
            ) from exc
        xi = np.asarray(objects["xpeak"], dtype=np.intp)
        yi = np.asarray(objects["ypeak"], dtype=np.intp)
        around = stamps_at_pixels(image, xi, yi, 3, np.nan).astype(np.float64)
        around[stamps_at_pixels(invalid, xi, yi, 3, True)] = np.nan
        dx, dy = _quadratic_peak(around)
        parts.append(
            {
                "x": xi + dx,
                "y": yi + dy,
                "x_peak": xi.astype(np.int64),
                "y_peak": yi.astype(np.int64),
                "sign": np.full(len(xi), sign, dtype=np.int64),
                "score_peak": sign * image[yi, xi].astype(np.float64),
                "npix": np.asarray(objects["npix"], dtype=np.int64),
            }
        )
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _merge_same_source(peaks: dict[str, np.ndarray], radius: float) -> np.ndarray:
    """Indices of peaks to keep: the strongest of same-sign peaks within ``radius``."""
    n = len(peaks["x"])
    if n < 2:
        return np.arange(n)
    xy = np.column_stack([peaks["x"], peaks["y"]])
    pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")
    pairs = pairs[peaks["sign"][pairs[:, 0]] == peaks["sign"][pairs[:, 1]]]
    keep = np.ones(n, dtype=bool)
    if len(pairs):
        strength = np.abs(peaks["score_peak"])
        neighbours: dict[int, list[int]] = {}
        for i, j in pairs:
            neighbours.setdefault(int(i), []).append(int(j))
            neighbours.setdefault(int(j), []).append(int(i))
        for i in sorted(neighbours, key=lambda k: -strength[k]):
            if keep[i]:
                keep[neighbours[i]] = False
    return np.flatnonzero(keep)


def _shifted_psf_stamps(
    psf: np.ndarray, dx: np.ndarray, dy: np.ndarray, size: int, chunk: int = 1024
) -> np.ndarray:
    """``(n, size, size)`` PSF stamps centred at ``(dx, dy)`` from the middle pixel.

    Fourier shift theorem, batched: exact for a band-limited PSF and free of
    the smoothing that spline interpolation adds.
    """
    half = size // 2
    work = max(size + 4, min(psf.shape[0], 2 * size + 1))
    work += 1 - work % 2
    centred = np.zeros((work, work))
    src_half = min(psf.shape[0] // 2, work // 2)
    pc, wc = psf.shape[0] // 2, work // 2
    centred[wc - src_half : wc + src_half + 1, wc - src_half : wc + src_half + 1] = psf[
        pc - src_half : pc + src_half + 1, pc - src_half : pc + src_half + 1
    ]
    spectrum = np.fft.fft2(centred)
    freq = np.fft.fftfreq(work)
    out = np.empty((len(dx), size, size))
    for start in range(0, len(dx), chunk):
        sl = slice(start, start + chunk)
        ramp_x = np.exp(-2j * np.pi * freq[None, :] * dx[sl, None])
        ramp_y = np.exp(-2j * np.pi * freq[None, :] * dy[sl, None])
        moved = np.fft.ifft2(spectrum[None] * ramp_y[:, :, None] * ramp_x[:, None, :]).real
        out[sl] = moved[:, wc - half : wc + half + 1, wc - half : wc + half + 1]
    return out


def _weighted_shape(
    stamps: np.ndarray, du: np.ndarray, dv: np.ndarray, weight_sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-equivalent FWHM and ellipticity from Gaussian-weighted moments.

    The measured second-moment matrix of a Gaussian source seen through an
    isotropic Gaussian weight of variance ``s2`` has eigenvalues
    ``l s2 / (l + s2)``; inverting that gives the source's own.
    """
    s2 = weight_sigma**2
    w = np.exp(-0.5 * (du * du + dv * dv) / s2) * stamps
    m0 = w.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        mxx = (w * du * du).sum(axis=(1, 2)) / m0
        myy = (w * dv * dv).sum(axis=(1, 2)) / m0
        mxy = (w * du * dv).sum(axis=(1, 2)) / m0
        mean = 0.5 * (mxx + myy)
        spread = np.sqrt((0.5 * (mxx - myy)) ** 2 + mxy**2)
        # Noise can push the moments of a single hot pixel below zero; such a
        # candidate is as sharp as can be measured, not undefined.
        lam_hi = np.clip(mean + spread, 0.0, None)
        lam_lo = np.clip(mean - spread, 0.0, None)
        ok = (m0 > 0) & (lam_hi < s2)
        hi = np.where(ok, lam_hi * s2 / (s2 - lam_hi), np.nan)
        lo = np.where(ok, lam_lo * s2 / (s2 - lam_lo), np.nan)
        fwhm = _GAUSS_FWHM * np.sqrt(0.5 * (hi + lo))
        ellipticity = 1.0 - np.sqrt(lo / hi)
    return fwhm, ellipticity


def _measure(
    difference: np.ndarray,
    mask: np.ndarray,
    psf: np.ndarray,
    noise: float,
    x: np.ndarray,
    y: np.ndarray,
    sign: np.ndarray,
    fwhm_psf: float,
    config: DetectionConfig,
) -> dict[str, np.ndarray]:
    """PSF photometry and pixel features of every candidate on D."""
    radius = config.fit_radius * fwhm_psf
    half = max(2, math.ceil(max(config.fit_radius, config.neg_radius) * fwhm_psf))
    size = 2 * half + 1
    xi, yi = nearest_pixel(x, y)
    dx, dy = x - xi, y - yi
    data = stamps_at_pixels(difference, xi, yi, size, np.nan).astype(np.float64)
    bad = stamps_at_pixels(mask, xi, yi, size, True) | ~np.isfinite(data)
    data[bad] = 0.0
    model = _shifted_psf_stamps(psf, dx, dy, size)
    grid = np.arange(-half, half + 1, dtype=np.float64)
    du = grid[None, None, :] - dx[:, None, None]
    dv = grid[None, :, None] - dy[:, None, None]
    r2 = du * du + dv * dv
    circle = r2 <= radius * radius
    good = circle & ~bad
    inner = (r2 <= (config.neg_radius * fwhm_psf) ** 2) & ~bad
    n_inner = inner.sum(axis=(1, 2))
    n_good = good.sum(axis=(1, 2))

    with np.errstate(divide="ignore", invalid="ignore"):
        spp = np.where(good, model * model, 0.0).sum(axis=(1, 2))
        spd = np.where(good, model * data, 0.0).sum(axis=(1, 2))
        flux = np.where(spp > 0, spd / spp, np.nan)
        flux_err = np.where(spp > 0, noise / np.sqrt(spp), np.nan)
        resid = data - flux[:, None, None] * model
        chi2 = np.where(good, resid * resid, 0.0).sum(axis=(1, 2)) / noise**2
        chi2 = np.where(n_good > 1, chi2 / (n_good - 1), np.nan)

        signed = data * sign[:, None, None]
        signed_flux = flux * sign
        centre_ok = ~bad[:, half, half]
        model_peak = model[:, half, half]
        sharpness = np.where(
            centre_ok & (signed_flux > 0) & (model_peak > 0),
            signed[:, half, half] / (signed_flux * model_peak),
            np.nan,
        )
        neg_frac = np.where(n_inner > 0, (inner & (signed < 0)).sum(axis=(1, 2)) / n_inner, np.nan)
        clip = config.dipole_clip * noise
        pos = np.where(good & (signed > clip), signed, 0.0).sum(axis=(1, 2))
        neg = np.where(good & (signed < -clip), -signed, 0.0).sum(axis=(1, 2))
        # One clipped pixel's worth in the denominator keeps a faint
        # candidate with no pixel beyond the clip finite (and 0).
        dipole = neg / (pos + clip)

        weight_sigma = 1.5 * fwhm_psf / _GAUSS_FWHM
        fwhm, ellipticity = _weighted_shape(np.where(good, signed, 0.0), du, dv, weight_sigma)
        fwhm_model, _ = _weighted_shape(np.where(good, model, 0.0), du, dv, weight_sigma)
        fwhm_ratio = fwhm / fwhm_model
    return {
        "flux": flux,
        "flux_err": flux_err,
        "snr": flux / flux_err,
        "chi2": chi2,
        "fwhm": fwhm,
        "fwhm_ratio": fwhm_ratio,
        "ellipticity": ellipticity,
        "sharpness": sharpness,
        "neg_frac": neg_frac,
        "dipole": dipole,
        "n_bad": (circle & bad).sum(axis=(1, 2)).astype(np.int64),
    }


def _pair_dipoles(
    x: np.ndarray, y: np.ndarray, sign: np.ndarray, ids: np.ndarray, radius: float
) -> np.ndarray:
    """Id of the nearest opposite-sign candidate within ``radius``, else -1."""
    partner = np.full(len(x), -1, dtype=np.int64)
    pos, neg = np.flatnonzero(sign > 0), np.flatnonzero(sign < 0)
    if len(pos) == 0 or len(neg) == 0:
        return partner
    xy = np.column_stack([x, y])
    for mine, theirs in ((pos, neg), (neg, pos)):
        dist, idx = cKDTree(xy[theirs]).query(xy[mine], distance_upper_bound=radius)
        found = np.isfinite(dist)
        partner[mine[found]] = ids[theirs[idx[found]]]
    return partner


def _optional_image(
    image: np.ndarray | None, shape: tuple[int, ...], name: str
) -> np.ndarray | None:
    if image is None:
        return None
    img = np.asarray(image)
    if img.shape != shape:
        raise ValueError(f"{name} shape {img.shape} differs from the difference image {shape}")
    return img


def _optional_xy(positions: np.ndarray | None, name: str) -> np.ndarray | None:
    if positions is None:
        return None
    xy = np.asarray(positions, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {xy.shape}")
    return xy


def _image_values(image: np.ndarray | None, xi: np.ndarray, yi: np.ndarray) -> np.ndarray:
    if image is None:
        return np.full(len(xi), np.nan)
    return image[yi, xi].astype(np.float64)


def _nearest_distance(points: np.ndarray | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if points is None or len(points) == 0:
        return np.full(len(x), np.nan)
    dist, _ = cKDTree(points).query(np.column_stack([x, y]))
    return dist


def _near_bright(
    x: np.ndarray,
    y: np.ndarray,
    bright_star_mask: np.ndarray | None,
    bright_star_xy: np.ndarray | None,
    radius: float,
) -> np.ndarray:
    near = np.zeros(len(x), dtype=bool)
    if bright_star_mask is not None:
        half = math.floor(radius)
        xi, yi = nearest_pixel(x, y)
        stamps = stamps_at_pixels(bright_star_mask, xi, yi, 2 * half + 1, False)
        grid = np.arange(-half, half + 1)
        disk = grid[:, None] ** 2 + grid[None, :] ** 2 <= radius * radius
        near |= (stamps & disk).any(axis=(1, 2))
    if bright_star_xy is not None:
        near |= _nearest_distance(bright_star_xy, x, y) <= radius
    return near


def _sky_positions(wcs: WCS | None, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if wcs is None:
        return np.full(len(x), np.nan), np.full(len(x), np.nan)
    celestial = wcs.celestial
    world = celestial.pixel_to_world_values(x, y)
    return (
        np.asarray(world[celestial.wcs.lng], dtype=np.float64),
        np.asarray(world[celestial.wcs.lat], dtype=np.float64),
    )


def _empty_columns(n: int) -> dict[str, np.ndarray]:
    return {name: np.zeros(n, dtype=dtype) for name, (dtype, _, _) in CANDIDATE_COLUMNS.items()}


def _as_table(columns: dict[str, np.ndarray], meta: dict) -> Table:
    table = Table(meta=meta)
    for name, (dtype, unit, description) in CANDIDATE_COLUMNS.items():
        table[name] = np.asarray(columns[name], dtype=dtype)
        table[name].description = description
        if unit is not None:
            table[name].unit = unit
    return table


def detect_candidates(
    result: SubtractionResult,
    *,
    config: DetectionConfig = DetectionConfig(),
    wcs: WCS | None = None,
    zero_point: float | None = None,
    mjd: float | None = None,
    science: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    reference_sources_xy: np.ndarray | None = None,
    bright_star_mask: np.ndarray | None = None,
    bright_star_xy: np.ndarray | None = None,
) -> Table:
    """Detect, locate and measure the transient candidates of a subtraction.

    Parameters
    ----------
    result : SubtractionResult
        The subtraction: ``score`` (unit-variance detection statistic),
        ``difference`` (D, new-image counts), ``difference_psf``,
        ``difference_noise`` and ``mask`` (True where invalid) are used.
    config : DetectionConfig
        Thresholds and radii.
    wcs : astropy.wcs.WCS, optional
        WCS of the difference image's pixel grid, for ``ra`` and ``dec``.
    zero_point : float, optional
        Magnitude of one count per exposure of the new image, for ``mag``.
    mjd : float, optional
        Time of the new exposure, copied to the ``mjd`` column.
    science, reference : numpy.ndarray, optional
        The new image and the reference on the difference's grid, for
        ``sci_peak`` and ``ref_peak``.
    reference_sources_xy : numpy.ndarray, optional
        ``(N, 2)`` pixel positions ``(x, y)`` of the reference catalogue's
        sources, for ``dist_ref_source`` and ``ref_match``.
    bright_star_mask : numpy.ndarray, optional
        Boolean image, True on bright or saturated stars; a candidate within
        ``config.bright_radius`` pixels of a True pixel is ``near_bright``.
    bright_star_xy : numpy.ndarray, optional
        ``(N, 2)`` positions of bright stars, the same test by distance.

    Returns
    -------
    astropy.table.Table
        One row per candidate, strongest ``|score_peak|`` first, with the
        columns of :data:`CANDIDATE_COLUMNS` (present, with NaN, also when
        the optional inputs are missing, and in an empty table). ``meta``
        holds ``threshold``, ``psf_fwhm`` (px, from
        :func:`psf_equivalent_fwhm`), ``difference_noise``, ``method``,
        ``n_detected`` (before the cap) and ``truncated``.

    Raises
    ------
    ValueError
        If the arrays of ``result`` disagree in shape, the PSF stamp is not
        odd, square and positive, the noise is not positive, or an optional
        input has the wrong shape.
    """
    score, difference, mask, psf, noise = _validated_inputs(result)
    shape = score.shape
    science = _optional_image(science, shape, "science")
    reference = _optional_image(reference, shape, "reference")
    bright_star_mask = _optional_image(bright_star_mask, shape, "bright_star_mask")
    if bright_star_mask is not None and bright_star_mask.dtype != bool:
        raise ValueError(f"bright_star_mask must be boolean, got dtype {bright_star_mask.dtype}")
    reference_sources_xy = _optional_xy(reference_sources_xy, "reference_sources_xy")
    bright_star_xy = _optional_xy(bright_star_xy, "bright_star_xy")
    if wcs is not None and not wcs.has_celestial:
        raise ValueError("wcs has no celestial axes; RA and Dec cannot be computed")
    fwhm_psf = psf_equivalent_fwhm(psf)
    invalid = mask | ~np.isfinite(score)
    if config.edge:
        e = config.edge
        invalid[:e] = invalid[-e:] = True
        invalid[:, :e] = invalid[:, -e:] = True

    peaks = _find_peaks(score, invalid, config)
    keep = _merge_same_source(peaks, config.merge_radius * fwhm_psf)
    order = keep[np.argsort(-np.abs(peaks["score_peak"][keep]), kind="stable")]
    n_detected = len(order)
    truncated = n_detected > config.max_candidates
    order = order[: config.max_candidates]
    meta = {
        "threshold": float(config.threshold),
        "psf_fwhm": fwhm_psf,
        "difference_noise": noise,
        "method": str(getattr(result, "method", "")),
        "n_detected": int(n_detected),
        "truncated": bool(truncated),
    }
    n = len(order)
    columns = _empty_columns(n)
    for key, values in peaks.items():
        columns[key] = values[order]
    if n == 0:
        return _as_table(columns, meta)

    x, y, sign = columns["x"], columns["y"], columns["sign"]
    columns["id"] = np.arange(1, n + 1, dtype=np.int64)
    columns.update(_measure(difference, mask, psf, noise, x, y, sign, fwhm_psf, config))

    if zero_point is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            absflux = np.abs(columns["flux"])
            mag = zero_point - 2.5 * np.log10(absflux)
            mag_err = _MAG_PER_LN * columns["flux_err"] / absflux
        columns["mag"] = np.where(np.isfinite(mag), mag, np.nan)
        columns["mag_err"] = np.where(np.isfinite(mag), mag_err, np.nan)
    else:
        columns["mag"] = columns["mag_err"] = np.full(n, np.nan)
    columns["ra"], columns["dec"] = _sky_positions(wcs, x, y)
    columns["mjd"] = np.full(n, np.nan if mjd is None else float(mjd))

    xi, yi = nearest_pixel(x, y)
    columns["sci_peak"] = _image_values(science, xi, yi)
    columns["ref_peak"] = _image_values(reference, xi, yi)
    columns["dist_ref_source"] = _nearest_distance(reference_sources_xy, x, y)
    columns["ref_match"] = columns["dist_ref_source"] <= config.match_radius
    columns["near_bright"] = _near_bright(
        x, y, bright_star_mask, bright_star_xy, config.bright_radius
    )
    partner = _pair_dipoles(x, y, sign, columns["id"], config.dipole_radius * fwhm_psf)
    columns["partner_id"] = partner
    columns["dipole_pair"] = partner >= 0
    return _as_table(columns, meta)
