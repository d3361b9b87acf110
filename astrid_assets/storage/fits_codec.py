"""The pipeline's image products as compressed FITS files.

Each product is one multi-extension FITS file whose primary header names
the product in ``ASTRPROD`` and holds its scalars as keywords with
comments; images, masks, PSFs and tables are named extensions, so a file
opens in ds9 or ``astropy.io.fits`` and reads as what it is:

============================  ==================================================
``ASTRPROD``                  extensions
============================  ==================================================
``RawExposure``               RAW, TRUTH (the raw header is the primary header)
``CalibrationMasters``        BIAS, BIASSTD, FLAT, BPM, LEVELS, BADCOLS (none, and
                              DELIVCAL, for a night delivered calibrated)
``ProcessedExposure``         SCI, VAR, MASK, FLAGS, BKG, BKGRMS, PSF, SOURCES
``FieldReference``            SCI, BKG, VAR, MASK, NEPOCH, PSF, SOURCES, EPOCHS
``Subtraction``               D, SCORR, MASK, PSF, SCI, TRANSFORM
============================  ==================================================

Compression follows :func:`image_hdu`: images that carry noise are
quantized to a fraction of their noise (lossy but far below it), smooth
maps to an absolute step, everything else is lossless. Scalars round-trip
exactly: a float whose shortest repr does not fit the 20 columns of a
fixed-format value is written free-format, NaN and infinities as the
strings ``NaN``, ``Infinity`` and ``-Infinity``, None as an undefined
value. Entries of the free-form dictionaries (subtraction details,
timings, extra registration entries) are ``HIERARCH`` keywords.

References
----------
Pence, W. D., White, R. L. & Seaman, R. 2010, PASP 122, 1065: tiled image
compression and quantization of floating-point images (SUBTRACTIVE_DITHER_2).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astrid_assets.science.align import PixelTransform
from astrid_assets.science.background import Background
from astrid_assets.science.calibration import BadPixelMask, MasterBias, MasterFlat
from astrid_assets.science.photcal import ZeroPoint
from astrid_assets.science.pipeline import PreparedImage, Subtraction
from astrid_assets.science.processing import CalibrationMasters, FieldReference, ProcessedExposure
from astrid_assets.science.psf import PsfModel
from astrid_assets.science.quality import FrameQuality
from astrid_assets.science.reference import Reference
from astrid_assets.science.subtraction import SubtractionResult
from astrid_assets.sources.base import RawExposure

__all__ = [
    "DITHER_SEED",
    "PRODUCT_KEYWORD",
    "SMOOTH_STEP",
    "decode",
    "encode",
    "from_bytes",
    "image_hdu",
    "product_name",
    "to_bytes",
]

PRODUCT_KEYWORD = "ASTRPROD"
FORMAT_KEYWORD = "ASTRFMT"
FORMAT_VERSION = 1
HDU_COUNT_KEYWORD = "ASTRNHDU"
DTYPE_KEYWORD = "ASTRTYPE"
DITHER_SEED = 1
"""Fixed, so that writing the same product twice quantizes it the same way."""
TILE_ROWS = 32
SMOOTH_STEP = 0.01
"""Absolute quantization step of smooth maps (sky and its rms), ADU."""

_OWN_KEYWORDS = (
    PRODUCT_KEYWORD,
    FORMAT_KEYWORD,
    HDU_COUNT_KEYWORD,
    "ASTRNGHT",
    "ASTRFLD",
    "ASTRCAL",
)
_HOUSEKEEPING = ("CHECKSUM", "DATASUM", "EXTNAME", "EXTVER")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_SUBTRACTIVE_DITHER_2 = 2  # keeps exact zeros (masked pixels) exact

Kind = Literal["noisy", "smooth", "exact", "mask", "integer", "small"]


# --------------------------------------------------------------------------
# Compression policy
# --------------------------------------------------------------------------


def _tile_shape(array: np.ndarray) -> tuple[int, ...]:
    """Tiles of 32 whole rows: a third less time than one-row tiles, as small a
    file, and the noise a quantized tile is scaled to is still local."""
    return (min(TILE_ROWS, array.shape[0]), *array.shape[1:])


def image_hdu(
    name: str, array: np.ndarray, kind: Kind, *, quantize_level: float = 16.0
) -> fits.ImageHDU | fits.CompImageHDU:
    """An image extension compressed as its content allows.

    Parameters
    ----------
    name : str
        EXTNAME.
    array : numpy.ndarray
        The image.
    kind : {"noisy", "smooth", "exact", "mask", "integer", "small"}
        ``noisy``: a float image with noise (science, variance, D, S_corr),
        RICE_1 of values quantized to ``rms / quantize_level`` of the
        tile's own noise, SUBTRACTIVE_DITHER_2 with a fixed seed, float32.
        ``smooth``: a smooth float map (sky, sky rms), RICE_1 with an
        absolute step of :data:`SMOOTH_STEP` ADU, float32. ``exact``:
        lossless GZIP_2 of the floats as they are (calibration masters).
        ``mask``: bool as uint8, RICE_1. ``integer``: RICE_1, lossless.
        ``small``: PSFs and other tiny arrays, uncompressed, dtype kept.
        Mask and integer dtypes are recorded in ``ASTRTYPE`` and restored.
    quantize_level : float
        For ``noisy`` images; 0 makes ``noisy`` and ``smooth`` images
        lossless (GZIP_2) too.
    """
    array = np.asarray(array)
    stored_dtype = None
    if kind == "small":
        if array.dtype.kind == "b":
            array, stored_dtype = array.astype(np.uint8), "bool"
        hdu = fits.ImageHDU(array, name=name)
    elif kind in ("mask", "integer"):
        original = array.dtype
        if original.kind == "b":
            array = array.astype(np.uint8)
        elif original.kind not in "iu":
            raise ValueError(f"{name}: a {kind} image must be bool or integer, got {original}")
        elif original.itemsize == 8:
            if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > 2**31 - 1):
                raise ValueError(f"{name}: integer values exceed 32 bits")
            array = array.astype(np.int32)
        hdu = fits.CompImageHDU(
            array, name=name, compression_type="RICE_1", tile_shape=_tile_shape(array)
        )
        stored_dtype = None if array.dtype == original else original.name
    elif kind == "exact" or (kind in ("noisy", "smooth") and quantize_level == 0):
        if kind != "exact" or array.dtype not in (np.float32, np.float64):
            array = array.astype(np.float32)
        hdu = fits.CompImageHDU(
            array,
            name=name,
            compression_type="GZIP_2",
            quantize_level=0.0,
            tile_shape=_tile_shape(array),
        )
    elif kind in ("noisy", "smooth"):
        level = quantize_level if kind == "noisy" else -SMOOTH_STEP  # < 0: absolute step
        hdu = fits.CompImageHDU(
            array.astype(np.float32),
            name=name,
            compression_type="RICE_1",
            quantize_level=level,
            quantize_method=_SUBTRACTIVE_DITHER_2,
            dither_seed=DITHER_SEED,
            tile_shape=_tile_shape(array),
        )
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    if stored_dtype is not None:
        hdu.header[DTYPE_KEYWORD] = (stored_dtype, "numpy dtype of the array as written")
    return hdu


# --------------------------------------------------------------------------
# Header scalars
# --------------------------------------------------------------------------


def _float_text(value: float) -> str:
    text = repr(value).upper()
    return text if ("." in text or "E" in text) else text + ".0"


def _exact_float_card(keyword: str, value: float, comment: str = "") -> fits.Card | None:
    """A free-format card for a float whose shortest repr exceeds the 20 columns
    that astropy would cut it to; None when the ordinary card is exact."""
    text = _float_text(value)
    if len(text) <= 20:
        return None
    name = keyword.removeprefix("HIERARCH ")
    hierarch = keyword.startswith("HIERARCH ") or len(name) > 8
    head = f"HIERARCH {name} = {text}" if hierarch else f"{name:<8}= {text:>20}"
    if len(head) > 80:
        raise ValueError(f"header keyword {keyword} is too long for its value")
    room = 80 - len(head) - 3
    return fits.Card.fromstring(f"{head} / {comment[:room]}" if comment and room > 0 else head)


def _put(header: fits.Header, keyword: str, value: Any, comment: str = "") -> None:
    """Set a scalar keyword so that reading it back gives exactly ``value``.

    ``keyword`` is a standard keyword or ``"HIERARCH ..."``.
    """
    if value is not None and not isinstance(value, (str, bool, int, float, np.generic)):
        raise TypeError(f"header keyword {keyword}: {type(value).__name__} is not a scalar")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            value = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        elif (card := _exact_float_card(keyword, value, comment)) is not None:
            header.remove(card.keyword, ignore_missing=True)
            header.append(card)
            return
    header[keyword] = (value, comment)


def _scalar(value: Any) -> Any:
    """A header value as written by :func:`_put`."""
    if value is None or isinstance(value, fits.card.Undefined):
        return None
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, np.bool_, np.number))


def _put_mapping(header: fits.Header, prefix: str, mapping: Mapping[str, Any]) -> None:
    """The scalar (None, bool, int, float, str) entries of ``mapping`` as
    ``HIERARCH {prefix} {key}`` keywords; other entries are left out."""
    for key, value in mapping.items():
        if _is_scalar(value):
            _put(header, f"HIERARCH {prefix} {key}", value)


def _get_mapping(header: fits.Header, prefix: str) -> dict[str, Any]:
    start = f"{prefix} "
    return {
        card.keyword[len(start) :]: _scalar(card.value)
        for card in header.cards
        if card.keyword.startswith(start)
    }


# (attribute, keyword, comment) of the scalar fields of each dataclass.
_Spec = tuple[tuple[str, str, str], ...]

_PSF: _Spec = (
    ("fwhm", "PSFFWHM", "[px] PSF FWHM along the major axis"),
    ("ellipticity", "PSFELL", "PSF ellipticity 1 - b/a"),
    ("theta", "PSFTHETA", "[rad] PSF major-axis angle from +x"),
    ("beta", "PSFBETA", "Moffat beta of the PSF"),
    ("n_stars", "PSFNSTAR", "stars in the PSF fit"),
    ("fallback", "PSFFALLB", "PSF is the fallback model"),
    ("residual_rms", "PSFRESID", "PSF fit residual rms / pixel noise"),
)
_ZERO_POINT: _Spec = (
    ("zero_point", "MAGZP", "[mag] zero point, mag = ZP - 2.5 log10(ADU)"),
    ("error", "MAGZPERR", "[mag] zero point standard error"),
    ("scatter", "MAGZPSCT", "[mag] robust scatter of the stars"),
    ("n_stars", "MAGZPNST", "stars used for the zero point"),
    ("n_matched", "MAGZPNMT", "sources matched to the catalogue"),
)
_QUALITY: _Spec = (
    ("fwhm_pix", "QFWHMPIX", "[px] seeing FWHM"),
    ("fwhm_arcsec", "QFWHMASC", "[arcsec] seeing FWHM"),
    ("ellipticity", "QELLIP", "PSF ellipticity"),
    ("sky", "QSKY", "[adu] sky level"),
    ("sky_rms", "QSKYRMS", "[adu] sky noise per pixel"),
    ("zero_point", "QZP", "[mag] zero point"),
    ("limiting_flux", "QLIMFLUX", "[adu] limiting point-source flux"),
    ("limiting_mag", "QLIMMAG", "[mag] limiting magnitude"),
    ("n_stars", "QNSTARS", "unsaturated point sources, S/N >= 10"),
    ("n_sources", "QNSOURCE", "all detections"),
    ("n_psf_stars", "QNPSFSTR", "stars the PSF was fitted to"),
    ("masked_fraction", "QMASKED", "fraction of masked pixels"),
    ("nsigma", "QNSIGMA", "significance of the limit"),
)
_BACKGROUND: _Spec = (
    ("global_background", "BKGLEVEL", "[adu] median of the mesh sky values"),
    ("global_rms", "BKGSIGMA", "[adu] median of the mesh noise values"),
    ("box_size", "BKGBOX", "[px] background mesh size"),
    ("filter_size", "BKGFILT", "background mesh filter size"),
)
_PREPARED: _Spec = (
    ("name", "IMGNAME", "image name"),
    ("sigma", "SIGMA", "[adu] global background rms"),
    ("gain", "GAIN", "[e-/adu] gain (undefined: unknown)"),
    ("zero_point", "MAGZP", "[mag] zero point (undefined: unknown)"),
    ("sky", "SKY", "[adu] sky level subtracted"),
    ("read_noise", "RDNOISE", "[e-] read noise"),
    ("fwhm", "FWHM", "[px] PSF FWHM"),
)
_TRANSFORM: _Spec = (
    ("degree", "DEGREE", "polynomial degree of the grid-to-image map"),
    ("scale", "SCALE", "[px] normalisation scale"),
)


def _put_fields(header: fits.Header, obj: Any, spec: _Spec) -> None:
    for attribute, keyword, comment in spec:
        _put(header, keyword, getattr(obj, attribute), comment)


# --------------------------------------------------------------------------
# Reading, with errors that name the file
# --------------------------------------------------------------------------


class _Reader:
    """An open product file and where it came from, for error messages."""

    def __init__(self, hdul: fits.HDUList, source: str | None) -> None:
        self.hdul = hdul
        self.source = source or "FITS data"

    def error(self, problem: str) -> ValueError:
        return ValueError(f"{self.source}: {problem}")

    def has(self, name: str) -> bool:
        return name in self.hdul

    def header(self, name: str | int = 0) -> fits.Header:
        if isinstance(name, str) and name not in self.hdul:
            raise self.error(f"missing HDU {name}")
        return self.hdul[name].header

    def value(self, header: fits.Header, keyword: str) -> Any:
        if keyword not in header:
            raise self.error(f"missing header keyword {keyword}")
        return _scalar(header[keyword])

    def fields(self, header: fits.Header, spec: _Spec) -> dict[str, Any]:
        return {attribute: self.value(header, keyword) for attribute, keyword, _ in spec}

    def image(self, name: str) -> np.ndarray:
        header = self.header(name)
        try:
            data = self.hdul[name].data
        except (OSError, TypeError, ValueError) as err:
            raise self.error(f"HDU {name} is unreadable or truncated ({err})") from err
        if data is None:
            raise self.error(f"HDU {name} has no data")
        data = np.array(data)
        if DTYPE_KEYWORD in header:
            return data.astype(header[DTYPE_KEYWORD])
        return data.astype(data.dtype.newbyteorder("="))

    def table(self, name: str) -> Table:
        self.header(name)
        try:
            table = Table.read(self.hdul, hdu=name, mask_invalid=False)
        except (OSError, TypeError, ValueError) as err:
            raise self.error(f"table {name} is unreadable or truncated ({err})") from err
        for keyword in _HOUSEKEEPING:
            table.meta.pop(keyword, None)
        return table

    def wcs(self, name: str) -> WCS | None:
        header = self.header(name)
        if "CTYPE1" not in header:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return WCS(header)


def _clean_header(header: fits.Header) -> fits.Header:
    """``header`` without structural, housekeeping and codec keywords, with
    long floats written so they round-trip exactly."""
    clean = fits.Header()
    for card in header.copy(strip=True).cards:
        if card.keyword in _HOUSEKEEPING or card.keyword in _OWN_KEYWORDS:
            continue
        exact = None
        if isinstance(card.value, float) and math.isfinite(card.value):
            exact = _exact_float_card(card.keyword, card.value, card.comment)
        clean.append(exact or card)
    return clean


def _wcs_header(wcs: WCS | None) -> fits.Header:
    if wcs is None:
        return fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wcs.to_header(relax=True)


def _table_hdu(name: str, table: Table) -> fits.BinTableHDU:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # meta that FITS cannot hold is dropped
        return fits.table_to_hdu(Table(table, copy=False), name=name)


def _with_header(hdu: fits.ImageHDU | fits.CompImageHDU, header: fits.Header):
    hdu.header.extend(header.cards, update=True)
    return hdu


# --------------------------------------------------------------------------
# RawExposure
# --------------------------------------------------------------------------


def _encode_raw(raw: RawExposure, quantize_level: float) -> list:
    header = _clean_header(raw.header)
    primary = fits.PrimaryHDU(header=header.copy())
    _put(primary.header, "ASTRNGHT", raw.night, "partition night (UTC date of the evening)")
    _put(primary.header, "ASTRFLD", raw.field, "partition field")
    _put(primary.header, "ASTRCAL", bool(raw.calibrated), "delivered already calibrated")
    data = np.asarray(raw.data)
    integral = (
        data.dtype.kind in "iu"
        or (np.all(np.isfinite(data)) and np.array_equal(data, np.round(data)))
    ) and (data.size == 0 or (data.min() >= -(2**31) and data.max() <= 2**31 - 1))
    if integral:
        image = image_hdu("RAW", data.astype(np.int32), "integer")
        image.header[DTYPE_KEYWORD] = (data.dtype.name, "numpy dtype of the array as written")
    else:
        image = image_hdu("RAW", data, "exact")
    hdus = [primary, _with_header(image, header)]
    if raw.truth is not None:
        hdus.append(_table_hdu("TRUTH", raw.truth))
    return hdus


def _decode_raw(r: _Reader) -> RawExposure:
    primary = r.header()
    return RawExposure(
        night=r.value(primary, "ASTRNGHT"),
        field=r.value(primary, "ASTRFLD"),
        data=r.image("RAW"),
        header=_clean_header(primary),
        truth=r.table("TRUTH") if r.has("TRUTH") else None,
        calibrated=bool(primary.get("ASTRCAL", False)),
    )


# --------------------------------------------------------------------------
# CalibrationMasters
# --------------------------------------------------------------------------

_MASTER_COUNTS: _Spec = (
    ("n_hot", "NHOT", "pixels with an abnormal bias level"),
    ("n_noisy", "NNOISY", "pixels with abnormal bias scatter"),
    ("n_low", "NLOW", "dead or low-response pixels"),
    ("n_high", "NHIGH", "pixels responding too much"),
)


def _encode_masters(masters: CalibrationMasters, quantize_level: float) -> list:
    primary = fits.PrimaryHDU()
    h = primary.header
    if masters.empty:
        _put(h, "DELIVCAL", True, "frames arrive calibrated: no masters")
        return [primary]
    _put(h, "BIASNFRM", masters.bias.n_frames, "bias frames combined")
    _put(h, "BIASRDN", masters.bias.read_noise, "[adu] read noise of one bias frame")
    _put(h, "FLATNFRM", masters.flat.n_frames, "flat frames combined")
    _put_fields(h, masters.bad_pixels, _MASTER_COUNTS)
    hdus = [primary, image_hdu("BIAS", masters.bias.data, "exact")]
    if masters.bias.pixel_std is not None:
        hdus.append(image_hdu("BIASSTD", masters.bias.pixel_std, "exact"))
    hdus += [
        image_hdu("FLAT", masters.flat.data, "exact"),
        image_hdu("BPM", masters.bad_pixels.mask, "mask"),
        image_hdu("LEVELS", masters.flat.levels, "small"),
        image_hdu("BADCOLS", masters.bad_pixels.bad_columns, "small"),
    ]
    return hdus


def _decode_masters(r: _Reader) -> CalibrationMasters:
    h = r.header()
    if h.get("DELIVCAL", False):
        return CalibrationMasters.delivered()
    bias = MasterBias(
        data=r.image("BIAS"),
        n_frames=r.value(h, "BIASNFRM"),
        read_noise=r.value(h, "BIASRDN"),
        pixel_std=r.image("BIASSTD") if r.has("BIASSTD") else None,
    )
    flat = MasterFlat(
        data=r.image("FLAT"), n_frames=r.value(h, "FLATNFRM"), levels=r.image("LEVELS")
    )
    bad = BadPixelMask(
        mask=r.image("BPM"), bad_columns=r.image("BADCOLS"), **r.fields(h, _MASTER_COUNTS)
    )
    return CalibrationMasters(bias=bias, flat=flat, bad_pixels=bad)


# --------------------------------------------------------------------------
# ProcessedExposure
# --------------------------------------------------------------------------


def _encode_processed(exposure: ProcessedExposure, quantize_level: float) -> list:
    primary = fits.PrimaryHDU()
    h = primary.header
    _put(h, "GAIN", exposure.gain, "[e-/adu] gain")
    _put(h, "RDNOISE", exposure.read_noise, "[e-] read noise")
    _put_fields(h, exposure.background, _BACKGROUND)
    _put_fields(h, exposure.psf, _PSF)
    if exposure.zero_point is not None:
        _put_fields(h, exposure.zero_point, _ZERO_POINT)
    _put_fields(h, exposure.quality, _QUALITY)
    sci = image_hdu("SCI", exposure.data, "noisy", quantize_level=quantize_level)
    return [
        primary,
        _with_header(sci, _wcs_header(exposure.wcs)),
        image_hdu("VAR", exposure.variance, "noisy", quantize_level=quantize_level),
        image_hdu("MASK", exposure.mask, "mask"),
        image_hdu("FLAGS", exposure.flags, "integer"),
        image_hdu("BKG", exposure.background.background, "smooth", quantize_level=quantize_level),
        image_hdu("BKGRMS", exposure.background.rms, "smooth", quantize_level=quantize_level),
        image_hdu("PSF", exposure.psf.stamp, "small"),
        _table_hdu("SOURCES", exposure.sources),
    ]


def _decode_processed(r: _Reader) -> ProcessedExposure:
    h = r.header()
    background = Background(
        background=r.image("BKG"), rms=r.image("BKGRMS"), **r.fields(h, _BACKGROUND)
    )
    zero_point = ZeroPoint(**r.fields(h, _ZERO_POINT)) if "MAGZP" in h else None
    return ProcessedExposure(
        data=r.image("SCI"),
        variance=r.image("VAR"),
        mask=r.image("MASK"),
        flags=r.image("FLAGS"),
        background=background,
        sources=r.table("SOURCES"),
        psf=PsfModel(stamp=r.image("PSF"), **r.fields(h, _PSF)),
        zero_point=zero_point,
        quality=FrameQuality(**r.fields(h, _QUALITY)),
        wcs=r.wcs("SCI"),
        gain=r.value(h, "GAIN"),
        read_noise=r.value(h, "RDNOISE"),
    )


# --------------------------------------------------------------------------
# FieldReference
# --------------------------------------------------------------------------


def _column(values: list[Any]) -> np.ndarray:
    """A table column for registration entries; None becomes NaN or ""."""
    present = [v for v in values if v is not None]
    if present and len(present) == len(values):
        if all(isinstance(v, (bool, np.bool_)) for v in present):
            return np.array(values, dtype=bool)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
            return np.array(values, dtype=np.int64)
    if present and all(isinstance(v, (int, float, np.number)) for v in present):
        return np.array([np.nan if v is None else float(v) for v in values])
    return np.array(["" if v is None else str(v) for v in values])


def _entry(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    if value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _epochs_table(ref: FieldReference) -> Table:
    """One row per input epoch of the reference, used or not.

    ``used_order`` is the epoch's place in ``epochs_used`` (-1: not used);
    ``weight``, ``flux_scale`` and ``rejected_fraction`` are NaN for unused
    epochs; ``merit`` and ``fwhm`` are known for all. The scalar entries of
    the epoch's registration dict are ``reg_*`` columns (a missing value
    is NaN or ""; it reads back as None).
    """
    reference = ref.reference
    n_inputs = len(reference.merit)
    n_rows = max(n_inputs, len(ref.registration))

    def padded(values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        values = np.asarray(values)
        out = np.full(n_rows, fill, dtype=np.result_type(values.dtype, np.float64))
        out[: len(values)] = values
        return out

    order = np.full(n_rows, -1, dtype=np.int32)
    per_used = {
        name: np.full(n_rows, np.nan) for name in ("weight", "flux_scale", "rejected_fraction")
    }
    for k, index in enumerate(reference.epochs_used):
        order[index] = k
        per_used["weight"][index] = reference.weights[k]
        per_used["flux_scale"][index] = reference.flux_scales[k]
        per_used["rejected_fraction"][index] = reference.rejected_fraction[k]
    table = Table(
        {
            "epoch": np.arange(n_rows, dtype=np.int32),
            "used_order": order,
            **per_used,
            "merit": padded(reference.merit),
            "fwhm": padded(reference.epoch_fwhm),
        }
    )
    keys: dict[str, None] = {}
    for entry in ref.registration:
        keys.update(dict.fromkeys(k for k, v in entry.items() if _is_scalar(v)))
    for key in keys:
        entries = [*ref.registration, *([{}] * (n_rows - len(ref.registration)))]
        table[f"reg_{key}"] = _column([entry.get(key) for entry in entries])
    table.meta["NINPUT"] = n_inputs
    table.meta["NREG"] = len(ref.registration)
    return table


def _encode_reference(ref: FieldReference, quantize_level: float) -> list:
    reference, prepared = ref.reference, ref.prepared
    primary = fits.PrimaryHDU()
    h = primary.header
    _put_fields(h, prepared, _PREPARED)
    _put(h, "REFZP", reference.zero_point, "[mag] zero point of the coadd")
    _put(h, "REFFWHM", reference.fwhm, "[px] FWHM of the coadd PSF")
    sci = image_hdu("SCI", prepared.data, "noisy", quantize_level=quantize_level)
    background = np.asarray(reference.data, np.float32) - np.asarray(prepared.data, np.float32)
    return [
        primary,
        _with_header(sci, _wcs_header(prepared.wcs)),
        image_hdu("BKG", background, "smooth", quantize_level=quantize_level),
        image_hdu("VAR", prepared.variance, "noisy", quantize_level=quantize_level),
        image_hdu("MASK", prepared.mask, "mask"),
        image_hdu("NEPOCH", np.asarray(reference.n_epochs, np.int16), "integer"),
        image_hdu("PSF", reference.psf, "small"),
        _table_hdu("SOURCES", prepared.sources),
        _table_hdu("EPOCHS", _epochs_table(ref)),
    ]


def _decode_reference(r: _Reader) -> FieldReference:
    h = r.header()
    data, background = r.image("SCI"), r.image("BKG")
    variance, mask, psf = r.image("VAR"), r.image("MASK"), r.image("PSF")
    epochs = r.table("EPOCHS")
    n_inputs = int(r.value(r.header("EPOCHS"), "NINPUT"))
    n_reg = int(r.value(r.header("EPOCHS"), "NREG"))
    order = np.asarray(epochs["used_order"])
    used = np.flatnonzero(order >= 0)
    used = used[np.argsort(order[used])]
    reference = Reference(
        data=data + background,
        variance=variance,
        mask=mask,
        psf=psf,
        zero_point=r.value(h, "REFZP"),
        fwhm=r.value(h, "REFFWHM"),
        n_epochs=r.image("NEPOCH"),
        epochs_used=tuple(int(i) for i in used),
        weights=np.asarray(epochs["weight"])[used],
        flux_scales=np.asarray(epochs["flux_scale"])[used],
        merit=np.asarray(epochs["merit"])[:n_inputs],
        epoch_fwhm=np.asarray(epochs["fwhm"])[:n_inputs],
        rejected_fraction=np.asarray(epochs["rejected_fraction"])[used],
    )
    prepared = PreparedImage(
        data=data,
        variance=variance,
        mask=mask,
        psf=psf,
        sources=r.table("SOURCES"),
        wcs=r.wcs("SCI"),
        **r.fields(h, _PREPARED),
    )
    columns = [c for c in epochs.colnames if c.startswith("reg_")]
    registration = [
        {c.removeprefix("reg_"): _entry(row[c]) for c in columns} for row in epochs[:n_reg]
    ]
    return FieldReference(reference=reference, prepared=prepared, registration=registration)


# --------------------------------------------------------------------------
# Subtraction
# --------------------------------------------------------------------------

_REGISTRATION_KEYS = ("method", "residual_rms", "sigma", "transform")


def _encode_subtraction(sub: Subtraction, quantize_level: float) -> list:
    result, registration = sub.result, sub.registration
    primary = fits.PrimaryHDU()
    h = primary.header
    _put(h, "METHOD", result.method, "subtraction method")
    _put(h, "DNOISE", result.difference_noise, "[adu] noise of one pixel of D")
    _put(h, "FLUXRAT", result.flux_ratio, "reference counts per new-image count")
    _put(h, "REGMETH", registration.get("method"), "how the science image was aligned")
    _put(h, "REGRMS", registration.get("residual_rms"), "[px] alignment residual rms")
    sigma = registration.get("sigma")
    sx, sy = (None, None) if sigma is None else (float(sigma[0]), float(sigma[1]))  # type: ignore[index]
    _put(h, "REGSIGX", sx, "[px] registration noise along x")
    _put(h, "REGSIGY", sy, "[px] registration noise along y")
    _put_mapping(h, "REG", {k: v for k, v in registration.items() if k not in _REGISTRATION_KEYS})
    _put_mapping(h, "DETAIL", result.details)
    _put_mapping(h, "TIMING", sub.timings)
    hdus = [
        primary,
        image_hdu("D", result.difference, "noisy", quantize_level=quantize_level),
        image_hdu("SCORR", result.score, "noisy", quantize_level=quantize_level),
        image_hdu("MASK", result.mask, "mask"),
        image_hdu("PSF", result.difference_psf, "small"),
        image_hdu("SCI", sub.science, "noisy", quantize_level=quantize_level),
    ]
    transform = registration.get("transform")
    if transform is not None:
        hdu = image_hdu("TRANSFORM", np.asarray(transform.coeffs), "small")  # type: ignore[attr-defined]
        _put_fields(hdu.header, transform, _TRANSFORM)
        _put(hdu.header, "CENTERX", transform.center[0], "[px] normalisation centre x")  # type: ignore[attr-defined]
        _put(hdu.header, "CENTERY", transform.center[1], "[px] normalisation centre y")  # type: ignore[attr-defined]
        hdus.append(hdu)
    return hdus


def _decode_subtraction(r: _Reader) -> Subtraction:
    h = r.header()
    transform = None
    if r.has("TRANSFORM"):
        th = r.header("TRANSFORM")
        transform = PixelTransform(
            r.image("TRANSFORM"),
            center=(r.value(th, "CENTERX"), r.value(th, "CENTERY")),
            **r.fields(th, _TRANSFORM),
        )
    sx, sy = r.value(h, "REGSIGX"), r.value(h, "REGSIGY")
    registration = {
        "method": r.value(h, "REGMETH"),
        "residual_rms": r.value(h, "REGRMS"),
        "sigma": None if sx is None else (sx, sy),
        "transform": transform,
        **_get_mapping(h, "REG"),
    }
    result = SubtractionResult(
        method=r.value(h, "METHOD"),
        difference=r.image("D"),
        difference_psf=r.image("PSF"),
        difference_noise=r.value(h, "DNOISE"),
        score=r.image("SCORR"),
        mask=r.image("MASK"),
        flux_ratio=r.value(h, "FLUXRAT"),
        details=_get_mapping(h, "DETAIL"),
    )
    return Subtraction(
        result=result,
        science=r.image("SCI"),
        registration=registration,
        timings=_get_mapping(h, "TIMING"),
    )


# --------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------

_Encoder = Callable[[Any, float], list]
_Decoder = Callable[[_Reader], Any]
_PRODUCTS: dict[str, tuple[type, _Encoder, _Decoder]] = {
    "RawExposure": (RawExposure, _encode_raw, _decode_raw),
    "CalibrationMasters": (CalibrationMasters, _encode_masters, _decode_masters),
    "ProcessedExposure": (ProcessedExposure, _encode_processed, _decode_processed),
    "FieldReference": (FieldReference, _encode_reference, _decode_reference),
    "Subtraction": (Subtraction, _encode_subtraction, _decode_subtraction),
}


def product_name(obj: Any) -> str:
    """The ``ASTRPROD`` name of ``obj``'s product type, or a TypeError."""
    for name, (kind, _, _) in _PRODUCTS.items():
        if isinstance(obj, kind):
            return name
    raise TypeError(
        f"no FITS encoding for {type(obj).__name__}; products are {', '.join(_PRODUCTS)}"
    )


