"""SDSS imaging frames by run/rerun/camcol/field or by position, for references.

Follows the SDSS Science Archive Server's data model for calibrated frames
(https://data.sdss.org/datamodel/files/BOSS_PHOTOOBJ/frames/RERUN/RUN/CAMCOL/frame.html):
``{base}/sas/dr17/eboss/photoObj/frames/{rerun}/{run}/{camcol}/
frame-{band}-{run:06d}-{camcol}-{field:04d}.fits.bz2``, bzip2-compressed FITS
whose primary HDU is the calibrated, sky-subtracted image in nanomaggies.

Frames at a position come from SkyServer's SQL search web service
(https://skyserver.sdss.org/dr17/en/help/docs/api.aspx, ``SqlSearch``):
``{skyserver}/dr17/SkyServerWS/SearchTools/SqlSearch?cmd=<SQL>&format=csv``
runs the query below and answers CSV whose first line is ``#Table1``,
the second the column names, then one row per frame::

    #Table1
    run,rerun,camcol,field
    3918,301,3,213

Header conventions (same data-model page): pixel values are nanomaggies,
so the AB zero point is 22.5 mag (m = 22.5 - 2.5 log10(f)); NMGY is the
nanomaggies per DN of the original counts, so the gain in electrons per
pixel unit is the camera column's gain (table on that page) divided by
NMGY. SOFTBIAS (1000 DN) is the software bias of the raw idR/fpC counts:
it is not in the calibrated frame's pixels and is only kept in ``extra``.
TAI is the exposure's time in TAI seconds of MJD. Frames carry no seeing
(it lives in the psField files) and no saturation level.
"""

from __future__ import annotations

import bz2
from dataclasses import dataclass

from astropy.io import ascii, fits

from astrid_assets.archives.http import ArchiveError, HttpClient
from astrid_assets.archives.metadata import (
    ArchiveImage,
    ExposureMetadata,
    first_value,
    fwhm_arcsec,
)

__all__ = [
    "SDSS_BANDS",
    "SDSS_DATA_URL",
    "SDSS_GAIN",
    "SDSS_NANOMAGGY_ZP",
    "SKYSERVER_URL",
    "SdssArchive",
    "SdssFrame",
    "parse_frame_listing",
    "sdss_exposure_metadata",
]

SDSS_DATA_URL = "https://data.sdss.org"
SKYSERVER_URL = "https://skyserver.sdss.org"
FRAMES_PATH = "/sas/dr17/eboss/photoObj/frames"
SQLSEARCH_PATH = "/dr17/SkyServerWS/SearchTools/SqlSearch"
SDSS_BANDS = "ugriz"
SDSS_NANOMAGGY_ZP = 22.5
DEFAULT_RERUN = 301
SECONDS_PER_DAY = 86400.0

# Gain (e-/DN) by camera column and band, from the frame data-model page.
SDSS_GAIN = {
    1: {"u": 1.62, "g": 3.32, "r": 4.71, "i": 5.165, "z": 4.745},
    2: {"u": 1.595, "g": 3.855, "r": 4.6, "i": 6.565, "z": 5.155},
    3: {"u": 1.59, "g": 3.845, "r": 4.72, "i": 4.86, "z": 4.885},
    4: {"u": 1.6, "g": 3.995, "r": 4.76, "i": 4.885, "z": 4.775},
    5: {"u": 1.47, "g": 4.05, "r": 4.725, "i": 4.64, "z": 3.48},
    6: {"u": 2.17, "g": 4.035, "r": 4.895, "i": 4.76, "z": 4.69},
}
CAMCOL2_U_GAIN_LATE = 1.825  # camcol 2, u band, runs after 1100

FRAMES_AT_SQL = (
    "SELECT DISTINCT p.run, p.rerun, p.camcol, p.field "
    "FROM dbo.fGetNearbyObjEq({ra:.6f}, {dec:.6f}, {radius:.4f}) AS n "
    "JOIN PhotoObj AS p ON p.objID = n.objID "
    "ORDER BY p.run, p.camcol, p.field"
)


@dataclass(frozen=True)
class SdssFrame:
    """One imaging field of one camera column: ``run``/``rerun``/``camcol``/``field``."""

    run: int
    camcol: int
    field: int
    rerun: int = DEFAULT_RERUN

    def __post_init__(self) -> None:
        if not 1 <= self.camcol <= 6:
            raise ValueError(f"SDSS camcol must be 1..6, got {self.camcol}")
        if self.run <= 0 or self.field < 0 or self.rerun <= 0:
            raise ValueError(f"not an SDSS frame: {self}")


def sdss_gain(camcol: int, band: str, run: int) -> float:
    """Detector gain, e-/DN, of a camera column and band (frame data-model table)."""
    if camcol == 2 and band == "u" and run > 1100:
        return CAMCOL2_U_GAIN_LATE
    return SDSS_GAIN[camcol][band]


