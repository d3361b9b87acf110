"""ZOGY image subtraction: the proper difference image and its corrected score.

Zackay, Ofek & Gal-Yam (2016, ApJ 830, 27; "ZOGY") derive, for two
background-dominated images ``N`` (new) and ``R`` (reference) of the same
field with PSFs ``P_n``, ``P_r``, flux normalisations ``F_n``, ``F_r`` and
white background noise ``sigma_n``, ``sigma_r``, the optimal statistic for
finding a point source that changed:

* the proper difference image ``D`` (eq. 13), whose noise is white, with its
  PSF ``P_D`` (eq. 14) and flux normalisation ``F_D`` (eq. 15);
* the score ``S = F_D D ⊗ P̄_D`` (eqs. 12 and 17), the log-likelihood ratio
  of a point source at each pixel, which can be written ``S = S_n - S_r``
  with ``S_n = k_n ⊗ N`` and ``S_r = k_r ⊗ R`` (kernels of eqs. 28-29);
* the corrected score ``S_corr = S / sqrt(V_Sn + V_Sr + V_ast)`` (eq. 25),
  where ``V_Sn = V_n ⊗ k_n²`` and ``V_Sr = V_r ⊗ k_r²`` (eqs. 26-27) carry
  the per-pixel variance of each image (background and the sources' own
  photon noise), and ``V_ast`` (eqs. 30-31) the registration noise,
  ``σ_x² (∂S_n/∂x)² + σ_y² (∂S_n/∂y)²`` and the same for ``S_r``.

Units. The new image sets the flux scale, ``F_n = 1``, and
``F_r = flux_ratio`` is the reference's counts per new-image count of the
same star. ZOGY's ``D`` has unit white noise and a transient of flux ``f``
(new-image ADU) appears in it as ``f F_D P_D``; the difference returned here
is ``D / F_D``, so the transient appears as ``f P_D`` and the white noise
per pixel is ``1 / F_D = sqrt(sigma_n² + sigma_r² / F_r²)`` ADU. ``S`` is
kept in the paper's units (in ``details``); ``S_corr`` has unit variance.

The flux ratio, when not given, is solved from the data in real space:
the reference seen through the new PSF, ``X = R ⊗ P_n``, and the new image
seen through the reference PSF, ``Y = N ⊗ P_r``, share the PSF
``P_n ⊗ P_r``, so ``X = (F_r / F_n) Y`` on every static source. Both are
summed in boxes as wide as the core of that PSF, which makes them local
fluxes whose ratio holds even where a PSF model is slightly off; a straight
line through the origin with errors in both variables (York et al. 2004)
is fitted over boxes bright in both (at least
``flux_ratio_snr`` times their background noise), rejecting outliers
(transients, variables, residual cosmic rays) by iterative sigma clipping.

Masks. Masked and non-finite pixels are set to zero in both images (they
are background subtracted) before any transform, so nothing rings through
the FFTs; the output mask grows them by a small square, and by the full
reach of the kernels where they border bright pixels (a saturated star's
core), and flags the image border, where the periodic transforms wrap
around (see :func:`astrid_assets.science.subtraction.output_mask`).

Numerics. All large transforms are real FFTs (``scipy.fft.rfft2`` and
``irfft2``) on an FFT-friendly shape; each input is transformed once, and
the float32 path stays in float32/complex64 throughout. The denominator of
eqs. 13-14 gets a tiny regulariser (``epsilon``) so that it never divides by
zero where both PSF transforms vanish. The kernels ``k_n`` and ``k_r`` of
the variance terms and ``P_D`` are compact, so they are computed in float64
on a small grid and only ``k_n²`` and ``k_r²`` are transformed at full size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.fft as sp_fft

from astrid_assets.science.psf import psf_to_image_shape
from astrid_assets.science.subtraction import (
    PreparedPair,
    SubtractionResult,
    box_sum,
    centred_stamp,
    fftconvolve,
    fit_scale_offset,
    grow_mask,
    output_mask,
    prepare_pair,
)

__all__ = ["ZogyConfig", "solve_flux_ratio", "zogy_subtract"]


@dataclass(frozen=True)
class ZogyConfig:
    """Parameters of :func:`zogy_subtract`.

    Attributes
    ----------
    astrometric_sigma : (float, float)
        Registration noise ``(sigma_x, sigma_y)`` between the two images, in
        pixels, for the astrometric term of ``S_corr`` (eqs. 30-31). Zero
        switches the term off.
    source_noise : bool
        Use the per-pixel variance maps (source photon noise) in ``S_corr``
        (eqs. 26-27). When False, or when no maps are given, the background
        variance ``sigma**2`` is used everywhere.
    flux_ratio : float or None
        ``F_r / F_n``; None solves it from the data (see the module notes).
    flux_ratio_snr : float
        Least S/N per pixel, in both PSF-matched images, of the pixels used
        to solve the flux ratio.
    dtype : {"float32", "float64"}
        Working precision; float32 uses complex64 spectra throughout.
    fft_workers : int or None
        Threads for ``scipy.fft``; None uses all cores.
    edge : int or None
        Width of the flagged image border, pixels; by default the sum of the
        two PSF stamps' half-sides, the reach of the kernels (FFT
        wrap-around and stars cut by the border live there).
    mask_grow : int or None
        Half-side of the square by which every bad pixel is grown in the
        output mask, pixels; by default a quarter of the sum of the stamps'
        half-sides.
    bright_grow : int or None
        Half-side of the growth of masked regions that border bright pixels
        (saturated stars), pixels; by default the sum of the stamps'
        half-sides. See :func:`astrid_assets.science.subtraction.grow_mask`.
    bright_snr : float
        A pixel next to a masked one is bright above this many sigma of its
        image's background.
    epsilon : float
        Regulariser of the denominator of eqs. 13-14, relative to its value
        at zero frequency, so that it never divides by zero where both PSFs
        vanish.
    """

    astrometric_sigma: tuple[float, float] = (0.0, 0.0)
    source_noise: bool = True
    flux_ratio: float | None = None
    flux_ratio_snr: float = 20.0
    dtype: str = "float32"
    fft_workers: int | None = None
    edge: int | None = None
    mask_grow: int | None = None
    bright_grow: int | None = None
    bright_snr: float = 10.0
    epsilon: float = 1e-12

    def __post_init__(self) -> None:
        ast = tuple(self.astrometric_sigma)
        if len(ast) != 2 or not all(np.isfinite(s) and s >= 0 for s in ast):
            raise ValueError(
                "astrometric_sigma must be two non-negative pixel scales (sigma_x, sigma_y), "
                f"got {self.astrometric_sigma!r}"
            )
        if self.flux_ratio is not None and not (
            np.isfinite(self.flux_ratio) and self.flux_ratio > 0
        ):
            raise ValueError(f"flux_ratio must be positive and finite, got {self.flux_ratio!r}")
        if not self.flux_ratio_snr > 0:
            raise ValueError(f"flux_ratio_snr must be positive, got {self.flux_ratio_snr!r}")
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
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon!r}")


class _Fft:
    """Real FFTs on one padded shape, counted."""

    def __init__(self, shape: tuple[int, int], workers: int | None):
        self.shape = shape
        self.fshape = (
            sp_fft.next_fast_len(shape[0], real=True),
            sp_fft.next_fast_len(shape[1], real=True),
        )
        self.workers = -1 if workers is None else workers
        self.forward = 0
        self.inverse = 0

    def rfft(self, image: np.ndarray) -> np.ndarray:
        self.forward += 1
        return sp_fft.rfft2(image, s=self.fshape, workers=self.workers)

    def irfft(self, spectrum: np.ndarray) -> np.ndarray:
        """Inverse transform, cropped to the image; ``spectrum`` is destroyed."""
        self.inverse += 1
        out = sp_fft.irfft2(spectrum, s=self.fshape, workers=self.workers, overwrite_x=True)
        if self.fshape != self.shape:
            out = np.ascontiguousarray(out[: self.shape[0], : self.shape[1]])
        return out

    def psf(self, stamp: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Transform of a centred stamp laid out with its centre at (0, 0)."""
        return self.rfft(psf_to_image_shape(stamp.astype(dtype), self.fshape))


