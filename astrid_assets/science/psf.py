"""Point-spread functions: analytic models, helpers to place them, and the
PSF measured from an image.

The simulator draws stars from :func:`moffat_psf`; the subtraction code needs
PSFs as small centred stamps (odd size, peak in the middle pixel, unit sum)
and, for Fourier work, embedded in a full-size array with the centre on
pixel ``(0, 0)`` (:func:`psf_to_image_shape`). :func:`measure_psf` fits one
elliptical Moffat profile (Moffat 1969, A&A 3, 455) jointly to the isolated,
unsaturated, bright point sources of an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from astrid_assets.science.background import sep_ready
from astrid_assets.science.sources import extract_sources

__all__ = [
    "InsufficientStarsError",
    "PsfFitConfig",
    "PsfModel",
    "fwhm_to_moffat_alpha",
    "measure_psf",
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


class InsufficientStarsError(ValueError):
    """Raised when an image has too few usable stars to measure its PSF."""


# SEP flag bits that disqualify a PSF star: blended (1), touching the image
# edge (2), aperture truncated (16), masked pixels in the aperture (32, 64),
# non-positive flux (128), and saturated (256, from ``sources``).
_REJECT_FLAGS = 1 | 2 | 16 | 32 | 64 | 128 | 256


@dataclass(frozen=True)
class PsfFitConfig:
    """Parameters of :func:`measure_psf`.

    Attributes
    ----------
    max_stars : int
        Fit at most this many stars, the highest S/N first.
    min_stars : int
        Fewer usable stars than this is an error (or the fallback).
    min_snr : float
        Minimum ``flux / flux_err`` of a PSF star.
    size_tolerance : float
        Keep stars whose half-light radius is within this fraction of the
        stellar locus (the most common size among bright sources); rejects
        galaxies (larger) and cosmic rays or hot pixels (smaller).
    max_ellipticity : float
        Reject sources more elongated than this (and more than 0.2 from the
        median ellipticity of the locus).
    fit_radius : int or None
        Half-size of the fitting stamps in pixels; by default about twice the
        FWHM, between 5 and 30.
    detect_threshold : float
        Detection threshold (sigma) used when no ``sources`` are given.
    robust_scale : float
        Residuals beyond this many sigma are down-weighted (soft L1 loss), so
        that a faint neighbour or an unmasked cosmic ray does not pull the
        shape.
    fallback_fwhm : float or None
        If set, an image with too few stars gets a round Moffat PSF of this
        FWHM (``beta`` 3, ``n_stars`` 0, ``fallback`` True) instead of an
        :class:`InsufficientStarsError`.
    """

    max_stars: int = 50
    min_stars: int = 3
    min_snr: float = 30.0
    size_tolerance: float = 0.25
    max_ellipticity: float = 0.5
    fit_radius: int | None = None
    detect_threshold: float = 5.0
    robust_scale: float = 3.0
    fallback_fwhm: float | None = None

    def __post_init__(self) -> None:
        if self.max_stars < 1 or self.min_stars < 1:
            raise ValueError(
                f"max_stars and min_stars must be >= 1, got {self.max_stars}, {self.min_stars}"
            )
        if self.min_stars > self.max_stars:
            raise ValueError(f"min_stars ({self.min_stars}) exceeds max_stars ({self.max_stars})")
        if not self.min_snr > 0:
            raise ValueError(f"min_snr must be positive, got {self.min_snr!r}")
        if not 0 < self.size_tolerance < 1:
            raise ValueError(f"size_tolerance must be in (0, 1), got {self.size_tolerance!r}")
        if not 0 < self.max_ellipticity <= 1:
            raise ValueError(f"max_ellipticity must be in (0, 1], got {self.max_ellipticity!r}")
        if self.fit_radius is not None and self.fit_radius < 2:
            raise ValueError(f"fit_radius must be >= 2 pixels, got {self.fit_radius!r}")
        if self.fallback_fwhm is not None and not self.fallback_fwhm > 0:
            raise ValueError(f"fallback_fwhm must be positive, got {self.fallback_fwhm!r}")


@dataclass
class PsfModel:
    """A PSF measured from an image (or the documented fallback).

    Attributes
    ----------
    stamp : numpy.ndarray
        Odd-sized, unit-sum float64 stamp centred on its middle pixel.
    fwhm : float
        FWHM along the major axis, pixels (the ``fwhm`` of :func:`moffat_psf`).
    ellipticity : float
        ``1 - b/a``.
    theta : float
        Major-axis angle, radians counter-clockwise from +x, in (-pi/2, pi/2].
    beta : float
        Moffat power-law index.
    n_stars : int
        Number of stars in the final fit (0 for the fallback).
    fallback : bool
        True when the image had too few stars and ``fallback_fwhm`` was used.
    residual_rms : float
        RMS of the fit residuals in units of the pixel noise (about 1 when
        the model describes the stars to the noise; NaN for the fallback).
    """

    stamp: np.ndarray
    fwhm: float
    ellipticity: float
    theta: float
    beta: float
    n_stars: int
    fallback: bool = False
    residual_rms: float = float("nan")

    @property
    def fwhm_mean(self) -> float:
        """Geometric mean of the major- and minor-axis FWHM, pixels."""
        return float(self.fwhm * np.sqrt(1.0 - self.ellipticity))

    def render(self, size: int | None = None, offset: tuple[float, float] = (0.0, 0.0)):
        """The model as a unit-sum stamp of odd ``size`` (default: the stamp's)
        centred on the middle pixel plus ``offset = (dx, dy)``."""
        return moffat_psf(
            self.fwhm,
            beta=self.beta,
            ellipticity=self.ellipticity,
            theta=self.theta,
            size=self.stamp.shape[0] if size is None else size,
            offset=offset,
        )


def _fallback_model(fwhm: float, size: int | None) -> PsfModel:
    beta = 3.0
    stamp = moffat_psf(fwhm, beta=beta, size=size)
    return PsfModel(stamp, float(fwhm), 0.0, 0.0, beta, 0, fallback=True)


def _column(sources: Table, name: str) -> np.ndarray | None:
    if name not in sources.colnames:
        return None
    return np.asarray(sources[name], dtype=np.float64)


def _stellar_locus(size: np.ndarray, tolerance: float) -> float:
    """The most common size: centre of the densest log-size window."""
    ls = np.sort(np.log(size))
    half = np.log1p(tolerance) / 2.0
    counts = np.searchsorted(ls, ls + half, side="right") - np.searchsorted(ls, ls - half)
    best = np.flatnonzero(counts == counts.max())
    # Among equally dense windows take the smallest: stars, not galaxies.
    centre = best[0]
    inside = ls[np.abs(ls - ls[centre]) <= half]
    return float(np.exp(np.median(inside)))


def _select_stars(
    sources: Table,
    shape: tuple[int, int],
    config: PsfFitConfig,
) -> tuple[np.ndarray, float]:
    """Indices of PSF stars (best first) and the locus half-light radius."""
    for name in ("x", "y", "flux", "flux_err"):
        if name not in sources.colnames:
            raise ValueError(f"sources table lacks the {name!r} column")
    x = _column(sources, "x")
    y = _column(sources, "y")
    flux = _column(sources, "flux")
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / _column(sources, "flux_err")
    size = _column(sources, "flux_radius")
    if size is None:
        size = _column(sources, "fwhm")
        size = None if size is None else size / 2.0
    if size is None:
        raise ValueError("sources table lacks a 'flux_radius' (or 'fwhm') column")
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(snr) & (snr >= config.min_snr)
    ok &= (flux > 0) & np.isfinite(size) & (size > 0)
    if "flag" in sources.colnames:
        ok &= (np.asarray(sources["flag"]).astype(np.int64) & _REJECT_FLAGS) == 0
    if "saturated" in sources.colnames:
        ok &= ~np.asarray(sources["saturated"], dtype=bool)
    ny, nx = shape
    ok &= (x > 2) & (x < nx - 3) & (y > 2) & (y < ny - 3)
    if ok.sum() < 1:
        return np.zeros(0, dtype=np.int64), float("nan")
    locus = _stellar_locus(size[ok], config.size_tolerance)
    ok &= np.abs(np.log(size / locus)) <= np.log1p(config.size_tolerance)

    ell = _column(sources, "ellipticity")
    if ell is None and "a" in sources.colnames and "b" in sources.colnames:
        ell = 1.0 - _column(sources, "b") / _column(sources, "a")
    if ell is not None and ok.any():
        e_med = float(np.median(ell[ok]))
        ok &= (ell <= config.max_ellipticity) & (np.abs(ell - e_med) <= 0.2)

    half = _fit_half_size(locus, config)
    ix = np.rint(np.where(np.isfinite(x), x, -1)).astype(np.int64)
    iy = np.rint(np.where(np.isfinite(y), y, -1)).astype(np.int64)
    ok &= (ix >= half) & (ix < nx - half) & (iy >= half) & (iy < ny - half)

    candidates = np.flatnonzero(ok)
    if candidates.size == 0:
        return candidates, locus
    # Isolation: no neighbour with more than 1% of the star's flux whose
    # light reaches the fitting stamp, and nothing at all inside its core.
    finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    tree = cKDTree(np.column_stack([x[finite], y[finite]]))
    neighbours = tree.query_ball_point(
        np.column_stack([x[candidates], y[candidates]]), r=1.5 * half
    )
    nflux = np.where(np.isfinite(flux), flux, np.inf)
    isolated = np.ones(candidates.size, dtype=bool)
    for k, (i, near) in enumerate(zip(candidates, neighbours, strict=True)):
        others = finite[np.asarray(near, dtype=np.int64)]
        others = others[others != i]
        if others.size == 0:
            continue
        dist = np.hypot(x[others] - x[i], y[others] - y[i])
        if np.any(nflux[others] > 0.01 * flux[i]) or np.any(dist < 0.5 * half):
            isolated[k] = False
    candidates = candidates[isolated]
    order = np.argsort(-snr[candidates], kind="stable")
    return candidates[order[: config.max_stars]], locus


def _fit_half_size(locus_radius: float, config: PsfFitConfig) -> int:
    if config.fit_radius is not None:
        return int(config.fit_radius)
    # Half-light radius -> rough FWHM (between a Gaussian's 2 r and a
    # Moffat's ~1.6 r), and about two FWHM of stamp on each side.
    fwhm = 1.8 * locus_radius
    return int(np.clip(np.ceil(2.0 * fwhm), 5, 30))


class _JointMoffat:
    """One Moffat shape fitted to many stars: residuals and Jacobian blocks.

    The shape parameters are ``(c11, c22, c12, beta)`` and each star has
    ``(A, x0, y0, sky)``; the model is ``A (1 + c11 u^2 + c22 v^2 +
    c12 u v)^-beta + sky``, averaged over ``oversample^2`` points in each
    pixel, with ``(u, v)`` the offset from the star's centre ``(x0, y0)``
    measured from its stamp's middle pixel.
    """

    def __init__(self, data: np.ndarray, weight: np.ndarray, half: int, oversample: int):
        self.data = data
        self.sqrtw = np.sqrt(weight)
        grid = np.arange(-half, half + 1, dtype=np.float64)
        gy, gx = np.meshgrid(grid, grid, indexing="ij")
        sub = (np.arange(oversample) + 0.5) / oversample - 0.5
        sy, sx = np.meshgrid(sub, sub, indexing="ij")
        self.px = gx.reshape(-1, 1) + sx.reshape(1, -1)
        self.py = gy.reshape(-1, 1) + sy.reshape(1, -1)

    def _profile(self, shape: np.ndarray, star: np.ndarray):
        c11, c22, c12, beta = shape
        u = self.px[None] - star[:, 1, None, None]
        v = self.py[None] - star[:, 2, None, None]
        q1 = 1.0 + c11 * u * u + c22 * v * v + c12 * u * v
        log_q1 = np.log(q1)
        f = np.exp(-beta * log_q1)
        return u, v, q1, log_q1, f

    def residuals(self, shape: np.ndarray, star: np.ndarray) -> np.ndarray:
        """Weighted residuals ``(model - data) / sigma``, shape (stars, pixels)."""
        f = self._profile(shape, star)[-1]
        model = star[:, 0, None] * f.mean(axis=-1) + star[:, 3, None]
        return self.sqrtw * (model - self.data)

    def jacobian(self, shape: np.ndarray, star: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Derivatives of the weighted residuals: shape block and per-star block,
        each of shape (stars, pixels, 4)."""
        c11, c22, c12, beta = shape
        u, v, q1, log_q1, f = self._profile(shape, star)
        amp = star[:, 0, None]
        g = -beta * f / q1
        js = np.empty((*self.data.shape, 4))
        js[..., 0] = amp * (g * u * u).mean(axis=-1)
        js[..., 1] = amp * (g * v * v).mean(axis=-1)
        js[..., 2] = amp * (g * u * v).mean(axis=-1)
        js[..., 3] = amp * (-log_q1 * f).mean(axis=-1)
        jp = np.empty((*self.data.shape, 4))
        jp[..., 0] = f.mean(axis=-1)
        jp[..., 1] = amp * (-g * (2.0 * c11 * u + c12 * v)).mean(axis=-1)
        jp[..., 2] = amp * (-g * (2.0 * c22 * v + c12 * u)).mean(axis=-1)
        jp[..., 3] = 1.0
        js *= self.sqrtw[..., None]
        jp *= self.sqrtw[..., None]
        return js, jp


def _robust_cost(r: np.ndarray, scale: float) -> float:
    """Soft-L1 cost: quadratic for |r| << scale, linear beyond."""
    return float(np.sum(2.0 * scale**2 * (np.sqrt(1.0 + (r / scale) ** 2) - 1.0)))


def _project(shape: np.ndarray, star: np.ndarray, centre0: np.ndarray) -> None:
    """Keep parameters physical: positive-definite ellipse, beta in [1.05, 30],
    centres within 1.5 pixels of where they started."""
    shape[0] = max(shape[0], 1e-6)
    shape[1] = max(shape[1], 1e-6)
    limit = 1.98 * np.sqrt(shape[0] * shape[1])
    shape[2] = float(np.clip(shape[2], -limit, limit))
    shape[3] = float(np.clip(shape[3], 1.05, 30.0))
    np.clip(star[:, 1:3], centre0 - 1.5, centre0 + 1.5, out=star[:, 1:3])


def _fit_joint_moffat(
    model: _JointMoffat,
    shape: np.ndarray,
    star: np.ndarray,
    scale: float,
    max_iter: int = 60,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt with a Schur complement over the per-star blocks.

    The normal equations of this problem are an arrow matrix: a dense 4x4
    shape block, 4x4 blocks per star, and their couplings. Eliminating the
    star blocks leaves a 4x4 system, so one iteration costs one evaluation of
    the model and its derivatives. The soft-L1 loss is minimised by
    iteratively reweighted least squares.
    """
    shape = shape.astype(np.float64).copy()
    star = star.astype(np.float64).copy()
    centre0 = star[:, 1:3].copy()
    r = model.residuals(shape, star)
    cost = _robust_cost(r, scale)
    lam = 1e-3
    eye = np.eye(4)
    for _ in range(max_iter):
        omega = 1.0 / np.sqrt(1.0 + (r / scale) ** 2)
        js, jp = model.jacobian(shape, star)
        wjs = js * omega[..., None]
        wjp = jp * omega[..., None]
        h_ss = np.einsum("npi,npj->ij", wjs, js)
        h_sp = np.einsum("npi,npj->nij", wjs, jp)
        h_pp = np.einsum("npi,npj->nij", wjp, jp)
        g_s = np.einsum("npi,np->i", wjs, r)
        g_p = np.einsum("npi,np->ni", wjp, r)
        improved = False
        for _ in range(10):
            a_ss = h_ss + lam * np.diag(np.diag(h_ss)) + 1e-12 * eye
            d_pp = np.einsum("nii->ni", h_pp)
            a_pp = h_pp + lam * d_pp[:, :, None] * eye + 1e-12 * eye
            inv_pp = np.linalg.inv(a_pp)
            coupling = np.einsum("nij,njk->nik", h_sp, inv_pp)
            schur = a_ss - np.einsum("nij,nkj->ik", coupling, h_sp)
            rhs = g_s - np.einsum("nij,nj->i", coupling, g_p)
            step_s = -np.linalg.solve(schur, rhs)
            step_p = -np.einsum("nij,nj->ni", inv_pp, g_p + np.einsum("nji,j->ni", h_sp, step_s))
            new_shape = shape + step_s
            new_star = star + step_p
            _project(new_shape, new_star, centre0)
            new_r = model.residuals(new_shape, new_star)
            new_cost = _robust_cost(new_r, scale)
            if np.isfinite(new_cost) and new_cost <= cost:
                improved = True
                break
            lam *= 4.0
        if not improved:
            break
        relative = (cost - new_cost) / max(cost, 1e-30)
        small_step = np.all(np.abs(step_s) <= 1e-4 * (np.abs(shape) + 1e-6))
        shape, star, r, cost = new_shape, new_star, new_r, new_cost
        lam = max(lam / 3.0, 1e-9)
        if relative < 1e-6 or small_step:
            break
    return shape, star, r


def _shape_from_quadratic(c11: float, c22: float, c12: float, beta: float):
    """FWHM (major axis), ellipticity and angle of a Moffat quadratic form."""
    matrix = np.array([[c11, c12 / 2.0], [c12 / 2.0, c22]])
    evals, evecs = np.linalg.eigh(matrix)
    if not evals[0] > 0:
        raise ValueError("PSF fit did not converge to an elliptical profile")
    alpha_major = 1.0 / np.sqrt(evals[0])
    alpha_minor = 1.0 / np.sqrt(evals[1])
    fwhm = 2.0 * alpha_major * np.sqrt(2.0 ** (1.0 / beta) - 1.0)
    vx, vy = evecs[:, 0]
    theta = float(np.arctan2(vy, vx))
    if theta <= -np.pi / 2:
        theta += np.pi
    elif theta > np.pi / 2:
        theta -= np.pi
    return float(fwhm), float(1.0 - alpha_minor / alpha_major), theta


def measure_psf(
    image: np.ndarray,
    rms: float | np.ndarray,
    *,
    sources: Table | None = None,
    mask: np.ndarray | None = None,
    size: int | None = None,
    gain: float | None = None,
    max_stars: int = PsfFitConfig.max_stars,
    min_stars: int = PsfFitConfig.min_stars,
    min_snr: float = PsfFitConfig.min_snr,
    size_tolerance: float = PsfFitConfig.size_tolerance,
    max_ellipticity: float = PsfFitConfig.max_ellipticity,
    fit_radius: int | None = PsfFitConfig.fit_radius,
    detect_threshold: float = PsfFitConfig.detect_threshold,
    robust_scale: float = PsfFitConfig.robust_scale,
    fallback_fwhm: float | None = PsfFitConfig.fallback_fwhm,
) -> PsfModel:
    """Measure the PSF of an image from its own stars.

    Isolated, unsaturated, unflagged point sources of high S/N are chosen
    (galaxies and cosmic rays are rejected by their half-light radius against
    the stellar locus, and by shape); one elliptical Moffat shape with a free
    amplitude, centre and local sky per star is fitted to all of them at
    once by robust (soft-L1) Levenberg-Marquardt least squares, with the
    profile integrated over each pixel so that undersampled images are
    measured without bias. The solver eliminates the per-star parameters
    through their block structure (a 4x4 system per iteration), which is
    several times faster and, here, more reliable than
    ``scipy.optimize.least_squares`` with a sparse Jacobian. Stars that the shared
    shape fits much worse than the rest (binaries, compact galaxies) are
    dropped and the fit repeated once.

    Parameters
    ----------
    image : numpy.ndarray
        Background-subtracted 2-D image.
    rms : float or numpy.ndarray
        Background noise per pixel (or one value).
    sources : astropy.table.Table, optional
        Output of :func:`astrid_assets.science.sources.extract_sources`
        (needs ``x``, ``y``, ``flux``, ``flux_err``, ``flux_radius``; uses
        ``flag``, ``saturated``, ``ellipticity`` when present). Detected at
        ``detect_threshold`` when not given.
    mask : numpy.ndarray of bool, optional
        Pixels to ignore; they get zero weight in the fit.
    size : int, optional
        Odd side of the output stamp; by default that of :func:`moffat_psf`
        (about 4 FWHM, at least 15).
    gain : float, optional
        Electrons per image unit; adds the stars' Poisson noise to the
        weights (otherwise only the background noise is used).
    max_stars, min_stars, min_snr, size_tolerance, max_ellipticity,
    fit_radius, detect_threshold, robust_scale, fallback_fwhm
        See :class:`PsfFitConfig`.

    Returns
    -------
    PsfModel

    Raises
    ------
    InsufficientStarsError
        Fewer than ``min_stars`` usable stars and no ``fallback_fwhm``.
    ValueError
        Shapes that disagree, or invalid parameters.
    """
    config = PsfFitConfig(
        max_stars=max_stars,
        min_stars=min_stars,
        min_snr=min_snr,
        size_tolerance=size_tolerance,
        max_ellipticity=max_ellipticity,
        fit_radius=fit_radius,
        detect_threshold=detect_threshold,
        robust_scale=robust_scale,
        fallback_fwhm=fallback_fwhm,
    )
    if size is not None and (size < 3 or size % 2 == 0):
        raise ValueError(f"PSF stamp size must be odd and >= 3, got {size}")
    if gain is not None and not gain > 0:
        raise ValueError(f"gain must be positive, got {gain!r}")
    data = sep_ready(image).astype(np.float64, copy=False)
    shape = data.shape
    if np.ndim(rms) == 0:
        if not (np.isfinite(rms) and rms > 0):
            raise ValueError(f"rms must be a positive noise level, got {rms!r}")
        noise = None
    else:
        noise = np.asarray(rms, dtype=np.float64)
        if noise.shape != shape:
            raise ValueError(f"rms shape {noise.shape} does not match image shape {shape}")
    bad = ~np.isfinite(data)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != shape:
            raise ValueError(f"mask shape {m.shape} does not match image shape {shape}")
        bad = bad | m.astype(bool)
    if sources is None:
        sources = extract_sources(
            np.where(bad, 0.0, data), rms, threshold=config.detect_threshold, mask=bad, gain=gain
        )

    def too_few(found: int) -> PsfModel:
        if config.fallback_fwhm is not None:
            return _fallback_model(config.fallback_fwhm, size)
        raise InsufficientStarsError(
            f"only {found} usable PSF stars (isolated, unsaturated, S/N >= {config.min_snr:g}); "
            f"need {config.min_stars}. Lower min_snr, or pass fallback_fwhm."
        )

    chosen, locus = _select_stars(sources, shape, config)
    if chosen.size < config.min_stars:
        return too_few(int(chosen.size))
    half = _fit_half_size(locus, config)
    oversample = 5 if 1.8 * locus < 2.5 else 3

    x = np.asarray(sources["x"], dtype=np.float64)[chosen]
    y = np.asarray(sources["y"], dtype=np.float64)[chosen]
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    offsets = np.arange(-half, half + 1)
    rows = iy[:, None, None] + offsets[None, :, None]
    cols = ix[:, None, None] + offsets[None, None, :]
    stamps = data[rows, cols].reshape(len(chosen), -1)
    stamp_bad = bad[rows, cols].reshape(len(chosen), -1)
    if noise is None:
        var = np.full(stamps.shape, float(rms) ** 2)
    else:
        var = noise[rows, cols].reshape(len(chosen), -1) ** 2
    if gain is not None:
        var = var + np.clip(stamps, 0.0, None) / gain
    weight = np.where(stamp_bad | ~np.isfinite(var) | (var <= 0), 0.0, 1.0 / var)
    stamps = np.where(weight > 0, stamps, 0.0)
    usable = (weight > 0).mean(axis=1) > 0.9
    if usable.sum() < config.min_stars:
        return too_few(int(usable.sum()))
    stamps, weight = stamps[usable], weight[usable]
    dx, dy = (x - ix)[usable], (y - iy)[usable]

    # Start: round Moffat, beta 3, FWHM from the locus half-light radius.
    fwhm0 = max(1.6 * locus, 1.0)
    alpha0 = fwhm_to_moffat_alpha(fwhm0, 3.0)
    edge = np.ones((2 * half + 1, 2 * half + 1), dtype=bool)
    edge[1:-1, 1:-1] = False
    sky0 = np.array([np.median(s.reshape(edge.shape)[edge]) for s in stamps])
    amp0 = np.maximum(stamps.max(axis=1) - sky0, 1e-3)

    shape0 = np.array([1.0 / alpha0**2, 1.0 / alpha0**2, 0.0, 3.0])
    star0 = np.column_stack([amp0, dx, dy, sky0])
    model = _JointMoffat(stamps, weight, half, oversample)
    shape_fit, star_fit, resid = _fit_joint_moffat(model, shape0, star0, config.robust_scale)
    chi2 = (resid**2).sum(axis=1) / np.maximum((weight > 0).sum(axis=1), 1)
    med = float(np.median(chi2))
    keep = chi2 <= max(3.0 * med, med + 3.0)
    if not keep.all() and keep.sum() >= config.min_stars:
        model = _JointMoffat(stamps[keep], weight[keep], half, oversample)
        shape_fit, star_fit, resid = _fit_joint_moffat(
            model, shape_fit, star_fit[keep], config.robust_scale
        )
    c11, c22, c12, beta = shape_fit
    fwhm, ellipticity, theta = _shape_from_quadratic(c11, c22, c12, beta)
    residual_rms = float(np.sqrt(np.mean(resid[model.sqrtw > 0] ** 2)))
    stamp = moffat_psf(fwhm, beta=float(beta), ellipticity=ellipticity, theta=theta, size=size)
    return PsfModel(
        stamp=stamp,
        fwhm=fwhm,
        ellipticity=ellipticity,
        theta=theta,
        beta=float(beta),
        n_stars=len(star_fit),
        fallback=False,
        residual_rms=residual_rms,
    )
