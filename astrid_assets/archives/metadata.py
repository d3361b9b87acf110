"""What an archive image says about itself, in the exposures table's terms.

Each survey writes the same facts under its own header keywords and units
(ZTF's MAGZP and SEEING, Pan-STARRS's FPA.ZP and EXPTIME, SDSS's NMGY);
each archive module maps its survey's conventions into one
:class:`ExposureMetadata`, whose names follow the columns of the
``exposures`` table (:data:`astrid_assets.defs.ingest.HEADER_COLUMNS`) plus
the photometric ones the table lacks (zero point, seeing, limiting
magnitude). :meth:`ExposureMetadata.header_cards` gives them back as the
FITS keywords the pipeline reads (GAIN, RDNOISE, SATURATE, MJD-OBS, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

__all__ = [
    "ArchiveImage",
    "ExposureMetadata",
    "first_value",
    "fwhm_arcsec",
    "pixel_scale_arcsec",
]

# ExposureMetadata attribute -> the FITS keyword the pipeline reads it from.
HEADER_KEYWORDS = {
    "date_obs": "DATE-OBS",
    "mjd": "MJD-OBS",
    "exptime": "EXPTIME",
    "filter": "FILTER",
    "airmass": "AIRMASS",
    "ra": "RA",
    "dec": "DEC",
    "gain": "GAIN",
    "read_noise": "RDNOISE",
    "saturation": "SATURATE",
    "zero_point": "MAGZP",
    "seeing": "SEEING",
    "limiting_mag": "MAGLIM",
}


@dataclass(frozen=True)
class ExposureMetadata:
    """One archive image's exposure facts, in the pipeline's units.

    Attributes
    ----------
    survey : str
        ``"ztf"``, ``"ps1"`` or ``"sdss"``.
    url : str
        Where the image was downloaded from.
    filter : str or None
        The survey's band name (``zr``, ``g``, ``r``).
    date_obs, mjd, exptime, airmass, ra, dec
        Start of the exposure (ISO), its MJD, seconds, airmass, and the
        pointing or image centre in degrees (ICRS).
    gain : float or None
        Electrons per unit of pixel value (for calibrated images, the gain
        of the detector divided by the calibration factor).
    read_noise : float or None
        Electrons.
    saturation : float or None
        Pixel value above which the detector saturated, in pixel units.
    zero_point : float or None
        Magnitude of a source of total flux 1 in pixel units (AB for these
        three surveys).
    seeing : float or None
        PSF FWHM, arcseconds.
    limiting_mag : float or None
        The survey's 5-sigma point-source depth.
    pixel_unit : str
        What a pixel value counts: ``"adu"``, ``"nanomaggy"``.
    extra : mapping
        Survey-specific keywords worth keeping (NMGY, SOFTBIAS, INFOBITS).
    """

    survey: str
    url: str
    filter: str | None = None
    date_obs: str | None = None
    mjd: float | None = None
    exptime: float | None = None
    airmass: float | None = None
    ra: float | None = None
    dec: float | None = None
    gain: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    zero_point: float | None = None
    seeing: float | None = None
    limiting_mag: float | None = None
    pixel_unit: str = "adu"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def header_cards(self) -> dict[str, Any]:
        """The known facts as FITS keywords (``GAIN``, ``MAGZP``, ...), unknown ones left out."""
        cards: dict[str, Any] = {}
        for name, keyword in HEADER_KEYWORDS.items():
            value = getattr(self, name)
            if value is not None:
                cards[keyword] = value
        return cards

    def as_dict(self) -> dict[str, Any]:
        """All attributes, for a table row or a log line."""
        row = asdict(self)
        row["extra"] = dict(self.extra)
        return row


@dataclass(frozen=True)
class ArchiveImage:
    """A downloaded image: its local file (in the download cache) and what it says."""

    path: Path
    metadata: ExposureMetadata


def first_value(
    header: Mapping[str, Any] | fits.Header,
    keywords: tuple[str, ...] | list[str],
    kind: Callable[[Any], Any] = float,
) -> Any:
    """The value of the first of ``keywords`` that ``header`` holds and ``kind`` accepts.

    Blank values, values ``kind`` rejects and non-finite numbers are
    skipped, so a survey's placeholder (``NaN``, ``''``) falls through to the
    next convention. Returns None when none is usable.
    """
    for keyword in keywords:
        if keyword not in header:
            continue
        raw = header[keyword]
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        try:
            value = kind(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        return value
    return None


def pixel_scale_arcsec(header: fits.Header) -> float | None:
    """Mean pixel scale in arcseconds from the header's celestial WCS, if it has one."""
    try:
        wcs = WCS(header, naxis=2)
    except Exception:
        return None
    if not wcs.has_celestial:
        return None
    scales = proj_plane_pixel_scales(wcs.celestial)
    scale = float(np.mean(scales)) * 3600.0
    return scale if math.isfinite(scale) and scale > 0 else None


def fwhm_arcsec(header: fits.Header) -> float | None:
    """A generic ``FWHM`` keyword (pixels, as SExtractor-style reductions write it)
    converted to arcseconds with the WCS pixel scale; None when either is missing."""
    fwhm_px = first_value(header, ("FWHM",))
    scale = pixel_scale_arcsec(header)
    if fwhm_px is None or scale is None or fwhm_px <= 0:
        return None
    return fwhm_px * scale
