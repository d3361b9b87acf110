"""ZTF science and reference images from IRSA's Image Server (IBE).

Follows IRSA's ZTF API (https://irsa.ipac.caltech.edu/docs/program_interface/ztf_api.html):

* metadata query: ``{base}/ibe/search/ztf/products/sci?WHERE=...`` (and/or
  ``POS=ra,dec``), answered as an IPAC table
  (https://irsa.ipac.caltech.edu/applications/DDGEN/Doc/ipac_tbl.html) or,
  with ``ct=csv``, as CSV; the columns are those of the ``sci`` table in
  https://irsa.ipac.caltech.edu/docs/program_interface/ztf_metadata.html
  (field, ccdid, qid, filtercode, obsjd, filefracday, imgtypecode, exptime,
  seeing, airmass, maglimit, ra, dec, infobits);
* science image ``{base}/ibe/data/ztf/products/sci/YYYY/MMDD/dddddd/
  ztf_{filefracday}_{field:06d}_{filtercode}_c{ccdid:02d}_{imgtypecode}_q{qid}_sciimg.fits``;
* reference image ``{base}/ibe/data/ztf/products/ref/{fff}/field{field:06d}/
  {filtercode}/ccd{ccdid:02d}/q{qid}/ztf_{field:06d}_{filtercode}_c{ccdid:02d}_q{qid}_refimg.fits``
  where ``fff`` is the first three digits of the six-digit field.

Header conventions of the science and reference products (ZTF Science Data
System Explanatory Supplement, https://irsa.ipac.caltech.edu/data/ZTF/docs/ztf_explanatory_supplement.pdf):
MAGZP is the AB zero point of the image in DN, SEEING the PSF FWHM in
arcseconds, SATURATE the saturation level in DN, GAIN e-/DN, READNOI e-,
OBSMJD the mid-exposure MJD. The 5-sigma limiting magnitude is MAGLIM (or
LMT_MG, the PTF-heritage name) when the header has one, else the metadata
table's ``maglimit``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import ascii, fits
from astropy.time import Time

from astrid_assets.archives.http import ArchiveError, HttpClient
from astrid_assets.archives.metadata import (
    ArchiveImage,
    ExposureMetadata,
    first_value,
    fwhm_arcsec,
)

__all__ = [
    "IRSA_URL",
    "PALOMAR_LONGITUDE",
    "ZtfArchive",
    "ZtfFrame",
    "night_jd_range",
    "ztf_exposure_metadata",
]

IRSA_URL = "https://irsa.ipac.caltech.edu"
SCI_SEARCH_PATH = "/ibe/search/ztf/products/sci"
SCI_DATA_PATH = "/ibe/data/ztf/products/sci"
REF_DATA_PATH = "/ibe/data/ztf/products/ref"
FILTERCODES = ("zg", "zr", "zi")
PALOMAR_LONGITUDE = -116.8650  # degrees east
JD_MJD_OFFSET = 2400000.5


@dataclass(frozen=True)
class ZtfFrame:
    """One row of IRSA's ``sci`` metadata table: a CCD quadrant's exposure."""

    field: int
    ccdid: int
    qid: int
    filtercode: str
    obsjd: float
    filefracday: int
    imgtypecode: str = "o"
    exptime: float | None = None
    seeing: float | None = None
    airmass: float | None = None
    maglimit: float | None = None
    ra: float | None = None
    dec: float | None = None
    infobits: int | None = None

    @property
    def mjd(self) -> float:
        """Mid-exposure MJD (IRSA's ``obsjd`` is the JD at mid-exposure)."""
        return self.obsjd - JD_MJD_OFFSET


def _check_quadrant(field: int, ccdid: int, qid: int, filtercode: str) -> None:
    if not 0 < int(field) < 1_000_000:
        raise ValueError(f"ZTF field must be 1..999999, got {field}")
    if not 1 <= int(ccdid) <= 16:
        raise ValueError(f"ZTF ccdid must be 1..16, got {ccdid}")
    if not 1 <= int(qid) <= 4:
        raise ValueError(f"ZTF qid must be 1..4, got {qid}")
    if filtercode not in FILTERCODES:
        raise ValueError(f"ZTF filtercode must be one of {FILTERCODES}, got {filtercode!r}")


def night_jd_range(night: str, longitude: float = PALOMAR_LONGITUDE) -> tuple[float, float]:
    """JD range of a survey night: local mean noon of ``night`` to the next local noon.

    A night is named by the date of its evening (:mod:`astrid_assets.partitions`);
    at Palomar local mean noon is about 19:47 UTC.
    """
    date = dt.date.fromisoformat(night)
    noon_utc = dt.datetime(date.year, date.month, date.day, 12, tzinfo=dt.UTC) - dt.timedelta(
        hours=longitude / 15.0
    )
    start = float(Time(noon_utc).jd)
    return start, start + 1.0


def _optional(row: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in row:
        return None
    value = row[name]
    if value is None or value is np.ma.masked or str(value).strip() in ("", "--"):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def parse_sci_table(text: str, url: str) -> list[ZtfFrame]:
    """The frames of an IBE ``sci`` metadata answer (IPAC table or CSV)."""
    stripped = text.lstrip()
    if not stripped:
        return []
    if stripped.startswith(("\\", "|")):
        reader = "ipac"
    elif stripped.startswith("<"):
        raise ArchiveError(f"{url}: IRSA answered HTML, not a table: {stripped[:200]!r}")
    else:
        reader = "csv"
    try:
        table = ascii.read(text, format=reader, guess=False)
    except Exception as err:
        raise ArchiveError(f"{url}: unreadable {reader} metadata table ({err})") from err
    needed = ("field", "ccdid", "qid", "filtercode", "obsjd", "filefracday")
    missing = [name for name in needed if name not in table.colnames]
    if missing:
        raise ArchiveError(f"{url}: the metadata table lacks the columns {missing}")
    frames = []
    for row in table:
        values = {name: row[name] for name in table.colnames}
        frames.append(
            ZtfFrame(
                field=int(values["field"]),
                ccdid=int(values["ccdid"]),
                qid=int(values["qid"]),
                filtercode=str(values["filtercode"]).strip(),
                obsjd=float(values["obsjd"]),
                filefracday=int(values["filefracday"]),
                imgtypecode=_optional(values, "imgtypecode", str) or "o",
                exptime=_optional(values, "exptime", float),
                seeing=_optional(values, "seeing", float),
                airmass=_optional(values, "airmass", float),
                maglimit=_optional(values, "maglimit", float),
                ra=_optional(values, "ra", float),
                dec=_optional(values, "dec", float),
                infobits=_optional(values, "infobits", int),
            )
        )
    return frames


def _known(*values: Any) -> Any:
    """The first value that is not None (0.0 is a value)."""
    return next((value for value in values if value is not None), None)


def ztf_exposure_metadata(
    header: fits.Header, url: str, frame: ZtfFrame | None = None
) -> ExposureMetadata:
    """Map a ZTF science or reference header (and its metadata row) to exposure facts."""
    row = frame
    extra = {}
    infobits = _known(first_value(header, ("INFOBITS",), int), row and row.infobits)
    if infobits is not None:
        extra["INFOBITS"] = infobits
    return ExposureMetadata(
        survey="ztf",
        url=url,
        filter=_known(first_value(header, ("FILTER",), str), row and row.filtercode),
        date_obs=first_value(header, ("DATE-OBS",), str),
        mjd=_known(first_value(header, ("OBSMJD", "MJD-OBS")), row and row.mjd),
        exptime=_known(first_value(header, ("EXPTIME",)), row and row.exptime),
        airmass=_known(first_value(header, ("AIRMASS",)), row and row.airmass),
        # The metadata row gives the quadrant's centre; a header's RA/DEC is the telescope's.
        ra=_known(row and row.ra, first_value(header, ("RA", "CRVAL1"))),
        dec=_known(row and row.dec, first_value(header, ("DEC", "CRVAL2"))),
        gain=first_value(header, ("GAIN",)),
        read_noise=first_value(header, ("READNOI", "RDNOISE")),
        saturation=first_value(header, ("SATURATE",)),
        zero_point=first_value(header, ("MAGZP",)),
        seeing=_known(first_value(header, ("SEEING",)), row and row.seeing, fwhm_arcsec(header)),
        limiting_mag=_known(first_value(header, ("MAGLIM", "LMT_MG")), row and row.maglimit),
        pixel_unit="adu",
        extra=extra,
    )


class ZtfArchive:
    """ZTF images from IRSA, found by field, CCD, quadrant, filter and time.

    Parameters
    ----------
    http : HttpClient
        Shared HTTP layer (retries, pace, download cache).
    base_url : str
        IRSA's root; tests point it at a local server.
    table_format : {"ipac", "csv"}
        How to ask IBE for the metadata table (IPAC is IBE's default).
    """

    def __init__(
        self, http: HttpClient, base_url: str = IRSA_URL, table_format: str = "ipac"
    ) -> None:
        if table_format not in ("ipac", "csv"):
            raise ValueError(f"table_format must be 'ipac' or 'csv', got {table_format!r}")
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.table_format = table_format

    def query_params(
        self,
        *,
        field: int | None = None,
        ccdid: int | None = None,
        qid: int | None = None,
        filtercode: str | None = None,
        jd_range: tuple[float, float] | None = None,
        position: tuple[float, float] | None = None,
    ) -> dict[str, str]:
        """IBE query parameters: a ``WHERE`` over the given columns and/or ``POS``."""
        clauses = []
        for name, value, low, high in (("field", field, 1, 999_999), ("ccdid", ccdid, 1, 16)):
            if value is not None:
                if not low <= int(value) <= high:
                    raise ValueError(f"ZTF {name} must be {low}..{high}, got {value}")
                clauses.append(f"{name}={int(value)}")
        if qid is not None:
            if not 1 <= int(qid) <= 4:
                raise ValueError(f"ZTF qid must be 1..4, got {qid}")
            clauses.append(f"qid={int(qid)}")
        if filtercode is not None:
            if filtercode not in FILTERCODES:
                raise ValueError(f"ZTF filtercode must be one of {FILTERCODES}, got {filtercode!r}")
            clauses.append(f"filtercode='{filtercode}'")
        if jd_range is not None:
            start, end = (float(v) for v in jd_range)
            if not start < end:
                raise ValueError(f"jd_range must be increasing, got {jd_range}")
            clauses.append(f"obsjd BETWEEN {start:.6f} AND {end:.6f}")
        params: dict[str, str] = {}
        if position is not None:
            ra, dec = (float(v) for v in position)
            if not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
                raise ValueError(f"position must be (ra 0..360, dec -90..90) deg, got {position}")
            params["POS"] = f"{ra:.6f},{dec:.6f}"
        if clauses:
            params["WHERE"] = " AND ".join(clauses)
        if not params:
            raise ValueError("a ZTF metadata query needs a position or at least one column")
        if self.table_format == "csv":
            params["ct"] = "csv"
        return params

    def search(self, **criteria: Any) -> list[ZtfFrame]:
        """Science frames matching ``criteria`` (see :meth:`query_params`), by time."""
        url = f"{self.base_url}{SCI_SEARCH_PATH}"
        params = self.query_params(**criteria)
        text = self.http.get_text(url, params)
        frames = parse_sci_table(text, self.http.url(url, params))
        return sorted(frames, key=lambda frame: frame.obsjd)

    def science_url(self, frame: ZtfFrame) -> str:
        """The URL of ``frame``'s science image (``..._sciimg.fits``)."""
        _check_quadrant(frame.field, frame.ccdid, frame.qid, frame.filtercode)
        stamp = f"{frame.filefracday:014d}"
        year, monthday, fraction = stamp[:4], stamp[4:8], stamp[8:]
        name = (
            f"ztf_{stamp}_{frame.field:06d}_{frame.filtercode}_c{frame.ccdid:02d}_"
            f"{frame.imgtypecode}_q{frame.qid}_sciimg.fits"
        )
        return f"{self.base_url}{SCI_DATA_PATH}/{year}/{monthday}/{fraction}/{name}"

    def reference_url(self, field: int, ccdid: int, qid: int, filtercode: str) -> str:
        """The URL of the reference image of a field's CCD quadrant in one filter."""
        _check_quadrant(field, ccdid, qid, filtercode)
        padded = f"{int(field):06d}"
        folder = f"{padded[:3]}/field{padded}/{filtercode}/ccd{int(ccdid):02d}/q{int(qid)}"
        name = f"ztf_{padded}_{filtercode}_c{int(ccdid):02d}_q{int(qid)}_refimg.fits"
        return f"{self.base_url}{REF_DATA_PATH}/{folder}/{name}"

    def science_image(self, frame: ZtfFrame) -> ArchiveImage:
        """Download one frame's science image (through the cache) and read its header."""
        url = self.science_url(frame)
        path = self.http.download(url, suffix=".fits")
        return ArchiveImage(path, ztf_exposure_metadata(fits.getheader(path), url, frame))

    def science_images(
        self,
        field: int,
        ccdid: int,
        qid: int,
        filtercode: str,
        night: str | None = None,
        jd_range: tuple[float, float] | None = None,
    ) -> list[ArchiveImage]:
        """Every science image of a quadrant in a night (or JD range), downloaded."""
        if (night is None) == (jd_range is None):
            raise ValueError("give either night or jd_range")
        if night is not None:
            jd_range = night_jd_range(night)
        frames = self.search(
            field=field, ccdid=ccdid, qid=qid, filtercode=filtercode, jd_range=jd_range
        )
        return [self.science_image(frame) for frame in frames]

    def reference_image(self, field: int, ccdid: int, qid: int, filtercode: str) -> ArchiveImage:
        """Download the reference image of a quadrant (through the cache) and read its header."""
        url = self.reference_url(field, ccdid, qid, filtercode)
        path = self.http.download(url, suffix=".fits")
        return ArchiveImage(path, ztf_exposure_metadata(fits.getheader(path), url))