def _abs2(z: np.ndarray) -> np.ndarray:
    out = np.abs(z)
    out *= out
    return out


def _small_grid_products(
    psf_new: np.ndarray,
    psf_ref: np.ndarray,
    flux_ratio: float,
    var_n: float,
    var_r: float,
    epsilon: float,
    fshape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real-space kernels ``k_n``, ``k_r`` and the PSF ``P_D``, as stamps.

    They are compact (each contains a PSF), so they are computed in float64
    on a grid a few PSF sides wide rather than at full size.
    """
    side = max(*psf_new.shape, *psf_ref.shape)
    grid = (
        min(fshape[0], sp_fft.next_fast_len(4 * side, real=True)),
        min(fshape[1], sp_fft.next_fast_len(4 * side, real=True)),
    )
    pn = sp_fft.rfft2(psf_to_image_shape(psf_new, grid))
    pr = sp_fft.rfft2(psf_to_image_shape(psf_ref, grid))
    fr = flux_ratio
    zero = var_n * fr**2 + var_r
    den2 = var_n * fr**2 * _abs2(pr) + var_r * _abs2(pn) + epsilon * zero  # eqs. 13-14
    f_d = fr / np.sqrt(zero)  # eq. 15
    k_n = sp_fft.irfft2(fr**2 * np.conj(pn) * _abs2(pr) / den2, s=grid)  # eq. 28
    k_r = sp_fft.irfft2(fr * np.conj(pr) * _abs2(pn) / den2, s=grid)  # eq. 29
    p_d = sp_fft.irfft2(fr * pr * pn / (f_d * np.sqrt(den2)), s=grid)  # eq. 14
    kside = (grid[0] - 1 + grid[0] % 2, grid[1] - 1 + grid[1] % 2)
    psf_side = (max(psf_new.shape[0], psf_ref.shape[0]), max(psf_new.shape[1], psf_ref.shape[1]))
    p_d = centred_stamp(p_d, psf_side)
    return centred_stamp(k_n, kside), centred_stamp(k_r, kside), p_d / p_d.sum()


def solve_flux_ratio(
    matched_ref: np.ndarray,
    matched_new: np.ndarray,
    invalid: np.ndarray,
    noise_ref: float | np.ndarray,
    noise_new: float | np.ndarray,
    *,
    min_snr: float = 20.0,
    clip: float = 4.0,
    min_pixels: int = 25,
    stride: int = 1,
    fit_offset: bool = False,
) -> dict[str, float]:
    """Fit ``matched_ref = flux_ratio * matched_new + offset`` over bright pixels.

    Parameters
    ----------
    matched_ref, matched_new : numpy.ndarray
        The two images brought to one PSF (for ZOGY, box sums of
        ``R ⊗ P_n`` and ``N ⊗ P_r``).
    invalid : numpy.ndarray of bool
        Pixels not to use.
    noise_ref, noise_new : float or numpy.ndarray
        Per-pixel standard deviation of each matched image, or one value.
    min_snr : float
        Pixels must exceed ``min_snr`` times the (median) noise in both
        images; when fewer than ``min_pixels`` do, the threshold is halved,
        twice at most.
    clip : float
        Rejection threshold on the normalised residuals, in units of their
        robust scatter (which is at least 1).
    min_pixels : int
        Least number of pixels for a fit.
    stride : int
        Use every ``stride``-th row and column (neighbouring box sums carry
        nearly the same information).
    fit_offset : bool
        Fit a constant as well. Off by default: both images are
        background-subtracted, and with only bright pixels in the fit a free
        offset trades against the slope (on a simulated cloudy night it
        pulled the ratio 11% low, with three times the scatter).

    Returns
    -------
    dict
        ``flux_ratio``, ``offset`` (a residual background of the reference
        side, not applied), ``error`` (formal, ignoring the correlation of
        neighbouring pixels, so a lower bound), ``n_pixels`` used,
        ``scatter`` (robust rms of the normalised residuals) and
        ``snr_threshold``.

    Raises
    ------
    ValueError
        Fewer than ``min_pixels`` bright pixels even at a quarter of
        ``min_snr``: pass the flux ratio explicitly.
    """
    nr = np.asarray(noise_ref, dtype=np.float64)
    nn = np.asarray(noise_new, dtype=np.float64)
    level_r = float(np.median(nr)) if nr.ndim else float(nr)
    level_n = float(np.median(nn)) if nn.ndim else float(nn)
    grid = (slice(None, None, stride), slice(None, None, stride))
    ref_s, new_s, bad_s = matched_ref[grid], matched_new[grid], invalid[grid]
    for threshold in (min_snr, min_snr / 2.0, min_snr / 4.0):
        good = (ref_s > threshold * level_r) & (new_s > threshold * level_n) & ~bad_s
        n_good = int(np.count_nonzero(good))
        if n_good >= min_pixels:
            break
    else:
        raise ValueError(
            f"cannot solve the flux ratio: only {n_good} pixels are brighter than "
            f"{threshold:g} sigma in both PSF-matched images; give flux_ratio explicitly"
        )
    var_r = nr[grid][good] ** 2 if nr.ndim else nr**2
    var_n = nn[grid][good] ** 2 if nn.ndim else nn**2
    fit = fit_scale_offset(
        ref_s[good], new_s[good], var_r, var_n, fit_offset=fit_offset, clip=clip, max_iter=30
    )
    return {
        "flux_ratio": fit["scale"],
        "offset": fit["offset"],
        "error": fit["scale_error"],
        "n_pixels": fit["n_used"],
        "scatter": fit["scatter"],
        "snr_threshold": float(threshold),
    }


def zogy_subtract(
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
    config: ZogyConfig = ZogyConfig(),
) -> SubtractionResult:
    """Subtract ``ref`` from ``new`` with ZOGY (Zackay, Ofek & Gal-Yam 2016).

    Parameters
    ----------
    new, ref : numpy.ndarray
        Background-subtracted images on the same pixel grid (any float
        dtype). Non-finite pixels are treated as masked.
    psf_new, psf_ref : numpy.ndarray
        PSF stamps of each image: odd sides, unit sum (renormalised),
        centred on the middle pixel; sizes may differ.
    sigma_new, sigma_ref : float
        Background noise rms of each image, ADU.
    var_new, var_ref : numpy.ndarray, optional
        Per-pixel variance of each image (background plus the sources'
        photon noise), ADU², for the source-noise term of ``S_corr``
        (eqs. 26-27). ``sigma**2`` everywhere when not given.
    mask : numpy.ndarray of bool, optional
        Bad or saturated pixels of either image. They are set to zero in
        both images before the transforms (the images are background
        subtracted) and flagged, grown by the PSF footprint, in the output.
    config : ZogyConfig, optional

    Returns
    -------
    SubtractionResult
        ``difference = D / F_D`` (new-image ADU), ``difference_psf = P_D``,
        ``difference_noise = 1 / F_D``, ``score = S_corr``. ``details``
        holds ``S`` (paper units), ``F_D``, ``score_background_sigma`` (the
        standard deviation of ``S`` from the background alone),
        ``astrometric_sigma``, the flux-ratio fit (or None), ``fft_shape``,
        the number of transforms and ``seconds``.

    Raises
    ------
    ValueError
        Invalid inputs (see :func:`astrid_assets.science.subtraction.prepare_pair`)
        or a flux ratio that cannot be solved.
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
    cdt = np.result_type(rdt, np.complex64)
    shape = pair.shape
    fft = _Fft(shape, config.fft_workers)
    reach = max(pair.psf_new.shape) // 2 + max(pair.psf_ref.shape) // 2
    invalid = output_mask(
        pair,
        reach,
        edge=config.edge,
        grow=config.mask_grow,
        bright_grow=config.bright_grow,
        bright_snr=config.bright_snr,
    )
    var_n, var_r = pair.sigma_new**2, pair.sigma_ref**2

    n_hat = fft.rfft(pair.new)
    r_hat = fft.rfft(pair.ref)
    pair.new = pair.ref = None  # type: ignore[assignment]
    pr_hat = fft.psf(pair.psf_ref, rdt)
    pn_hat = fft.psf(pair.psf_new, rdt)

    fit = None
    if config.flux_ratio is None:
        fit = _fit_flux_ratio(n_hat, r_hat, pn_hat, pr_hat, pair, invalid, fft, config)
        fr = fit["flux_ratio"]
    else:
        fr = float(config.flux_ratio)

    # With F_n = 1 and F_r = fr, the denominator of eqs. 13-14 is sqrt(den2),
    # den2 = sigma_n² F_r² |P_r|² + sigma_r² F_n² |P_n|² (+ epsilon).
    zero = var_n * fr**2 + var_r
    f_d = fr / np.sqrt(zero)  # eq. 15
    weight_n = _abs2(pr_hat)
    weight_r = _abs2(pn_hat)
    inv_den = weight_n * rdt.type(var_n * fr**2)
    inv_den += weight_r * rdt.type(var_r)
    inv_den += rdt.type(config.epsilon * zero)
    np.sqrt(inv_den, out=inv_den)
    np.reciprocal(inv_den, out=inv_den)

    # Filters a = F_r P_r / sqrt(den2) and b = F_n P_n / sqrt(den2) (F_r applied below),
    # and the real weights that turn them into the kernels of eqs. 28-29:
    # k_n = F_n F_r² conj(P_n) |P_r|² / den2 = conj(b) F_r² |P_r|² / sqrt(den2),
    # k_r = F_r F_n² conj(P_r) |P_n|² / den2 = conj(a / F_r) F_r |P_n|² / sqrt(den2).
    pr_hat *= inv_den
    pn_hat *= inv_den
    weight_n *= inv_den
    weight_n *= rdt.type(fr**2)
    weight_r *= inv_den
    weight_r *= rdt.type(fr)
    del inv_den

    # eq. 13 divided by F_D: D_hat / F_D = (F_r P_r N_hat - F_n P_n R_hat) / (sqrt(den2) F_D).
    work = np.multiply(pr_hat, n_hat)
    work *= cdt.type(fr / f_d)
    product = np.multiply(pn_hat, r_hat)
    product *= cdt.type(1.0 / f_d)
    work -= product
    del product
    difference = fft.irfft(work)

    # S_n = k_n ⊗ N and S_r = k_r ⊗ R, in place of N_hat and R_hat.
    np.conjugate(pn_hat, out=pn_hat)
    n_hat *= pn_hat
    n_hat *= weight_n
    del pn_hat, weight_n
    np.conjugate(pr_hat, out=pr_hat)
    r_hat *= pr_hat
    r_hat *= weight_r
    del pr_hat, weight_r

    # eqs. 12 and 17: S = F_D D ⊗ P̄_D = S_n - S_r.
    np.subtract(n_hat, r_hat, out=work)
    score_s = fft.irfft(work)

    # eqs. 30-31: registration noise from the gradients of S_n and S_r.
    sx, sy = (float(s) for s in config.astrometric_sigma)
    v_ast = None
    if sx > 0 or sy > 0:
        v_ast = np.zeros(shape, dtype=rdt)
        ny, nx = fft.fshape
        kx = 2.0 * np.pi * sp_fft.rfftfreq(nx)
        ky = 2.0 * np.pi * sp_fft.fftfreq(ny)
        # The Nyquist terms of a derivative are not real; drop them.
        if nx % 2 == 0:
            kx[-1] = 0.0
        if ny % 2 == 0:
            ky[ny // 2] = 0.0
        # sigma * d/dx is multiplication by i sigma k_x; its square is one term of eq. 30-31.
        derivatives = [
            (1j * sx * kx)[None, :].astype(cdt) if sx > 0 else None,
            (1j * sy * ky)[:, None].astype(cdt) if sy > 0 else None,
        ]
        for spectrum in (n_hat, r_hat):
            for ik in derivatives:
                if ik is None:
                    continue
                np.multiply(spectrum, ik, out=work)
                grad = fft.irfft(work)
                np.multiply(grad, grad, out=grad)
                v_ast += grad
                del grad
    del n_hat, r_hat, work

    # eqs. 26-27: V_Sn = V_n ⊗ k_n², V_Sr = V_r ⊗ k_r².
    k_n, k_r, p_d = _small_grid_products(
        pair.psf_new, pair.psf_ref, fr, var_n, var_r, config.epsilon, fft.fshape
    )
    background = var_n * float(np.sum(k_n**2)) + var_r * float(np.sum(k_r**2))
    constant = 0.0
    v_hat = None
    for which, kernel, sig2 in (("new", k_n, var_n), ("ref", k_r, var_r)):
        var_map = pair.variance(which) if config.source_noise else None
        if var_map is None:
            constant += sig2 * float(np.sum(kernel**2))
            continue
        spectrum = fft.rfft(var_map)
        del var_map
        spectrum *= fft.psf(kernel * kernel, rdt)
        if v_hat is None:
            v_hat = spectrum
        else:
            v_hat += spectrum
        del spectrum
    pair.var_new = pair.var_ref = None

    # eq. 25: S_corr = S / sqrt(V_Sn + V_Sr + V_ast).
    if v_hat is not None:
        variance = fft.irfft(v_hat)
        del v_hat
        variance += rdt.type(constant)
        # Rounding in the transform must not leave a variance near zero.
        np.maximum(variance, rdt.type(1e-3 * background), out=variance)
        if v_ast is not None:
            variance += v_ast
            del v_ast
    elif v_ast is not None:
        variance = v_ast
        variance += rdt.type(constant)
    else:
        variance = None
    if variance is None:
        score = score_s * rdt.type(1.0 / np.sqrt(constant))
    else:
        np.sqrt(variance, out=variance)
        score = np.divide(score_s, variance, out=variance)

    zero_val = rdt.type(0)
    for image in (difference, score_s, score):
        np.copyto(image, zero_val, where=invalid)

    details = {
        "F_D": float(f_d),
        "S": score_s,
        "score_background_sigma": float(np.sqrt(background)),
        "sigma_new": pair.sigma_new,
        "sigma_ref": pair.sigma_ref,
        "astrometric_sigma": (sx, sy),
        "source_noise": bool(config.source_noise),
        "flux_ratio_fit": fit,
        "fft_shape": fft.fshape,
        "n_fft": {"forward": fft.forward, "inverse": fft.inverse},
        "dtype": config.dtype,
        "seconds": time.perf_counter() - t_start,
    }
    return SubtractionResult(
        method="zogy",
        difference=difference,
        difference_psf=p_d,
        difference_noise=float(1.0 / f_d),
        score=score,
        mask=invalid,
        flux_ratio=float(fr),
        details=details,
    )


def _fit_flux_ratio(
    n_hat: np.ndarray,
    r_hat: np.ndarray,
    pn_hat: np.ndarray,
    pr_hat: np.ndarray,
    pair: PreparedPair,
    invalid: np.ndarray,
    fft: _Fft,
    config: ZogyConfig,
) -> dict[str, float]:
    """``F_r / F_n`` from ``R ⊗ P_n = (F_r / F_n) N ⊗ P_r`` (see the module notes).

    Both sides are summed in a square box as wide as the core of
    ``P_n ⊗ P_r`` before the fit (see :func:`box_sum`).
    """
    width = (max(pair.psf_new.shape) // 2 + max(pair.psf_ref.shape) // 2) | 1
    # Neighbouring box sums carry nearly the same information: keep every
    # stride-th one, and let no full-size intermediate outlive its line.
    stride = max(1, width // 4)
    grid = (slice(None, None, stride), slice(None, None, stride))
    matched_ref = box_sum(fft.irfft(r_hat * pn_hat), width)[grid].copy()
    matched_new = box_sum(fft.irfft(n_hat * pr_hat), width)[grid].copy()
    box = np.ones((width, width))
    # Noise of each box sum: the image's variance seen through the other
    # image's PSF and the box.
    norm_n = float(np.sqrt(np.sum(fftconvolve(pair.psf_new, box) ** 2)))
    norm_r = float(np.sqrt(np.sum(fftconvolve(pair.psf_ref, box) ** 2)))
    noise_ref: float | np.ndarray = pair.sigma_ref * norm_n
    noise_new: float | np.ndarray = pair.sigma_new * norm_r
    if pair.var_ref is not None:
        noise_ref = np.sqrt(pair.variance("ref")[grid]) * norm_n
    if pair.var_new is not None:
        noise_new = np.sqrt(pair.variance("new")[grid]) * norm_r
    return solve_flux_ratio(
        matched_ref,
        matched_new,
        grow_mask(invalid, width // 2, 0)[grid],
        noise_ref,
        noise_new,
        min_snr=config.flux_ratio_snr,
    )
