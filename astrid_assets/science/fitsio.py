"""Reading and writing FITS images: the one module of ``science`` that touches files.

Reading is strict where a wrong answer would be silent (a truncated file, an
image with no finite pixels) and forgiving where real cameras differ (the
name of the gain keyword, a missing WCS). Every problem is raised as
:class:`FitsInputError`, whose message names the file and the problem.

Writing goes to a temporary file beside the target and is renamed into
place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning

__all__ = [
    "FitsInputError",
    "ImageFile",
    "header_float",
    "read_image",
    "write_fits_atomic",
]

GAIN_KEYS = ("GAIN", "EGAIN", "CCDGAIN", "GAINA")
READ_NOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE", "RDNOISEA")
SATURATION_KEYS = ("SATURATE", "SATLEVEL", "SATURATA", "MAXLIN")


class FitsInputError(ValueError):
    """A FITS file that cannot be used, with the file and the reason."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class ImageFile:
    """A 2-D image read from a FITS file, with what its header says about it.

    Attributes
    ----------
    path : str
        The file it came from.
    data : numpy.ndarray
        float32, native byte order; non-finite pixels are set to 0 and flagged
        in ``mask``.
    mask : numpy.ndarray
        bool, True for pixels that were NaN or infinite in the file.
    header : astropy.io.fits.Header
        The header of the image HDU (merged with the primary header when the
        image is in an extension that inherits it).
    wcs : astropy.wcs.WCS or None
        The celestial WCS, or None when the header has none.
    gain, read_noise, saturation : float or None
        e-/ADU, e-, ADU, from the first keyword found of each kind.
    hdu_name : str
        Name (or index) of the HDU the image came from.
    """

    path: str
    data: np.ndarray
    mask: np.ndarray
    header: fits.Header
    wcs: WCS | None
    gain: float | None
    read_noise: float | None
    saturation: float | None
    hdu_name: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]


def header_float(header: fits.Header, keys: Iterable[str]) -> float | None:
    """The first of ``keys`` present in ``header`` as a positive finite float."""
    for key in keys:
        value = header.get(key)
        if value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(number) and number > 0:
            return number
    return None


def _celestial_wcs(header: fits.Header, path: str) -> WCS | None:
    if "CTYPE1" not in header or "CTYPE2" not in header:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
    except Exception as exc:  # astropy raises several types for bad WCS keywords
        raise FitsInputError(path, f"the WCS in the header cannot be read ({exc})") from exc
    if not wcs.has_celestial:
        return None
    return wcs.celestial


def _pick_image_hdu(hdul: fits.HDUList, hdu: int | str | None, path: str) -> int:
    if hdu is not None:
        try:
            index = hdul.index_of(hdu)
        except (KeyError, IndexError) as exc:
            raise FitsInputError(path, f"has no HDU {hdu!r}") from exc
        if hdul[index].data is None or hdul[index].data.ndim != 2:
            raise FitsInputError(path, f"HDU {hdu!r} holds no 2-D image")
        return index
    for index, item in enumerate(hdul):
        if not isinstance(item, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
            continue
        if item.header.get("NAXIS", 0) >= 2 and item.data is not None:
            if item.data.ndim == 2:
                return index
    raise FitsInputError(path, "contains no 2-D image HDU")


def read_image(path: str | os.PathLike, hdu: int | str | None = None) -> ImageFile:
    """Read a 2-D image and its calibration keywords from a FITS file.

    Parameters
    ----------
    path : str or path-like
        Plain, gzip- or bzip2-compressed FITS, or a tile-compressed image.
    hdu : int or str, optional
        Which HDU to read; by default the first HDU holding a 2-D image.

    Returns
    -------
    ImageFile

    Raises
    ------
    FitsInputError
        When the file is missing, is not FITS, is truncated, holds no 2-D
        image, has an unreadable WCS, or has no finite pixel.
    """
    path = str(path)
    if not os.path.exists(path):
        raise FitsInputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                index = _pick_image_hdu(hdul, hdu, path)
                item = hdul[index]
                data = np.asarray(item.data)
                header = item.header.copy()
                if index > 0 and header.get("INHERIT", False):
                    primary = hdul[0].header.copy()
                    primary.strip()
                    for card in primary.cards:
                        if card.keyword not in header and card.keyword not in ("", "COMMENT"):
                            header.append(card)
                hdu_name = item.name or str(index)
    except FitsInputError:
        raise
    except AstropyUserWarning as exc:
        raise FitsInputError(path, f"is truncated or damaged ({exc})") from exc
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise FitsInputError(path, f"is not a readable FITS file ({exc})") from exc

    data = data.astype(np.float32)
    finite = np.isfinite(data)
    if not finite.any():
        raise FitsInputError(path, "has no finite pixel (all NaN or infinite)")
    mask = ~finite
    if mask.any():
        data[mask] = 0.0
    return ImageFile(
        path=path,
        data=np.ascontiguousarray(data),
        mask=mask,
        header=header,
        wcs=_celestial_wcs(header, path),
        gain=header_float(header, GAIN_KEYS),
        read_noise=header_float(header, READ_NOISE_KEYS),
        saturation=header_float(header, SATURATION_KEYS),
        hdu_name=hdu_name,
    )


def write_fits_atomic(
    path: str | os.PathLike,
    images: dict[str, tuple[np.ndarray, fits.Header | None]],
    tables: dict[str, Table] | None = None,
    primary_header: fits.Header | None = None,
) -> Path:
    """Write image and table HDUs to ``path`` atomically.

    Parameters
    ----------
    path : str or path-like
        Target file; its folder is created when missing.
    images : dict
        ``EXTNAME -> (array, header or None)``, written in order as image HDUs.
    tables : dict, optional
        ``EXTNAME -> astropy Table``, written after the images.
    primary_header : astropy.io.fits.Header, optional
        Header of the (data-less) primary HDU.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    hdus: list[fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] = [
        fits.PrimaryHDU(header=primary_header)
    ]
    for name, (array, header) in images.items():
        hdus.append(fits.ImageHDU(data=array, header=header, name=name))
    for name, table in (tables or {}).items():
        hdus.append(fits.table_to_hdu(table, name=name))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
