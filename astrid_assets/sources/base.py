"""The interface every survey source implements, and what it hands over.

A source knows a survey's fields, delivers each night's raw exposure of a
field and the night's calibration frames, names the epochs a field's
reference may be built from, and gives the photometric catalogue and the
reference grid of each field. The simulated survey is the default; real
archives and a local folder of FITS sit beside it behind the same methods.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from dagster import ConfigurableResource

__all__ = ["CalibrationFrames", "RawExposure", "SurveySource"]


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
    """

    night: str
    field: str
    data: np.ndarray
    header: fits.Header
    truth: Table | None = None

    def require(self, keyword: str) -> float:
        """A numeric header value, or an error naming the exposure and the keyword."""
        if keyword not in self.header:
            raise ValueError(f"raw exposure {self.field} {self.night}: header has no {keyword}")
        value = float(self.header[keyword])
        if not np.isfinite(value):
            raise ValueError(f"raw exposure {self.field} {self.night}: {keyword} is {value}")
        return value


@dataclass
class CalibrationFrames:
    """A night's bias frames and flat fields, raw ADU."""

    night: str
    biases: list[np.ndarray]
    flats: list[np.ndarray]


class SurveySource(ConfigurableResource):
    """A survey's exposures, calibration frames, catalogues and field grids."""

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

    def grid_stars(self, field: str) -> np.ndarray | None:
        """(N, 2) bright catalogue stars on the field's grid, brightest first."""
        wcs, (ny, nx) = self.grid(field)
        catalog = self.catalog(field)
        if len(catalog) == 0:
            return None
        x, y = wcs.world_to_pixel_values(np.asarray(catalog["ra"]), np.asarray(catalog["dec"]))
        inside = (x > 10) & (x < nx - 10) & (y > 10) & (y < ny - 10)
        order = np.argsort(np.asarray(catalog["mag"])[inside])
        return np.column_stack([x[inside], y[inside]])[order][:80]
