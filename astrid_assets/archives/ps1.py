"""Pan-STARRS1 stack and warp cutouts by position, for references.

Follows the PS1 image cutout service
(https://outerspace.stsci.edu/display/PANSTARRS/PS1+Image+Cutout+Service):

* file list: ``{base}/cgi-bin/ps1filenames.py?ra=..&dec=..&filters=grizy&type=stack``
  answers a whitespace-separated table whose first line names the columns
  ``projcell subcell ra dec filter mjd type filename shortname badflag``,
  one row per image (``filename`` is the image's path in the archive);
* cutout: ``{base}/cgi-bin/fitscut.cgi?ra=..&dec=..&size=..&format=fits&red={filename}``,
  ``size`` in pixels of 0.25 arcsec.

Header conventions (PS1 Stack images,
https://outerspace.stsci.edu/display/PANSTARRS/PS1+Stack+images): stack
pixels were rescaled to the zero point ``25 + 2.5 log10(EXPTIME)``, EXPTIME
being the summed exposure time of the warps in the stack. We read the
``25`` from ``HIERARCH FPA.ZP`` when the header has it (the IPP stack's
target zero point per second) and fall back to 25.0, then add the
exposure term. A header carrying ``ZPT_0001`` (a keyword the pages above
do not describe) is taken as the image's whole zero point, unchanged. Cutouts are
linear fluxes; full skycell stacks are asinh-scaled (BSOFTEN, BOFFSET),
which :func:`ps1_linear_flux` undoes. The PS1 pages document no PSF-width
keyword for stacks or cutouts, so ``seeing`` comes only from a ``FWHM``
keyword (pixels) where one is present; otherwise the pipeline measures the
PSF from the image itself. Stacks are AB-calibrated (the zero point is
provisional at the 0.01 mag level before ubercalibration, as PS1 warns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from astrid_assets.archives.http import ArchiveError, HttpClient
from astrid_assets.archives.metadata import (
    ArchiveImage,
    ExposureMetadata,
    first_value,
    fwhm_arcsec,
)

__all__ = [
    "PS1_PIXEL_SCALE",
    "PS1_URL",
    "Ps1Archive",
    "Ps1File",
    "parse_filename_table",
    "ps1_exposure_metadata",
    "ps1_linear_flux",
]

PS1_URL = "https://ps1images.stsci.edu"
FILENAMES_PATH = "/cgi-bin/ps1filenames.py"
FITSCUT_PATH = "/cgi-bin/fitscut.cgi"
PS1_FILTERS = "grizy"
PS1_IMAGE_TYPES = ("stack", "warp")
PS1_PIXEL_SCALE = 0.25  # arcsec per pixel of stacks, warps and cutouts
PS1_STACK_ZP = 25.0  # per second of summed exposure
MAX_CUTOUT_PIXELS = 6000
FILENAME_COLUMNS = (
    "projcell",
    "subcell",
    "ra",
    "dec",
    "filter",
    "mjd",
    "type",
    "filename",
    "shortname",
    "badflag",
)


@dataclass(frozen=True)
class Ps1File:
    """One row of ``ps1filenames.py``'s table."""

    projcell: int
    subcell: int
    ra: float
    dec: float
    filter: str
    mjd: float
    type: str
    filename: str
    shortname: str
    badflag: int


