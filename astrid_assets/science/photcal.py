"""Photometric calibration: the zero point of a frame and its depth.

Magnitudes follow ``mag = zero_point - 2.5 log10(flux)`` with ``flux`` in ADU
(counts in the frame). The zero point is fitted from the frame's own stars
matched to a reference catalogue; the limiting magnitude is that of a point
source detected at ``nsigma`` by optimal (PSF-weighted) photometry on the
background noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

__all__ = [
    "ZeroPoint",
    "ZeroPointConfig",
    "ZeroPointError",
    "fit_zero_point",
    "limiting_flux",
    "limiting_magnitude",
]

_MAG_PER_FLUX = 2.5 / np.log(10.0)  # 1.0857: d(mag) = 1.0857 d(flux) / flux
# FLAG_SATURATED | blended | truncated at the edge | aperture truncated or masked
_REJECT_FLAGS = 256 | 1 | 2 | 16 | 32 | 64


class ZeroPointError(ValueError):
    """Raised when a zero point cannot be fitted (too few matched stars)."""


@dataclass(frozen=True)
class ZeroPointConfig:
    """Parameters of :func:`fit_zero_point`.

    Attributes
    ----------
    match_radius_arcsec : float
        Maximum separation of a source from its catalogue star.
    sigma : float
        Outliers beyond this many robust standard deviations are rejected
        (iteratively).
    min_stars : int
        Fewer stars left than this is a :class:`ZeroPointError`.
    min_snr : float
        Sources below this ``flux / flux_err`` are not used.
    error_floor : float
        Added in quadrature to each star's magnitude error (flat-field and
        aperture-correction errors that S/N does not show), mag.
    """

    match_radius_arcsec: float = 2.0
    sigma: float = 3.0
    min_stars: int = 3
    min_snr: float = 5.0
    error_floor: float = 0.01

    def __post_init__(self) -> None:
        if not self.match_radius_arcsec > 0:
            raise ValueError(
                f"match_radius_arcsec must be positive, got {self.match_radius_arcsec!r}"
            )
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma!r}")
        if self.min_stars < 1:
            raise ValueError(f"min_stars must be >= 1, got {self.min_stars!r}")
        if not self.min_snr >= 0 or not self.error_floor >= 0:
            raise ValueError("min_snr and error_floor must be >= 0")


@dataclass
class ZeroPoint:
    """A fitted photometric zero point.

    Attributes
    ----------
    zero_point : float
        ``mag = zero_point - 2.5 log10(flux_ADU)``.
    error : float
        Standard error of ``zero_point`` (mag), inflated by the reduced
        chi-square of the stars about it when that exceeds 1.
    scatter : float
        Robust standard deviation of the stars about the zero point (mag).
    n_stars : int
        Stars used after rejection.
    n_matched : int
        Sources matched to the catalogue before quality cuts and rejection.
    """

    zero_point: float
    error: float
    scatter: float
    n_stars: int
    n_matched: int

    @classmethod
    def stated(cls, zero_point: float) -> ZeroPoint:
        """A zero point taken as given (a header's, a user's), not fitted: no stars, error NaN."""
        value = float(zero_point)
        if not np.isfinite(value):
            raise ValueError(f"a stated zero point must be finite, got {zero_point!r}")
        nan = float("nan")
        return cls(zero_point=value, error=nan, scatter=nan, n_stars=0, n_matched=0)

    def magnitude(self, flux: np.ndarray | float) -> np.ndarray | float:
        """Magnitude of a flux in ADU (NaN where the flux is not positive)."""
        flux = np.asarray(flux, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = self.zero_point - 2.5 * np.log10(np.where(flux > 0, flux, np.nan))
        return mag if mag.ndim else float(mag)


def _sky_coords(table: Table, wcs, what: str) -> SkyCoord:
    if "ra" in table.colnames and "dec" in table.colnames:
        ra = table["ra"]
        dec = table["dec"]
        ra = ra.quantity if getattr(ra, "unit", None) is not None else np.asarray(ra) * u.deg
        dec = dec.quantity if getattr(dec, "unit", None) is not None else np.asarray(dec) * u.deg
        return SkyCoord(ra=ra, dec=dec)
    if wcs is not None and "x" in table.colnames and "y" in table.colnames:
        return wcs.pixel_to_world(np.asarray(table["x"], float), np.asarray(table["y"], float))
    raise ValueError(f"{what} needs 'ra' and 'dec' columns, or 'x' and 'y' columns and a wcs")


def fit_zero_point(
    sources: Table,
    catalog: Table,
    *,
    wcs=None,
    match_radius_arcsec: float = ZeroPointConfig.match_radius_arcsec,
    sigma: float = ZeroPointConfig.sigma,
    min_stars: int = ZeroPointConfig.min_stars,
    min_snr: float = ZeroPointConfig.min_snr,
    error_floor: float = ZeroPointConfig.error_floor,
    flux_column: str = "flux",
    flux_err_column: str = "flux_err",
    mag_column: str = "mag",
    mag_err_column: str | None = "mag_err",
) -> ZeroPoint:
    """Fit the zero point of a frame from its sources and a reference catalogue.

    Each source is matched to its nearest catalogue star within
    ``match_radius_arcsec`` (one source per star, the nearest). For every
    match ``zp_i = mag_i + 2.5 log10(flux_i)``; outliers (variables, blends,
    wrong matches) are rejected iteratively at ``sigma`` robust standard
    deviations from the median, and the zero point is the inverse-variance
    weighted mean of the rest.

    Parameters
    ----------
    sources : astropy.table.Table
        The frame's sources: ``flux`` and ``flux_err`` in ADU (column names
        configurable) and either ``ra``/``dec`` (degrees) or ``x``/``y``
        (0-based pixels) with ``wcs``. Rows with ``saturated`` set or with
        blended, truncated or masked-aperture ``flag`` bits are skipped.
    catalog : astropy.table.Table
        Reference stars: ``ra``, ``dec`` (degrees) and ``mag`` (optionally
        ``mag_err``) in the frame's band.
    wcs : astropy.wcs.WCS, optional
        Used when ``sources`` has no ``ra``/``dec``.
    match_radius_arcsec, sigma, min_stars, min_snr, error_floor
        See :class:`ZeroPointConfig`.
    flux_column, flux_err_column, mag_column, mag_err_column : str
        Column names; ``mag_err_column`` is ignored if absent.

    Returns
    -------
    ZeroPoint

    Raises
    ------
    ZeroPointError
        Fewer than ``min_stars`` usable matched stars.
    ValueError
        Missing columns or coordinates.
    """
    config = ZeroPointConfig(
        match_radius_arcsec=match_radius_arcsec,
        sigma=sigma,
        min_stars=min_stars,
        min_snr=min_snr,
        error_floor=error_floor,
    )
    for name in (flux_column, flux_err_column):
        if name not in sources.colnames:
            raise ValueError(f"sources table lacks the {name!r} column")
    if mag_column not in catalog.colnames:
        raise ValueError(f"catalog table lacks the {mag_column!r} column")
    if len(sources) == 0 or len(catalog) == 0:
        raise ZeroPointError(
            f"cannot fit a zero point: {len(sources)} sources, {len(catalog)} catalogue stars"
        )
    src_coords = _sky_coords(sources, wcs, "sources")
    cat_coords = _sky_coords(catalog, None, "catalog")
    idx, sep2d, _ = src_coords.match_to_catalog_sky(cat_coords)
    matched = sep2d.arcsec <= config.match_radius_arcsec
    # One source per catalogue star: the nearest.
    src_idx = np.flatnonzero(matched)
    order = np.argsort(sep2d.arcsec[src_idx], kind="stable")
    src_idx = src_idx[order]
    _, first = np.unique(idx[src_idx], return_index=True)
    src_idx = np.sort(src_idx[first])
    n_matched = int(src_idx.size)
    cat_idx = idx[src_idx]

    flux = np.asarray(sources[flux_column], dtype=np.float64)[src_idx]
    flux_err = np.asarray(sources[flux_err_column], dtype=np.float64)[src_idx]
    mag = np.asarray(catalog[mag_column], dtype=np.float64)[cat_idx]
    if mag_err_column is not None and mag_err_column in catalog.colnames:
        mag_err = np.asarray(catalog[mag_err_column], dtype=np.float64)[cat_idx]
    else:
        mag_err = np.zeros_like(mag)
    good = np.isfinite(flux) & np.isfinite(flux_err) & (flux > 0) & (flux_err > 0)
    good &= np.isfinite(mag) & np.isfinite(mag_err)
    with np.errstate(divide="ignore", invalid="ignore"):
        good &= flux / flux_err >= config.min_snr
    if "saturated" in sources.colnames:
        good &= ~np.asarray(sources["saturated"], dtype=bool)[src_idx]
    if "flag" in sources.colnames:
        good &= (np.asarray(sources["flag"]).astype(np.int64)[src_idx] & _REJECT_FLAGS) == 0

    with np.errstate(divide="ignore", invalid="ignore"):
        zp = mag + 2.5 * np.log10(flux)
        err = np.sqrt((_MAG_PER_FLUX * flux_err / flux) ** 2 + mag_err**2 + config.error_floor**2)
    zp, err = zp[good], err[good]
    if zp.size < config.min_stars:
        raise ZeroPointError(
            f"only {zp.size} usable stars matched within {config.match_radius_arcsec:g} arcsec "
            f"({n_matched} matched before cuts); need {config.min_stars}"
        )
    keep = np.ones(zp.size, dtype=bool)
    for _ in range(10):
        centre = np.median(zp[keep])
        spread = 1.4826 * np.median(np.abs(zp[keep] - centre))
        # Never clip tighter than the stars' own errors allow.
        limit = config.sigma * np.maximum(spread, err)
        new_keep = np.abs(zp - centre) <= limit
        if new_keep.sum() < config.min_stars or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if keep.sum() < config.min_stars:
        raise ZeroPointError(
            f"only {int(keep.sum())} stars agree on a zero point; need {config.min_stars}"
        )
    weight = 1.0 / err[keep] ** 2
    value = float(np.sum(weight * zp[keep]) / np.sum(weight))
    n = int(keep.sum())
    error = float(np.sqrt(1.0 / np.sum(weight)))
    if n > 1:
        chi2_red = float(np.sum(weight * (zp[keep] - value) ** 2) / (n - 1))
        error *= np.sqrt(max(chi2_red, 1.0))
    scatter = float(1.4826 * np.median(np.abs(zp[keep] - np.median(zp[keep]))))
    return ZeroPoint(value, error, scatter, n, n_matched)


def _psf_norm(psf_stamp: np.ndarray) -> float:
    psf = np.asarray(psf_stamp, dtype=np.float64)
    if psf.ndim != 2 or psf.size == 0:
        raise ValueError(f"PSF stamp must be a 2-D array, got shape {psf.shape}")
    if not np.all(np.isfinite(psf)):
        raise ValueError("PSF stamp has non-finite values")
    total = psf.sum()
    if not total > 0:
        raise ValueError(f"PSF stamp must have a positive sum, got {total!r}")
    return float(np.sum((psf / total) ** 2))


def limiting_flux(psf_stamp: np.ndarray, sigma_background: float, nsigma: float = 5.0) -> float:
    """Flux (ADU) of a point source detected at ``nsigma`` by PSF photometry.

    With the PSF ``P`` normalised to unit sum and white background noise
    ``sigma`` per pixel, the optimal flux estimate ``sum(P D) / sum(P^2)`` has
    error ``sigma / sqrt(sum(P^2))``, so ``flux_lim = nsigma * sigma *
    sqrt(1 / sum(P^2))`` (the noise-equivalent area is ``1 / sum(P^2)``).
    """
    if not (np.isfinite(sigma_background) and sigma_background > 0):
        raise ValueError(f"sigma_background must be positive, got {sigma_background!r}")
    if not nsigma > 0:
        raise ValueError(f"nsigma must be positive, got {nsigma!r}")
    return float(nsigma * sigma_background * np.sqrt(1.0 / _psf_norm(psf_stamp)))


def limiting_magnitude(
    zero_point: ZeroPoint | float,
    psf_stamp: np.ndarray,
    sigma_background: float,
    nsigma: float = 5.0,
) -> float:
    """Magnitude of a point source detected at ``nsigma`` (see :func:`limiting_flux`).

    Parameters
    ----------
    zero_point : ZeroPoint or float
        ``mag = zero_point - 2.5 log10(flux_ADU)``.
    psf_stamp : numpy.ndarray
        The PSF (normalised here to unit sum).
    sigma_background : float
        Background noise per pixel, ADU.
    nsigma : float
        Detection significance.

    Returns
    -------
    float
        ``zero_point - 2.5 log10(flux_lim)``.
    """
    zp = zero_point.zero_point if isinstance(zero_point, ZeroPoint) else float(zero_point)
    if not np.isfinite(zp):
        raise ValueError(f"zero point must be finite, got {zp!r}")
    return float(zp - 2.5 * np.log10(limiting_flux(psf_stamp, sigma_background, nsigma)))
