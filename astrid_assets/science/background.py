"""Sky background and its noise, estimated on a mesh with SEP.

The image is divided into boxes of ``box_size`` pixels; in each box the sky
is a sigma-clipped mode of the pixel values (SExtractor's estimator), the box
values are median-filtered over ``filter_size`` boxes to remove the influence
of bright stars, and a bicubic spline through them gives a smooth background
and noise map at every pixel (Bertin & Arnouts 1996, A&AS 117, 393; Barbary
2016, JOSS 1, 58).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

__all__ = [
    "Background",
    "BackgroundConfig",
    "estimate_background",
    "sep_ready",
]


@dataclass(frozen=True)
class BackgroundConfig:
    """Parameters of :func:`estimate_background`.

    Attributes
    ----------
    box_size : int
        Side of the mesh boxes, in pixels. Larger than a few source sizes,
        smaller than the scale of real sky variations (64 is SExtractor's
        default).
    filter_size : int
        Side, in boxes, of the median filter applied to the mesh (odd; 1
        switches it off).
    """

    box_size: int = 64
    filter_size: int = 3

    def __post_init__(self) -> None:
        if int(self.box_size) != self.box_size or self.box_size < 2:
            raise ValueError(f"box_size must be an integer >= 2 pixels, got {self.box_size!r}")
        if (
            int(self.filter_size) != self.filter_size
            or self.filter_size < 1
            or self.filter_size % 2 == 0
        ):
            raise ValueError(
                f"filter_size must be a positive odd integer, got {self.filter_size!r}"
            )


@dataclass
class Background:
    """A background estimate: the maps and their global summary.

    Attributes
    ----------
    background : numpy.ndarray
        Sky level at every pixel, same shape as the image, in image units.
    rms : numpy.ndarray
        Sky noise (one standard deviation) at every pixel.
    global_background : float
        Median of the mesh sky values.
    global_rms : float
        Median of the mesh noise values.
    box_size, filter_size : int
        The parameters that produced it.
    """

    background: np.ndarray
    rms: np.ndarray
    global_background: float
    global_rms: float
    box_size: int
    filter_size: int

    def subtract(self, image: np.ndarray) -> np.ndarray:
        """``image - background`` as a new array of the background's dtype."""
        if np.shape(image) != self.background.shape:
            raise ValueError(
                f"image shape {np.shape(image)} does not match background shape "
                f"{self.background.shape}"
            )
        return np.asarray(image, dtype=self.background.dtype) - self.background


def sep_ready(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Return ``image`` as a 2-D, C-contiguous, native-byte-order float array.

    SEP reads the raw buffer, so big-endian FITS data (``>f4``, ``>f8``) and
    non-contiguous views must be converted. float32 and float64 are kept;
    integers become float32 (float64 if they do not fit exactly).

    Raises
    ------
    ValueError
        If the array is not two-dimensional or not numeric.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize >= 8:
        dtype = np.dtype(np.float64)
    elif arr.dtype.kind in "iu" and arr.dtype.itemsize >= 4:
        dtype = np.dtype(np.float64)
    else:
        dtype = np.dtype(np.float32)
    return np.ascontiguousarray(arr, dtype=dtype.newbyteorder("="))


def _validated_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match image shape {shape}")
    return np.ascontiguousarray(m, dtype=bool)


def estimate_background(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    box_size: int = BackgroundConfig.box_size,
    filter_size: int = BackgroundConfig.filter_size,
) -> Background:
    """Estimate the sky background and its noise with SEP.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image, any float or integer dtype and byte order. Non-finite
        pixels are ignored (treated as masked).
    mask : numpy.ndarray of bool, optional
        True where pixels must be ignored (bad pixels, saturated stars,
        cosmic rays). Same shape as ``image``.
    box_size : int
        Mesh box side in pixels; clipped to the image size.
    filter_size : int
        Median filter size in boxes (odd).

    Returns
    -------
    Background
        Maps of the image's float dtype (float32 or float64), and the global
        level and noise.

    Raises
    ------
    ValueError
        If the image is not 2-D, the mask shape differs, the parameters are
        invalid, or no pixel is finite and unmasked.
    """
    config = BackgroundConfig(box_size=box_size, filter_size=filter_size)
    data = sep_ready(image)
    bad = _validated_mask(mask, data.shape)
    finite = np.isfinite(data)
    if not finite.all():
        bad = ~finite if bad is None else (bad | ~finite)
        data = np.where(finite, data, 0).astype(data.dtype)
    if bad is not None and bad.all():
        raise ValueError("no finite, unmasked pixels to estimate the background from")
    ny, nx = data.shape
    bw = min(int(config.box_size), nx)
    bh = min(int(config.box_size), ny)
    fs = int(config.filter_size)
    bkg = sep.Background(data, mask=bad, bw=bw, bh=bh, fw=fs, fh=fs)
    back = bkg.back(dtype=data.dtype)
    rms = bkg.rms(dtype=data.dtype)
    return Background(
        background=back,
        rms=rms,
        global_background=float(bkg.globalback),
        global_rms=float(bkg.globalrms),
        box_size=int(config.box_size),
        filter_size=fs,
    )
