"""Frame quality: the numbers that decide whether a frame is usable.

:func:`frame_quality` gathers seeing, shape, sky, depth and masking from the
products of calibration, background, extraction, PSF and zero point;
:func:`assess` compares them with :class:`QualityLimits` and says in words
why a frame is rejected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import sep
from astropy.table import Table

from astrid_assets.science.background import Background
from astrid_assets.science.photcal import ZeroPoint, limiting_flux
from astrid_assets.science.psf import PsfModel

__all__ = [
    "FrameQuality",
    "QualityLimits",
    "assess",
    "frame_quality",
]


@dataclass
class FrameQuality:
    """Quality numbers of one frame (NaN where unknown).

    Attributes
    ----------
    fwhm_pix : float
        PSF FWHM, pixels (geometric mean of the major and minor axes).
    fwhm_arcsec : float
        The same in arcseconds (NaN without a pixel scale).
    ellipticity : float
        PSF ``1 - b/a``.
    sky : float
        Global sky level, ADU.
    sky_rms : float
        Global sky noise per pixel, ADU.
    zero_point : float
        ``mag = zero_point - 2.5 log10(flux_ADU)``.
    limiting_flux : float
        Flux (ADU) of a point source at ``nsigma`` with PSF photometry.
    limiting_mag : float
        The same as a magnitude (NaN without a zero point).
    n_stars : int
        Unsaturated point sources with S/N >= 10 (half-light radius within
        25% of the PSF's).
    n_sources : int
        All detections.
    n_psf_stars : int
        Stars the PSF was fitted to.
    masked_fraction : float
        Fraction of masked pixels.
    nsigma : float
        Significance of the limit.
    """

    fwhm_pix: float
    fwhm_arcsec: float
    ellipticity: float
    sky: float
    sky_rms: float
    zero_point: float
    limiting_flux: float
    limiting_mag: float
    n_stars: int
    n_sources: int
    n_psf_stars: int
    masked_fraction: float
    nsigma: float = 5.0

    def as_dict(self) -> dict[str, float | int]:
        """Plain dictionary, e.g. for a table row or asset metadata."""
        return asdict(self)


@dataclass(frozen=True)
class QualityLimits:
    """Limits a good frame stays within; None switches a test off.

    Attributes
    ----------
    max_fwhm_arcsec : float or None
        Worst acceptable seeing (needs a pixel scale).
    max_fwhm_pix : float or None
        Worst acceptable seeing in pixels.
    max_ellipticity : float or None
        Most elongated acceptable PSF (trailing, bad focus).
    min_stars : int or None
        Fewest point sources (clouds, bad pointing, a closed dome).
    min_limiting_mag : float or None
        Shallowest acceptable depth (needs a zero point).
    max_masked_fraction : float or None
        Most of the frame that may be masked.
    max_sky : float or None
        Brightest acceptable sky, ADU (twilight, moon).
    """

    max_fwhm_arcsec: float | None = None
    max_fwhm_pix: float | None = None
    max_ellipticity: float | None = 0.3
    min_stars: int | None = 10
    min_limiting_mag: float | None = None
    max_masked_fraction: float | None = 0.25
    max_sky: float | None = None


def _point_source_radius(psf: PsfModel) -> float:
    """Half-light radius of the PSF as the source extractor measures it."""
    stamp = np.ascontiguousarray(psf.stamp, dtype=np.float64)
    c = (stamp.shape[0] - 1) / 2.0
    radius, _ = sep.flux_radius(
        stamp, np.array([c]), np.array([c]), np.array([c]), 0.5, normflux=np.array([1.0])
    )
    return float(radius[0])


def frame_quality(
    background: Background,
    psf: PsfModel | None,
    *,
    sources: Table | None = None,
    zero_point: ZeroPoint | float | None = None,
    mask: np.ndarray | None = None,
    pixel_scale: float | None = None,
    nsigma: float = 5.0,
) -> FrameQuality:
    """Collect the quality numbers of a frame.

    Parameters
    ----------
    background : Background
        From :func:`astrid_assets.science.background.estimate_background`.
    psf : PsfModel or None
        From :func:`astrid_assets.science.psf.measure_psf`; None when the
        PSF could not be measured (seeing and depth are then NaN).
    sources : astropy.table.Table, optional
        From :func:`astrid_assets.science.sources.extract_sources`.
    zero_point : ZeroPoint or float, optional
        The frame's zero point.
    mask : numpy.ndarray of bool, optional
        The frame's mask.
    pixel_scale : float, optional
        Arcseconds per pixel.
    nsigma : float
        Significance of the limiting flux and magnitude.

    Returns
    -------
    FrameQuality
    """
    if pixel_scale is not None and not pixel_scale > 0:
        raise ValueError(f"pixel_scale must be positive arcsec/pixel, got {pixel_scale!r}")
    nan = float("nan")
    fwhm = psf.fwhm_mean if psf is not None else nan
    sky_rms = float(background.global_rms)
    lim_flux = nan
    if psf is not None and np.isfinite(sky_rms) and sky_rms > 0:
        lim_flux = limiting_flux(psf.stamp, sky_rms, nsigma)
    if isinstance(zero_point, ZeroPoint):
        zp = zero_point.zero_point
    else:
        zp = nan if zero_point is None else float(zero_point)
    lim_mag = zp - 2.5 * np.log10(lim_flux) if np.isfinite(zp) and lim_flux > 0 else nan

    n_sources = 0 if sources is None else len(sources)
    n_stars = 0
    if sources is not None and len(sources) and psf is not None:
        snr = np.asarray(sources["snr"], dtype=np.float64)
        radius = np.asarray(sources["flux_radius"], dtype=np.float64)
        point = np.abs(radius / _point_source_radius(psf) - 1.0) <= 0.25
        ok = (snr >= 10) & point
        if "saturated" in sources.colnames:
            ok &= ~np.asarray(sources["saturated"], dtype=bool)
        n_stars = int(ok.sum())

    if mask is None:
        masked = 0.0
    else:
        m = np.asarray(mask)
        if m.shape != background.background.shape:
            raise ValueError(
                f"mask shape {m.shape} does not match image shape {background.background.shape}"
            )
        masked = float(m.astype(bool).mean())
    return FrameQuality(
        fwhm_pix=float(fwhm),
        fwhm_arcsec=float(fwhm * pixel_scale) if pixel_scale is not None else nan,
        ellipticity=float(psf.ellipticity) if psf is not None else nan,
        sky=float(background.global_background),
        sky_rms=sky_rms,
        zero_point=float(zp),
        limiting_flux=float(lim_flux),
        limiting_mag=float(lim_mag),
        n_stars=n_stars,
        n_sources=n_sources,
        n_psf_stars=int(psf.n_stars) if psf is not None else 0,
        masked_fraction=masked,
        nsigma=float(nsigma),
    )


def assess(quality: FrameQuality, limits: QualityLimits | None = None) -> list[str]:
    """Reasons a frame fails ``limits``; an empty list means it is good.

    A limit that needs a number the frame lacks (no PSF, no zero point, no
    pixel scale) fails with a reason saying so.
    """
    limits = limits or QualityLimits()
    reasons: list[str] = []

    def above(value: float, limit: float | None, what: str, unit: str) -> None:
        if limit is None:
            return
        if not np.isfinite(value):
            reasons.append(f"{what} unknown (limit {limit:g}{unit})")
        elif value > limit:
            reasons.append(f"{what} {value:.3g}{unit} above the limit {limit:g}{unit}")

    above(quality.fwhm_arcsec, limits.max_fwhm_arcsec, "FWHM", " arcsec")
    above(quality.fwhm_pix, limits.max_fwhm_pix, "FWHM", " px")
    above(quality.ellipticity, limits.max_ellipticity, "PSF ellipticity", "")
    above(quality.masked_fraction, limits.max_masked_fraction, "masked fraction", "")
    above(quality.sky, limits.max_sky, "sky", " ADU")
    if limits.min_stars is not None and quality.n_stars < limits.min_stars:
        reasons.append(f"only {quality.n_stars} stars (need {limits.min_stars})")
    if limits.min_limiting_mag is not None:
        if not np.isfinite(quality.limiting_mag):
            reasons.append(f"limiting magnitude unknown (limit {limits.min_limiting_mag:g})")
        elif quality.limiting_mag < limits.min_limiting_mag:
            reasons.append(
                f"{quality.nsigma:g}-sigma limiting magnitude {quality.limiting_mag:.2f} "
                f"shallower than {limits.min_limiting_mag:g}"
            )
    return reasons
