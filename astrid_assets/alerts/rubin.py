"""Rubin (LSST) alert packets as rows of the ``external_candidates`` table.

A Rubin alert (``lsst.v9_0`` to ``lsst.v11_x`` of lsst/alert_packet) is one
``diaSource`` (the detection on the difference image: position, PSF flux in
nJy, ``snr``, ``isDipole``, Rubin's own ``reliability``), its ``diaObject``,
earlier sources and three cutouts. Brokers that re-write the stream to files
add a header: Fink's Avro files (one alert each) carry ``brokerIngestMjd`` and
``lsst_schema_version`` (``"lsst.v9_0"``) beside the packet's own fields.

Cutouts
-------
Each cutout is a plain (or gzipped) FITS file of three HDUs: the image in nJy
with its WCS, ``UNCERT`` (the variance) and ``PSFIMAGE``. Rubin cuts them at
a size that follows the source's footprint (30 to 71 px in the shared sample),
so :func:`rubin_stamp` re-cuts each image on a 63 x 63 NaN canvas centred on
the pixel nearest to the ``diaSource`` position through the stamp's WCS: the
candidate then sits at pixel (31, 31) as in ZTF's stamps and ours, smaller
stamps are padded and larger ones cropped. Only the image is kept; the packet
itself stays in the file named in ``source_file``.

Sign
----
Rubin subtracts the template from the science image for every source, so the
difference stamp is science - template as it stands and the candidate
brightened when ``psfFlux > 0`` (``positive``).
"""

from __future__ import annotations

import gzip
import io
import math
import re
import warnings
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from astrid_assets.science.cutouts import cutout_stamps

__all__ = [
    "CUTOUTS",
    "STAMP_SIZE",
    "MalformedPacket",
    "rubin_row",
    "rubin_schema_version",
    "rubin_stamp",
]

STAMP_SIZE = 63
# Packet field -> our column, in our channel order (science, reference, difference).
CUTOUTS = {
    "cutoutScience": "cutout_science",
    "cutoutTemplate": "cutout_reference",
    "cutoutDifference": "cutout_difference",
}
REQUIRED = ("diaSourceId", "ra", "dec", "midpointMjdTai", "psfFlux")
_VERSION = re.compile(r"lsst\.v(\d+)_(\d+)")
GZIP_MAGIC = b"\x1f\x8b"


class MalformedPacket(ValueError):
    """A packet that lacks a field or a cutout the table needs."""


def rubin_schema_version(packet: dict[str, Any], writer_schema: Any = None) -> str | None:
    """``"9.0"`` for ``lsst.v9_0``: from Fink's ``lsst_schema_version`` field, else from
    the Avro schema's name or namespace; None when neither says."""
    candidates = [packet.get("lsst_schema_version")]
    if isinstance(writer_schema, dict):
        candidates += [writer_schema.get("namespace"), writer_schema.get("name")]
    for text in candidates:
        match = _VERSION.search(str(text or ""))
        if match:
            return f"{match[1]}.{match[2]}"
    return None


def rubin_stamp(data: bytes | None, ra: float, dec: float, name: str) -> np.ndarray:
    """A cutout's image on a 63 x 63 NaN canvas centred on ``(ra, dec)`` (degrees).

    Raises
    ------
    MalformedPacket
        When the cutout is missing or holds no 2-D image.
    """
    if not data:
        raise MalformedPacket(f"{name} is missing")
    if data[:2] == GZIP_MAGIC:
        data = gzip.decompress(data)
    with warnings.catch_warnings():
        # Rubin's stamps carry MJDREF = 0 and such, which astropy "fixes" noisily.
        warnings.simplefilter("ignore", FITSFixedWarning)
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        try:
            with fits.open(io.BytesIO(data)) as hdus:
                hdu = next((h for h in hdus if h.data is not None and h.data.ndim == 2), None)
                if hdu is None:
                    raise MalformedPacket(f"{name} holds no 2-D image")
                image = np.array(hdu.data, dtype=np.float32)
                header = hdu.header
        except MalformedPacket:
            raise
        except Exception as exc:
            raise MalformedPacket(f"{name} is not a FITS image ({exc})") from exc
        x, y = _position(header, image.shape, ra, dec)
    return cutout_stamps(image, x, y, size=STAMP_SIZE, fill=np.nan)[0]


def _position(header: fits.Header, shape: tuple[int, ...], ra: float, dec: float) -> tuple:
    """0-based pixel of ``(ra, dec)`` through the stamp's WCS; the centre without one."""
    centre = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    try:
        wcs = WCS(header)
        if not wcs.has_celestial:
            return centre
        x, y = wcs.world_to_pixel_values(ra, dec)
    except Exception:
        return centre
    if not (math.isfinite(x) and math.isfinite(y)):
        return centre
    return float(x), float(y)


def rubin_row(packet: dict[str, Any], writer_schema: Any = None) -> dict[str, Any]:
    """One Rubin packet as the columns of ``external_candidates`` (without ``source_file``).

    Raises
    ------
    MalformedPacket
        When ``diaSource`` or one of its position, time and flux fields, or a
        cutout, is missing.
    """
    source = packet.get("diaSource")
    if not source:
        raise MalformedPacket("no diaSource record")
    missing = [k for k in REQUIRED if source.get(k) is None]
    if missing:
        raise MalformedPacket(f"diaSource lacks {', '.join(missing)}")
    ra, dec, flux = float(source["ra"]), float(source["dec"]), float(source["psfFlux"])
    stamps = {
        column: rubin_stamp(packet.get(field), ra, dec, field) for field, column in CUTOUTS.items()
    }
    object_id = source.get("diaObjectId") or (packet.get("diaObject") or {}).get("diaObjectId")
    return {
        "survey": "rubin",
        "candid": int(source["diaSourceId"]),
        # 0 or null: a source associated with a solar-system object, not a diaObject.
        "object_id": str(object_id) if object_id else None,
        "ra": ra,
        "dec": dec,
        "mjd": float(source["midpointMjdTai"]),
        "band": source.get("band"),
        "magpsf": None,
        "sigmapsf": None,
        "psfFlux": flux,
        "psfFluxErr": _float(source.get("psfFluxErr")),
        "positive": flux > 0,
        "isdiffpos": None,
        "rb": None,
        "drb": None,
        "reliability": _float(source.get("reliability")),
        "ssdistnr": None,
        "ssnamenr": None,
        "snr": _float(source.get("snr")),
        "isDipole": source.get("isDipole"),
        "schema_version": rubin_schema_version(packet, writer_schema),
        **stamps,
    }


def _float(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)
