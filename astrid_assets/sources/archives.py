"""Survey sources over the public archives: ZTF at IRSA, Pan-STARRS1 and SDSS.

Each source puts one archive client (:mod:`astrid_assets.archives`) behind
:class:`~astrid_assets.sources.base.SurveySource`, so the graph runs on
archive images as it runs on the simulated survey.

Nights
    A night is the date of its evening at the telescope: an exposure
    belongs to the night that runs from local mean noon to the next local
    mean noon at Palomar (ZTF), Haleakala (PS1) or Apache Point (SDSS), the
    convention of :func:`astrid_assets.archives.ztf.night_jd_range`.
    ``start_night`` is the first night of the search; :meth:`nights` lists
    the nights from it to ``end_night`` (default: tonight) on which the
    archive holds an exposure of one of the source's fields.

References
    The reference asset coadds ``exposure(night, field)`` over
    ``template_nights(field)``. A stack the archive built (ZTF's reference
    image of a quadrant, the PS1 stack) has no single night; it is served
    as the night before ``start_night``, so that it never shares a label
    with a night of the search. SDSS frames keep their own nights: those
    before ``start_night`` are templates, the later ones science.

Pixels and headers
    Archive images are delivered calibrated (bias removed, flat-fielded,
    often sky-subtracted): every exposure has ``calibrated=True`` and
    :meth:`calibration_frames` gives no frames. The image's own header is
    kept and the archive metadata's cards
    (:meth:`~astrid_assets.archives.metadata.ExposureMetadata.header_cards`:
    GAIN, RDNOISE, SATURATE, MJD-OBS, MAGZP, ...) are written over it, in
    the delivered pixel units; MAGZP is the frame's zero point when no
    catalogue calibrates it (these sources have none). What an archive does
    not state is filled in and said so in the card's comment:

    * read noise: ``default_read_noise``, 0 unless set. That is safe for a
      delivered frame: its sky noise is measured from the image and the
      noise model is made to reproduce it
      (:func:`~astrid_assets.science.calibration.calibrate_delivered_frame`),
      so the read noise only decides how much of that measured noise is
      called read noise (where the sky is still in the frame, a survey's
      few electrons are small next to the sky's photon noise);
    * saturation: ``default_saturation``, or else just above the brightest
      pixel: nothing is flagged saturated, as for a frame whose archive
      already masked its saturated pixels (NaN, which the pipeline masks);
    * gain: ``default_gain``, or else an error naming the image;
    * the time of a stack: MJD-OBS at 00:00 UTC of its night label, a
      placeholder the card's comment names as one.

Downloads go through one :class:`~astrid_assets.archives.http.HttpClient`
per source (timeouts, retries, a pace per host) into a download cache keyed
by URL, by default ``archive-cache`` in the object store of ``ASTRID_HOME``
(:meth:`astrid_assets.settings.Settings.object_root`): an image is fetched
once, whichever process asks for it again.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from dagster import Config
from pydantic import Field

from astrid_assets.archives.http import ArchiveError
from astrid_assets.archives.metadata import ArchiveImage
from astrid_assets.archives.ps1 import PS1_PIXEL_SCALE, PS1_URL
from astrid_assets.archives.sdss import SDSS_DATA_URL, SKYSERVER_URL
from astrid_assets.archives.ztf import IRSA_URL, PALOMAR_LONGITUDE
from astrid_assets.sources.base import (
    CalibrationFrames,
    RawExposure,
    SurveySource,
    night_of,
    validate_night,
)
from astrid_assets.storage.object_store import S3Options, is_remote

__all__ = [
    "ArchiveSource",
    "Pointing",
    "Ps1Source",
    "SdssSource",
    "ZtfQuadrant",
    "ZtfSource",
]

HALEAKALA_LONGITUDE = -156.2569  # degrees east, Pan-STARRS1
APACHE_POINT_LONGITUDE = -105.8203  # degrees east, the SDSS 2.5 m telescope
ZTF_PIXEL_SCALE = 1.012  # arcsec per pixel
SDSS_PIXEL_SCALE = 0.396  # arcsec per pixel
MJD_EPOCH = dt.datetime(1858, 11, 17, tzinfo=dt.UTC)


def _mjd_of_night(night: str) -> float:
    """MJD at 00:00 UTC of the date ``night``."""
    midnight = dt.datetime.fromisoformat(night).replace(tzinfo=dt.UTC)
    return (midnight - MJD_EPOCH).total_seconds() / 86400.0


def _check_night(night: str, what: str) -> str:
    try:
        return validate_night(night)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from err


def _day_before(night: str) -> str:
    return (dt.date.fromisoformat(night) - dt.timedelta(days=1)).isoformat()


@contextmanager
def _about(what: str) -> Iterator[None]:
    """Put ``what`` (survey, field, night) in front of an archive error's message."""
    try:
        yield
    except ArchiveError as err:
        raise type(err)(f"{what}: {err}") from err


