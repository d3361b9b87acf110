"""Source detection and measurement on a background-subtracted image.

Detection is SExtractor's (Bertin & Arnouts 1996, A&AS 117, 393) as SEP
implements it (Barbary 2016, JOSS 1, 58): the image is smoothed with a
normalised Gaussian and pixels above ``threshold`` times the (unsmoothed)
per-pixel noise are kept, in connected groups of at least ``minarea``
pixels, then deblended and cleaned. The threshold therefore means what
SExtractor's ``DETECT_THRESH`` means; SEP's "matched" filter mode would
instead count it in units of the smoothed image's noise, which is several
times smaller. Each source is then measured the SExtractor way: windowed
centroid (``XWIN``), Kron (``AUTO``) and circular-aperture fluxes with
errors, half-light radius, shape from the second moments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from astropy.table import Table

from astrid_assets.science.background import sep_ready

__all__ = [
    "FLAG_SATURATED",
    "SOURCE_COLUMNS",
    "ExtractionConfig",
    "extract_sources",
    "gaussian_kernel",
]

# SEP's flag bits end at 128 (``sep.APER_NONPOSITIVE``); this one is ours.
FLAG_SATURATED = 256

SOURCE_COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("i8", "running number, starting at 1"),
    "x": ("f8", "windowed centroid, column (0-based pixels)"),
    "y": ("f8", "windowed centroid, row (0-based pixels)"),
    "x_iso": ("f8", "isophotal barycentre, column"),
    "y_iso": ("f8", "isophotal barycentre, row"),
    "x_peak": ("i8", "column of the brightest pixel"),
    "y_peak": ("i8", "row of the brightest pixel"),
    "a": ("f8", "RMS extent along the major axis (pixels)"),
    "b": ("f8", "RMS extent along the minor axis (pixels)"),
    "theta": ("f8", "major-axis angle, radians counter-clockwise from +x"),
    "ellipticity": ("f8", "1 - b/a"),
    "npix": ("i8", "pixels above the detection threshold"),
    "flux": ("f8", "Kron (AUTO) flux, image units"),
    "flux_err": ("f8", "1-sigma error of flux"),
    "kron_radius": ("f8", "Kron radius in units of a, b"),
    "flux_aper": ("f8", "flux in a circle of aperture_radius"),
    "flux_aper_err": ("f8", "1-sigma error of flux_aper"),
    "flux_radius": ("f8", "radius enclosing half of flux (pixels)"),
    "fwhm": ("f8", "2 * flux_radius: FWHM of a Gaussian with that half-light radius"),
    "peak": ("f8", "brightest background-subtracted pixel value"),
    "snr": ("f8", "flux / flux_err"),
    "flag": ("i8", "SEP extraction and photometry flags, plus FLAG_SATURATED"),
    "saturated": ("?", "a saturated pixel lies within one pixel of the source's box"),
}


@dataclass(frozen=True)
class ExtractionConfig:
    """Parameters of :func:`extract_sources` (SExtractor's defaults).

    Attributes
    ----------
    threshold : float
        Detection threshold in units of the noise (``DETECT_THRESH``).
    minarea : int
        Minimum number of connected pixels above threshold.
    filter_fwhm : float or None
        FWHM (pixels) of the Gaussian detection filter; None for no filter.
    deblend : bool
        Split blended sources (``DEBLEND_NTHRESH`` / ``DEBLEND_MINCONT``).
    deblend_nthresh : int
        Number of deblending sub-thresholds.
    deblend_cont : float
        Minimum flux fraction of a branch to be split off.
    clean : bool
        Remove spurious detections in the wings of bright sources.
    aperture_radius : float
        Radius of the fixed circular aperture (pixels).
    kron_factor : float
        AUTO aperture is ``kron_factor * kron_radius`` (``PHOT_AUTOPARAMS``).
    min_kron_radius : float
        Minimum AUTO radius (pixels); below it a circle of this radius is used.
    """

    threshold: float = 1.5
    minarea: int = 5
    filter_fwhm: float | None = 2.0
    deblend: bool = True
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    clean: bool = True
    aperture_radius: float = 3.0
    kron_factor: float = 2.5
    min_kron_radius: float = 1.75

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold) or self.threshold <= 0:
            raise ValueError(
                f"threshold must be a positive number of sigma, got {self.threshold!r}"
            )
        if int(self.minarea) != self.minarea or self.minarea < 1:
            raise ValueError(f"minarea must be a positive integer, got {self.minarea!r}")
        if self.filter_fwhm is not None and not self.filter_fwhm > 0:
            raise ValueError(f"filter_fwhm must be positive or None, got {self.filter_fwhm!r}")
        if int(self.deblend_nthresh) != self.deblend_nthresh or self.deblend_nthresh < 1:
            raise ValueError(
                f"deblend_nthresh must be a positive integer, got {self.deblend_nthresh!r}"
            )
        if not 0.0 < self.deblend_cont <= 1.0:
            raise ValueError(f"deblend_cont must be in (0, 1], got {self.deblend_cont!r}")
        for name in ("aperture_radius", "kron_factor", "min_kron_radius"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")


def gaussian_kernel(fwhm: float) -> np.ndarray:
    """A normalised, odd-sized Gaussian detection kernel of the given FWHM.

    The kernel spans +-FWHM/2 rounded up; for FWHM 2 it is SExtractor's
    default 3x3 mask ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16``.
    """
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise ValueError(f"kernel FWHM must be positive, got {fwhm!r}")
    half = max(1, int(np.ceil(0.5 * fwhm - 1e-9)))
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    r = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (r / sigma) ** 2)
    kernel = np.outer(g, g)
    return (kernel / kernel.sum()).astype(np.float32)


def _noise_map(rms: float | np.ndarray, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    if np.ndim(rms) == 0:
        value = float(rms)
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"rms must be a positive noise level, got {rms!r}")
        return np.full(shape, value, dtype=dtype)
    err = np.asarray(rms)
    if err.shape != shape:
        raise ValueError(f"rms shape {err.shape} does not match image shape {shape}")
    return sep_ready(err, name="rms").astype(dtype, copy=False)


def _box_any(hits: np.ndarray, x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray):
    """Whether each inclusive box [y0:y1, x0:x1] holds a True pixel (summed-area table)."""
    ny, nx = hits.shape
    sat = np.zeros((ny + 1, nx + 1), dtype=np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(hits, axis=0), axis=1)
    x0 = np.clip(x0, 0, nx - 1)
    y0 = np.clip(y0, 0, ny - 1)
    x1 = np.clip(x1, 0, nx - 1) + 1
    y1 = np.clip(y1, 0, ny - 1) + 1
    return (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]) > 0


def _empty_table() -> Table:
    table = Table()
    for name, (dtype, description) in SOURCE_COLUMNS.items():
        table[name] = np.zeros(0, dtype=dtype)
        table[name].description = description
    return table


def extract_sources(
    image: np.ndarray,
    rms: float | np.ndarray,
    *,
    threshold: float = ExtractionConfig.threshold,
    minarea: int = ExtractionConfig.minarea,
    mask: np.ndarray | None = None,
    deblend: bool = ExtractionConfig.deblend,
    deblend_nthresh: int = ExtractionConfig.deblend_nthresh,
    deblend_cont: float = ExtractionConfig.deblend_cont,
    filter_fwhm: float | None = ExtractionConfig.filter_fwhm,
    clean: bool = ExtractionConfig.clean,
    aperture_radius: float = ExtractionConfig.aperture_radius,
    kron_factor: float = ExtractionConfig.kron_factor,
    min_kron_radius: float = ExtractionConfig.min_kron_radius,
    gain: float | None = None,
    saturation: float | None = None,
    background: float | np.ndarray | None = None,
    saturated_mask: np.ndarray | None = None,
    wcs=None,
) -> Table:
    """Detect and measure sources on a background-subtracted image.

    Parameters
    ----------
    image : numpy.ndarray
        Background-subtracted 2-D image (any float dtype or byte order).
        Non-finite pixels are masked.
    rms : float or numpy.ndarray
        Background noise, one standard deviation per pixel (or one value);
        pixels where it is not finite and positive are masked.
    threshold, minarea, deblend, deblend_nthresh, deblend_cont, filter_fwhm,
    clean, aperture_radius, kron_factor, min_kron_radius
        See :class:`ExtractionConfig`.
    mask : numpy.ndarray of bool, optional
        True for pixels to ignore (they count as zero signal, infinite noise).
    gain : float, optional
        Electrons per image unit; adds the sources' own Poisson noise to the
        flux errors (without it the errors are background-only).
    saturation : float, optional
        Saturation level in the units of ``image + background``.
    background : float or numpy.ndarray, optional
        The background that was subtracted from ``image``; used only to
        compare pixel values with ``saturation``.
    saturated_mask : numpy.ndarray of bool, optional
        Pixels known to be saturated (for instance the SATURATED bit of a
        calibrated frame's flags), used in addition to ``saturation``.
    wcs : astropy.wcs.WCS, optional
        If given, ``ra`` and ``dec`` columns (degrees) are added from the
        windowed centroids.

    Returns
    -------
    astropy.table.Table
        One row per source, the columns of :data:`SOURCE_COLUMNS` (plus
        ``ra``, ``dec``). Pixel positions are 0-based with ``x`` the column;
        add 1 for FITS/SExtractor conventions.

    Raises
    ------
    ValueError
        If the shapes of ``image``, ``rms``, ``mask`` or ``background``
        disagree, or a parameter is invalid.
    """
    config = ExtractionConfig(
        threshold=threshold,
        minarea=minarea,
        filter_fwhm=filter_fwhm,
        deblend=deblend,
        deblend_nthresh=deblend_nthresh,
        deblend_cont=deblend_cont,
        clean=clean,
        aperture_radius=aperture_radius,
        kron_factor=kron_factor,
        min_kron_radius=min_kron_radius,
    )
    if gain is not None and (not np.isfinite(gain) or gain <= 0):
        raise ValueError(f"gain must be positive, got {gain!r}")
    data = sep_ready(image)
    shape = data.shape
    err = _noise_map(rms, shape, data.dtype)
    for name, extra in (
        ("mask", mask),
        ("saturated_mask", saturated_mask),
        ("background", background),
    ):
        if extra is not None and np.ndim(extra) != 0 and np.shape(extra) != shape:
            raise ValueError(f"{name} shape {np.shape(extra)} does not match image shape {shape}")
    bad = ~np.isfinite(data) | ~np.isfinite(err) | (err <= 0)
    if mask is not None:
        bad |= np.asarray(mask).astype(bool)
    if bad.any():
        data = np.where(bad, 0, data).astype(data.dtype)
        err = np.where(bad, np.inf, err).astype(data.dtype)
    bad = np.ascontiguousarray(bad)

    # SEP keeps its buffers as process-wide settings; size them for the image.
    sep.set_extract_pixstack(max(sep.get_extract_pixstack(), data.size // 4))
    sep.set_sub_object_limit(max(sep.get_sub_object_limit(), 4096))
    kernel = None if config.filter_fwhm is None else gaussian_kernel(config.filter_fwhm)
    objects = sep.extract(
        data,
        config.threshold,
        err=err,
        mask=bad,
        minarea=int(config.minarea),
        filter_kernel=kernel,
        filter_type="conv",
        deblend_nthresh=int(config.deblend_nthresh),
        deblend_cont=config.deblend_cont if config.deblend else 1.0,
        clean=config.clean,
    )
    if len(objects) == 0:
        table = _empty_table()
        if wcs is not None:
            table["ra"] = np.zeros(0)
            table["dec"] = np.zeros(0)
        return table

    x_iso = objects["x"].astype(np.float64)
    y_iso = objects["y"].astype(np.float64)
    a = np.maximum(objects["a"].astype(np.float64), 1e-3)
    b = np.maximum(objects["b"].astype(np.float64), 1e-3)
    # sep's float32 theta can be float32(pi/2), just above the pi/2 that sum_ellipse accepts.
    theta = np.clip(objects["theta"].astype(np.float64), -np.pi / 2, np.pi / 2)
    flag = objects["flag"].astype(np.int64)

    # AUTO photometry (SExtractor: 2.5 Kron radii, at least a circle of 1.75 px).
    kron, kflag = sep.kron_radius(data, x_iso, y_iso, a, b, theta, 6.0, mask=bad)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 0.0)
    flag |= kflag
    flux, flux_err, aflag = sep.sum_ellipse(
        data,
        x_iso,
        y_iso,
        a,
        b,
        theta,
        np.maximum(config.kron_factor * kron, 1e-3),
        err=err,
        mask=bad,
        gain=gain,
        subpix=1,
    )
    flag |= aflag
    small = config.kron_factor * kron * np.sqrt(a * b) < config.min_kron_radius
    if small.any():
        cflux, cerr, cflag = sep.sum_circle(
            data,
            x_iso[small],
            y_iso[small],
            config.min_kron_radius,
            err=err,
            mask=bad,
            gain=gain,
            subpix=1,
        )
        flux[small] = cflux
        flux_err[small] = cerr
        flag[small] |= cflag

    rhalf, rflag = sep.flux_radius(
        data, x_iso, y_iso, 6.0 * a, 0.5, normflux=flux, mask=bad, subpix=5
    )
    flag |= rflag
    rhalf = np.where(np.isfinite(rhalf) & (rhalf > 0), rhalf, np.sqrt(a * b) * 1.1774)

    # Windowed centroid with SExtractor's window: sigma = 2 r_half / 2.35.
    xwin, ywin, wflag = sep.winpos(data, x_iso, y_iso, 2.0 * rhalf / 2.3548, mask=bad)
    good_win = (wflag == 0) & np.isfinite(xwin) & np.isfinite(ywin)
    good_win &= np.hypot(xwin - x_iso, ywin - y_iso) < 2.0 * np.maximum(a, 1.0)
    x = np.where(good_win, xwin, x_iso)
    y = np.where(good_win, ywin, y_iso)

    aflux, aerr, apflag = sep.sum_circle(
        data, x, y, config.aperture_radius, err=err, mask=bad, gain=gain, subpix=5
    )
    flag |= apflag

    saturated = np.zeros(len(objects), dtype=bool)
    hits = None
    if saturation is not None:
        level = np.asarray(image, dtype=np.float64)
        if background is not None:
            level = level + np.asarray(background, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            hits = level >= saturation
    if saturated_mask is not None:
        sm = np.asarray(saturated_mask)
        hits = sm.astype(bool) if hits is None else (hits | sm.astype(bool))
    if hits is not None and hits.any():
        saturated = _box_any(
            hits,
            objects["xmin"] - 1,
            objects["xmax"] + 1,
            objects["ymin"] - 1,
            objects["ymax"] + 1,
        )
        flag[saturated] |= FLAG_SATURATED

    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(flux_err > 0, flux / flux_err, np.nan)

    columns = {
        "id": np.arange(1, len(objects) + 1),
        "x": x,
        "y": y,
        "x_iso": x_iso,
        "y_iso": y_iso,
        "x_peak": objects["xpeak"].astype(np.int64),
        "y_peak": objects["ypeak"].astype(np.int64),
        "a": a,
        "b": b,
        "theta": theta,
        "ellipticity": 1.0 - b / a,
        "npix": objects["npix"].astype(np.int64),
        "flux": flux,
        "flux_err": flux_err,
        "kron_radius": kron,
        "flux_aper": aflux,
        "flux_aper_err": aerr,
        "flux_radius": rhalf,
        "fwhm": 2.0 * rhalf,
        "peak": objects["peak"].astype(np.float64),
        "snr": snr,
        "flag": flag,
        "saturated": saturated,
    }
    table = Table()
    for name, (dtype, description) in SOURCE_COLUMNS.items():
        table[name] = np.asarray(columns[name]).astype(dtype)
        table[name].description = description
    if wcs is not None:
        sky = wcs.pixel_to_world(x, y)
        table["ra"] = sky.ra.deg
        table["dec"] = sky.dec.deg
        table["ra"].description = "right ascension of (x, y), degrees"
        table["dec"].description = "declination of (x, y), degrees"
    return table
