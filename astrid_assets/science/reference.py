"""Reference (template) images: a deep coadd of the best epochs of a field.

:func:`build_reference` takes epochs already resampled onto one pixel grid
(see :func:`astrid_assets.science.align.align_to_grid`), each with its
variance map, bad-pixel mask, PSF stamp and photometric zero point, and

1. ranks the epochs by the signal-to-noise ratio they give a point source
   of fixed magnitude, ``S/N ~ 10**(0.4 zp) / (sigma_sky * sqrt(NEA))``,
   where ``NEA = 1 / sum(psf**2)`` is the PSF's noise-equivalent area
   (proportional to FWHM**2), and keeps the best ``max_epochs``;
2. scales each to the target zero point, multiplying data by
   ``10**(0.4 (zp_target - zp_i))`` and variance by its square;
3. rejects outliers per pixel across epochs (cosmic rays, asteroids, flares,
   satellite trails: anything present in one epoch only). Epochs with
   different seeing differ by much more than their noise at every bright
   star, so the comparison is made on copies blurred to a common Gaussian
   resolution (that of the worst selected epoch), against the per-pixel
   median, with a tolerance of ``clip_psf_tolerance`` times the local peak
   for the Moffat-versus-Gaussian mismatch of the blurring. Rejected
   regions are grown by about one FWHM so the wings of a rejected source go
   too;
4. averages with inverse-variance weights per pixel and returns the coadd,
   its variance ``sum(w**2 var) / sum(w)**2``, the PSF and the per-pixel
   count of contributing epochs.

The PSF of the coadd is the weighted mean of the epoch PSFs with the
global (per-epoch) weights. With ``weighting="epoch"`` that is exact apart
from masked and rejected pixels; with per-pixel weights it is an
approximation, good where the weights vary slowly across a PSF.

Weighting
---------
``"background"`` (default): per-pixel weights from the inverse of a
block-median smoothed variance map, which follows sky and exposure-time
variation across the field but not the source Poisson noise of stars. Raw
per-pixel inverse variance (``"pixel"``) would give the core of a bright
star less weight in its sharp epochs (more photons per pixel, so more
variance) than in its blurred ones, which changes the coadd's PSF from
star to star and biases bright-star fluxes. ``"epoch"``: one weight per
epoch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from astrid_assets.science.align import AlignedImage

__all__ = [
    "Reference",
    "ReferenceConfig",
    "build_reference",
    "psf_fwhm",
    "psf_noise_equivalent_area",
]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class ReferenceConfig:
    """Parameters of :func:`build_reference`.

    Attributes
    ----------
    max_epochs : int
        Most epochs combined (the best by point-source S/N).
    weighting : {"background", "pixel", "epoch"}
        How the inverse-variance weights are formed (see the module notes).
    background_block : int
        Block size (pixels) of the median smoothing of the variance map for
        ``weighting="background"``.
    clip_sigma : float
        Rejection threshold, in standard deviations, of an epoch's deviation
        from the per-pixel median (both signs).
    clip_psf_tolerance : float
        Extra tolerance, as a fraction of the local peak of the median
        image, for the PSF mismatch left after Gaussian blurring (Moffat
        profiles blurred by a Gaussian keep broader wings: up to ~15% of the
        peak for a 2.5 to 6 px FWHM range). Deviations below it are never
        rejected, so a flare must exceed it to be removed.
    clip_grow : float
        Rejected regions are grown by this many FWHM (of the common
        resolution), at least 1 pixel.
    min_epochs_for_clipping : int
        Fewest valid epochs at a pixel for rejection to be attempted there.
    n_threads : int
        Threads for the per-epoch filtering (scipy and numpy release the
        GIL).
    """

    max_epochs: int = 8
    weighting: Literal["background", "pixel", "epoch"] = "background"
    background_block: int = 64
    clip_sigma: float = 5.0
    clip_psf_tolerance: float = 0.25
    clip_grow: float = 1.0
    min_epochs_for_clipping: int = 3
    n_threads: int = 2

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"ReferenceConfig.max_epochs must be >= 1, got {self.max_epochs}")
        if self.weighting not in ("background", "pixel", "epoch"):
            raise ValueError(
                "ReferenceConfig.weighting must be background, pixel or epoch,"
                f" got {self.weighting!r}"
            )
        if self.background_block < 4:
            raise ValueError(
                f"ReferenceConfig.background_block must be >= 4, got {self.background_block}"
            )
        if not self.clip_sigma > 0:
            raise ValueError(f"ReferenceConfig.clip_sigma must be positive, got {self.clip_sigma}")
        if self.clip_psf_tolerance < 0 or self.clip_grow < 0:
            raise ValueError("ReferenceConfig.clip_psf_tolerance and clip_grow must be >= 0")
        if self.min_epochs_for_clipping < 3:
            raise ValueError(
                "ReferenceConfig.min_epochs_for_clipping must be >= 3 (with two epochs an"
                " outlier cannot be told from the other epoch)"
            )
        if self.n_threads < 1:
            raise ValueError(f"ReferenceConfig.n_threads must be >= 1, got {self.n_threads}")


@dataclass(frozen=True, eq=False)
class Reference:
    """A coadded reference image.

    Attributes
    ----------
    data : numpy.ndarray
        float32 coadd in ADU at ``zero_point``; 0 where ``mask`` is set.
    variance : numpy.ndarray
        float32 per-pixel variance of the coadd; 0 where ``mask`` is set.
    mask : numpy.ndarray
        bool, True where no epoch contributed.
    psf : numpy.ndarray
        Odd unit-sum PSF stamp of the coadd (size of the largest input).
    zero_point : float
        Photometric zero point of ``data``.
    fwhm : float
        FWHM of ``psf`` in pixels (see :func:`psf_fwhm`).
    n_epochs : numpy.ndarray
        int16 map of the number of epochs contributing to each pixel.
    epochs_used : tuple of int
        Indices (into the inputs) of the combined epochs, ascending.
    weights : numpy.ndarray
        Global weight of each used epoch (sums to 1), as used for the PSF.
    flux_scales : numpy.ndarray
        Factor applied to each used epoch, ``10**(0.4 (zp - zp_i))``.
    merit : numpy.ndarray
        Point-source S/N figure of merit of every input epoch (relative).
    epoch_fwhm : numpy.ndarray
        PSF FWHM of every input epoch, pixels.
    rejected_fraction : numpy.ndarray
        Fraction of each used epoch's valid pixels rejected as outliers.
    """

    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: np.ndarray
    zero_point: float
    fwhm: float
    n_epochs: np.ndarray
    epochs_used: tuple[int, ...]
    weights: np.ndarray
    flux_scales: np.ndarray
    merit: np.ndarray
    epoch_fwhm: np.ndarray
    rejected_fraction: np.ndarray


# --------------------------------------------------------------------------
# PSF measures
# --------------------------------------------------------------------------


def _check_psf(psf: Any, index: int | None = None) -> np.ndarray:
    stamp = np.asarray(psf, dtype=np.float64)
    where = "" if index is None else f" of epoch {index}"
    if stamp.ndim != 2 or stamp.shape[0] % 2 == 0 or stamp.shape[1] % 2 == 0:
        raise ValueError(f"PSF{where} must be a 2-D stamp with odd sides, got {stamp.shape}")
    total = stamp.sum()
    if not np.all(np.isfinite(stamp)) or not total > 0:
        raise ValueError(f"PSF{where} must be finite with a positive sum")
    return stamp / total


def psf_noise_equivalent_area(psf: np.ndarray) -> float:
    """Noise-equivalent area ``1 / sum(p**2)`` of a PSF stamp, in pixels.

    The variance of an optimal (PSF-weighted) flux measurement on a flat
    background of per-pixel variance ``v`` is ``v * NEA``.
    """
    stamp = _check_psf(psf)
    return float(1.0 / np.sum(stamp**2))


def psf_fwhm(psf: np.ndarray, *, upsample: int = 5) -> float:
    """FWHM of a PSF stamp, pixels.

    The stamp is interpolated onto a grid ``upsample`` times finer (cubic
    spline); the area ``A`` above half the peak gives
    ``FWHM = 2 sqrt(A / pi)``, the geometric mean of the major and minor
    FWHM for an elliptical PSF. It is the FWHM of the pixelised PSF.
    """
    stamp = _check_psf(psf)
    fine = ndimage.zoom(stamp, upsample, order=3, mode="grid-constant", grid_mode=True)
    area = np.count_nonzero(fine >= 0.5 * fine.max()) / upsample**2
    return float(2.0 * math.sqrt(area / math.pi))


def _pad_stamp(stamp: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    py = (shape[0] - stamp.shape[0]) // 2
    px = (shape[1] - stamp.shape[1]) // 2
    return np.pad(stamp, [(py, py), (px, px)])


# --------------------------------------------------------------------------
# Helpers on full images
# --------------------------------------------------------------------------


def _hat_matrix(n: int, block: int) -> np.ndarray:
    """``(n, n_blocks)`` linear interpolation from block centres to pixels."""
    n_blocks = max(1, math.ceil(n / block))
    centres = (np.arange(n_blocks) + 0.5) * n / n_blocks - 0.5
    pixels = np.arange(n, dtype=np.float64)
    eye = np.eye(n_blocks)
    return np.column_stack([np.interp(pixels, centres, eye[j]) for j in range(n_blocks)])


def _block_median_grid(var: np.ndarray, good: np.ndarray, block: int) -> np.ndarray:
    """Median of the valid variance in blocks of about ``block`` pixels.

    Medians ignore the few pixels of each block that hold stars, so the
    grid follows the background (sky + read noise) variance. Interpolated
    bilinearly between block centres by :func:`_hat_matrix`.
    """
    ny, nx = var.shape
    nby, nbx = max(1, math.ceil(ny / block)), max(1, math.ceil(nx / block))
    ey = np.linspace(0, ny, nby + 1).astype(int)
    ex = np.linspace(0, nx, nbx + 1).astype(int)
    grid = np.full((nby, nbx), np.nan)
    step = 2 if block >= 16 else 1
    for i in range(nby):
        for j in range(nbx):
            v = var[ey[i] : ey[i + 1] : step, ex[j] : ex[j + 1] : step]
            g = good[ey[i] : ey[i + 1] : step, ex[j] : ex[j + 1] : step]
            if g.any():
                grid[i, j] = np.median(v[g])
    if np.all(np.isnan(grid)):
        return np.ones((nby, nbx))
    grid[np.isnan(grid)] = np.nanmedian(grid)
    return grid


def _blur_kernel_power(sigma: float) -> float:
    """``sum(k**2)`` of scipy's 2-D Gaussian filter with standard deviation ``sigma``."""
    if sigma <= 0:
        return 1.0
    delta = np.zeros(int(8 * sigma) * 2 + 3)
    delta[delta.size // 2] = 1.0
    k = ndimage.gaussian_filter1d(delta, sigma, mode="constant")
    return float(np.sum(k**2) ** 2)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean mask by a square of half-width ``radius``."""
    if radius <= 0 or not mask.any():
        return mask
    ys, xs = np.nonzero(mask)
    size = 2 * radius + 1
    if len(ys) * size * size > mask.size:
        return ndimage.maximum_filter(mask.view(np.uint8), size=size).astype(bool)
    out = mask.copy()
    ny, nx = mask.shape
    for dy in range(-radius, radius + 1):
        yy = np.clip(ys + dy, 0, ny - 1)
        for dx in range(-radius, radius + 1):
            out[yy, np.clip(xs + dx, 0, nx - 1)] = True
    return out


def _median_stack(stack: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """Per-pixel median over axis 0 of ``stack``, whose invalid entries are NaN.

    ``n_valid`` counts the finite entries per pixel. NaN sorts last, so the
    median of pixel ``p`` is the middle of its first ``n_valid[p]`` sorted
    values; pixels with every epoch valid (nearly all) take the fast path.
    """
    n = stack.shape[0]
    ordered = np.sort(stack, axis=0)
    median = 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
    partial = n_valid < n
    if partial.any():
        counts = n_valid[partial].astype(np.intp)
        cols = ordered[:, partial]
        lo = np.take_along_axis(cols, np.maximum((counts - 1) // 2, 0)[None], axis=0)[0]
        hi = np.take_along_axis(cols, (counts // 2).clip(0, n - 1)[None], axis=0)[0]
        median[partial] = np.where(counts > 0, 0.5 * (lo + hi), np.nan)
    return median


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


@dataclass
class _Epoch:
    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray | None
    psf: np.ndarray
    zero_point: float


def _collect_epochs(images, variances, psfs, zero_points, masks) -> list[_Epoch]:
    n = len(images)
    if n == 0:
        raise ValueError("build_reference needs at least one epoch, got none")
    for name, seq in (("psfs", psfs), ("zero_points", zero_points)):
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    for name, seq in (("variances", variances), ("masks", masks)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    epochs = []
    shape = None
    for i, image in enumerate(images):
        var = None if variances is None else variances[i]
        mask = None if masks is None else masks[i]
        if isinstance(image, AlignedImage):
            var = image.variance if var is None else var
            mask = image.mask if mask is None else mask
            image = image.data
        data = np.asarray(image)
        if data.ndim != 2:
            raise ValueError(f"image of epoch {i} must be 2-D, got shape {data.shape}")
        shape = data.shape if shape is None else shape
        if data.shape != shape:
            raise ValueError(
                f"epoch {i} has shape {data.shape}, epoch 0 {shape}: images must be aligned"
                " onto one grid first (align_to_grid)"
            )
        if var is None:
            raise ValueError(f"epoch {i} has no variance map; inverse-variance weights need one")
        var = np.asarray(var)
        if var.shape != shape:
            raise ValueError(f"variance of epoch {i} has shape {var.shape}, image {shape}")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != shape:
                raise ValueError(f"mask of epoch {i} has shape {mask.shape}, image {shape}")
        zp = float(zero_points[i])
        if not math.isfinite(zp):
            raise ValueError(f"zero point of epoch {i} is not finite: {zero_points[i]!r}")
        epochs.append(_Epoch(data, var, mask, _check_psf(psfs[i], i), zp))
    return epochs


def _good(epoch: _Epoch) -> np.ndarray:
    good = np.isfinite(epoch.data) & np.isfinite(epoch.variance) & (epoch.variance > 0)
    if epoch.mask is not None:
        good &= ~epoch.mask
    return good


def _sky_variance(epoch: _Epoch) -> float:
    """Median variance of the valid pixels (a sparse sample is plenty)."""
    step = max(1, int(math.sqrt(epoch.data.size / 250_000)))
    var = np.asarray(epoch.variance[::step, ::step], dtype=np.float64)
    ok = np.isfinite(var) & (var > 0) & np.isfinite(epoch.data[::step, ::step])
    if epoch.mask is not None:
        ok &= ~epoch.mask[::step, ::step]
    return float(np.median(var[ok])) if ok.any() else math.inf


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def build_reference(
    images: Sequence[np.ndarray | AlignedImage],
    variances: Sequence[np.ndarray] | None,
    psfs: Sequence[np.ndarray],
    zero_points: Sequence[float],
    masks: Sequence[np.ndarray | None] | None = None,
    *,
    target_zero_point: float | None = None,
    config: ReferenceConfig = ReferenceConfig(),
) -> Reference:
    """Coadd the best epochs of a field into a reference image.

    Parameters
    ----------
    images : sequence of numpy.ndarray or AlignedImage
        Epochs on one common pixel grid, background-subtracted, in ADU.
        :class:`~astrid_assets.science.align.AlignedImage` entries bring
        their own variance and mask.
    variances : sequence of numpy.ndarray or None
        Per-pixel variance of each epoch (ADU**2); None when every image is
        an ``AlignedImage`` with a variance.
    psfs : sequence of numpy.ndarray
        Odd PSF stamp of each epoch (normalised here to unit sum); sizes may
        differ.
    zero_points : sequence of float
        Photometric zero point of each epoch (mag = zp - 2.5 log10 ADU).
    masks : sequence of numpy.ndarray or None, optional
        True where an epoch's pixels are bad.
    target_zero_point : float, optional
        Zero point of the coadd; by default that of the best epoch.
    config : ReferenceConfig

    Returns
    -------
    Reference

    Raises
    ------
    ValueError
        On empty or inconsistent inputs, naming the epoch and the problem.
    """
    epochs = _collect_epochs(images, variances, psfs, zero_points, masks)
    shape = epochs[0].data.shape

    # 1. Rank by point-source S/N at a fixed magnitude.
    fwhm_all = np.array([psf_fwhm(e.psf) for e in epochs])
    nea_all = np.array([1.0 / np.sum(e.psf**2) for e in epochs])
    sky_all = np.array([_sky_variance(e) for e in epochs])
    zp_all = np.array([e.zero_point for e in epochs])
    merit = 10 ** (0.4 * (zp_all - zp_all.max())) / np.sqrt(sky_all * nea_all)
    if not np.any(merit > 0):
        raise ValueError("no epoch has any valid pixel (all masked or with no positive variance)")
    ranked = np.argsort(-merit, kind="stable")
    ranked = ranked[merit[ranked] > 0][: config.max_epochs]
    used = tuple(sorted(int(i) for i in ranked))
    zp_target = float(zp_all[ranked[0]]) if target_zero_point is None else target_zero_point
    if not math.isfinite(zp_target):
        raise ValueError(f"target_zero_point must be finite, got {target_zero_point!r}")
    scales = 10 ** (0.4 * (zp_target - zp_all[list(used)]))

    fwhm_common = float(fwhm_all[list(used)].max())
    blur_sigma = [
        math.sqrt(max(fwhm_common**2 - fwhm_all[i] ** 2, 0.0)) / _FWHM_PER_SIGMA for i in used
    ]
    combiner = _Combiner(epochs, used, scales, sky_all, shape, config)
    with ThreadPoolExecutor(max_workers=config.n_threads) as pool:
        combiner.prepare(pool, blur_sigma)
        if len(used) >= config.min_epochs_for_clipping:
            combiner.reject_outliers(pool, blur_sigma, fwhm_common)
        coadd, variance, count = combiner.combine(pool)

    mask = count == 0
    size = max(max(epochs[i].psf.shape) for i in used)
    weights = combiner.global_weights / combiner.global_weights.sum()
    psf = sum(
        w * _pad_stamp(epochs[i].psf, (size, size)) for w, i in zip(weights, used, strict=True)
    )
    psf = psf / psf.sum()
    return Reference(
        data=coadd,
        variance=variance,
        mask=mask,
        psf=psf,
        zero_point=zp_target,
        fwhm=psf_fwhm(psf),
        n_epochs=count,
        epochs_used=used,
        weights=weights,
        flux_scales=scales,
        merit=merit,
        epoch_fwhm=fwhm_all,
        rejected_fraction=combiner.rejected_fraction(),
    )


class _Combiner:
    """The per-pixel work of :func:`build_reference`, epoch by epoch.

    Only the blurred copies (one float32 stack), the validity and rejection
    masks and the weight descriptors are kept; scaled data and variance are
    recomputed from the inputs when needed, which is cheaper than holding
    them.
    """

    def __init__(self, epochs, used, scales, sky, shape, config: ReferenceConfig) -> None:
        self.epochs = [epochs[i] for i in used]
        self.scales = [np.float32(x) for x in scales]
        self.sky = [float(sky[i]) * float(x) ** 2 for i, x in zip(used, scales, strict=True)]
        self.shape = shape
        self.config = config
        n = len(used)
        self.good: list[np.ndarray] = [np.zeros(0, bool)] * n
        self.weight_grid: list[np.ndarray | None] = [None] * n
        self.rejected: list[np.ndarray | None] = [None] * n
        self.global_weights = np.zeros(n)
        self.stack: np.ndarray | None = None
        self.hat_y = _hat_matrix(shape[0], config.background_block)
        self.hat_x = _hat_matrix(shape[1], config.background_block)

    def scaled(self, k: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Data and variance of epoch ``k`` at the target zero point (0 where invalid)."""
        e, s, good = self.epochs[k], self.scales[k], self.good[k][rows]
        data = np.where(good, np.asarray(e.data[rows], dtype=np.float32) * s, np.float32(0))
        var = np.where(good, np.asarray(e.variance[rows], dtype=np.float32) * (s * s), 0)
        return data, var.astype(np.float32, copy=False)

    def weight(self, k: int, var: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """Inverse-variance weight of epoch ``k`` (0 where invalid)."""
        good = self.good[k][rows]
        mode = self.config.weighting
        if mode == "pixel":
            w = 1.0 / np.where(good, var, np.float32(1))
        elif mode == "background":
            smooth = self.hat_y[rows] @ self.weight_grid[k] @ self.hat_x.T
            w = (1.0 / np.maximum(smooth, 1e-30)).astype(np.float32)
        else:
            w = np.full(good.shape, np.float32(1.0 / self.sky[k]))
        return np.where(good, w, np.float32(0))

    def prepare(self, pool: ThreadPoolExecutor, blur_sigma: list[float]) -> None:
        clipping = len(self.epochs) >= self.config.min_epochs_for_clipping
        if clipping:
            self.stack = np.empty((len(self.epochs), *self.shape), dtype=np.float32)

        def one(k: int) -> None:
            self.good[k] = _good(self.epochs[k])
            data, var = self.scaled(k)
            if self.config.weighting == "background":
                self.weight_grid[k] = _block_median_grid(
                    var, self.good[k], self.config.background_block
                )
            good = self.good[k]
            n_good = np.count_nonzero(good)
            self.global_weights[k] = float(self.weight(k, var)[good].mean()) if n_good else 0.0
            if not clipping:
                return
            out = self.stack[k]
            sig = blur_sigma[k]
            if sig > 0.2:
                ndimage.gaussian_filter(data, sig, output=out, mode="constant")
                if not good.all():
                    den = ndimage.gaussian_filter(good.astype(np.float32), sig, mode="constant")
                    np.divide(out, np.maximum(den, np.float32(1e-6)), out=out)
                    out[den < 0.5] = np.nan
            else:
                out[...] = data
            out[~good] = np.nan

        list(pool.map(one, range(len(self.epochs))))

    def reject_outliers(
        self, pool: ThreadPoolExecutor, blur_sigma: list[float], fwhm_common: float
    ) -> None:
        """Mask, per epoch, the pixels that deviate from the per-pixel median.

        The deviation ``d`` of each blurred copy (common resolution) from the
        per-pixel median is an outlier when
        ``d**2 > clip_sigma**2 (var_epoch + var_median) + (tol * local_peak)**2``:
        ``var_epoch`` is the epoch's variance times the noise power of its
        blurring kernel, ``var_median ~ (pi/2) mean(var) / n`` from the sky
        variances, ``local_peak`` the maximum of the median image within
        about a FWHM. The tolerance is not scaled by ``clip_sigma``: a star
        that brightens by more than ``tol`` of its peak in one epoch is
        rejected there. Only pixels with at least ``min_epochs_for_clipping``
        valid epochs are tested, and a pixel where every epoch would be
        rejected (a strongly variable source) keeps them all.
        """
        cfg = self.config
        stack = self.stack
        n_valid = np.zeros(self.shape, dtype=np.uint8)
        for good in self.good:
            n_valid += good
        median = np.empty(self.shape, dtype=np.float32)
        edges = np.linspace(0, self.shape[0], 4 * cfg.n_threads + 1).astype(int)

        def median_rows(r0: int, r1: int) -> None:
            median[r0:r1] = _median_stack(stack[:, r0:r1], n_valid[r0:r1])

        for job in [pool.submit(median_rows, a, b) for a, b in itertools.pairwise(edges)]:
            job.result()
        powers = [_blur_kernel_power(s) for s in blur_sigma]
        sky_blurred = np.array([p * v for p, v in zip(powers, self.sky, strict=True)])
        n_safe = np.maximum(n_valid, 1).astype(np.float32)
        k2 = np.float32(cfg.clip_sigma**2)
        var_median = np.float32((np.pi / 2) * sky_blurred.mean()) / n_safe
        local_peak = ndimage.maximum_filter(
            np.abs(np.nan_to_num(median)), size=2 * math.ceil(fwhm_common) + 1
        )
        base = k2 * var_median + (np.float32(cfg.clip_psf_tolerance) * local_peak) ** 2
        testable = n_valid >= cfg.min_epochs_for_clipping
        grow = max(1, round(cfg.clip_grow * fwhm_common))

        def one(k: int) -> np.ndarray:
            _, var = self.scaled(k)
            dev = stack[k] - median
            limit = k2 * np.float32(powers[k]) * var + base
            bad = testable & self.good[k] & (dev * dev > limit)
            return _dilate(bad, grow) & self.good[k]

        rejected = list(pool.map(one, range(len(self.epochs))))
        n_rejected = np.zeros(self.shape, dtype=np.uint8)
        for r in rejected:
            n_rejected += r
        keep_all = (n_rejected > 0) & (n_rejected >= n_valid)
        self.rejected = [r & ~keep_all if keep_all.any() else r for r in rejected]
        self.stack = None

    def combine(self, pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coadd = np.zeros(self.shape, dtype=np.float32)
        variance = np.zeros(self.shape, dtype=np.float32)
        count = np.zeros(self.shape, dtype=np.int16)
        edges = np.linspace(0, self.shape[0], 4 * self.config.n_threads + 1).astype(int)

        def block(r0: int, r1: int) -> None:
            rows = slice(r0, r1)
            sum_wd = np.zeros((r1 - r0, self.shape[1]), dtype=np.float32)
            sum_w = np.zeros_like(sum_wd)
            sum_w2v = np.zeros_like(sum_wd)
            for k in range(len(self.epochs)):
                data, var = self.scaled(k, rows)
                w = self.weight(k, var, rows)
                if self.rejected[k] is not None:
                    w[self.rejected[k][rows]] = 0
                sum_wd += w * data
                sum_w += w
                sum_w2v += w * w * var
                count[rows] += w > 0
            ok = sum_w > 0
            safe = np.where(ok, sum_w, np.float32(1))
            coadd[rows] = np.where(ok, sum_wd / safe, np.float32(0))
            variance[rows] = np.where(ok, sum_w2v / (safe * safe), np.float32(0))

        jobs = [pool.submit(block, int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]
        for job in jobs:
            job.result()
        return coadd, variance, count

    def rejected_fraction(self) -> np.ndarray:
        out = np.zeros(len(self.epochs))
        for k, rej in enumerate(self.rejected):
            if rej is not None:
                out[k] = np.count_nonzero(rej) / max(np.count_nonzero(self.good[k]), 1)
        return out
