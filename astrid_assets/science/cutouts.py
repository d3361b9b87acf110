"""Postage stamps around candidates: single cutouts and the vetting triplet.

A candidate is shown to a vetter, and to the real-bogus classifier, as three
stamps of the same sky: the science image, the reference (template) and
their difference, in that channel order, the layout of ZTF's alert packets
(``cutoutScience``, ``cutoutTemplate``, ``cutoutDifference``; 63 x 63 pixels)
(Patterson et al. 2019, PASP 131, 018001).

A stamp is centred on the pixel nearest to ``(x, y)`` (0-based, ``x`` the
column), so the candidate lies within half a pixel of the middle pixel
``[size // 2, size // 2]``; pixels of a stamp that fall outside the image
take the ``fill`` value. Stamps are cut by fancy indexing, without copying
or padding the whole image, so thousands of them take milliseconds.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cutout_stamps",
    "cutout_triplets",
    "nearest_pixel",
    "stamps_at_pixels",
]


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise ValueError(f"stamp size must be an odd positive integer, got {size!r}")
    if size <= 0 or size % 2 == 0:
        raise ValueError(f"stamp size must be an odd positive integer, got {size}")
    return int(size)


def _check_positions(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xa = np.atleast_1d(np.asarray(x, dtype=np.float64))
    ya = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if xa.ndim != 1 or ya.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(
            f"x and y must be 1-D and of equal length, got shapes {xa.shape} and {ya.shape}"
        )
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("x and y must be finite pixel positions")
    return xa, ya


def nearest_pixel(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer column and row of the pixel containing each ``(x, y)``.

    Pixel ``i`` covers ``[i - 0.5, i + 0.5)``, so ``floor(x + 0.5)``; unlike
    :func:`numpy.rint` this does not round half to even.
    """
    return (
        np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.intp),
        np.floor(np.asarray(y, dtype=np.float64) + 0.5).astype(np.intp),
    )


def _pixel_grid(
    shape: tuple[int, ...], xi: np.ndarray, yi: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clipped row and column indices of each stamp, and where it leaves the image."""
    ny, nx = shape
    offsets = np.arange(-(size // 2), size // 2 + 1)
    rows = np.asarray(yi, dtype=np.intp)[:, None] + offsets
    cols = np.asarray(xi, dtype=np.intp)[:, None] + offsets
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    rows = np.clip(rows, 0, ny - 1)[:, :, None]
    cols = np.clip(cols, 0, nx - 1)[:, None, :]
    return rows, cols, ~inside


def stamps_at_pixels(
    image: np.ndarray, xi: np.ndarray, yi: np.ndarray, size: int, fill: float | bool = 0
) -> np.ndarray:
    """Stamps of ``image`` centred on integer pixels ``(xi, yi)``, keeping its dtype.

    The worker behind :func:`cutout_stamps`, also used for boolean masks.

    Returns
    -------
    numpy.ndarray
        ``(n, size, size)`` of ``image.dtype``; ``fill`` outside the image.
    """
    rows, cols, outside = _pixel_grid(image.shape, xi, yi, size)
    stamps = image[rows, cols]
    stamps[outside] = fill
    return stamps


def cutout_stamps(
    image: np.ndarray,
    x: np.ndarray | float,
    y: np.ndarray | float,
    size: int = 63,
    fill: float = np.nan,
) -> np.ndarray:
    """Square stamps of ``image`` centred on the pixels nearest to ``(x, y)``.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
    x, y : array_like or float
        Positions in 0-based pixels (``x`` column, ``y`` row); scalars give
        one stamp.
    size : int
        Odd side length of the stamps in pixels.
    fill : float
        Value of stamp pixels that lie outside the image.

    Returns
    -------
    numpy.ndarray
        ``(n, size, size)`` float32; stamp ``k`` has the pixel nearest to
        ``(x[k], y[k])`` at ``[size // 2, size // 2]``.

    Raises
    ------
    ValueError
        If ``image`` is not a 2-D numeric array, ``size`` is not an odd
        positive integer, or the positions are not finite 1-D arrays of
        equal length.
    """
    size = _check_size(size)
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be a 2-D array, got shape {img.shape}")
    if img.dtype.kind not in "fiub":
        raise ValueError(f"image must be numeric, got dtype {img.dtype}")
    xa, ya = _check_positions(x, y)
    xi, yi = nearest_pixel(xa, ya)
    rows, cols, outside = _pixel_grid(img.shape, xi, yi, size)
    stamps = img[rows, cols].astype(np.float32, copy=False)
    stamps[outside] = fill
    return stamps


def cutout_triplets(
    science: np.ndarray,
    reference: np.ndarray,
    difference: np.ndarray,
    x: np.ndarray | float,
    y: np.ndarray | float,
    size: int = 63,
    fill: float = np.nan,
) -> np.ndarray:
    """Science, reference and difference stamps of each candidate.

    Parameters
    ----------
    science, reference, difference : numpy.ndarray
        2-D images of the same shape, on the same pixel grid.
    x, y : array_like or float
        Candidate positions in 0-based pixels.
    size : int
        Odd side length of the stamps in pixels (63 as in ZTF alerts).
    fill : float
        Value of stamp pixels outside the images.

    Returns
    -------
    numpy.ndarray
        ``(n, 3, size, size)`` float32; channel 0 is the science stamp,
        1 the reference, 2 the difference.

    Raises
    ------
    ValueError
        If the images are not 2-D or differ in shape, or as
        :func:`cutout_stamps`.
    """
    images = [np.asarray(a) for a in (science, reference, difference)]
    names = ("science", "reference", "difference")
    for name, img in zip(names, images, strict=True):
        if img.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array, got shape {img.shape}")
    if not images[0].shape == images[1].shape == images[2].shape:
        raise ValueError(
            "science, reference and difference must have the same shape, got "
            f"{images[0].shape}, {images[1].shape} and {images[2].shape}"
        )
    size = _check_size(size)
    xa, ya = _check_positions(x, y)
    out = np.empty((xa.size, 3, size, size), dtype=np.float32)
    for channel, img in enumerate(images):
        out[:, channel] = cutout_stamps(img, xa, ya, size=size, fill=fill)
    return out
