"""The interface every survey source implements, and what it hands over.

A source knows a survey's fields, delivers each night's raw exposure of a
field and the night's calibration frames, names the epochs a field's
reference may be built from, and gives the photometric catalogue and the
reference grid of each field. The simulated survey is the default; real
archives and a local folder of FITS sit beside it behind the same methods.
"""

from __future__ import annotations

import datetime as dt
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from dagster import ConfigurableResource

__all__ = [
    "CalibrationFrames",
    "RawExposure",
    "SurveySource",
    "night_of",
    "read_raw_exposure",
    "validate_night",
    "write_raw_exposure",
]

# Where surveys state a frame's photometric zero point (the archives write
# MAGZP; DECam and NOIRLab MAGZERO; SExtractor-style PHOTZP).
# Set on a delivered file whose pixels the observatory already calibrated.
CALIBRATED_KEYWORD = "ASTRCAL"
ZERO_POINT_KEYWORDS = ("MAGZP", "MAGZERO", "MAGZPT", "PHOTZP", "ZEROPT")


MJD_EPOCH = dt.date(1858, 11, 17)


def night_of(mjd: float, longitude: float | None = None) -> str:
    """The night (``YYYY-MM-DD``, the local date of the evening) of an exposure
    started at ``mjd`` at a site ``longitude`` degrees east (UTC when None)."""
    local = float(mjd) + (longitude or 0.0) / 360.0
    return (MJD_EPOCH + dt.timedelta(days=int(np.floor(local - 0.5)))).isoformat()


def validate_night(night: str) -> str:
    """``night`` if it is a ``YYYY-MM-DD`` date, else a ValueError saying so."""
    try:
        dt.date.fromisoformat(night)
    except (TypeError, ValueError) as err:
        raise ValueError(f"a night is a date YYYY-MM-DD, got {night!r}") from err
    if len(night) != 10:
        raise ValueError(f"a night is a date YYYY-MM-DD, got {night!r}")
    return night


@dataclass
class RawExposure:
    """One raw science exposure as the telescope wrote it.

    Attributes
    ----------
    night, field : str
        The partition it belongs to (night is the UTC date of the evening).
    data : numpy.ndarray
        Raw ADU, bias included.
    header : astropy.io.fits.Header
        Must give GAIN (e-/ADU), RDNOISE (e-), SATURATE (raw ADU), MJD-OBS
        and a celestial WCS.
    truth : astropy.table.Table or None
        What the simulator put in the frame (sources, transients); None for a
        real telescope.
    calibrated : bool
        True when the observatory's pipeline already removed the bias and
        divided by the flat (DECam InstCal, ZTF sciimg, PS1 warps, stacks):
        no masters are applied, only masking, cosmic rays and measurement.
        SATURATE is then in the delivered pixel units and the sky may have
        been subtracted.
    """

    night: str
    field: str
    data: np.ndarray
    header: fits.Header
    truth: Table | None = None
    calibrated: bool = False

    def require(self, keyword: str) -> float:
        """A numeric header value, or an error naming the exposure and the keyword."""
        if keyword not in self.header:
            raise ValueError(f"raw exposure {self.field} {self.night}: header has no {keyword}")
        value = float(self.header[keyword])
        if not np.isfinite(value):
            raise ValueError(f"raw exposure {self.field} {self.night}: {keyword} is {value}")
        return value

    def header_zero_point(self) -> float | None:
        """The zero point the header states (``mag = ZP - 2.5 log10 pixel value``), if any."""
        for keyword in ZERO_POINT_KEYWORDS:
            value = self.header.get(keyword)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if np.isfinite(value):
                return float(value)
        return None


def write_raw_exposure(exposure: RawExposure, path: Path) -> Path:
    """Write a raw exposure as a telescope would deliver it: header and pixels
    in a ``RAW`` extension, and the simulator's truth as ``TRUTH`` when known."""
    from astrid_assets.science.fitsio import write_fits_atomic

    tables = {"TRUTH": exposure.truth} if exposure.truth is not None else None
    header = exposure.header
    if exposure.calibrated:
        header = header.copy()
        header[CALIBRATED_KEYWORD] = (True, "pixels already bias-subtracted and flat-fielded")
    return write_fits_atomic(path, {"RAW": (exposure.data, header)}, tables)