def parse_frame_listing(text: str, url: str) -> list[SdssFrame]:
    """The frames of a SkyServer ``SqlSearch`` CSV answer (``#Table1`` then CSV)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        return []
    if lines[0].lstrip().startswith("<"):
        raise ArchiveError(f"{url}: SkyServer answered HTML, not CSV: {lines[0][:200]!r}")
    try:
        table = ascii.read(lines, format="csv", guess=False)
    except Exception as err:
        raise ArchiveError(f"{url}: unreadable SkyServer CSV ({err})") from err
    missing = [name for name in ("run", "rerun", "camcol", "field") if name not in table.colnames]
    if missing:
        raise ArchiveError(f"{url}: the SkyServer answer lacks the columns {missing}")
    return [
        SdssFrame(
            run=int(row["run"]),
            camcol=int(row["camcol"]),
            field=int(row["field"]),
            rerun=int(row["rerun"]),
        )
        for row in table
    ]


def sdss_exposure_metadata(
    header: fits.Header, url: str, frame: SdssFrame, band: str
) -> ExposureMetadata:
    """Map an SDSS frame header to exposure facts (module docstring)."""
    nmgy = first_value(header, ("NMGY",))
    gain = sdss_gain(frame.camcol, band, frame.run)
    tai = first_value(header, ("TAI",))
    mjd = tai / SECONDS_PER_DAY if tai is not None else first_value(header, ("MJD-OBS", "MJD"))
    date_obs = first_value(header, ("DATE-OBS",), str)
    taihms = first_value(header, ("TAIHMS",), str)
    if date_obs and taihms and "T" not in date_obs:
        date_obs = f"{date_obs}T{taihms}"
    extra = {name: header[name] for name in ("NMGY", "SOFTBIAS", "BUNIT") if name in header}
    extra.update(run=frame.run, rerun=frame.rerun, camcol=frame.camcol, field=frame.field)
    return ExposureMetadata(
        survey="sdss",
        url=url,
        filter=band,
        date_obs=date_obs,
        mjd=mjd,
        exptime=first_value(header, ("EXPTIME",)),
        airmass=first_value(header, ("AIRMASS",)),
        ra=first_value(header, ("RA", "CRVAL1")),
        dec=first_value(header, ("DEC", "CRVAL2")),
        gain=gain / nmgy if nmgy else None,
        read_noise=None,
        saturation=first_value(header, ("SATURATE",)),
        zero_point=SDSS_NANOMAGGY_ZP,
        seeing=fwhm_arcsec(header),
        limiting_mag=None,
        pixel_unit="nanomaggy",
        extra=extra,
    )


class SdssArchive:
    """SDSS DR17 calibrated frames from the Science Archive Server.

    Parameters
    ----------
    http : HttpClient
        Shared HTTP layer (retries, pace, download cache).
    base_url : str
        The SAS root; tests point it at a local server.
    skyserver_url : str
        SkyServer's root, for searches by position.
    """

    def __init__(
        self, http: HttpClient, base_url: str = SDSS_DATA_URL, skyserver_url: str = SKYSERVER_URL
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.skyserver_url = skyserver_url.rstrip("/")

    def frame_url(self, frame: SdssFrame, band: str) -> str:
        """The SAS URL of one band's ``frame-*.fits.bz2``."""
        if band not in SDSS_BANDS or len(band) != 1:
            raise ValueError(f"SDSS band must be one of {SDSS_BANDS!r}, got {band!r}")
        name = f"frame-{band}-{frame.run:06d}-{frame.camcol}-{frame.field:04d}.fits.bz2"
        return f"{self.base_url}{FRAMES_PATH}/{frame.rerun}/{frame.run}/{frame.camcol}/{name}"

    def frame(self, frame: SdssFrame, band: str) -> ArchiveImage:
        """Download one frame (through the cache), decompressed, with its metadata."""
        url = self.frame_url(frame, band)
        path = self.http.download(url, suffix=".fits", decode=bz2.decompress)
        header = fits.getheader(path)
        return ArchiveImage(path, sdss_exposure_metadata(header, url, frame, band))

    def frames_at(self, ra: float, dec: float, radius_arcmin: float = 0.5) -> list[SdssFrame]:
        """Frames with catalogued objects within ``radius_arcmin`` of (ra, dec) (SkyServer)."""
        ra, dec = float(ra), float(dec)
        if not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
            raise ValueError(f"position must be ra 0..360, dec -90..90 deg, got ({ra}, {dec})")
        if not 0 < radius_arcmin <= 60:
            raise ValueError(f"radius_arcmin must be in (0, 60], got {radius_arcmin}")
        url = f"{self.skyserver_url}{SQLSEARCH_PATH}"
        params = {
            "cmd": FRAMES_AT_SQL.format(ra=ra, dec=dec, radius=radius_arcmin),
            "format": "csv",
        }
        text = self.http.get_text(url, params)
        return parse_frame_listing(text, self.http.url(url, params))

    def frames_at_position(
        self, ra: float, dec: float, band: str, radius_arcmin: float = 0.5
    ) -> list[ArchiveImage]:
        """Every frame covering (ra, dec) in ``band``, downloaded through the cache."""
        return [self.frame(frame, band) for frame in self.frames_at(ra, dec, radius_arcmin)]