def _read_image(path: Path, url: str) -> tuple[np.ndarray, fits.Header]:
    """The first 2-D image of a downloaded FITS file (float32, NaN kept) and its header,
    stripped of the keywords that describe the file's own layout."""
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
                    continue
                if hdu.data is not None and hdu.data.ndim == 2:
                    data = np.asarray(hdu.data, dtype=np.float32)
                    header = hdu.header.copy()
                    break
            else:
                raise ValueError(f"{url}: the file holds no 2-D image")
    except OSError as err:
        raise ValueError(f"{url}: not a readable FITS file ({err})") from err
    header.strip()
    header.remove("BLANK", ignore_missing=True)
    return data, header


def _celestial_wcs(header: fits.Header) -> WCS | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # astropy raises several types for bad WCS keywords
            return None
    return wcs.celestial if wcs.has_celestial else None


def _image_grid(path: Path, url: str) -> tuple[WCS, tuple[int, int]]:
    """The WCS and shape ``(ny, nx)`` of a downloaded image, from its header alone."""
    with fits.open(path, memmap=False) as hdul:
        hdu = next(
            (h for h in hdul if h.is_image and h.header.get("NAXIS", 0) == 2),
            None,
        )
        if hdu is None:
            raise ValueError(f"{url}: the file holds no 2-D image")
        header = hdu.header.copy()
    wcs = _celestial_wcs(header)
    if wcs is None:
        raise ValueError(f"{url}: the image has no celestial WCS")
    return wcs, (int(header["NAXIS2"]), int(header["NAXIS1"]))