def parse_filename_table(text: str, url: str) -> list[Ps1File]:
    """The rows of a ``ps1filenames.py`` answer; an error names the URL and the line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0].split()
    missing = [name for name in FILENAME_COLUMNS if name not in header]
    if missing:
        raise ArchiveError(
            f"{url}: the PS1 file list has no {missing} column(s); header was {lines[0]!r}"
        )
    index = {name: header.index(name) for name in FILENAME_COLUMNS}
    files = []
    for number, line in enumerate(lines[1:], start=2):
        values = line.split()
        if len(values) != len(header):
            raise ArchiveError(
                f"{url}: line {number} of the PS1 file list has {len(values)} fields, "
                f"expected {len(header)}: {line!r}"
            )
        get = {name: values[i] for name, i in index.items()}
        try:
            files.append(
                Ps1File(
                    projcell=int(get["projcell"]),
                    subcell=int(get["subcell"]),
                    ra=float(get["ra"]),
                    dec=float(get["dec"]),
                    filter=get["filter"],
                    mjd=float(get["mjd"]),
                    type=get["type"],
                    filename=get["filename"],
                    shortname=get["shortname"],
                    badflag=int(get["badflag"]),
                )
            )
        except ValueError as err:
            raise ArchiveError(f"{url}: line {number} of the PS1 file list: {err}") from err
    return files


def ps1_linear_flux(data: np.ndarray, header: fits.Header) -> np.ndarray:
    """Undo the asinh scaling of a full PS1 skycell stack (a no-op for cutouts).

    flux = BOFFSET + BSOFTEN * 2 sinh(x ln(10) / 2.5), as PS1's stack page gives it.
    """
    if "BSOFTEN" not in header or "BOFFSET" not in header:
        return np.asarray(data)
    soften, offset = float(header["BSOFTEN"]), float(header["BOFFSET"])
    x = np.asarray(data, dtype=np.float64)
    return offset + soften * 2.0 * np.sinh(x * np.log(10.0) / 2.5)


def ps1_exposure_metadata(
    header: fits.Header, url: str, file: Ps1File | None = None
) -> ExposureMetadata:
    """Map a PS1 stack or warp cutout header to exposure facts (module docstring)."""
    exptime = first_value(header, ("EXPTIME",))
    zero_point = first_value(header, ("ZPT_0001",))
    if zero_point is None and exptime is not None and exptime > 0:
        per_second = first_value(header, ("FPA.ZP", "HIERARCH FPA.ZP"))
        zero_point = (per_second if per_second is not None else PS1_STACK_ZP) + 2.5 * math.log10(
            exptime
        )
    mjd = first_value(header, ("MJD-OBS",))
    if mjd is None and file is not None and file.mjd > 0:
        mjd = file.mjd
    seeing = fwhm_arcsec(header)
    if seeing is None and (fwhm_px := first_value(header, ("FWHM",))) is not None:
        seeing = fwhm_px * PS1_PIXEL_SCALE
    band = first_value(header, ("FPA.FILTER", "HIERARCH FPA.FILTER", "FILTER"), str)
    extra = {"type": file.type, "shortname": file.shortname} if file else {}
    return ExposureMetadata(
        survey="ps1",
        url=url,
        filter=file.filter if file is not None else band,
        date_obs=first_value(header, ("DATE-OBS",), str),
        mjd=mjd,
        exptime=exptime,
        airmass=first_value(header, ("AIRMASS",)),
        ra=first_value(header, ("RA", "CRVAL1")),
        dec=first_value(header, ("DEC", "CRVAL2")),
        gain=first_value(header, ("GAIN", "CELL.GAIN", "HIERARCH CELL.GAIN")),
        read_noise=first_value(header, ("RDNOISE", "CELL.READNOISE", "HIERARCH CELL.READNOISE")),
        saturation=first_value(header, ("SATURATE", "CELL.SATURATION")),
        zero_point=zero_point,
        seeing=seeing,
        limiting_mag=first_value(header, ("MAGLIM",)),
        pixel_unit="adu",
        extra=extra,
    )


class Ps1Archive:
    """Pan-STARRS1 stack (or warp) cutouts around a position.

    Parameters
    ----------
    http : HttpClient
        Shared HTTP layer (retries, pace, download cache).
    base_url : str
        The PS1 image service's root; tests point it at a local server.
    """

    def __init__(self, http: HttpClient, base_url: str = PS1_URL) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")

    @staticmethod
    def _position(ra: float, dec: float) -> tuple[float, float]:
        ra, dec = float(ra), float(dec)
        if not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
            raise ValueError(f"position must be ra 0..360, dec -90..90 deg, got ({ra}, {dec})")
        if dec < -30.0:
            raise ValueError(f"PS1 covers dec > -30 deg; dec {dec} is outside its sky")
        return ra, dec

    def files(
        self, ra: float, dec: float, filters: str = PS1_FILTERS, image_type: str = "stack"
    ) -> list[Ps1File]:
        """The images covering (ra, dec) in ``filters`` (``ps1filenames.py``)."""
        ra, dec = self._position(ra, dec)
        if not filters or any(band not in PS1_FILTERS for band in filters):
            raise ValueError(f"filters must be letters of {PS1_FILTERS!r}, got {filters!r}")
        if image_type not in PS1_IMAGE_TYPES:
            raise ValueError(f"image_type must be one of {PS1_IMAGE_TYPES}, got {image_type!r}")
        url = f"{self.base_url}{FILENAMES_PATH}"
        params = {"ra": f"{ra:.6f}", "dec": f"{dec:.6f}", "filters": filters, "type": image_type}
        text = self.http.get_text(url, params)
        files = parse_filename_table(text, self.http.url(url, params))
        order = {band: i for i, band in enumerate(PS1_FILTERS)}
        return sorted(files, key=lambda f: (order.get(f.filter, 99), f.mjd))

    def cutout_url(self, file: Ps1File, ra: float, dec: float, size: int) -> str:
        """The ``fitscut.cgi`` URL of a ``size`` x ``size`` pixel FITS cutout of ``file``."""
        ra, dec = self._position(ra, dec)
        if not 1 <= int(size) <= MAX_CUTOUT_PIXELS:
            raise ValueError(f"size must be 1..{MAX_CUTOUT_PIXELS} pixels, got {size}")
        params = {
            "ra": f"{ra:.6f}",
            "dec": f"{dec:.6f}",
            "size": int(size),
            "format": "fits",
            "red": file.filename,
        }
        return self.http.url(f"{self.base_url}{FITSCUT_PATH}", params)

    def cutouts(
        self,
        ra: float,
        dec: float,
        size: int = 240,
        filters: str = PS1_FILTERS,
        image_type: str = "stack",
    ) -> list[ArchiveImage]:
        """FITS cutouts around (ra, dec), one per image found, downloaded through the cache."""
        images = []
        for file in self.files(ra, dec, filters, image_type):
            url = self.cutout_url(file, ra, dec, size)
            path = self.http.download(url, suffix=".fits")
            header = fits.getheader(path)
            images.append(ArchiveImage(path, ps1_exposure_metadata(header, url, file)))
        return images
