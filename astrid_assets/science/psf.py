"""Point-spread functions: analytic models and helpers to place them.

The simulator draws stars from :func:`moffat_psf`; the subtraction code needs
PSFs as small centred stamps (odd size, peak in the middle pixel, unit sum)
and, for Fourier work, embedded in a full-size array with the centre on
pixel ``(0, 0)`` (:func:`psf_to_image_shape`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "fwhm_to_moffat_alpha",
    "moffat_psf",
    "psf_to_image_shape",
]


def fwhm_to_moffat_alpha(fwhm: float, beta: float) -> float:
    """Moffat core width ``alpha`` (pixels) for a given FWHM and ``beta``."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_psf(
    fwhm: float,
    *,
    beta: float = 3.0,
    ellipticity: float = 0.0,
    theta: float = 0.0,
    size: int | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    oversample: int = 5,
) -> np.ndarray:
    """A Moffat PSF stamp with unit sum.

    Parameters
    ----------
    fwhm : float
        Full width at half maximum along the major axis, in pixels.
    beta : float
        Moffat power-law index (2.5 to 4.5 is typical of ground-based seeing).
    ellipticity : float
        ``1 - b/a``; 0 is round.
    theta : float
        Position angle of the major axis, radians counter-clockwise from +x.
    size : int, optional
        Odd stamp size in pixels; by default about 4 FWHM, at least 15.
    offset : (float, float)
        Sub-pixel shift ``(dx, dy)`` of the centre from the middle pixel.
    oversample : int
        Sub-pixel sampling used to integrate the profile over each pixel.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float64 stamp, centred on the middle pixel plus
        ``offset``, normalised to sum 1 within the stamp.
    """
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise ValueError(f"PSF FWHM must be a positive number of pixels, got {fwhm!r}")
    if not 0.0 <= ellipticity < 1.0:
        raise ValueError(f"ellipticity must be in [0, 1), got {ellipticity!r}")
    if size is None:
        size = max(15, int(np.ceil(4.0 * fwhm)) | 1)
    if size % 2 == 0:
        raise ValueError(f"PSF stamp size must be odd, got {size}")
    alpha = fwhm_to_moffat_alpha(fwhm, beta)
    half = size // 2
    sub = (np.arange(size * oversample) + 0.5) / oversample - 0.5 - half
    xx, yy = np.meshgrid(sub - offset[0], sub - offset[1])
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    u = xx * cos_t + yy * sin_t
    v = -xx * sin_t + yy * cos_t
    q = 1.0 - ellipticity
    r2 = (u / alpha) ** 2 + (v / (alpha * q)) ** 2
    profile = (1.0 + r2) ** (-beta)
    stamp = profile.reshape(size, oversample, size, oversample).sum(axis=(1, 3))
    return stamp / stamp.sum()


def psf_to_image_shape(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Embed a centred PSF stamp in a zero array of ``shape``, centre at (0, 0).

    This is the layout FFT convolution needs: the PSF's middle pixel goes to
    index ``[0, 0]`` and the rest wraps around the edges, so multiplying by
    its transform convolves without shifting the image.
    """
    ny, nx = psf.shape
    if ny % 2 == 0 or nx % 2 == 0:
        raise ValueError(f"PSF stamp must have odd sides, got {psf.shape}")
    if ny > shape[0] or nx > shape[1]:
        raise ValueError(f"PSF stamp {psf.shape} is larger than the image {shape}")
    out = np.zeros(shape, dtype=psf.dtype)
    out[:ny, :nx] = psf
    return np.roll(out, (-(ny // 2), -(nx // 2)), axis=(0, 1))