def _tan_grid(ra: float, dec: float, scale: float, size: int) -> WCS:
    """A north-up, east-left TAN grid of ``size`` x ``size`` pixels centred on (ra, dec)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(size + 1) / 2.0, (size + 1) / 2.0]
    wcs.wcs.cdelt = [-scale / 3600.0, scale / 3600.0]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs


def _empty_catalog() -> Table:
    return Table(names=("ra", "dec", "mag"), dtype=(float, float, float))


class ArchiveSource(SurveySource):
    """What the archive sources share: the nights of the search, the HTTP
    layer and its cache, and the values an archive header may lack."""

    start_night: str = Field(description="First night of the search, YYYY-MM-DD.")
    end_night: str | None = Field(
        default=None, description="Last night nights() lists, YYYY-MM-DD; None: tonight."
    )
    cache_dir: str | None = Field(
        default=None,
        description="Download cache: a folder or s3://bucket/prefix; "
        "None: archive-cache in ASTRID_HOME's store (the bucket in prod).",
    )
    s3: S3Options | None = Field(
        default=None,
        description="Endpoint and keys of an s3:// cache; None: the environment's "
        "(ASTRID_S3_ENDPOINT_URL, ASTRID_S3_REGION, AWS keys).",
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    read_timeout: float = Field(
        default=120.0, gt=0, description="Seconds to wait for each chunk of an answer."
    )
    retries: int = Field(
        default=4, ge=0, description="Further attempts after a timeout, 429 or 5xx."
    )
    backoff: float = Field(
        default=1.0, ge=0, description="Seconds before the first retry, doubled for each next."
    )
    min_interval: float = Field(
        default=1.0, ge=0, description="Least seconds between two requests to one archive host."
    )
    default_gain: float | None = Field(
        default=None,
        gt=0,
        description="e- per pixel unit where the archive states none; "
        "None: such an image is an error.",
    )
    default_read_noise: float = Field(
        default=0.0,
        ge=0,
        description="e- where the archive states none; 0 is safe, the sky noise is measured.",
    )
    default_saturation: float | None = Field(
        default=None,
        description="Saturation in pixel units where the archive states none; "
        "None: just above the brightest pixel (nothing flagged).",
    )

    survey_name: ClassVar[str] = "archive"  # for messages
    longitude: ClassVar[float] = 0.0  # degrees east of the telescope, for nights

    @cached_property
    def http(self):  # -> HttpClient
        from astrid_assets.archives.http import DownloadCache, HttpClient, HttpConfig
        from astrid_assets.settings import settings

        root = self.cache_dir or settings().object_root("archive-cache")
        options = None
        if is_remote(root):
            s3 = self.s3
            if s3 is None:
                s = settings()
                s3 = S3Options(endpoint_url=s.s3_endpoint_url, region=s.s3_region)
            options = s3.fsspec_options()
        config = HttpConfig(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries=self.retries,
            backoff=self.backoff,
            min_interval=self.min_interval,
        )
        return HttpClient(config, DownloadCache(root, storage_options=options))

    def teardown_after_execution(self, context: Any) -> None:
        if "http" in self.__dict__:
            self.http.close()

    def first_night(self) -> str:
        return _check_night(self.start_night, f"{type(self).__name__}.start_night")

    def calibration_frames(self, night: str) -> CalibrationFrames:
        # Archive images arrive bias-subtracted and flat-fielded.
        return CalibrationFrames(night=night, biases=[], flats=[])

    def catalog(self, field: str) -> Table:
        # No photometric catalogue: the header's MAGZP gives each frame's zero point.
        self._check_field(field)
        return _empty_catalog()

    def _check_field(self, field: str) -> None:
        if field not in self.fields():
            raise ValueError(
                f"unknown field {field!r}; the {self.survey_name} source's fields are "
                f"{self.fields()}"
            )

    def _last_night(self) -> str:
        if self.end_night is not None:
            return _check_night(self.end_night, f"{type(self).__name__}.end_night")
        now_mjd = (dt.datetime.now(dt.UTC) - MJD_EPOCH).total_seconds() / 86400.0
        return night_of(now_mjd, self.longitude)

    def _in_search(self, night: str) -> bool:
        return self.first_night() <= night <= self._last_night()

    def _what(self, field: str, night: str) -> str:
        return f"{self.survey_name} field {field} night {night}"

    def _raw_exposure(
        self,
        night: str,
        field: str,
        image: ArchiveImage,
        *,
        stack: bool = False,
        data: np.ndarray | None = None,
        header: fits.Header | None = None,
    ) -> RawExposure:
        """The downloaded ``image`` as a calibrated raw exposure (see the module docstring).

        ``data`` and ``header`` replace the file's when the caller already
        read (and converted) them.
        """
        what = self._what(field, night)
        meta = image.metadata
        if data is None or header is None:
            data, header = _read_image(image.path, meta.url)
        finite = np.isfinite(data)
        if not finite.any():
            raise ValueError(f"{what}: {meta.url} has no finite pixel")
        if _celestial_wcs(header) is None:
            raise ValueError(f"{what}: {meta.url} has no celestial WCS")
        for keyword, value in meta.header_cards().items():
            header[keyword] = value
        if meta.gain is None:
            if self.default_gain is None:
                raise ValueError(
                    f"{what}: {meta.url} states no gain; set {type(self).__name__}.default_gain"
                )
            header["GAIN"] = (self.default_gain, "[e-/unit] default_gain: archive states none")
        if meta.read_noise is None:
            header["RDNOISE"] = (
                self.default_read_noise,
                "[e-] default_read_noise: archive states none",
            )
        if meta.saturation is None:
            if self.default_saturation is not None:
                level, note = self.default_saturation, "default_saturation: archive states none"
            else:
                # Far above float32 rounding, which the pipeline's pedestal adds.
                top = float(np.max(data[finite]))
                level, note = top + 1e-3 * max(abs(top), 1.0), "none stated: above brightest pixel"
            header["SATURATE"] = (level, note)
        if meta.mjd is None:
            if not stack:
                raise ValueError(f"{what}: {meta.url} states no time of observation")
            header["MJD-OBS"] = (_mjd_of_night(night), "placeholder: a stack has no one epoch")
        header["ARCHURL"] = (meta.url, "where the archive delivered this image")
        return RawExposure(night=night, field=field, data=data, header=header, calibrated=True)


class ZtfQuadrant(Config):
    """One ZTF CCD quadrant in one filter, as a field of the survey."""

    name: str = Field(description="The field's name in the graph, e.g. 'f633c13q4zr'.")
    ztf_field: int = Field(ge=1, le=999_999, description="ZTF field id.")
    ccdid: int = Field(ge=1, le=16, description="CCD, 1..16.")
    qid: int = Field(ge=1, le=4, description="Quadrant of the CCD, 1..4.")
    filtercode: str = Field(default="zr", description="zg, zr or zi.")

    def describe(self) -> str:
        return f"ZTF field {self.ztf_field} ccd {self.ccdid} q{self.qid} {self.filtercode}"


class ZtfSource(ArchiveSource):
    """ZTF science images of chosen CCD quadrants, from IRSA, with IRSA's references.

    A night's exposure of a quadrant is found by IRSA's metadata query over
    the night (local noon to noon at Palomar) and downloaded as the
    ``sciimg``. When the night has several, the deepest (largest
    ``maglimit``, the earliest among equals) is used and the choice logged.
    The reference is the quadrant's IRSA reference image (``refimg``),
    served as the night before ``start_night``; with
    ``template_from_nights`` the reference is instead coadded from those
    nights' science images. The reference grid is that of IRSA's reference
    image (or of the first template night's image).
    """

    quadrants: list[ZtfQuadrant] = Field(description="The survey's fields: ZTF quadrants.")
    template_from_nights: list[str] = Field(
        default_factory=list,
        description="Science nights to coadd into each reference instead of IRSA's "
        "reference image; none: IRSA's reference image.",
    )
    base_url: str = Field(default=IRSA_URL, description="IRSA's root URL.")
    table_format: str = Field(default="ipac", description="IRSA metadata answer: ipac or csv.")

    survey_name: ClassVar[str] = "ZTF"
    longitude: ClassVar[float] = PALOMAR_LONGITUDE

    @cached_property
    def archive(self):  # -> ZtfArchive
        from astrid_assets.archives.ztf import ZtfArchive

        return ZtfArchive(self.http, base_url=self.base_url, table_format=self.table_format)

    @cached_property
    def _quadrants(self) -> dict[str, ZtfQuadrant]:
        names = [q.name for q in self.quadrants]
        if len(set(names)) != len(names):
            raise ValueError(f"ZtfSource.quadrants: field names repeat: {names}")
        return {q.name: q for q in self.quadrants}

    def fields(self) -> list[str]:
        return list(self._quadrants)

    def _quadrant(self, field: str) -> ZtfQuadrant:
        self._check_field(field)
        return self._quadrants[field]

    def pixel_scale(self) -> float | None:
        return ZTF_PIXEL_SCALE

    def _reference_night(self) -> str:
        return _day_before(self.first_night())

    def template_nights(self, field: str) -> list[str]:
        self._check_field(field)
        if self.template_from_nights:
            return [_check_night(n, "a template night") for n in self.template_from_nights]
        return [self._reference_night()]

    def _search(self, quadrant: ZtfQuadrant, jd_range: tuple[float, float]) -> tuple[list, str]:
        """The quadrant's frames in ``jd_range``, and the query's URL (for messages)."""
        from astrid_assets.archives.ztf import SCI_SEARCH_PATH

        criteria = {
            "field": quadrant.ztf_field,
            "ccdid": quadrant.ccdid,
            "qid": quadrant.qid,
            "filtercode": quadrant.filtercode,
            "jd_range": jd_range,
        }
        url = self.archive.http.url(
            f"{self.archive.base_url}{SCI_SEARCH_PATH}", self.archive.query_params(**criteria)
        )
        return self.archive.search(**criteria), url

    def _science_image(self, night: str, field: str) -> ArchiveImage:
        from dagster import get_dagster_logger

        from astrid_assets.archives.ztf import night_jd_range

        quadrant = self._quadrant(field)
        what = self._what(field, night)
        with _about(what):
            frames, url = self._search(quadrant, night_jd_range(_check_night(night, "night")))
            if not frames:
                raise ValueError(
                    f"{what}: IRSA lists no science exposure of {quadrant.describe()} ({url})"
                )
            deepest = min(
                frames,
                key=lambda f: (f.maglimit is None, -(f.maglimit or 0.0), f.obsjd),
            )
            if len(frames) > 1:
                get_dagster_logger().info(
                    f"{what}: {len(frames)} exposures of {quadrant.describe()}; using the "
                    f"deepest (maglimit {deepest.maglimit}, filefracday {deepest.filefracday})"
                )
            return self.archive.science_image(deepest)

    def _reference_image(self, field: str) -> ArchiveImage:
        quadrant = self._quadrant(field)
        with _about(self._what(field, self._reference_night())):
            return self.archive.reference_image(
                quadrant.ztf_field, quadrant.ccdid, quadrant.qid, quadrant.filtercode
            )

    def exposure(self, night: str, field: str) -> RawExposure:
        """The deepest science image of ``night``, or the reference image on its night."""
        self._check_field(field)
        landed = self.landed_exposure(night, field)
        if landed is not None:
            return landed
        if night == self._reference_night() and not self.template_from_nights:
            return self._raw_exposure(night, field, self._reference_image(field), stack=True)
        return self._raw_exposure(night, field, self._science_image(night, field))

    def grid(self, field: str) -> tuple[WCS, tuple[int, int]]:
        if self.template_from_nights:
            image = self._science_image(self.template_nights(field)[0], field)
        else:
            image = self._reference_image(field)
        return _image_grid(image.path, image.metadata.url)

    def nights(self) -> list[str] | None:
        """The nights from ``start_night`` to ``end_night`` with an exposure of a quadrant."""
        from astrid_assets.archives.ztf import night_jd_range

        first, last = self.first_night(), self._last_night()
        jd_range = (night_jd_range(first)[0], night_jd_range(last)[1])
        found: set[str] = set()
        for quadrant in self.quadrants:
            with _about(f"ZTF field {quadrant.name} nights {first} to {last}"):
                frames, _ = self._search(quadrant, jd_range)
            found.update(night_of(frame.mjd, self.longitude) for frame in frames)
        return sorted(found)


class Pointing(Config):
    """A field of the sky by position, for the PS1 and SDSS sources."""

    name: str = Field(description="The field's name in the graph.")
    ra: float = Field(ge=0, lt=360, description="Centre, degrees (ICRS).")
    dec: float = Field(ge=-90, le=90, description="Centre, degrees (ICRS).")
    size_arcmin: float = Field(
        default=4.0, gt=0, le=25, description="Side of the square field, arcminutes."
    )
    band: str = Field(default="r", description="Filter: one of grizy (PS1) or ugriz (SDSS).")


class _PointingSource(ArchiveSource):
    """A source whose fields are positions on the sky."""

    pointings: list[Pointing] = Field(description="The survey's fields: positions and bands.")

    bands: ClassVar[str] = ""  # the survey's filters
    min_dec: ClassVar[float] = -90.0  # the survey's sky

    @cached_property
    def _pointings(self) -> dict[str, Pointing]:
        names = [p.name for p in self.pointings]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}.pointings: field names repeat: {names}")
        for pointing in self.pointings:
            if len(pointing.band) != 1 or pointing.band not in self.bands:
                raise ValueError(
                    f"{type(self).__name__} field {pointing.name}: band must be one of "
                    f"{self.bands!r}, got {pointing.band!r}"
                )
            if pointing.dec < self.min_dec:
                raise ValueError(
                    f"{type(self).__name__} field {pointing.name}: dec {pointing.dec} is south "
                    f"of the survey's sky (dec >= {self.min_dec})"
                )
        return {p.name: p for p in self.pointings}

    def fields(self) -> list[str]:
        return list(self._pointings)

    def _pointing(self, field: str) -> Pointing:
        self._check_field(field)
        return self._pointings[field]

    def _size_pixels(self, pointing: Pointing) -> int:
        return max(1, round(pointing.size_arcmin * 60.0 / self.pixel_scale()))


class Ps1Source(_PointingSource):
    """Pan-STARRS1 cutouts around chosen positions: the stack as the reference,
    warps (single-epoch images) as the science.

    The reference of a field is the cutout of the PS1 stack in its band,
    served as the night before ``start_night``; the field's grid is that
    cutout's own grid, so the reference needs no resampling. Any other
    night is served by the first (earliest) warp of that night (local noon
    to noon at Haleakala); a night without one is a ValueError naming the
    field, the night and the nights that have warps. Full skycell images
    are asinh-scaled; the pixels are made linear where the header says so
    (BSOFTEN, BOFFSET).
    """

    base_url: str = Field(default=PS1_URL, description="The PS1 image service's root URL.")

    survey_name: ClassVar[str] = "PS1"
    longitude: ClassVar[float] = HALEAKALA_LONGITUDE
    bands: ClassVar[str] = "grizy"
    min_dec: ClassVar[float] = -30.0

    @cached_property
    def archive(self):  # -> Ps1Archive
        from astrid_assets.archives.ps1 import Ps1Archive

        return Ps1Archive(self.http, base_url=self.base_url)

    @cached_property
    def _files(self) -> dict[tuple[str, str], list]:
        # PS1 DR2 is a closed release: one file list per field and image type serves the process.
        return {}

    def pixel_scale(self) -> float:
        return PS1_PIXEL_SCALE

    def _stack_night(self) -> str:
        return _day_before(self.first_night())

    def template_nights(self, field: str) -> list[str]:
        self._check_field(field)
        return [self._stack_night()]

    def _listed(self, field: str, image_type: str) -> list:
        """The PS1 files of ``image_type`` covering the field's centre in its band."""
        key = (field, image_type)
        if key not in self._files:
            pointing = self._pointing(field)
            self._files[key] = self.archive.files(
                pointing.ra, pointing.dec, pointing.band, image_type
            )
        return self._files[key]

    def _cutout(self, field: str, night: str, file: Any) -> ArchiveImage:
        from astrid_assets.archives.ps1 import ps1_exposure_metadata

        pointing = self._pointing(field)
        with _about(self._what(field, night)):
            url = self.archive.cutout_url(
                file, pointing.ra, pointing.dec, self._size_pixels(pointing)
            )
            path = self.http.download(url, suffix=".fits")
        return ArchiveImage(path, ps1_exposure_metadata(fits.getheader(path), url, file))

    def _stack(self, field: str) -> ArchiveImage:
        night = self._stack_night()
        with _about(self._what(field, night)):
            stacks = self._listed(field, "stack")
        if not stacks:
            pointing = self._pointing(field)
            raise ValueError(
                f"{self._what(field, night)}: PS1 lists no {pointing.band} stack at "
                f"({pointing.ra}, {pointing.dec})"
            )
        return self._cutout(field, night, stacks[0])

    def _warps_by_night(self, field: str) -> dict[str, list]:
        with _about(f"PS1 field {field} warps"):
            warps = self._listed(field, "warp")
        by_night: dict[str, list] = {}
        for warp in sorted(warps, key=lambda w: w.mjd):
            by_night.setdefault(night_of(warp.mjd, self.longitude), []).append(warp)
        return by_night

    def exposure(self, night: str, field: str) -> RawExposure:
        """The stack on its night; on any other night, that night's first warp."""
        from astrid_assets.archives.ps1 import ps1_linear_flux

        self._check_field(field)
        landed = self.landed_exposure(night, field)
        if landed is not None:
            return landed
        stack = night == self._stack_night()
        if stack:
            image = self._stack(field)
        else:
            warps = self._warps_by_night(field).get(_check_night(night, "night"))
            if not warps:
                raise ValueError(
                    f"{self._what(field, night)}: PS1 has no warp of the field that night "
                    f"(warps on {len(self._warps_by_night(field))} nights, see nights(); "
                    f"the stack is served as night {self._stack_night()})"
                )
            image = self._cutout(field, night, warps[0])
        data, header = _read_image(image.path, image.metadata.url)
        data = np.asarray(ps1_linear_flux(data, header), dtype=np.float32)
        for keyword in ("BSOFTEN", "BOFFSET"):
            header.remove(keyword, ignore_missing=True)
        return self._raw_exposure(night, field, image, stack=stack, data=data, header=header)

    def grid(self, field: str) -> tuple[WCS, tuple[int, int]]:
        image = self._stack(field)
        return _image_grid(image.path, image.metadata.url)

    def nights(self) -> list[str] | None:
        """The nights of the search with a warp of one of the fields."""
        found = {
            night
            for field in self.fields()
            for night in self._warps_by_night(field)
            if self._in_search(night)
        }
        return sorted(found)


class SdssSource(_PointingSource):
    """SDSS DR17 calibrated frames covering chosen positions.

    Every frame with catalogued objects within ``search_radius_arcmin`` of a
    field's centre is an epoch of the field, on the night its TAI time
    falls in (local noon to noon at Apache Point). Frames before
    ``start_night`` are the field's template epochs; later ones are
    science (Stripe 82 has dozens of epochs, most of the sky one). When a
    night has several frames of the field (overlapping fields of one run,
    or two runs), the one holding the centre farthest from its edges is
    used. The grid is a north-up TAN grid of ``size_arcmin`` centred on the
    field at SDSS's 0.396 arcsec pixels. Pixels are nanomaggies (MAGZP
    22.5); frames state no saturation level or read noise. SkyServer's
    search gives no dates, so the first look at a field's nights downloads
    its frames (once, into the cache).
    """

    base_url: str = Field(default=SDSS_DATA_URL, description="The SDSS Science Archive Server.")
    skyserver_url: str = Field(default=SKYSERVER_URL, description="SkyServer, for searches.")
    search_radius_arcmin: float = Field(
        default=0.5, gt=0, le=60, description="Frames with objects this close to the centre."
    )

    survey_name: ClassVar[str] = "SDSS"
    longitude: ClassVar[float] = APACHE_POINT_LONGITUDE
    bands: ClassVar[str] = "ugriz"

    @cached_property
    def archive(self):  # -> SdssArchive
        from astrid_assets.archives.sdss import SdssArchive

        return SdssArchive(self.http, base_url=self.base_url, skyserver_url=self.skyserver_url)

    @cached_property
    def _epochs(self) -> dict[str, dict[str, list[ArchiveImage]]]:
        # DR17 is a closed release: each field's frames are listed once per process.
        return {}

    def pixel_scale(self) -> float:
        return SDSS_PIXEL_SCALE

    def _frames_by_night(self, field: str) -> dict[str, list[ArchiveImage]]:
        """The field's frames (downloaded through the cache), grouped by night."""
        if field in self._epochs:
            return self._epochs[field]
        pointing = self._pointing(field)
        by_night: dict[str, list[ArchiveImage]] = {}
        with _about(f"SDSS field {field}"):
            frames = self.archive.frames_at(pointing.ra, pointing.dec, self.search_radius_arcmin)
            for frame in frames:
                image = self.archive.frame(frame, pointing.band)
                if image.metadata.mjd is None:
                    raise ValueError(
                        f"SDSS field {field}: {image.metadata.url} states no time (TAI)"
                    )
                night = night_of(image.metadata.mjd, self.longitude)
                by_night.setdefault(night, []).append(image)
        self._epochs[field] = dict(sorted(by_night.items()))
        return self._epochs[field]

    def template_nights(self, field: str) -> list[str]:
        return [n for n in self._frames_by_night(field) if n < self.first_night()]

    def _centre_margin(self, image: ArchiveImage, pointing: Pointing) -> float:
        """Pixels from the field's centre to the nearest edge of ``image`` (negative: outside)."""
        wcs, (ny, nx) = _image_grid(image.path, image.metadata.url)
        x, y = wcs.all_world2pix(pointing.ra, pointing.dec, 0)
        return float(min(x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y))

    def exposure(self, night: str, field: str) -> RawExposure:
        """The frame of ``night`` that holds the field's centre best."""
        from dagster import get_dagster_logger

        pointing = self._pointing(field)
        landed = self.landed_exposure(night, field)
        if landed is not None:
            return landed
        by_night = self._frames_by_night(field)
        images = by_night.get(_check_night(night, "night"))
        if not images:
            raise ValueError(
                f"{self._what(field, night)}: SDSS has no {pointing.band} frame of the field "
                f"that night; its frames are from {list(by_night) or 'no night'}"
            )
        best = max(images, key=lambda image: self._centre_margin(image, pointing))
        if len(images) > 1:
            get_dagster_logger().info(
                f"{self._what(field, night)}: {len(images)} frames; using "
                f"{best.metadata.url}, which holds the centre farthest from its edges"
            )
        return self._raw_exposure(night, field, best)

    def grid(self, field: str) -> tuple[WCS, tuple[int, int]]:
        pointing = self._pointing(field)
        size = self._size_pixels(pointing)
        return _tan_grid(pointing.ra, pointing.dec, SDSS_PIXEL_SCALE, size), (size, size)

    def nights(self) -> list[str] | None:
        """The nights of the search with a frame of one of the fields."""
        found = {
            night
            for field in self.fields()
            for night in self._frames_by_night(field)
            if self._in_search(night)
        }
        return sorted(found)
