"""What every image subtraction returns, and the input handling both share.

Two methods subtract a reference image from a new one on the same pixel
grid: ZOGY (:mod:`astrid_assets.science.zogy`; Zackay, Ofek & Gal-Yam 2016,
ApJ 830, 27) and the classic PSF-matched scaled subtraction
(:mod:`astrid_assets.science.classic`). Both return a
:class:`SubtractionResult` with the same conventions, so detection and the
pipeline need not know which one ran:

* ``difference`` is in the new image's counts: a transient of flux ``f``
  (new-image ADU) appears as ``f * difference_psf``;
* ``score`` has unit variance away from sources, positive for a source
  that brightened, negative for one that faded;
* ``mask`` is True where neither can be trusted.

:func:`prepare_pair` validates and cleans the inputs (masked and
non-finite pixels set to zero so that they do not ring through the FFTs);
:func:`output_mask` and :func:`grow_mask` widen the bad pixels by what they
can corrupt and flag the image border; :func:`box_sum` and
:func:`fit_scale_offset` are the pieces of the flux-ratio fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "PreparedPair",
    "SubtractionResult",
    "box_sum",
    "centred_stamp",
    "fftconvolve",
    "fit_scale_offset",
    "grow_mask",
    "output_mask",
    "prepare_pair",
]

_DTYPES = ("float32", "float64")


def fftconvolve(a: np.ndarray, b: np.ndarray, mode: str = "full") -> np.ndarray:
    """``scipy.signal.fftconvolve``, imported on first use.

    ``scipy.signal`` takes a third of a second to import, which every
    ``astrid`` command and every Dagster step would pay.
    """
    from scipy.signal import fftconvolve as convolve

    return convolve(a, b, mode=mode)


@dataclass
class SubtractionResult:
    """The products of one image subtraction.

    Attributes
    ----------
    method : str
        ``"zogy"`` or ``"classic"``.
    difference : numpy.ndarray
        Difference image in units of the new image's counts (flux
        normalisation of the new image ``F_n = 1``): a transient of flux
        ``f`` in new-image ADU appears as ``f * difference_psf``. Zero where
        ``mask`` is True.
    difference_psf : numpy.ndarray
        PSF of ``difference``: odd-sided stamp with unit sum, centred on its
        middle pixel.
    difference_noise : float
        Standard deviation of one pixel of ``difference`` away from sources
        (ADU of the new image). For ZOGY the noise is white and this is
        ``1 / F_D``.
    score : numpy.ndarray
        Point-source detection statistic with unit variance: ZOGY's
        ``S_corr``, or the matched-filter S/N of the classic difference.
        Positive where the new image brightened. Zero where ``mask`` is True.
    mask : numpy.ndarray
        Boolean, True where ``difference`` and ``score`` are not valid:
        masked or non-finite input pixels grown by the PSF footprint, and the
        image border.
    flux_ratio : float
        ``F_r / F_n``: reference counts per new-image count of the same
        source, solved from the data or as given.
    details : dict
        Method-specific extras (scalars such as ``F_D``, the noise terms,
        timings; ZOGY adds the uncorrected score ``S``).
    """

    method: str
    difference: np.ndarray
    difference_psf: np.ndarray
    difference_noise: float
    score: np.ndarray
    mask: np.ndarray
    flux_ratio: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedPair:
    """Validated inputs of a subtraction, ready for Fourier work.

    Attributes
    ----------
    new, ref : numpy.ndarray
        Images in the working dtype, with masked and non-finite pixels set to
        zero (the inputs are background subtracted, so zero is the local sky).
        They are the caller's arrays when no change was needed.
    psf_new, psf_ref : numpy.ndarray
        Float64 PSF stamps normalised to unit sum.
    bad : numpy.ndarray
        Boolean: the given mask or'ed with the non-finite pixels of either
        image (not yet grown).
    var_new, var_ref : numpy.ndarray or None
        The variance maps as given (validated, not yet cleaned; see
        :meth:`variance`), or None.
    sigma_new, sigma_ref : float
        Background noise (ADU).
    dtype : numpy.dtype
        Working precision.
    """

    new: np.ndarray
    ref: np.ndarray
    psf_new: np.ndarray
    psf_ref: np.ndarray
    bad: np.ndarray
    var_new: np.ndarray | None
    var_ref: np.ndarray | None
    sigma_new: float
    sigma_ref: float
    dtype: np.dtype

    def variance(self, which: str) -> np.ndarray | None:
        """Variance map of ``"new"`` or ``"ref"``, ready for Fourier work.

        In the images' working dtype, with bad and non-finite pixels set to
        ``sigma**2`` (their image values are zero-filled background). Made
        on demand, so that a cleaned copy lives only while it is used.
        """
        if which not in ("new", "ref"):
            raise ValueError(f"which must be 'new' or 'ref', got {which!r}")
        var = self.var_new if which == "new" else self.var_ref
        if var is None:
            return None
        sigma = self.sigma_new if which == "new" else self.sigma_ref
        dt = self.dtype
        v = var.astype(dt, copy=False)
        invalid = self.bad
        if not np.isfinite(v.sum()):
            invalid = invalid | ~np.isfinite(v)
        fill = dt.type(sigma**2)
        # A map that already holds sigma² on every invalid pixel needs no
        # cleaned copy (64 MB at 4096x4096 in float32).
        if invalid.any() and np.any(v[invalid] != fill):
            v = v.copy() if v is var else v
            np.copyto(v, fill, where=invalid)
        return v

    @property
    def shape(self) -> tuple[int, int]:
        return self.bad.shape  # type: ignore[return-value]


def _check_psf(psf: np.ndarray, name: str, shape: tuple[int, int]) -> np.ndarray:
    p = np.asarray(psf, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} must be a 2-D stamp, got {p.ndim} dimensions")
    if p.shape[0] % 2 == 0 or p.shape[1] % 2 == 0:
        raise ValueError(f"{name} must have odd sides (centred stamp), got {p.shape}")
    if p.shape[0] > shape[0] or p.shape[1] > shape[1]:
        raise ValueError(f"{name} {p.shape} is larger than the images {shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains non-finite values")
    total = p.sum()
    if not total > 0:
        raise ValueError(f"{name} must have a positive sum, got {total!r}")
    return p / total


def _check_sigma(sigma: float, name: str) -> float:
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a scalar background rms, got {sigma!r}") from None
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"{name} must be a positive, finite noise level (ADU), got {sigma!r}")
    return s


def _check_variance(var: np.ndarray | None, name: str, bad: np.ndarray) -> np.ndarray | None:
    if var is None:
        return None
    v = np.asarray(var)
    if v.shape != bad.shape:
        raise ValueError(f"{name} shape {v.shape} does not match the images {bad.shape}")
    if not np.issubdtype(v.dtype, np.number):
        raise ValueError(f"{name} must hold numbers")
    if np.isfinite(v.sum()) and not bad.any():
        # The common case, checked with reductions and no temporaries.
        negative = v.min() < 0
    else:
        negative = np.any((v < 0) & ~bad)
    if negative:
        raise ValueError(f"{name} has negative values at unmasked pixels")
    return v


def prepare_pair(
    new: np.ndarray,
    ref: np.ndarray,
    psf_new: np.ndarray,
    psf_ref: np.ndarray,
    *,
    sigma_new: float,
    sigma_ref: float,
    var_new: np.ndarray | None = None,
    var_ref: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    dtype: str = "float32",
) -> PreparedPair:
    """Validate the inputs of a subtraction and clean them for FFTs.

    Parameters
    ----------
    new, ref : numpy.ndarray
        Background-subtracted images on the same pixel grid.
    psf_new, psf_ref : numpy.ndarray
        Odd-sided PSF stamps (renormalised to unit sum here).
    sigma_new, sigma_ref : float
        Background rms of each image (ADU).
    var_new, var_ref : numpy.ndarray, optional
        Per-pixel variance maps (ADU²).
    mask : numpy.ndarray of bool, optional
        Bad pixels of either image.
    dtype : {"float32", "float64"}
        Working precision.

    Returns
    -------
    PreparedPair

    Raises
    ------
    ValueError
        Shapes that disagree, non-2-D images, bad PSF stamps, non-positive
        noise levels, negative variances, or an unknown dtype.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    dt = np.dtype(dtype)
    n = np.asarray(new)
    r = np.asarray(ref)
    if n.ndim != 2 or r.ndim != 2:
        raise ValueError(f"new and ref must be 2-D images, got shapes {n.shape} and {r.shape}")
    if n.shape != r.shape:
        raise ValueError(f"new {n.shape} and ref {r.shape} must be on the same pixel grid")
    if not (np.issubdtype(n.dtype, np.number) and np.issubdtype(r.dtype, np.number)):
        raise ValueError("new and ref must hold numbers")
    shape = n.shape
    p_new = _check_psf(psf_new, "psf_new", shape)
    p_ref = _check_psf(psf_ref, "psf_ref", shape)
    s_new = _check_sigma(sigma_new, "sigma_new")
    s_ref = _check_sigma(sigma_ref, "sigma_ref")

    n = n.astype(dt, copy=False)
    r = r.astype(dt, copy=False)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != shape:
            raise ValueError(f"mask shape {m.shape} does not match the images {shape}")
        bad = m.astype(bool)
    else:
        bad = np.zeros(shape, dtype=bool)
    # A sum is finite when every pixel is: one cheap pass in the usual case
    # (an overflowing sum only sends it to the exact check).
    for image in (n, r):
        if not np.isfinite(image.sum()):
            bad |= ~np.isfinite(image)
    if bad.any():
        # Never write into the caller's arrays; an image already zero on
        # every bad pixel needs no copy (64 MB saved per image at 4096x4096).
        for name in ("n", "r"):
            image = n if name == "n" else r
            if not np.any(image[bad]):
                continue
            source = new if name == "n" else ref
            image = image.copy() if np.may_share_memory(image, source) else image
            np.copyto(image, dt.type(0), where=bad)
            if name == "n":
                n = image
            else:
                r = image
    v_new = _check_variance(var_new, "var_new", bad)
    v_ref = _check_variance(var_ref, "var_ref", bad)
    return PreparedPair(n, r, p_new, p_ref, bad, v_new, v_ref, s_new, s_ref, dt)


