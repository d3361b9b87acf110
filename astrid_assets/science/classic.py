"""Classic PSF-matched image subtraction, the baseline for ZOGY.

The image with the narrower PSF is convolved with a small kernel that turns
its PSF into the broader one; the matched pair is then related by a scale
(the flux ratio) and a constant offset, fitted over the image, and their
difference is the difference image. This is the Alard & Lupton (1998, ApJ
503, 325) idea with one spatially constant kernel, here derived from the
two PSF models rather than from the images.

Kernel. ``K`` is the least-squares solution of ``K ⊗ P_narrow = P_broad``
over all pixels of the convolution, with a light ridge term for stability,
on a square of ``kernel_size`` pixels, normalised to unit sum. When the
broad PSF is not broader in every direction the match is approximate;
``details["kernel_residual"]`` reports its relative error.

Scale and offset. With ``y`` the new image (matched when it was the sharper
one) and ``x`` the reference (matched otherwise), ``y = s x + c`` is fitted
over the whole image by the errors-in-both-variables straight line of York
et al. (2004, Am. J. Phys. 72, 367), iterating with sigma clipping so that
transients and variables do not pull it. The fit runs on box sums of
``y`` and ``x`` (boxes as wide as the broader PSF's stamp), i.e. on local
fluxes, so that a PSF model that is slightly off does not bias the scale
through the profile mismatch of single pixels. Then ``D = y - s x - c`` is
in the new image's counts and ``F_r / F_n = 1 / s``.

Score. The matched filter of ``D`` with its PSF ``P_D`` (the broader PSF)
divided by its standard deviation. The variance accounts for the
correlation the matching kernel puts into the convolved image's noise: the
filter applied to that image is ``K ⊗ P̄_D``, so its variance map is
convolved with ``(K ⊗ P̄_D)²``, the other one's with ``P̄_D²``. Unlike ZOGY's
``D``, the noise of the classic difference is not white.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.fft as sp_fft

from astrid_assets.science.subtraction import (
    PreparedPair,
    SubtractionResult,
    box_sum,
    fftconvolve,
    fit_scale_offset,
    grow_mask,
    output_mask,
    prepare_pair,
)

__all__ = ["ClassicConfig", "classic_subtract", "matching_kernel"]


@dataclass(frozen=True)
class ClassicConfig:
    """Parameters of :func:`classic_subtract`.

    Attributes
    ----------
    kernel_size : int or None
        Odd side of the matching kernel, pixels; by default the broader
        PSF's stamp side.
    kernel_regularization : float
        Ridge term of the kernel fit, relative to the mean diagonal of the
        normal matrix.
    flux_ratio : float or None
        ``F_r / F_n``; None fits it (with the offset) from the images.
    fit_offset : bool
        Fit a constant background offset between the matched images.
    clip_sigma : float
        Pixels whose normalised residual exceeds this many times the robust
        scatter are left out of the fit.
    max_iter : int
        Most iterations of the scale and offset fit (each one a York step
        and a clipping pass).
    dtype : {"float32", "float64"}
        Working precision.
    fft_workers : int or None
        Threads for ``scipy.fft``; None uses all cores.
    edge, mask_grow, bright_grow : int or None
        Border width and bad-pixel growths, pixels; by default from the
        reach of the kernels (see
        :func:`astrid_assets.science.subtraction.output_mask`).
    bright_snr : float
        Brightness (sigma) of a neighbour that makes a masked region grow
        by ``bright_grow``.
    """

    kernel_size: int | None = None
    kernel_regularization: float = 1e-6
    flux_ratio: float | None = None
    fit_offset: bool = True
    clip_sigma: float = 5.0
    max_iter: int = 20
    dtype: str = "float32"
    fft_workers: int | None = None
    edge: int | None = None
    mask_grow: int | None = None
    bright_grow: int | None = None
    bright_snr: float = 10.0

    def __post_init__(self) -> None:
        if self.kernel_size is not None and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size!r}")
        if not self.kernel_regularization >= 0:
            raise ValueError(
                f"kernel_regularization must be >= 0, got {self.kernel_regularization!r}"
            )
        if self.flux_ratio is not None and not (
            np.isfinite(self.flux_ratio) and self.flux_ratio > 0
        ):
            raise ValueError(f"flux_ratio must be positive and finite, got {self.flux_ratio!r}")
        if not self.clip_sigma > 0:
            raise ValueError(f"clip_sigma must be positive, got {self.clip_sigma!r}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.fft_workers is not None and self.fft_workers < 1:
            raise ValueError(f"fft_workers must be >= 1 or None, got {self.fft_workers!r}")
        for name in ("edge", "mask_grow", "bright_grow"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 pixels, got {value!r}")
        if not self.bright_snr > 0:
            raise ValueError(f"bright_snr must be positive, got {self.bright_snr!r}")


def matching_kernel(
    narrow: np.ndarray,
    broad: np.ndarray,
    size: int,
    *,
    regularization: float = 1e-6,
) -> tuple[np.ndarray, float]:
    """The kernel ``K`` (``size`` x ``size``) that best turns ``narrow`` into ``broad``.

    Least squares over every pixel of the full convolution:
    ``min |K ⊗ narrow - broad|² + lambda |K|²`` with ``lambda`` equal to
    ``regularization`` times the mean diagonal of the normal matrix.

    Parameters
    ----------
    narrow, broad : numpy.ndarray
        Odd-sided, centred PSF stamps.
    size : int
        Odd side of the kernel.
    regularization : float
        Relative ridge term.

    Returns
    -------
    kernel : numpy.ndarray
        ``(size, size)`` float64 kernel with unit sum, centred.
    residual : float
        ``|K ⊗ narrow - broad| / |broad|`` of the normalised kernel.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    narrow = np.asarray(narrow, dtype=np.float64)
    broad = np.asarray(broad, dtype=np.float64)
    ny = narrow.shape[0] + size - 1
    nx = narrow.shape[1] + size - 1
    target = np.zeros((max(ny, broad.shape[0]), max(nx, broad.shape[1])))
    oy = (target.shape[0] - broad.shape[0]) // 2
    ox = (target.shape[1] - broad.shape[1]) // 2
    target[oy : oy + broad.shape[0], ox : ox + broad.shape[1]] = broad
    # The convolution's full support, centred in the target (the broad PSF
    # may reach beyond it; those pixels only add to the residual).
    cy = (target.shape[0] - ny) // 2
    cx = (target.shape[1] - nx) // 2
    design = np.zeros((ny, nx, size, size))
    for u in range(size):
        for v in range(size):
            design[u : u + narrow.shape[0], v : v + narrow.shape[1], u, v] = narrow
    a = design.reshape(ny * nx, size * size)
    t = target[cy : cy + ny, cx : cx + nx].ravel()
    normal = a.T @ a
    normal[np.diag_indices_from(normal)] += regularization * np.trace(normal) / normal.shape[0]
    kernel = np.linalg.solve(normal, a.T @ t).reshape(size, size)
    kernel /= kernel.sum()
    model = np.zeros_like(target)
    model[cy : cy + ny, cx : cx + nx] = (a @ kernel.ravel()).reshape(ny, nx)
    residual = float(np.linalg.norm(model - target) / np.linalg.norm(target))
    return kernel, residual