def read_raw_exposure(path: str | Path, night: str, field: str) -> RawExposure:
    """Read a delivered raw exposure; errors name the file and the problem."""
    from astrid_assets.science.fitsio import FitsInputError, read_image

    image = read_image(path)
    truth = None
    try:
        with fits.open(path) as hdul:
            if "TRUTH" in hdul:
                truth = Table.read(hdul["TRUTH"])
    except OSError as err:
        raise FitsInputError(path, f"unreadable TRUTH table ({err})") from err
    return RawExposure(
        night=night,
        field=field,
        data=image.data,
        header=image.header,
        truth=truth,
        calibrated=bool(image.header.get(CALIBRATED_KEYWORD, False)),
    )


@dataclass
class CalibrationFrames:
    """A night's bias frames and flat fields, raw ADU."""

    night: str
    biases: list[np.ndarray]
    flats: list[np.ndarray]


class SurveySource(ConfigurableResource):
    """A survey's exposures, calibration frames, catalogues and field grids.

    ``landing_dir`` is where a telescope delivers a night's raw exposures
    as ``NIGHT/FIELD.fits``; an exposure found there is read from there, and
    the landing sensor starts the night's processing when one arrives.
    """

    landing_dir: str | None = None

    def landed_path(self, night: str, field: str) -> Path | None:
        """Where ``night``'s exposure of ``field`` lies in the landing directory, if it does."""
        if not self.landing_dir:
            return None
        path = Path(self.landing_dir) / night / f"{field}.fits"
        return path if path.exists() else None

    def landed_exposure(self, night: str, field: str) -> RawExposure | None:
        """The delivered exposure of ``field`` on ``night``, or None when none was delivered."""
        path = self.landed_path(night, field)
        if path is None:
            return None
        return read_raw_exposure(path, night, field)

    @abstractmethod
    def fields(self) -> list[str]:
        """The survey's field names (the field dimension of the partitions)."""

    @abstractmethod
    def first_night(self) -> str:
        """The survey's first night, ``YYYY-MM-DD``."""

    @abstractmethod
    def exposure(self, night: str, field: str) -> RawExposure:
        """The raw science exposure of ``field`` on ``night``."""

    @abstractmethod
    def calibration_frames(self, night: str) -> CalibrationFrames:
        """The night's bias and flat frames."""

    @abstractmethod
    def template_nights(self, field: str) -> list[str]:
        """The nights whose exposures of ``field`` may go into its reference."""

    @abstractmethod
    def catalog(self, field: str) -> Table:
        """Photometric reference catalogue of the field: ra, dec, mag[, mag_err]."""

    @abstractmethod
    def grid(self, field: str) -> tuple[WCS, tuple[int, int]]:
        """The field's reference grid: its WCS and shape ``(ny, nx)``."""

    def pixel_scale(self) -> float | None:
        """Arcseconds per pixel, when the survey has one."""
        return None

    def stated_zero_point(self, exposure: RawExposure) -> float | None:
        """The zero point to use when the catalogue does not calibrate ``exposure``:
        the one its header states, if any."""
        return exposure.header_zero_point()

    def nights(self) -> list[str] | None:
        """The nights the source holds, when it knows them (a folder, an archive
        query); None for a survey that can make any night (the simulator)."""
        return None

    def night_fields(self) -> dict[str, list[str]] | None:
        """The fields each of :meth:`nights` has exposures of; None when the source
        does not hold its nights (the landing sensor watches what it returns)."""
        return None

    def grid_stars(self, field: str) -> np.ndarray | None:
        """(N, 2) bright catalogue stars on the field's grid, brightest first."""
        from astrid_assets.science.survey import catalog_stars_on_grid

        catalog = self.catalog(field)
        if len(catalog) == 0:
            return None
        wcs, shape = self.grid(field)
        return catalog_stars_on_grid(catalog, wcs, shape)
