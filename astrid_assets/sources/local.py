"""A folder (or object-store prefix) of FITS files from any telescope, as a survey.

:class:`LocalFitsSource` reads the headers of every FITS file under its
root (plain, ``.gz``, ``.bz2`` and tile-compressed ``.fz``; one frame per
science extension of a multi-extension file) and sorts the frames into
partitions:

* the night is the local date of the evening: ``MJD-OBS`` (or
  ``DATE-OBS``) shifted by the site's longitude (``OBS-LONG``,
  ``LONGITUD``, ``SITELONG`` or the configured ``site_longitude``; UTC when
  none is known) and by half a day, so one night's frames share one date;
* the field is the first of ``FIELDID``, ``FIELD``, ``OBJECT`` the header
  has, with the extension name appended for a multi-extension file;
  frames with none of them are grouped by pointing (their centres within
  ``cluster_radius_arcmin``) and named by the group's position,
  ``J211328.2-660240``;
* bias and flat frames (``IMAGETYP`` / ``OBSTYPE``) are the night's
  calibration frames; a night without them is taken as delivered
  calibrated (InstCal images, stacks, warps): no masters are applied;
* a field's reference is built from the frames the manifest marks
  ``role: reference``, or else from its earliest ``n_template_nights``
  nights, which are then not searched.

A small YAML manifest overrides what the headers say or lack
(``astrid-manifest.yaml`` in the root, or the ``manifest`` path)::

    only_listed: true          # ignore files the manifest does not name
    defaults:                  # for every listed file, below its own entries
      calibrated: true
    files:
      - path: Stack-DEC-OBS18.fits     # relative to the root; wildcards allowed
        night: 2016-08-17
        field: DECAM-N6
        role: reference                # science (default), reference, bias, flat, skip
      - path: Stack-DEC-OBS04.fits
        night: 2018-08-03
        field: DECAM-N6
        zero_point: 31.2               # mag of 1 pixel unit, when the header has none
        header: {GAIN: 3.98}           # cards set on the frame's header
        hdu: 0                         # only this extension (index or EXTNAME)

A frame that cannot be placed (no time, no WCS to group it by) is left out
and listed by :meth:`LocalFitsSource.problems`; a frame that can be placed
but not used (no gain, no celestial WCS) fails its own partition with an
error naming the file.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import io
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from pydantic import Field

from astrid_assets.sources.base import CalibrationFrames, RawExposure, SurveySource, night_of

__all__ = ["LocalFitsSource", "LocalFrame", "ManifestError"]

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz")
COMPRESSION_SUFFIXES = ("", ".gz", ".bz2")
MANIFEST_NAME = "astrid-manifest.yaml"
ROLES = ("science", "reference", "bias", "flat", "skip")
FIELD_KEYWORDS = ("FIELDID", "FIELD", "OBJECT")
LONGITUDE_KEYWORDS = ("OBS-LONG", "LONGITUD", "SITELONG", "LONG-OBS")
TYPE_KEYWORDS = ("IMAGETYP", "OBSTYPE", "IMGTYPE", "FRAMETYP")
# Extensions that describe a science image rather than being one.
AUXILIARY_EXTENSIONS = {
    "MASK", "BPM", "DQ", "FLAGS", "WEIGHT", "WGT", "WHT", "INVVAR", "IVAR", "VAR",
    "VARIANCE", "ERR", "ERROR", "SIGMA", "RMS", "UNCERT", "NOISE", "EXPMAP", "EXPOSURE",
    "PSF", "PSFIMAGE", "BKG", "BACKGROUND", "SKY",
}  # fmt: skip
# IMAGETYP values of processed frames ("InstCal", "Stack") are not calibration frames.
PROCESSED_TYPES = ("instcal", "stack", "resampled", "warp", "coadd", "reduced", "proc")
MIN_SIDE = 32  # smaller 2-D HDUs are kernels, stamps and tables of numbers
MANIFEST_KEYS = {"path", "hdu", "night", "field", "role", "zero_point", "calibrated", "header"}


class ManifestError(ValueError):
    """A manifest that cannot be used, with the file and the problem."""


def _safe_name(text: str) -> str:
    """``text`` as a partition key: letters, digits and ``.+-_`` only."""
    name = re.sub(r"[^A-Za-z0-9.+_-]+", "-", str(text).strip()).strip("-")
    return name[:64]


def _position_name(ra: float, dec: float) -> str:
    from astropy.coordinates import SkyCoord

    coord = SkyCoord(ra, dec, unit="deg")
    hms = coord.ra.to_string(unit="hourangle", sep="", precision=1, pad=True)
    dms = coord.dec.to_string(sep="", precision=0, alwayssign=True, pad=True)
    return f"J{hms}{dms}"


@dataclass
class LocalFrame:
    """One science, reference or calibration image found under the root."""

    path: str
    hdu: int
    extname: str
    role: str
    night: str | None
    field: str | None
    mjd: float | None
    centre: tuple[float, float] | None
    shape: tuple[int, int]
    calibrated: bool | None = None
    zero_point: float | None = None
    header_cards: dict[str, Any] = field(default_factory=dict)
    detector: str = ""  # the extension, in a file of several science extensions

    @property
    def name(self) -> str:
        return f"{self.path}[{self.extname or self.hdu}]"


def _merged_header(hdul: fits.HDUList, index: int) -> fits.Header:
    """The extension's header over the primary header's cards (INHERIT)."""
    header = hdul[index].header.copy()
    if index == 0:
        return header
    merged = hdul[0].header.copy(strip=True)
    for card in header.cards:
        if card.keyword in ("COMMENT", "HISTORY", ""):
            continue
        merged[card.keyword] = (card.value, card.comment)
    return merged


def _science_hdus(hdul: fits.HDUList) -> list[int]:
    indices = []
    for i, hdu in enumerate(hdul):
        if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
            continue
        header = hdu.header
        if header.get("NAXIS") != 2:
            continue
        if min(int(header.get("NAXIS1", 0)), int(header.get("NAXIS2", 0))) < MIN_SIDE:
            continue
        if str(header.get("EXTNAME", "")).strip().upper() in AUXILIARY_EXTENSIONS:
            continue
        indices.append(i)
    return indices


def _header_value(header: fits.Header, keys) -> Any:
    for key in keys:
        value = header.get(key)
        if value not in (None, ""):
            return value
    return None


def _mjd(header: fits.Header) -> float | None:
    value = header.get("MJD-OBS")
    if isinstance(value, int | float) and np.isfinite(value):
        return float(value)
    date = header.get("DATE-OBS")
    if not date:
        return None
    text = str(date).strip()
    if "T" not in text and header.get("TIME-OBS"):
        text = f"{text}T{str(header['TIME-OBS']).strip()}"
    try:
        from astropy.time import Time

        return float(Time(text, format="isot" if "T" in text else "iso", scale="utc").mjd)
    except ValueError:
        return None


def _role_from_header(header: fits.Header) -> str:
    kind = str(_header_value(header, TYPE_KEYWORDS) or "").strip().lower()
    if any(p in kind for p in PROCESSED_TYPES):
        return "science"
    if kind in ("bias", "zero"):
        return "bias"
    if "flat" in kind:
        return "flat"
    if kind in ("dark", "arc", "comp", "focus", "test"):
        return "skip"
    return "science"


def _processed(header: fits.Header) -> bool:
    """True when the header says a pipeline made the pixels (DECam PROCTYPE, stacks)."""
    kinds = " ".join(
        str(header.get(k, "")) for k in ("PROCTYPE", "PRODTYPE", *TYPE_KEYWORDS)
    ).lower()
    return any(p in kinds for p in PROCESSED_TYPES) or "NCOMBINE" in header


def _centre(header: fits.Header) -> tuple[float, float] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # a header astropy cannot read has no usable WCS
            return None
    if not wcs.has_celestial:
        return None
    ny, nx = int(header["NAXIS2"]), int(header["NAXIS1"])
    ra, dec = wcs.celestial.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    if not (np.isfinite(ra) and np.isfinite(dec)):
        return None
    return float(ra), float(dec)


# What the index keeps of each science extension's (merged) header.
INDEX_KEYWORDS = (
    "MJD-OBS", "DATE-OBS", "TIME-OBS", "EXTNAME", "NAXIS1", "NAXIS2", "PROCTYPE", "PRODTYPE",
    "NCOMBINE", *FIELD_KEYWORDS, *LONGITUDE_KEYWORDS, *TYPE_KEYWORDS,
)  # fmt: skip
INDEX_VERSION = 1


def _is_wcs_keyword(keyword: str) -> bool:
    return bool(
        re.match(r"^(CRVAL|CRPIX|CDELT|CTYPE|CUNIT|CD\d|PC\d|PV\d|WCSAXES|LONPOLE)", keyword)
    )


def _summaries(hdul: fits.HDUList) -> list[dict[str, Any]]:
    """What the source needs of each science extension: a few cards, the centre, the shape."""
    out = []
    for index in _science_hdus(hdul):
        header = _merged_header(hdul, index)
        cards = {k: header[k] for k in INDEX_KEYWORDS if k in header and _plain(header[k])}
        out.append(
            {
                "hdu": index,
                "extname": str(hdul[index].header.get("EXTNAME", "")).strip(),
                "cards": cards,
                "centre": _centre(header),
                "shape": [int(header["NAXIS2"]), int(header["NAXIS1"])],
            }
        )
    return out


def _plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and not (
        isinstance(value, float) and not np.isfinite(value)
    )


class _HeaderIndex:
    """The summaries of the files already read, keyed by path and checked by size and
    modification time (or ETag), kept in a JSON file between processes."""

    def __init__(self, source: LocalFitsSource, path: str | None) -> None:
        self.source = source
        self.path = path
        self.entries: dict[str, Any] = {}
        self.changed = False
        if path:
            try:
                content = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                content = {}
            if content.get("version") == INDEX_VERSION and content.get("root") == source.root:
                self.entries = content.get("files", {})

    def _signature(self, relative: str) -> str:
        target = self.source._upath(relative)
        info = target.fs.info(target.path)
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
        return f"{info.get('size')}:{stamp}"

    def summaries(self, relative: str, problems: list[str]) -> list[dict[str, Any]]:
        try:
            signature = self._signature(relative)
        except OSError as err:
            problems.append(f"{relative}: cannot be listed ({err})")
            return []
        known = self.entries.get(relative)
        if known and known["signature"] == signature:
            if known.get("problem"):
                problems.append(known["problem"])
            return known["hdus"]
        entry: dict[str, Any] = {"signature": signature, "hdus": []}
        try:
            with self.source._open(relative) as hdul:
                entry["hdus"] = _summaries(hdul)
        except (OSError, ValueError, EOFError, TypeError) as err:
            entry["problem"] = f"{relative}: unreadable FITS ({err})"
            problems.append(entry["problem"])
        self.entries[relative] = entry
        self.changed = True
        return entry["hdus"]

    def save(self) -> None:
        if not (self.path and self.changed):
            return
        from astrid_assets.storage.atomic import atomic_write_bytes

        content = {"version": INDEX_VERSION, "root": self.source.root, "files": self.entries}
        try:
            atomic_write_bytes(Path(self.path), json.dumps(content, default=str).encode())
        except OSError as err:  # a read-only home only costs the next load its time
            log.warning("LocalFitsSource: header index %s not written (%s)", self.path, err)


class LocalFitsSource(SurveySource):
    """FITS files under a folder or object-store prefix, sorted into nights and fields."""

    root: str = Field(description="Folder or object-store prefix (s3://bucket/prefix) of FITS.")
    manifest: str | None = Field(
        default=None,
        description=f"YAML manifest overriding the headers; default {MANIFEST_NAME} in the root.",
    )
    site_longitude: float | None = Field(
        default=None,
        ge=-180,
        le=360,
        description="Observatory longitude, degrees east, for the night of an exposure "
        "(default: the header's OBS-LONG, else UTC).",
    )
    cluster_radius_arcmin: float = Field(
        default=10.0, gt=0, description="Pointings closer than this are one field."
    )
    n_template_nights: int = Field(
        default=1,
        ge=1,
        le=30,
        description="Earliest nights of a field that make its reference, when the manifest "
        "marks no reference.",
    )
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint for an object-store root (keys from AWS_*)."
    )
    catalog_path: str | None = Field(
        default=None,
        description="Photometric catalogue (FITS, CSV, ECSV or Parquet; columns ra, dec, mag "
        "and optionally mag_err, degrees and the frames' band) to fit zero points against; "
        "without one a frame's zero point is its header's, or its reference's.",
    )
    index_cache: str | None = Field(
        default=None,
        description="JSON file keeping the headers already read, so that each step's "
        "code-location load reads only new or changed files (default: under ASTRID_HOME's "
        "cache/; an empty string turns it off).",
    )

    # ------------------------------------------------------------------ files

    def _upath(self, path: str = ""):
        from upath import UPath

        options = {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}
        root = UPath(self.root, **options)
        return root / path if path else root

    def _open(self, relative: str) -> fits.HDUList:
        target = self._upath(relative)
        if target.protocol in ("", "file", "local"):
            return fits.open(str(target), memmap=False)
        with target.open("rb") as handle:
            return fits.open(io.BytesIO(handle.read()), memmap=False)  # one read, in memory

    def _files(self) -> list[str]:
        root = self._upath()
        if not root.exists():
            raise FileNotFoundError(f"LocalFitsSource root {self.root} does not exist")
        names = []
        for path in root.rglob("*"):
            lower = path.name.lower()
            if any(lower.endswith(s + c) for s in FITS_SUFFIXES for c in COMPRESSION_SUFFIXES):
                if path.is_file():
                    names.append(path.relative_to(root).as_posix())
        return sorted(names)

    @cached_property
    def _manifest(self) -> dict[str, Any]:
        import yaml

        if self.manifest:
            from upath import UPath

            target = UPath(self.manifest)
            if not target.exists():
                raise ManifestError(f"manifest {self.manifest} does not exist")
        else:
            target = self._upath(MANIFEST_NAME)
            if not target.exists():
                return {"files": [], "defaults": {}, "only_listed": False}
        try:
            content = yaml.safe_load(target.read_text()) or {}
        except (yaml.YAMLError, ValueError) as err:  # ValueError: a date like 2020-13-01
            raise ManifestError(f"manifest {target}: not readable YAML ({err})") from err
        if not isinstance(content, dict):
            raise ManifestError(f"manifest {target}: expected a mapping at the top")
        unknown = set(content) - {"files", "defaults", "only_listed"}
        if unknown:
            raise ManifestError(f"manifest {target}: unknown key(s) {', '.join(sorted(unknown))}")
        entries = content.get("files") or []
        defaults = content.get("defaults") or {}
        for i, entry in enumerate([defaults, *entries]):
            where = "defaults" if i == 0 else f"files[{i - 1}]"
            if not isinstance(entry, dict):
                raise ManifestError(f"manifest {target}: {where} is not a mapping")
            bad = set(entry) - MANIFEST_KEYS
            if bad:
                raise ManifestError(
                    f"manifest {target}: {where} has unknown key(s) {', '.join(sorted(bad))}; "
                    f"known: {', '.join(sorted(MANIFEST_KEYS))}"
                )
            if i and "path" not in entry:
                raise ManifestError(f"manifest {target}: {where} has no path")
            if "role" in entry and entry["role"] not in ROLES:
                raise ManifestError(
                    f"manifest {target}: {where} role {entry['role']!r} is not one of "
                    f"{', '.join(ROLES)}"
                )
            if "night" in entry:
                entry["night"] = str(entry["night"])
                try:
                    dt.date.fromisoformat(entry["night"])
                except ValueError as err:
                    raise ManifestError(
                        f"manifest {target}: {where} night {entry['night']!r} is not YYYY-MM-DD"
                    ) from err
            if "field" in entry:
                entry["field"] = _safe_name(entry["field"])
        return {
            "files": entries,
            "defaults": defaults,
            "only_listed": bool(content.get("only_listed", False)),
        }

    def _entry(self, path: str, hdu: int, extname: str) -> dict[str, Any] | None:
        """The manifest's entries for one extension of a file, merged (later wins)."""
        merged: dict[str, Any] | None = None
        for entry in self._manifest["files"]:
            if not fnmatch.fnmatch(path, str(entry["path"])):
                continue
            if "hdu" in entry and entry["hdu"] not in (hdu, extname):
                continue
            merged = {**(merged or {}), **entry}
        return merged

    # ------------------------------------------------------------------ index

    @cached_property
    def _scan(self) -> tuple[list[LocalFrame], list[str]]:
        frames: list[LocalFrame] = []
        problems: list[str] = []
        defaults = self._manifest["defaults"]
        index = self._index()
        for path in self._files():
            summaries = index.summaries(path, problems)
            for summary in summaries:
                hdu, extname = summary["hdu"], summary["extname"]
                entry = self._entry(path, hdu, extname)
                if entry is None and self._manifest["only_listed"]:
                    continue
                entry = {**defaults, **(entry or {})}
                header = fits.Header(summary["cards"])
                overrides = entry.get("header") or {}
                header.update(overrides)
                centre = summary["centre"]
                if any(_is_wcs_keyword(k) for k in overrides):  # the manifest moves the frame
                    with self._open(path) as hdul:
                        full = _merged_header(hdul, hdu)
                    full.update(overrides)
                    centre = _centre(full)
                frame = self._frame(path, summary, header, entry, len(summaries) > 1, centre)
                if frame.role == "skip":
                    continue
                if frame.night is None:
                    problems.append(
                        f"{frame.name}: no MJD-OBS or DATE-OBS; give its night in the manifest"
                    )
                    continue
                frames.append(frame)
        index.save()
        self._name_unnamed_fields(frames, problems)
        placed = [f for f in frames if f.field is not None or f.role in ("bias", "flat")]
        for problem in problems:
            log.warning("LocalFitsSource %s: %s", self.root, problem)
        return placed, problems

    def _index(self) -> _HeaderIndex:
        """The headers read before, unless ``index_cache`` is off."""
        if self.index_cache == "":
            return _HeaderIndex(self, None)
        if self.index_cache:
            return _HeaderIndex(self, self.index_cache)
        from astrid_assets.settings import settings

        digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        return _HeaderIndex(self, str(settings().home / "cache" / f"local-fits-{digest}.json"))

    def _frame(
        self,
        path: str,
        summary: dict[str, Any],
        header: fits.Header,
        entry: dict,
        multi: bool,
        centre: Any,
    ) -> LocalFrame:
        """One extension as a frame: its header (the manifest's cards applied) and the
        manifest's entry decide its night, field, role and calibration."""
        index, extname = summary["hdu"], summary["extname"]
        mjd = _mjd(header)
        longitude = self.site_longitude
        if longitude is None:
            value = _header_value(header, LONGITUDE_KEYWORDS)
            try:
                longitude = float(value) if value is not None else None
            except (TypeError, ValueError):
                longitude = None
        night = entry.get("night") or (None if mjd is None else night_of(mjd, longitude))
        field_name = entry.get("field")
        if field_name is None:
            value = _header_value(header, FIELD_KEYWORDS)
            if value is not None and _safe_name(value):
                field_name = _safe_name(value)
                if multi:
                    field_name = _safe_name(f"{field_name}.{extname or index}")
        calibrated = entry.get("calibrated")
        if calibrated is None and _processed(header):
            calibrated = True
        zero_point = entry.get("zero_point")
        cards = dict(entry.get("header") or {})
        return LocalFrame(
            path=path,
            hdu=index,
            extname=extname,
            role=entry.get("role") or _role_from_header(header),
            night=night,
            field=field_name,
            mjd=mjd,
            centre=None if centre is None else (float(centre[0]), float(centre[1])),
            shape=(int(summary["shape"][0]), int(summary["shape"][1])),
            calibrated=None if calibrated is None else bool(calibrated),
            zero_point=None if zero_point is None else float(zero_point),
            header_cards=cards,
            detector=(extname or str(index)) if multi else "",
        )

    def _name_unnamed_fields(self, frames: list[LocalFrame], problems: list[str]) -> None:
        """Group the frames without a field name by pointing; name each group by its centre."""
        from astropy.coordinates import SkyCoord

        groups: list[tuple[SkyCoord, str, str]] = []
        radius = self.cluster_radius_arcmin / 60.0
        for frame in frames:
            if frame.field is not None or frame.role in ("bias", "flat"):
                continue
            if frame.centre is None:
                problems.append(
                    f"{frame.name}: no field keyword and no celestial WCS to group it by; "
                    "give its field in the manifest"
                )
                continue
            # A detector of a mosaic is grouped only with the same detector of other pointings.
            here = SkyCoord(*frame.centre, unit="deg")
            for centre, detector, name in groups:
                if detector == frame.detector and here.separation(centre).deg <= radius:
                    frame.field = name
                    break
            else:
                label = _position_name(*frame.centre)
                frame.field = _safe_name(f"{label}.{frame.detector}" if frame.detector else label)
                groups.append((here, frame.detector, frame.field))

    @property
    def frames(self) -> list[LocalFrame]:
        """Every frame placed in a night and a field (calibration frames too)."""
        return self._scan[0]

    def problems(self) -> list[str]:
        """The files and extensions left out, each with the reason."""
        return list(self._scan[1])

    def _of(self, role: str, field: str | None = None, night: str | None = None):
        return [
            f
            for f in self.frames
            if f.role == role
            and (field is None or f.field == field)
            and (night is None or f.night == night)
        ]

    # --------------------------------------------------------- SurveySource

    def fields(self) -> list[str]:
        names = sorted({f.field for f in self.frames if f.role in ("science", "reference")})
        return [n for n in names if n is not None]

    def _check_field(self, field: str) -> None:
        if field not in self.fields():
            raise ValueError(
                f"unknown field {field!r}; the fields under {self.root} are {self.fields()}"
            )

    def nights(self) -> list[str] | None:
        searched = {
            f.night
            for f in self._of("science")
            if f.night not in self._auto_templates(f.field)  # type: ignore[arg-type]
        }
        return sorted(n for n in searched if n is not None)

    def night_fields(self) -> dict[str, list[str]] | None:
        held: dict[str, set[str]] = {}
        for frame in self._of("science"):
            if frame.night not in self._auto_templates(frame.field):  # type: ignore[arg-type]
                held.setdefault(frame.night, set()).add(frame.field)  # type: ignore[arg-type]
        return {night: sorted(fields) for night, fields in sorted(held.items())}

    def first_night(self) -> str:
        nights = self.nights()
        if not nights:
            raise ValueError(f"no science night under {self.root} (beyond the templates)")
        return nights[0]

    def _auto_templates(self, field: str) -> list[str]:
        if self._of("reference", field):
            return []
        nights = sorted({f.night for f in self._of("science", field)})  # type: ignore[type-var]
        return nights[: self.n_template_nights]  # type: ignore[return-value]

    def template_nights(self, field: str) -> list[str]:
        self._check_field(field)
        marked = sorted({f.night for f in self._of("reference", field)})  # type: ignore[type-var]
        return marked or self._auto_templates(field)  # type: ignore[return-value]

    def _pick(self, night: str, field: str) -> LocalFrame:
        self._check_field(field)
        role = "reference" if night in self.template_nights(field) else "science"
        candidates = self._of(role, field, night) or self._of("science", field, night)
        if not candidates:
            raise ValueError(
                f"no exposure of field {field} on night {night} under {self.root} "
                f"(its nights: {sorted({f.night for f in self.frames if f.field == field})})"
            )
        candidates.sort(key=lambda f: (f.mjd if f.mjd is not None else np.inf, f.path, f.hdu))
        if len(candidates) > 1:
            log.warning(
                "field %s night %s has %d frames; using the first, %s (skip the others in the "
                "manifest to choose)",
                field,
                night,
                len(candidates),
                candidates[0].name,
            )
        return candidates[0]

    def _read(self, frame: LocalFrame) -> tuple[np.ndarray, fits.Header]:
        from astrid_assets.science.fitsio import FitsInputError

        try:
            with self._open(frame.path) as hdul:
                data = hdul[frame.hdu].data
                header = _merged_header(hdul, frame.hdu)
        except (OSError, ValueError, EOFError, TypeError) as err:
            raise FitsInputError(self._upath(frame.path), f"unreadable ({err})") from err
        if data is None or data.ndim != 2:
            raise FitsInputError(self._upath(frame.path), f"HDU {frame.hdu} holds no 2-D image")
        header.update(frame.header_cards)
        return np.asarray(data, dtype=np.float32), header

    def exposure(self, night: str, field: str) -> RawExposure:
        from astrid_assets.science.fitsio import (
            GAIN_KEYS,
            READ_NOISE_KEYS,
            SATURATION_KEYS,
            FitsInputError,
            header_float,
        )

        landed = self.landed_exposure(night, field)
        if landed is not None:
            return landed
        frame = self._pick(night, field)
        data, header = self._read(frame)
        where = self._upath(frame.path)
        for keyword, aliases in (
            ("GAIN", GAIN_KEYS),
            ("RDNOISE", READ_NOISE_KEYS),
            ("SATURATE", SATURATION_KEYS),
        ):
            value = header_float(header, aliases)
            if value is None:
                raise FitsInputError(
                    where,
                    f"HDU {frame.hdu} header has no {keyword} ({', '.join(aliases)}); "
                    f"give it under header: in the manifest",
                )
            header[keyword] = value
        if frame.centre is None:
            raise FitsInputError(where, f"HDU {frame.hdu} has no celestial WCS")
        if frame.zero_point is not None:
            header["MAGZP"] = (frame.zero_point, "zero point from the manifest")
        calibrated = frame.calibrated
        if calibrated is None:
            frames = self.calibration_frames_of(night)
            calibrated = not (frames[0] and frames[1])
        return RawExposure(
            night=night, field=field, data=data, header=header, calibrated=calibrated
        )

    def calibration_frames_of(self, night: str) -> tuple[list[LocalFrame], list[LocalFrame]]:
        """The night's bias and flat frames."""
        return self._of("bias", night=night), self._of("flat", night=night)

    def calibration_frames(self, night: str) -> CalibrationFrames:
        biases, flats = self.calibration_frames_of(night)
        return CalibrationFrames(
            night=night,
            biases=[self._read(f)[0] for f in biases],
            flats=[self._read(f)[0] for f in flats],
        )

    @cached_property
    def _catalogue(self) -> Table | None:
        if not self.catalog_path:
            return None
        try:
            table = Table.read(self.catalog_path)
        except Exception as err:  # astropy raises many kinds for a file it cannot read
            raise ValueError(f"catalogue {self.catalog_path}: unreadable ({err})") from err
        names = {name.lower(): name for name in table.colnames}
        missing = [c for c in ("ra", "dec", "mag") if c not in names]
        if missing:
            raise ValueError(
                f"catalogue {self.catalog_path}: no column {', '.join(missing)} "
                f"(it has {', '.join(table.colnames)})"
            )
        columns = [c for c in ("ra", "dec", "mag", "mag_err") if c in names]
        return Table({c: np.asarray(table[names[c]], dtype=float) for c in columns})

    def catalog(self, field: str) -> Table:
        """The catalogue's stars on and around the field's grid (half a grid beyond
        each edge, for frames that point a little off); empty without a catalogue."""
        self._check_field(field)
        table = self._catalogue
        if table is None or len(table) == 0:
            return Table(names=("ra", "dec", "mag"), dtype=("f8", "f8", "f8"))
        wcs, (ny, nx) = self.grid(field)
        x, y = wcs.world_to_pixel_values(np.asarray(table["ra"]), np.asarray(table["dec"]))
        margin = 0.5 * max(nx, ny)
        keep = (
            np.isfinite(x)
            & np.isfinite(y)
            & (x > -margin)
            & (x < nx + margin)
            & (y > -margin)
            & (y < ny + margin)
            & np.isfinite(np.asarray(table["mag"]))
        )
        return table[keep]

    def grid(self, field: str) -> tuple[WCS, tuple[int, int]]:
        """The WCS and shape of the field's first template frame: the reference's grid."""
        nights = self.template_nights(field)
        if not nights:
            raise ValueError(f"field {field}: no frame to take a reference grid from")
        frame = self._pick(nights[0], field)
        with self._open(frame.path) as hdul:
            header = _merged_header(hdul, frame.hdu)
        header.update(frame.header_cards)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
        if not wcs.has_celestial:
            raise ValueError(f"{self._upath(frame.path)}: HDU {frame.hdu} has no celestial WCS")
        return wcs.celestial, frame.shape

    def pixel_scale(self) -> float | None:
        """Arcseconds per pixel of the first field's grid (one camera per folder)."""
        return self._pixel_scale

    @cached_property
    def _pixel_scale(self) -> float | None:
        from astropy.wcs.utils import proj_plane_pixel_scales

        fields = self.fields()
        if not fields:
            return None
        wcs, _ = self.grid(fields[0])
        return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)