def _fit_box_fluxes(
    y: np.ndarray,
    x: np.ndarray,
    pair: PreparedPair,
    invalid: np.ndarray,
    width: int,
    config: ClassicConfig,
) -> dict[str, float]:
    """Scale and per-pixel offset of ``y = scale x + offset`` from box sums.

    The box sums are local fluxes (see :func:`box_sum`); their variances are
    the box sums of the input variance maps, since a unit-sum kernel moves
    noise within a box without changing its total much. Boxes overlap, so
    every ``width // 4``-th one in each direction is enough.
    """
    stride = max(1, width // 4)
    grid = (slice(None, None, stride), slice(None, None, stride))
    use = ~grow_mask(invalid, width // 2, 0)[grid]
    if np.count_nonzero(use) < 3:
        raise ValueError("too few unmasked pixels away from the border to fit the scale and offset")
    area = width * width

    def box_variance(which: str, sigma: float) -> float | np.ndarray:
        var = pair.variance(which)
        if var is None:
            return sigma**2 * area
        return box_sum(var, width)[grid][use]

    fit = fit_scale_offset(
        box_sum(y, width)[grid][use],
        box_sum(x, width)[grid][use],
        box_variance("new", pair.sigma_new),
        box_variance("ref", pair.sigma_ref),
        scale=None if config.flux_ratio is None else 1.0 / float(config.flux_ratio),
        fit_offset=config.fit_offset,
        clip=config.clip_sigma,
        max_iter=config.max_iter,
    )
    fit["offset"] /= area
    return fit


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded convolution, output on the image grid, image dtype."""
    out = fftconvolve(image, kernel.astype(image.dtype), mode="same")
    return out.astype(image.dtype, copy=False)


def classic_subtract(
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
    config: ClassicConfig = ClassicConfig(),
) -> SubtractionResult:
    """Subtract ``ref`` from ``new`` by PSF matching and a scaled difference.

    Parameters
    ----------
    new, ref : numpy.ndarray
        Background-subtracted images on the same pixel grid. Non-finite
        pixels are treated as masked.
    psf_new, psf_ref : numpy.ndarray
        Odd-sided, centred PSF stamps (renormalised to unit sum).
    sigma_new, sigma_ref : float
        Background rms of each image, ADU.
    var_new, var_ref : numpy.ndarray, optional
        Per-pixel variance maps, ADU²; ``sigma**2`` everywhere when not
        given. They weight the fit and set the score's variance.
    mask : numpy.ndarray of bool, optional
        Bad pixels of either image: zero in both before any convolution,
        flagged (grown) in the output.
    config : ClassicConfig, optional

    Returns
    -------
    SubtractionResult
        ``difference = y - s x - c`` in new-image ADU; ``difference_psf`` the
        broader PSF; ``difference_noise`` its background rms per pixel;
        ``score`` the matched-filter S/N. ``details`` holds ``scale``,
        ``offset``, ``kernel``, ``kernel_residual``, ``matched`` (which
        image was convolved), the fit statistics and ``seconds``.
    """
    t_start = time.perf_counter()
    pair = prepare_pair(
        new,
        ref,
        psf_new,
        psf_ref,
        sigma_new=sigma_new,
        sigma_ref=sigma_ref,
        var_new=var_new,
        var_ref=var_ref,
        mask=mask,
        dtype=config.dtype,
    )
    rdt = np.dtype(config.dtype)
    # The PSF with the smaller sum of squares covers more pixels: the broader.
    new_is_broad = float(np.sum(pair.psf_new**2)) <= float(np.sum(pair.psf_ref**2))
    narrow, broad = (pair.psf_ref, pair.psf_new) if new_is_broad else (pair.psf_new, pair.psf_ref)
    size = config.kernel_size or max(broad.shape) | 1
    kernel, kernel_residual = matching_kernel(
        narrow, broad, size, regularization=config.kernel_regularization
    )
    psf_d = broad
    filt = psf_d[::-1, ::-1]
    filt_matched = fftconvolve(kernel, filt, mode="full")
    reach = size // 2 + max(psf_d.shape) // 2
    invalid = output_mask(
        pair,
        reach,
        edge=config.edge,
        grow=config.mask_grow,
        bright_grow=config.bright_grow,
        bright_snr=config.bright_snr,
    )
    valid = ~invalid
    if not valid.any():
        raise ValueError("no valid pixels left after masking and the border; images too small?")

    var_n, var_r = pair.sigma_new**2, pair.sigma_ref**2
    k2 = float(np.sum(kernel**2))
    workers = -1 if config.fft_workers is None else config.fft_workers
    with sp_fft.set_workers(workers):
        if new_is_broad:
            y, x = pair.new, _convolve(pair.ref, kernel)
            vy_bg, vx_bg = var_n, var_r * k2
        else:
            y, x = _convolve(pair.new, kernel), pair.ref
            vy_bg, vx_bg = var_n * k2, var_r
        fit = _fit_box_fluxes(y, x, pair, invalid, max(psf_d.shape) | 1, config)
        s, c = fit["scale"], fit["offset"]
        difference = y - rdt.type(s) * x
        difference -= rdt.type(c)
        del x, y
        np.copyto(difference, rdt.type(0), where=invalid)

        # Variance of the matched filter: each input's variance through the
        # filter that reaches it (see the module notes).
        filt_new, filt_ref = (filt, filt_matched) if new_is_broad else (filt_matched, filt)
        numerator = _convolve(difference, filt)
        terms = []
        constant = 0.0
        for which, sig2, weight, f in (
            ("new", var_n, 1.0, filt_new),
            ("ref", var_r, s * s, filt_ref),
        ):
            var_map = pair.variance(which)
            f2 = f * f
            if var_map is None:
                constant += weight * sig2 * float(np.sum(f2))
            else:
                term = _convolve(var_map, f2)
                term *= rdt.type(weight)
                terms.append(term)
    if terms:
        variance = terms[0]
        for term in terms[1:]:
            variance += term
        variance += rdt.type(constant)
        background = var_n * float(np.sum(filt_new**2)) + s * s * var_r * float(np.sum(filt_ref**2))
        np.maximum(variance, rdt.type(1e-3 * background), out=variance)
        np.sqrt(variance, out=variance)
        score = np.divide(numerator, variance, out=variance)
    else:
        score = numerator * rdt.type(1.0 / np.sqrt(constant))
    np.copyto(score, rdt.type(0), where=invalid)

    details = {
        "scale": float(s),
        "offset": float(c),
        "scale_error": fit["scale_error"],
        "fit_pixels": fit["n_used"],
        "fit_scatter": fit["scatter"],
        "kernel": kernel,
        "kernel_residual": kernel_residual,
        "matched": "ref" if new_is_broad else "new",
        "sigma_new": pair.sigma_new,
        "sigma_ref": pair.sigma_ref,
        "dtype": config.dtype,
        "seconds": time.perf_counter() - t_start,
    }
    return SubtractionResult(
        method="classic",
        difference=difference,
        difference_psf=psf_d.copy(),
        difference_noise=float(np.sqrt(vy_bg + s * s * vx_bg)),
        score=score,
        mask=invalid,
        flux_ratio=float(1.0 / s),
        details=details,
    )