def encode(obj: Any, *, quantize_level: float = 16.0) -> fits.HDUList:
    """``obj`` as an HDUList (see the module notes for the layout).

    Parameters
    ----------
    obj : RawExposure, CalibrationMasters, ProcessedExposure, FieldReference or Subtraction
    quantize_level : float
        Noisy images are quantized to their noise over this (16 keeps the
        quantization noise at 1/sqrt(12)/16 = 1.8% of the pixel noise); 0
        writes every image losslessly.
    """
    if not quantize_level >= 0:
        raise ValueError(f"quantize_level must be >= 0, got {quantize_level!r}")
    name = product_name(obj)
    hdus = _PRODUCTS[name][1](obj, quantize_level)
    h = hdus[0].header
    h.set(
        PRODUCT_KEYWORD, name, "AstrID product type", after="EXTEND" if "EXTEND" in h else "NAXIS"
    )
    h.set(FORMAT_KEYWORD, FORMAT_VERSION, "AstrID FITS layout version", after=PRODUCT_KEYWORD)
    h.set(HDU_COUNT_KEYWORD, len(hdus), "HDUs in this file", after=FORMAT_KEYWORD)
    return fits.HDUList(hdus)


def decode(hdul: fits.HDUList, *, source: str | None = None) -> Any:
    """The product an :func:`encode`'d HDUList holds.

    Raises
    ------
    ValueError
        Naming ``source`` (a path, for the message) and the problem: not an
        AstrID product, unknown ``ASTRPROD``, a missing HDU or keyword, a
        truncated file.
    """
    r = _Reader(hdul, source)
    if len(hdul) == 0:
        raise r.error("empty FITS file")
    primary = hdul[0].header
    name = primary.get(PRODUCT_KEYWORD)
    if name is None:
        raise r.error(f"not an AstrID product (no {PRODUCT_KEYWORD} keyword)")
    if name not in _PRODUCTS:
        raise r.error(f"unknown {PRODUCT_KEYWORD} {name!r}; known: {', '.join(_PRODUCTS)}")
    version = primary.get(FORMAT_KEYWORD, 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise r.error(f"{FORMAT_KEYWORD} {version!r} is newer than this reader ({FORMAT_VERSION})")
    expected = primary.get(HDU_COUNT_KEYWORD)
    if isinstance(expected, int) and len(hdul) < expected:
        raise r.error(f"truncated: {len(hdul)} of {expected} HDUs present")
    return _PRODUCTS[name][2](r)


def to_bytes(obj: Any, quantize_level: float = 16.0) -> bytes:
    """The FITS file of ``obj``, with CHECKSUM and DATASUM in every HDU."""
    encoded = io.BytesIO()
    encode(obj, quantize_level=quantize_level).writeto(encoded)
    encoded.seek(0)
    # Checksummed over the compressed tables as written, with a fixed comment:
    # astropy's default comment is the time, which would make every write differ.
    with fits.open(encoded, disable_image_compression=True) as hdul:
        for hdu in hdul:
            hdu.add_checksum(when="AstrID")
        out = io.BytesIO()
        hdul.writeto(out)
    return out.getvalue()


_CORRUPTION = ("verification failed", "truncated", "Error validating header")


def from_bytes(data: bytes, *, source: str | None = None) -> Any:
    """The product in a FITS file's bytes; checksums are verified.

    Raises
    ------
    ValueError
        Naming ``source`` and the problem (see :func:`decode`).
    """
    where = source or "FITS data"
    if len(data) == 0:
        raise ValueError(f"{where}: empty file")
    if len(data) % 2880:
        raise ValueError(
            f"{where}: truncated ({len(data)} bytes is not a whole number of 2880-byte blocks)"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(io.BytesIO(data), checksum=True, lazy_load_hdus=False) as hdul:
                product = decode(hdul, source=source)
        except ValueError:
            raise
        except (OSError, TypeError, IndexError, KeyError) as err:
            raise ValueError(f"{where}: not a readable FITS file ({err})") from err
    problems = _problems(str(w.message) for w in caught)
    if problems:
        raise ValueError(f"{where}: corrupt or truncated ({problems[0]})")
    return product


def _problems(messages: Iterable[str]) -> list[str]:
    return [m.splitlines()[0] for m in messages if any(s in m for s in _CORRUPTION)]