def _true_pixels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the True pixels of a sparse 2-D mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    sub_rows, cols = np.nonzero(mask[rows])
    return rows[sub_rows], cols


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a square of half-side ``radius`` (a new array).

    Separable, and along each axis a running OR over ``2 radius + 1``
    pixels built by doubling spans: ``log2(radius)`` whole-array ORs instead
    of a sliding window per pixel.
    """
    if radius <= 0:
        return mask.copy()
    width = 2 * radius + 1
    if np.count_nonzero(mask) * width * width <= mask.size // 8:
        # Few pixels: paint their squares directly.
        ys, xs = _true_pixels(mask)
        out = np.zeros(mask.shape, dtype=bool)
        offsets = np.arange(-radius, radius + 1)
        rows = np.clip(ys[:, None] + offsets, 0, mask.shape[0] - 1)
        cols = np.clip(xs[:, None] + offsets, 0, mask.shape[1] - 1)
        out[rows[:, :, None], cols[:, None, :]] = True
        return out
    out = np.pad(mask, radius)
    for axis in (0, 1):
        run = np.moveaxis(out, axis, 0)
        span = 1
        # run[i] becomes any(original[i : i + span]); spans double up to width.
        while span < width:
            step = min(span, width - span)
            run[:-step] |= run[step:]
            span += step
    return np.ascontiguousarray(out[: mask.shape[0], : mask.shape[1]])


def grow_mask(
    bad: np.ndarray,
    radius: int,
    edge: int,
    *,
    images: tuple[np.ndarray, ...] = (),
    thresholds: tuple[float, ...] = (),
    bright_radius: int = 0,
) -> np.ndarray:
    """Grow a bad-pixel mask by the footprint it can corrupt, and flag the border.

    A masked pixel is filled with zero before the transforms. Over the
    background that costs nothing beyond the pixel itself, so every bad
    pixel is grown by a small ``radius``. Where a masked region borders
    bright pixels (a saturated star, a bad column through a galaxy) the
    fill removes real flux, and the error spreads over the whole support of
    the subtraction kernels; such regions are grown by ``bright_radius``.

    Parameters
    ----------
    bad : numpy.ndarray of bool
        Pixels that are bad in the inputs.
    radius : int
        Half-side of the square by which every bad pixel is grown (pixels).
    edge : int
        Width of the flagged border (pixels).
    images : tuple of numpy.ndarray, optional
        The images (bad pixels already set to zero) whose brightness next to
        the bad pixels decides the larger growth.
    thresholds : tuple of float, optional
        One level per image: an unmasked pixel next to a bad one and with
        ``|value| > threshold`` makes its neighbourhood grow by
        ``bright_radius``.
    bright_radius : int
        Half-side of the larger growth (pixels).

    Returns
    -------
    numpy.ndarray of bool
        A new array.
    """
    if radius < 0 or edge < 0 or bright_radius < 0:
        raise ValueError(
            f"radius, edge and bright_radius must be >= 0, got {radius}, {edge}, {bright_radius}"
        )
    if len(images) != len(thresholds):
        raise ValueError("give one threshold per image")
    if bad.any():
        out = _dilate(bad, radius)
        if images and bright_radius > radius:
            ring = _dilate(bad, 1)
            ring &= ~bad
            ys, xs = _true_pixels(ring)
            bright = np.zeros(ys.size, dtype=bool)
            for image, level in zip(images, thresholds, strict=True):
                bright |= np.abs(image[ys, xs]) > level
            if bright.any():
                seeds = np.zeros(bad.shape, dtype=bool)
                seeds[ys[bright], xs[bright]] = True
                out |= _dilate(seeds, bright_radius)
    else:
        out = bad.copy()
    if edge > 0:
        out[:edge] = True
        out[-edge:] = True
        out[:, :edge] = True
        out[:, -edge:] = True
    return out


def output_mask(
    pair: PreparedPair,
    reach: int,
    *,
    edge: int | None = None,
    grow: int | None = None,
    bright_grow: int | None = None,
    bright_snr: float = 10.0,
) -> np.ndarray:
    """The output mask of a subtraction: bad pixels grown, and the border.

    Parameters
    ----------
    pair : PreparedPair
        The cleaned inputs (bad pixels already zero in both images).
    reach : int
        Half-side of the support of the subtraction's kernels (pixels): how
        far a wrong pixel value can spread.
    edge : int, optional
        Width of the flagged border; default ``reach``.
    grow : int, optional
        Growth of every bad pixel; default ``reach // 4``.
    bright_grow : int, optional
        Growth of bad regions that border bright pixels; default ``reach``.
    bright_snr : float
        Brightness, in sigma of each image's background, that makes a
        neighbour of a bad pixel bright.

    Returns
    -------
    numpy.ndarray of bool
    """
    return grow_mask(
        pair.bad,
        reach // 4 if grow is None else grow,
        reach if edge is None else edge,
        images=(pair.new, pair.ref),
        thresholds=(bright_snr * pair.sigma_new, bright_snr * pair.sigma_ref),
        bright_radius=reach if bright_grow is None else bright_grow,
    )


def centred_stamp(kernel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Cut an odd stamp, centred on its middle pixel, from a periodic kernel.

    Parameters
    ----------
    kernel : numpy.ndarray
        2-D kernel laid out for FFTs: its centre at index ``[0, 0]`` and
        negative offsets wrapped to the end of each axis.
    size : (int, int)
        Odd stamp sides, at most the kernel's sides.

    Returns
    -------
    numpy.ndarray
        ``size`` stamp, kernel centre on the middle pixel.
    """
    ny, nx = size
    if ny % 2 == 0 or nx % 2 == 0:
        raise ValueError(f"stamp sides must be odd, got {size}")
    if ny > kernel.shape[0] or nx > kernel.shape[1]:
        raise ValueError(f"stamp {size} is larger than the kernel {kernel.shape}")
    rows = np.arange(-(ny // 2), ny // 2 + 1) % kernel.shape[0]
    cols = np.arange(-(nx // 2), nx // 2 + 1) % kernel.shape[1]
    return kernel[np.ix_(rows, cols)]


def box_sum(image: np.ndarray, width: int) -> np.ndarray:
    """Sum over the ``width`` x ``width`` square around each pixel (zero outside).

    Box sums of two images of the same sky brought to one PSF are local
    fluxes: their ratio does not depend on the PSF models being exact,
    whereas single pixels differ in profile wherever a model is off.
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"box width must be odd and positive, got {width}")
    out = ndimage.uniform_filter(image, width, mode="constant")
    out *= out.dtype.type(width * width)
    return out


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def fit_scale_offset(
    y: np.ndarray,
    x: np.ndarray,
    var_y: float | np.ndarray,
    var_x: float | np.ndarray,
    *,
    scale: float | None = None,
    fit_offset: bool = True,
    clip: float = 5.0,
    max_iter: int = 20,
) -> dict[str, float]:
    """Robust straight line ``y = scale * x + offset`` with errors in both.

    The start is robust: the scale is the median of ``y / x`` weighted by
    the inverse variance of each ratio, the offset the median of
    ``y - scale x``. Each iteration then drops the points beyond ``clip``
    times the robust scatter of the normalised residuals
    ``(y - scale x - offset) / sqrt(var_y + scale² var_x)`` and takes one
    step of the errors-in-both-variables fit of York, Evensen, López
    Martínez & De Basabe Delgado (2004, Am. J. Phys. 72, 367): weights
    ``W = 1 / (var_y + scale² var_x)``,
    ``scale = sum(W beta V) / sum(W beta U)`` with ``U``, ``V`` the
    weighted-mean-subtracted ``x``, ``y`` and
    ``beta = W (U var_y + scale V var_x)``.

    Parameters
    ----------
    y, x : numpy.ndarray
        1-D samples.
    var_y, var_x : float or numpy.ndarray
        Their variances (one value, or one per sample).
    scale : float, optional
        Fixed scale; only the offset is fitted.
    fit_offset : bool
        False fixes the offset at zero.
    clip : float
        Rejection threshold in robust sigma (the scatter is at least 1).
    max_iter : int
        Most iterations.

    Returns
    -------
    dict
        ``scale``, ``offset``, ``scale_error`` (formal, times the scatter),
        ``n_used``, ``scatter``.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    vy = np.broadcast_to(np.asarray(var_y, dtype=np.float64), y.shape)
    vx = np.broadcast_to(np.asarray(var_x, dtype=np.float64), x.shape)
    if y.size < 3:
        raise ValueError(f"need at least 3 valid pixels to fit scale and offset, got {y.size}")
    fixed = scale is not None
    if fixed:
        s = float(scale)
    else:
        nonzero = x != 0
        if not nonzero.any():
            raise ValueError("cannot fit a scale: x is zero everywhere")
        ratio = y[nonzero] / x[nonzero]
        weight = x[nonzero] ** 2 / (vy[nonzero] + ratio**2 * vx[nonzero])
        s = _weighted_median(ratio, weight)
    c = float(np.median(y - s * x)) if fit_offset else 0.0
    keep = np.ones(y.size, dtype=bool)
    scatter = 1.0
    s_err = 0.0
    for _ in range(max_iter):
        z = (y - s * x - c) / np.sqrt(vy + s * s * vx)
        centre = float(np.median(z[keep]))
        scatter = max(1.4826 * float(np.median(np.abs(z[keep] - centre))), 1.0)
        new_keep = np.abs(z - centre) <= clip * scatter
        if new_keep.sum() < 3:
            break
        yk, xk, vyk, vxk = y[new_keep], x[new_keep], vy[new_keep], vx[new_keep]
        w = 1.0 / (vyk + s * s * vxk)
        sw = w.sum()
        if fit_offset:
            xm = float(np.sum(w * xk) / sw)
            ym = float(np.sum(w * yk) / sw)
        else:
            xm = ym = 0.0
        u = xk - xm
        v = yk - ym
        s_old = s
        if not fixed:
            beta = w * (u * vyk + s * v * vxk)
            denom = float(np.sum(w * beta * u))
            if denom != 0.0:
                s = float(np.sum(w * beta * v) / denom)
            s_err = float(1.0 / np.sqrt(max(np.sum(w * u * u), 1e-300)))
        c = ym - s * xm
        settled = np.array_equal(new_keep, keep) and abs(s - s_old) <= 1e-9 * abs(s)
        keep = new_keep
        if settled:
            break
    return {
        "scale": s,
        "offset": c,
        "scale_error": s_err * scatter,
        "n_used": int(keep.sum()),
        "scatter": scatter,
    }
