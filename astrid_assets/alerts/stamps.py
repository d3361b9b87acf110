"""Cutout stamps as gzipped FITS, the way ZTF's alert packets carry them.

Each cutout of a packet (``cutoutScience``, ``cutoutTemplate``,
``cutoutDifference``) is a one-HDU FITS file of a 63x63 float32 image,
gzipped (Patterson et al. 2019, PASP 131, 018001, section 6.2). A FITS file of
a float32 image is a 2880-byte header block, the pixels as big-endian IEEE
floats, and zero padding to a multiple of 2880 bytes (FITS Standard 4.0,
sections 3.3 and 5.3). The header depends only on the stamp's shape, so it
is made once by astropy and cached; the pixels are numpy's ``tobytes``. That
is 450 times faster than writing each stamp through ``astropy.io.fits``
(2 us instead of 0.9 ms) and gives the same bytes.

Compression is Intel's ISA-L deflate (``isal``, the library of the
``igzip`` tool, ISA-L levels 0 to 3), which writes standard gzip that any
``gzip.decompress`` reads. On a noisy 63x63 stamp (20.2 kB of FITS) level 1
gives 13.6 kB in 45 us, where zlib needs 210 us for 13.7 kB (its run-length
strategy at level 1, the fastest of zlib's) or 325 us (default strategy): the
three cutouts are most of a packet's cost, and with zlib writing alerts is
slower than 2,000 a second on two cores. The gzip header has no time stamp,
so equal stamps give equal bytes.
"""

from __future__ import annotations

import gzip
import io
import warnings
from functools import lru_cache

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from isal import isal_zlib

__all__ = ["FITS_BLOCK", "GZIP_LEVELS", "fits_stamp", "gzip_stamp", "read_stamp"]

FITS_BLOCK = 2880
GZIP_WBITS = 31  # deflate in a gzip wrapper (16 + a 15-bit window)
GZIP_LEVELS = range(isal_zlib.ISAL_BEST_SPEED, isal_zlib.ISAL_BEST_COMPRESSION + 1)


@lru_cache(maxsize=8)
def _header(shape: tuple[int, int]) -> bytes:
    """The primary header of a float32 image of ``shape`` (rows, columns)."""
    return fits.PrimaryHDU(np.zeros(shape, np.float32)).header.tostring().encode("ascii")


def fits_stamp(image: np.ndarray) -> bytes:
    """A 2-D image as the bytes of a one-HDU FITS file, float32 (BITPIX = -32).

    NaN pixels stay NaN (FITS' blank value for floating-point images).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"a stamp must be a 2-D image, got shape {image.shape}")
    pixels = image.astype(">f4", copy=False).tobytes()
    padding = b"\0" * (-len(pixels) % FITS_BLOCK)
    return b"".join((_header(image.shape), pixels, padding))


def gzip_stamp(image: np.ndarray, level: int = 1) -> bytes:
    """A 2-D image as gzipped FITS bytes; ``level`` is ISA-L's, 0 (fastest) to 3."""
    if level not in GZIP_LEVELS:
        raise ValueError(f"gzip level must be {GZIP_LEVELS[0]} to {GZIP_LEVELS[-1]}, got {level}")
    return isal_zlib.compress(fits_stamp(image), level, wbits=GZIP_WBITS)


def read_stamp(data: bytes) -> np.ndarray:
    """The float32 image of a gzipped (or plain) FITS stamp."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        image = fits.getdata(io.BytesIO(data))
    return np.asarray(image, dtype=np.float32)
