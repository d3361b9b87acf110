"""Alignment: resample an image onto a reference pixel grid.

The difference-imaging stage needs the science exposure, its variance map and
its bad-pixel mask on the pixel grid of the reference image.
:func:`align_to_grid` does this in three steps:

1. **Pixel transform.** The mapping from reference-grid pixels to input
   pixels comes from the two WCS: it is evaluated exactly (astropy
   pixel -> world -> pixel) on a coarse grid of points and fitted with a
   low-order 2-D polynomial (affine when that is exact to
   ``AlignConfig.max_fit_residual``, otherwise cubic, which takes TPV / SIP
   distortion). When no polynomial fits, every output pixel is mapped
   through the WCS ("exact"). When the WCS is off, or missing, the transform
   is refined or found by matching star lists (:func:`refine_transform`,
   triangle asterisms from astroalign, then a least-squares affine fit).
2. **Resampling.** The image by cubic B-spline interpolation
   (``scipy.ndimage``, order 3 with its recursive prefilter), split over
   row blocks in threads. A pure integer shift is a copy; a pure sub-pixel
   shift evaluates the same spline separably (a 4-tap filter per axis). The
   variance by linear interpolation, which never undershoots (a cubic
   spline can go negative near steep variance gradients), and in the same
   pass the mask: masked input pixels carry +inf through the variance, so
   an output pixel is masked exactly when a masked pixel contributes to it.
   Masked input pixels are first grown by ``AlignConfig.mask_grow`` pixels
   (default 1, the reach of the 4x4 cubic footprint) and their data values
   replaced by the mean of their valid neighbours, so that a cosmic ray or a
   NaN cannot ring into the unmasked pixels around it.
3. **Bookkeeping.** Values are multiplied by the Jacobian determinant of the
   transform (output pixel area in input pixels) so that the flux of a
   source is conserved when the pixel scales differ; the variance by its
   square. Pixels that fall outside the input are masked; their data and
   variance are set to 0, never NaN: the mask says they are invalid.

Noise after resampling
----------------------
Interpolation averages neighbouring pixels, so the resampled noise is
correlated between neighbours and its per-pixel variance drops: for
cubic-spline interpolation at a sub-pixel offset ``(fx, fy)`` the variance of
white noise is multiplied by ``g(fx) g(fy)``, with ``g(0) = 1``,
``g(0.3) = 0.83``, ``g(0.5) = 0.76`` and ``0.874`` on average, so about
``0.76`` on average over offsets in 2-D (a standard deviation ``0.87`` times
the input). The variance map is interpolated, not propagated with squared
weights: it keeps the noise power at the scale of a PSF and above, which is
what photometry and detection see, and overstates the per-pixel variance of
the resampled image by the factor above. Code that needs the per-pixel
noise of the resampled image should measure it; ZOGY-style subtraction
should interpolate the image whose noise matters least.

Pixel convention: 0-based, ``x`` = column, ``y`` = row. A
:class:`PixelTransform` maps *reference-grid* coordinates to *input-image*
coordinates, which is the direction the resampler needs.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "AlignConfig",
    "AlignedImage",
    "PixelTransform",
    "StarMatch",
    "WcsTransformFit",
    "align_to_grid",
    "find_alignment_stars",
    "fit_wcs_transform",
    "refine_transform",
]


# --------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignConfig:
    """Parameters of :func:`align_to_grid` and :func:`refine_transform`.

    Attributes
    ----------
    method : {"auto", "exact", "reproject"}
        How the WCS mapping is applied. ``"auto"`` fits a polynomial to the
        exact mapping on a coarse grid and falls back to ``"exact"`` (every
        output pixel mapped through the WCS) when the fit is worse than
        ``max_fit_residual``. ``"reproject"`` calls
        ``reproject.reproject_interp`` (bicubic); it is several times slower
        and is kept for comparison (a star-refined transform is always
        applied by the spline resampler).
    refine : bool or "auto"
        Refine the WCS transform by matching stars. ``"auto"`` refines when
        the WCS-predicted positions of the reference stars are off from the
        detected ones by more than ``refine_threshold`` pixels (rms of the
        systematic part), or when they cannot be matched at all. Needs the
        reference star list.
    assume_aligned : bool
        The caller states the image is already on the reference grid: it is
        passed through unchanged (same shape required).
    grid_points : int
        Points per axis of the coarse grid on which the WCS mapping is
        evaluated and fitted.
    max_fit_residual : float
        Largest allowed residual (pixels) of the polynomial fit on that grid.
    max_degree : int
        Highest polynomial degree tried (1 and then this one).
    refine_threshold : float
        Systematic WCS error (pixels) above which ``refine="auto"`` refines.
    match_radius : float
        Search radius (pixels) of the nearest-neighbour match of the star
        lists around the WCS prediction.
    max_stars : int
        Brightest stars used from each list.
    min_matches : int
        Fewest matched stars accepted for a star-based transform.
    mask_grow : int
        Masked input pixels are grown by this many pixels before resampling,
        so that an output pixel is masked when any of the 4x4 input pixels
        of its cubic-spline footprint is masked.
    conserve_flux : bool
        Multiply by the Jacobian determinant so source fluxes are conserved
        when the pixel scales differ.
    shift_tolerance : float
        A transform whose linear part differs from the identity by less than
        this many pixels over the grid is treated as a pure shift; a shift
        within this of an integer is applied as a copy.
    n_threads : int
        Threads used for resampling (the scipy kernels release the GIL).
    """

    method: Literal["auto", "exact", "reproject"] = "auto"
    refine: bool | Literal["auto"] = "auto"
    assume_aligned: bool = False
    grid_points: int = 33
    max_fit_residual: float = 0.01
    max_degree: int = 3
    refine_threshold: float = 0.3
    match_radius: float = 5.0
    max_stars: int = 50
    min_matches: int = 5
    mask_grow: int = 1
    conserve_flux: bool = True
    shift_tolerance: float = 1e-3
    n_threads: int = 2

    def __post_init__(self) -> None:
        if self.method not in ("auto", "exact", "reproject"):
            raise ValueError(
                f"AlignConfig.method must be auto, exact or reproject: {self.method!r}"
            )
        if self.refine not in (True, False, "auto"):
            raise ValueError(f"AlignConfig.refine must be True, False or 'auto': {self.refine!r}")
        if self.grid_points < 4:
            raise ValueError(f"AlignConfig.grid_points must be >= 4, got {self.grid_points}")
        if self.max_degree < 1:
            raise ValueError(f"AlignConfig.max_degree must be >= 1, got {self.max_degree}")
        if self.min_matches < 3:
            raise ValueError(f"AlignConfig.min_matches must be >= 3, got {self.min_matches}")
        if self.mask_grow < 0:
            raise ValueError(f"AlignConfig.mask_grow must be >= 0, got {self.mask_grow}")
        if self.n_threads < 1:
            raise ValueError(f"AlignConfig.n_threads must be >= 1, got {self.n_threads}")


def _terms(degree: int) -> list[tuple[int, int]]:
    """Exponents ``(i, j)`` of ``u**i * v**j`` with ``i + j <= degree``."""
    return [(n - j, j) for n in range(degree + 1) for j in range(n + 1)]


@dataclass(frozen=True, eq=False)
class PixelTransform:
    """A 2-D polynomial map from reference-grid pixels to input-image pixels.

    ``x_in = sum_k coeffs[0, k] * u**i_k * v**j_k`` and likewise ``y_in``
    with ``coeffs[1]``, where ``u = (x - center[0]) / scale`` and
    ``v = (y - center[1]) / scale`` and the exponents run over
    ``i + j <= degree`` in the order ``(0,0), (1,0), (0,1), (2,0), (1,1),
    (0,2), ...``. Degree 1 is an affine map.

    Attributes
    ----------
    coeffs : numpy.ndarray
        ``(2, n_terms)`` coefficients (read-only copy).
    degree : int
        Polynomial degree.
    center : (float, float)
        Normalisation centre ``(x0, y0)`` in reference pixels.
    scale : float
        Normalisation scale in reference pixels.
    """

    coeffs: np.ndarray
    degree: int = 1
    center: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0

    def __post_init__(self) -> None:
        coeffs = np.array(self.coeffs, dtype=np.float64)
        n_terms = len(_terms(self.degree))
        if coeffs.shape != (2, n_terms):
            raise ValueError(
                f"a degree-{self.degree} transform needs coefficients of shape (2, {n_terms}),"
                f" got {coeffs.shape}"
            )
        if not np.all(np.isfinite(coeffs)):
            raise ValueError("transform coefficients must be finite")
        if not self.scale > 0:
            raise ValueError(f"transform scale must be positive, got {self.scale!r}")
        coeffs.setflags(write=False)
        object.__setattr__(self, "coeffs", coeffs)
        object.__setattr__(self, "center", (float(self.center[0]), float(self.center[1])))
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def from_affine(cls, matrix: Any, offset: Any) -> PixelTransform:
        """``(x_in, y_in) = matrix @ (x, y) + offset`` in pixel units."""
        m = np.asarray(matrix, dtype=np.float64)
        o = np.asarray(offset, dtype=np.float64)
        if m.shape != (2, 2) or o.shape != (2,):
            raise ValueError(f"affine matrix must be 2x2 and offset length 2: {m.shape}, {o.shape}")
        return cls(np.column_stack([o, m[:, 0], m[:, 1]]), 1)

    @classmethod
    def identity(cls) -> PixelTransform:
        """The identity map."""
        return cls.from_affine(np.eye(2), (0.0, 0.0))

    def _coeff_grids(self) -> np.ndarray:
        """``(2, d+1, d+1)`` array ``C[k, j, i]`` = coefficient of ``u**i v**j``."""
        d = self.degree
        grid = np.zeros((2, d + 1, d + 1))
        for t, (i, j) in enumerate(_terms(d)):
            grid[:, j, i] = self.coeffs[:, t]
        return grid

    def __call__(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Input-image coordinates of reference-grid points ``(x, y)``."""
        u = (np.asarray(x, dtype=np.float64) - self.center[0]) / self.scale
        v = (np.asarray(y, dtype=np.float64) - self.center[1]) / self.scale
        x_in = np.zeros(np.broadcast(u, v).shape)
        y_in = np.zeros_like(x_in)
        for t, (i, j) in enumerate(_terms(self.degree)):
            basis = u**i * v**j
            x_in = x_in + self.coeffs[0, t] * basis
            y_in = y_in + self.coeffs[1, t] * basis
        return x_in, y_in

    def jacobian(self, x: Any, y: Any) -> np.ndarray:
        """``(..., 2, 2)`` derivatives ``[[dx_in/dx, dx_in/dy], [dy_in/dx, dy_in/dy]]``."""
        u = (np.asarray(x, dtype=np.float64) - self.center[0]) / self.scale
        v = (np.asarray(y, dtype=np.float64) - self.center[1]) / self.scale
        jac = np.zeros((*np.broadcast(u, v).shape, 2, 2))
        for t, (i, j) in enumerate(_terms(self.degree)):
            du = i * u ** max(i - 1, 0) * v**j if i else 0.0
            dv = j * u**i * v ** max(j - 1, 0) if j else 0.0
            for k in range(2):
                jac[..., k, 0] += self.coeffs[k, t] * du / self.scale
                jac[..., k, 1] += self.coeffs[k, t] * dv / self.scale
        return jac

    def grid(self, shape: tuple[int, int], rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Input coordinates of the output pixels in rows ``rows[0]:rows[1]``.

        Evaluated as a product of Vandermonde matrices, which costs a few
        operations per pixel whatever the degree.
        """
        xs = (np.arange(shape[1]) - self.center[0]) / self.scale
        ys = (np.arange(rows[0], rows[1]) - self.center[1]) / self.scale
        vx = np.vander(xs, self.degree + 1, increasing=True)
        vy = np.vander(ys, self.degree + 1, increasing=True)
        grids = self._coeff_grids()
        return vy @ grids[0] @ vx.T, vy @ grids[1] @ vx.T

    def jacobian_determinant_grid(
        self, shape: tuple[int, int], rows: tuple[int, int]
    ) -> np.ndarray:
        """Jacobian determinant at the output pixels in rows ``rows[0]:rows[1]``."""
        d = self.degree
        xs = (np.arange(shape[1]) - self.center[0]) / self.scale
        ys = (np.arange(rows[0], rows[1]) - self.center[1]) / self.scale
        vx = np.vander(xs, d + 1, increasing=True)
        vy = np.vander(ys, d + 1, increasing=True)
        dvx = np.zeros_like(vx)
        dvy = np.zeros_like(vy)
        dvx[:, 1:] = vx[:, :-1] * np.arange(1, d + 1)
        dvy[:, 1:] = vy[:, :-1] * np.arange(1, d + 1)
        g = self._coeff_grids() / self.scale
        j00 = vy @ g[0] @ dvx.T
        j01 = dvy @ g[0] @ vx.T
        j10 = vy @ g[1] @ dvx.T
        j11 = dvy @ g[1] @ vx.T
        return j00 * j11 - j01 * j10

    @property
    def is_affine(self) -> bool:
        """True when all terms above degree 1 vanish."""
        return bool(np.all(self.coeffs[:, 3:] == 0.0))

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, offset)`` in pixel units of an affine transform."""
        if not self.is_affine:
            raise ValueError(f"a degree-{self.degree} transform with non-zero terms is not affine")
        matrix = self.coeffs[:, 1:3] / self.scale
        offset = self.coeffs[:, 0] - matrix @ np.asarray(self.center)
        return matrix, offset

    def local_affine(self, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        """Affine approximation ``(matrix, offset)`` at reference point ``(x, y)``."""
        matrix = self.jacobian(x, y)
        xi, yi = self(x, y)
        return matrix, np.array([float(xi), float(yi)]) - matrix @ np.array([x, y])

    def then(self, matrix: Any, offset: Any) -> PixelTransform:
        """This transform followed by the affine map ``matrix @ p + offset``."""
        m = np.asarray(matrix, dtype=np.float64)
        coeffs = m @ self.coeffs
        coeffs[:, 0] += np.asarray(offset, dtype=np.float64)
        return PixelTransform(coeffs, self.degree, self.center, self.scale)

    def describe(self, x: float = 0.0, y: float = 0.0) -> dict[str, float]:
        """Shift, rotation, scale and the largest non-affine term at ``(x, y)``.

        Returns a dict with ``dx``, ``dy`` (input minus reference position,
        pixels), ``rotation_deg`` (counter-clockwise, from the Jacobian),
        ``scale`` (square root of the Jacobian determinant) and ``skew``.
        """
        jac = self.jacobian(x, y)
        xi, yi = self(x, y)
        det = float(np.linalg.det(jac))
        rot = math.degrees(math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1]))
        return {
            "dx": float(xi) - x,
            "dy": float(yi) - y,
            "rotation_deg": rot,
            "scale": math.sqrt(abs(det)),
            "skew": float(jac[0, 1] + jac[1, 0]),
        }


@dataclass(frozen=True, eq=False)
class WcsTransformFit:
    """A polynomial fitted to the WCS mapping between two grids.

    Attributes
    ----------
    transform : PixelTransform
        Reference-grid pixels -> input pixels.
    degree : int
        Degree chosen (the lowest tried that meets the tolerance, else the
        highest tried).
    max_residual : float
        Largest residual of the fit on the grid, pixels.
    grid_points : int
        Points per axis of the grid.
    """

    transform: PixelTransform
    degree: int
    max_residual: float
    grid_points: int


@dataclass(frozen=True, eq=False)
class StarMatch:
    """A transform found or refined by matching star lists.

    Attributes
    ----------
    transform : PixelTransform
        Reference-grid pixels -> input pixels.
    residual_rms : float
        rms distance (reference pixels) between matched stars after the fit.
    n_matched : int
        Stars used in the final fit.
    registration_sigma : (float, float)
        rms of the residuals along x and along y (reference pixels): an
        estimate of the astrometric registration noise ``(sigma_x,
        sigma_y)`` for ZOGY's astrometric term. It includes the centroid
        noise of the stars themselves, so it is an upper bound.
    matched_to_xy, matched_from_xy : numpy.ndarray
        ``(n_matched, 2)`` positions of the matched stars on the reference
        grid and in the input image.
    """

    transform: PixelTransform
    residual_rms: float
    n_matched: int
    registration_sigma: tuple[float, float]
    matched_to_xy: np.ndarray
    matched_from_xy: np.ndarray


@dataclass(frozen=True, eq=False)
class AlignedImage:
    """An image resampled onto a reference grid.

    Attributes
    ----------
    data : numpy.ndarray
        float32 image on the reference grid; 0 where ``mask`` is set.
    variance : numpy.ndarray or None
        float32 variance, linearly interpolated and scaled by the squared
        Jacobian (see the module notes on noise correlation); 0 where
        ``mask`` is set; None if none was given.
    mask : numpy.ndarray
        bool, True where the pixel is invalid: outside the input image, or
        touched by a masked or non-finite input pixel.
    transform : PixelTransform
        Reference-grid pixels -> input pixels, as used.
    method : str
        ``"<origin>/<resampler>"``: origin is ``assumed``, ``wcs``,
        ``wcs+stars`` or ``stars``; the resampler is ``copy``,
        ``integer-shift``, ``spline3-shift``, ``spline3-affine``,
        ``spline3-polynomial``, ``spline3-exact`` or ``reproject-bicubic``.
    residual_rms : float or None
        rms distance (reference pixels) of the matched stars under
        ``transform``, when star lists were matched.
    n_matched : int
        Stars matched (0 when none).
    registration_sigma : (float, float) or None
        ``(sigma_x, sigma_y)`` in reference pixels from the matched stars'
        residuals, when star lists were available.
    wcs_fit_residual : float or None
        Largest residual of the polynomial fit to the WCS mapping (pixels).
    star_match : StarMatch or None
        The star match behind ``residual_rms`` (matched positions included).
    """

    data: np.ndarray
    variance: np.ndarray | None
    mask: np.ndarray
    transform: PixelTransform
    method: str
    residual_rms: float | None = None
    n_matched: int = 0
    registration_sigma: tuple[float, float] | None = None
    wcs_fit_residual: float | None = None
    star_match: StarMatch | None = None


# --------------------------------------------------------------------------
# WCS mapping
# --------------------------------------------------------------------------


def _celestial(wcs: Any) -> Any | None:
    """The celestial part of a WCS, or None when there is none."""
    if wcs is None:
        return None
    if not getattr(wcs, "has_celestial", False):
        return None
    return wcs.celestial if wcs.naxis > 2 else wcs


def _fit_polynomial(
    x: np.ndarray,
    y: np.ndarray,
    x_target: np.ndarray,
    y_target: np.ndarray,
    degree: int,
    center: tuple[float, float],
    scale: float,
) -> tuple[PixelTransform, np.ndarray]:
    """Least-squares polynomial and the residual distance of each point."""
    u = (x - center[0]) / scale
    v = (y - center[1]) / scale
    design = np.column_stack([u**i * v**j for i, j in _terms(degree)])
    target = np.column_stack([x_target, y_target])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = np.hypot(*(design @ coef - target).T)
    return PixelTransform(coef.T, degree, center, scale), resid


def fit_wcs_transform(
    wcs_from: Any,
    wcs_to: Any,
    shape_to: tuple[int, int],
    *,
    config: AlignConfig = AlignConfig(),
) -> WcsTransformFit:
    """Fit the pixel map from the reference grid to the input image.

    The exact mapping (reference pixel -> sky -> input pixel, with every
    distortion the WCS objects carry) is evaluated on a
    ``grid_points x grid_points`` grid spanning the reference image and
    fitted with an affine map; if its largest residual exceeds
    ``config.max_fit_residual`` a polynomial of degree ``config.max_degree``
    is fitted instead.

    Parameters
    ----------
    wcs_from, wcs_to : astropy.wcs.WCS
        Celestial WCS of the input image and of the reference grid.
    shape_to : (int, int)
        ``(ny, nx)`` of the reference grid.
    config : AlignConfig

    Returns
    -------
    WcsTransformFit
    """
    from astropy.wcs.utils import pixel_to_pixel

    w_from, w_to = _celestial(wcs_from), _celestial(wcs_to)
    if w_from is None or w_to is None:
        which = "input image" if w_from is None else "reference grid"
        raise ValueError(f"the {which} has no celestial WCS to fit a pixel transform to")
    ny, nx = shape_to
    n = config.grid_points
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    gx, gy = gx.ravel(), gy.ravel()
    tx, ty = pixel_to_pixel(w_to, w_from, gx, gy)
    tx, ty = np.asarray(tx, dtype=np.float64), np.asarray(ty, dtype=np.float64)
    if not (np.all(np.isfinite(tx)) and np.all(np.isfinite(ty))):
        raise ValueError(
            "the WCS mapping from the reference grid to the input image is undefined at some"
            " grid points (the projections do not overlap)"
        )
    center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    scale = max(nx, ny) / 2.0
    fit, resid = None, None
    for degree in sorted({1, config.max_degree}):
        fit, resid = _fit_polynomial(gx, gy, tx, ty, degree, center, scale)
        if resid.max() <= config.max_fit_residual:
            break
    assert fit is not None and resid is not None
    return WcsTransformFit(fit, fit.degree, float(resid.max()), n)


# --------------------------------------------------------------------------
# Star lists
# --------------------------------------------------------------------------


def _as_xy(points: Any, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of (x, y) positions, got {arr.shape}")
    return arr[np.all(np.isfinite(arr), axis=1)]


def find_alignment_stars(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    n_max: int = 50,
    threshold: float = 10.0,
) -> np.ndarray:
    """Positions of the brightest compact sources, for star matching.

    Background subtraction and extraction by sep, then windowed centroids
    (``sep.winpos``), which are accurate to a few hundredths of a pixel for
    well-exposed stars.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (sky not yet subtracted is fine).
    mask : numpy.ndarray, optional
        True where pixels are bad.
    n_max : int
        Most sources returned.
    threshold : float
        Detection threshold in units of the global background rms.

    Returns
    -------
    numpy.ndarray
        ``(N, 2)`` positions ``(x, y)``, brightest first.
    """
    import sep

    data = np.ascontiguousarray(image, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {data.shape}")
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if bad.any():
        data = np.where(bad, np.float32(np.median(data[~bad])) if (~bad).any() else 0, data)
    bad_arg = bad if bad.any() else None
    bkg = sep.Background(data, mask=bad_arg)
    sub = data - bkg.back()
    if sep.get_extract_pixstack() < data.size // 4:
        sep.set_extract_pixstack(data.size // 4)
    objects = sep.extract(sub, threshold, err=bkg.globalrms, mask=bad_arg, minarea=5)
    if len(objects) == 0:
        return np.zeros((0, 2))
    keep = (objects["flag"] & (sep.OBJ_TRUNC | sep.OBJ_MERGED)) == 0
    objects = objects[keep] if keep.sum() >= 3 else objects
    objects = objects[np.argsort(objects["flux"])[::-1][:n_max]]
    x, y = objects["x"].astype(np.float64), objects["y"].astype(np.float64)
    radius, _ = sep.flux_radius(sub, x, y, 6.0 * objects["a"], 0.5, subpix=5)
    sig = np.clip(2.0 / 2.35 * radius, 0.5, None)
    wx, wy, flag = sep.winpos(sub, x, y, sig)
    good = (flag == 0) & np.isfinite(wx) & np.isfinite(wy) & (np.hypot(wx - x, wy - y) < 2.0)
    x = np.where(good, wx, x)
    y = np.where(good, wy, y)
    return np.column_stack([x, y])


def _nearest_pairs(
    predicted: np.ndarray, observed: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours within ``radius``: index arrays into each list."""
    if len(predicted) == 0 or len(observed) == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    dist, idx = cKDTree(observed).query(predicted, distance_upper_bound=radius)
    back = cKDTree(predicted).query(observed)[1]
    i_pred = np.flatnonzero(np.isfinite(dist))
    i_obs = idx[i_pred]
    mutual = back[i_obs] == i_pred
    return i_pred[mutual], i_obs[mutual]


def _fit_affine_pairs(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares affine ``dst ~ matrix @ src + offset``."""
    design = np.column_stack([np.ones(len(src)), src])
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return coef[1:].T, coef[0]


def _residuals_on_grid(
    transform: PixelTransform, to_xy: np.ndarray, from_xy: np.ndarray
) -> np.ndarray:
    """Residuals ``from - T(to)`` expressed in reference-grid pixels."""
    px, py = transform(to_xy[:, 0], to_xy[:, 1])
    resid_from = from_xy - np.column_stack([px, py])
    jac = transform.jacobian(to_xy[:, 0], to_xy[:, 1])
    return np.linalg.solve(jac, resid_from[..., None])[..., 0]


def _star_statistics(
    transform: PixelTransform, to_xy: np.ndarray, from_xy: np.ndarray
) -> tuple[float, tuple[float, float]]:
    resid = _residuals_on_grid(transform, to_xy, from_xy)
    rms = float(np.sqrt(np.mean(np.sum(resid**2, axis=1))))
    sigma = np.sqrt(np.mean(resid**2, axis=0))
    return rms, (float(sigma[0]), float(sigma[1]))


def refine_transform(
    sources_from_xy: Any,
    sources_to_xy: Any,
    initial_transform: PixelTransform | None = None,
    *,
    config: AlignConfig = AlignConfig(),
) -> StarMatch:
    """Find or refine the pixel transform by matching two star lists.

    The reference stars are mapped into the input image with
    ``initial_transform``; astroalign matches the two patterns by
    similar-triangle invariants (which tolerates any shift, rotation and
    scale), the correction is composed with the initial transform, and it is
    then refined by iterated nearest-neighbour matching and a least-squares
    affine fit with 3-sigma clipping.

    Parameters
    ----------
    sources_from_xy : array_like
        ``(N, 2)`` star positions ``(x, y)`` in the input image, brightest
        first.
    sources_to_xy : array_like
        ``(M, 2)`` star positions on the reference grid, brightest first.
    initial_transform : PixelTransform, optional
        Starting estimate (reference -> input), e.g. from the WCS; the
        identity by default.
    config : AlignConfig

    Returns
    -------
    StarMatch

    Raises
    ------
    ValueError
        When either list has fewer than 3 stars or fewer than
        ``config.min_matches`` stars can be matched.
    """
    import astroalign

    from_xy = _as_xy(sources_from_xy, "sources_from_xy")[: config.max_stars]
    to_xy = _as_xy(sources_to_xy, "sources_to_xy")[: config.max_stars]
    for name, arr in (("input image", from_xy), ("reference grid", to_xy)):
        if len(arr) < 3:
            raise ValueError(f"star matching needs at least 3 stars on the {name}, got {len(arr)}")
    transform = PixelTransform.identity() if initial_transform is None else initial_transform
    px, py = transform(to_xy[:, 0], to_xy[:, 1])
    predicted = np.column_stack([px, py])
    try:
        sim, _ = astroalign.find_transform(predicted, from_xy, max_control_points=config.max_stars)
        transform = transform.then(sim.params[:2, :2], sim.params[:2, 2])
    except (astroalign.MaxIterError, ValueError, TypeError):
        # No asterism match: fall back to nearest neighbours around the
        # initial transform, which must then be good to ``match_radius``.
        i_p, i_o = _nearest_pairs(predicted, from_xy, config.match_radius)
        if len(i_p) < config.min_matches:
            raise ValueError(
                f"could not match the star lists: no triangle pattern in common and only"
                f" {len(i_p)} stars within {config.match_radius} px of their predicted"
                f" positions (need {config.min_matches})"
            ) from None
        shift = np.median(from_xy[i_o] - predicted[i_p], axis=0)
        transform = transform.then(np.eye(2), shift)

    radius = 2.0
    i_t = i_f = np.zeros(0, dtype=int)
    for _ in range(4):
        px, py = transform(to_xy[:, 0], to_xy[:, 1])
        predicted = np.column_stack([px, py])
        i_t, i_f = _nearest_pairs(predicted, from_xy, radius)
        if len(i_t) < config.min_matches:
            break
        src, dst = predicted[i_t], from_xy[i_f]
        for _clip in range(3):
            matrix, offset = _fit_affine_pairs(src, dst)
            dist = np.hypot(*(dst - (src @ matrix.T + offset)).T)
            rms = np.sqrt(np.mean(dist**2))
            keep = dist <= max(3.0 * rms, 0.05)
            if keep.all() or keep.sum() < config.min_matches:
                break
            src, dst, i_t, i_f = src[keep], dst[keep], i_t[keep], i_f[keep]
        transform = transform.then(matrix, offset)
        radius = max(4.0 * float(rms), 0.5)
    if len(i_t) < config.min_matches:
        raise ValueError(
            f"only {len(i_t)} stars could be matched between the input image and the reference"
            f" grid (need {config.min_matches})"
        )
    rms_to, sigma = _star_statistics(transform, to_xy[i_t], from_xy[i_f])
    return StarMatch(
        transform=transform,
        residual_rms=rms_to,
        n_matched=len(i_t),
        registration_sigma=sigma,
        matched_to_xy=to_xy[i_t],
        matched_from_xy=from_xy[i_f],
    )


def _systematic_offset(
    transform: PixelTransform,
    from_xy: np.ndarray,
    to_xy: np.ndarray,
    config: AlignConfig,
) -> tuple[float, np.ndarray, np.ndarray]:
    """rms systematic error of ``transform`` at the matched stars (pixels).

    An affine correction is fitted to the nearest-neighbour pairs; its
    displacement at the stars is the systematic part of the WCS error, free
    of the centroid noise of individual stars. ``inf`` when too few stars
    match.
    """
    px, py = transform(to_xy[:, 0], to_xy[:, 1])
    predicted = np.column_stack([px, py])
    i_t, i_f = _nearest_pairs(predicted, from_xy, config.match_radius)
    if len(i_t) < config.min_matches:
        return math.inf, i_t, i_f
    src, dst = predicted[i_t], from_xy[i_f]
    keep = np.ones(len(src), dtype=bool)
    for _ in range(3):
        matrix, offset = _fit_affine_pairs(src[keep], dst[keep])
        dist = np.hypot(*(dst - (src @ matrix.T + offset)).T)
        new_keep = dist <= max(3.0 * np.sqrt(np.mean(dist[keep] ** 2)), 0.05)
        if new_keep.sum() < config.min_matches or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    correction = src @ matrix.T + offset - src
    return float(np.sqrt(np.mean(np.sum(correction[keep] ** 2, axis=1)))), i_t[keep], i_f[keep]


# --------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------


def _fill_masked(values: np.ndarray, bad: np.ndarray, passes: int = 4) -> np.ndarray:
    """Replace masked pixels by the mean of their valid 8-neighbours.

    Works only on the masked pixels, so it costs nothing for clean images.
    A masked value left in place (a cosmic ray, a hot pixel, NaN) would ring
    through the spline prefilter into unmasked neighbours; a local fill keeps
    the image smooth there. Pixels deep inside large masked regions get the
    median of the valid pixels after ``passes`` rounds.
    """
    if not bad.any():
        return values
    out = values.copy()
    todo = bad.copy()
    ny, nx = out.shape
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for _ in range(passes):
        ys, xs = np.nonzero(todo)
        if len(ys) == 0:
            break
        total = np.zeros(len(ys))
        count = np.zeros(len(ys))
        for dy, dx in offsets:
            yy, xx = ys + dy, xs + dx
            inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
            yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
            ok = inside & ~todo[yy, xx]
            total += np.where(ok, out[yy, xx], 0.0)
            count += ok
        done = count > 0
        out[ys[done], xs[done]] = total[done] / count[done]
        todo[ys[done], xs[done]] = False
    if todo.any():
        good = ~bad
        out[todo] = np.median(values[good]) if good.any() else 0.0
    return out


def _row_blocks(ny: int, n_blocks: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, ny, min(n_blocks, ny) + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def _spline_weights(frac: float) -> np.ndarray:
    """Cubic B-spline weights of the taps ``floor - 1 .. floor + 2``."""
    f = frac
    g = 1.0 - f
    return np.array(
        [g**3 / 6.0, 2.0 / 3.0 - f * f + f**3 / 2.0, 2.0 / 3.0 - g * g + g**3 / 2.0, f**3 / 6.0]
    )


def _axis_slice(ndim: int, axis: int, sl: slice) -> tuple[slice, ...]:
    idx = [slice(None)] * ndim
    idx[axis] = sl
    return tuple(idx)


def _shift_coefficients(coef: np.ndarray, shift: float, axis: int, n_out: int) -> np.ndarray:
    """Evaluate mirror-extended spline coefficients at ``index + shift``, ``n_out`` long.

    A constant sub-pixel shift makes the spline evaluation a 4-tap
    correlation (the cubic B-spline weights of the fractional part) followed
    by an integer shift; positions beyond the input come out as 0.
    """
    i0 = math.floor(shift)
    weights = _spline_weights(shift - i0).astype(np.float32)
    n = coef.shape[axis]
    if axis == 1:
        # Along rows scipy's correlation is fastest; origin=-1 puts the
        # taps at index - 1 .. index + 2.
        tmp = ndimage.correlate1d(coef, weights, axis=1, mode="mirror", origin=-1)
    else:
        # Down columns whole-row slices are faster than a strided filter.
        padded = np.pad(coef, [(1, 2), (0, 0)], mode="reflect")
        tmp = weights[0] * padded[0:n]
        for k in range(1, 4):
            tmp += weights[k] * padded[k : k + n]
    shape = list(coef.shape)
    shape[axis] = n_out
    out = np.zeros(shape, dtype=coef.dtype)
    lo, hi = max(0, -i0), min(n_out, n - i0)
    if hi > lo:
        out[_axis_slice(2, axis, slice(lo, hi))] = tmp[
            _axis_slice(2, axis, slice(lo + i0, hi + i0))
        ]
    return out


def _shift_linear(values: np.ndarray, shift: float, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation of ``values`` at ``index + shift``; inf outside the input.

    Taps whose weight is below 1e-3 are dropped (and the others
    renormalised), so a bad pixel reaches the output only where it carries
    real weight.
    """
    n = values.shape[axis]
    i0 = math.floor(shift)
    f = shift - i0
    taps = [(k, w) for k, w in ((0, 1.0 - f), (1, f)) if w > 1e-3]
    total = sum(w for _, w in taps)
    shape = list(values.shape)
    shape[axis] = n_out
    out = np.full(shape, np.inf, dtype=values.dtype)
    lo = max(0, -i0 - taps[0][0])
    hi = min(n_out, n - i0 - taps[-1][0])
    if hi <= lo:
        return out
    view = out[_axis_slice(2, axis, slice(lo, hi))]
    view[...] = 0.0
    for k, w in taps:
        start = lo + i0 + k
        view += np.float32(w / total) * values[_axis_slice(2, axis, slice(start, start + hi - lo))]
    return out


def _integer_shift(values: np.ndarray, dx: int, dy: int, shape_to: tuple[int, int], fill: Any):
    """``out[Y, X] = values[Y + dy, X + dx]``, ``fill`` where that is outside."""
    out = np.full(shape_to, fill, dtype=values.dtype)
    ny_in, nx_in = values.shape
    y0, y1 = max(0, -dy), min(shape_to[0], ny_in - dy)
    x0, x1 = max(0, -dx), min(shape_to[1], nx_in - dx)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = values[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out


def _grow_mask(bad: np.ndarray, grow: int) -> np.ndarray:
    """Dilate ``bad`` by ``grow`` pixels (square); sparse masks cost little."""
    if grow == 0 or not bad.any():
        return bad
    ys, xs = np.nonzero(bad)
    if len(ys) > bad.size // 50:
        return ndimage.binary_dilation(bad, structure=np.ones((3, 3), bool), iterations=grow)
    out = bad.copy()
    ny, nx = bad.shape
    for dy in range(-grow, grow + 1):
        for dx in range(-grow, grow + 1):
            out[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)] = True
    return out


class _Resampler:
    """Resample an image and its companion map by one transform, in row blocks.

    The companion ("aux") array carries the variance (or zeros) with +inf at
    every masked input pixel; it is interpolated linearly, so an output
    pixel is masked exactly when a masked input pixel contributes to it, and
    pixels outside the input come out as +inf as well (``cval``). One pass
    thus gives both the variance and the mask. Linear interpolation of the
    variance is also what keeps it positive, which a cubic spline would not
    near steep gradients.
    """

    def __init__(
        self,
        transform: PixelTransform,
        shape_to: tuple[int, int],
        config: AlignConfig,
        exact_wcs: tuple[Any, Any] | None = None,
    ) -> None:
        self.transform = transform
        self.shape_to = shape_to
        self.config = config
        self.exact_wcs = exact_wcs
        self.shift = (0.0, 0.0)
        self.kind = self._classify()

    def _classify(self) -> str:
        if self.exact_wcs is not None:
            return "exact"
        if not self.transform.is_affine:
            return "polynomial"
        matrix, offset = self.transform.affine()
        extent = max(self.shape_to)
        if np.max(np.abs(matrix - np.eye(2))) * extent < self.config.shift_tolerance:
            self.shift = (float(offset[0]), float(offset[1]))
            near = [abs(s - round(s)) < self.config.shift_tolerance for s in self.shift]
            return "integer-shift" if all(near) else "shift"
        return "affine"

    @property
    def label(self) -> str:
        return "integer-shift" if self.kind == "integer-shift" else f"spline3-{self.kind}"

    def run(
        self, data: np.ndarray, aux: np.ndarray, pool: ThreadPoolExecutor
    ) -> tuple[np.ndarray, np.ndarray]:
        """Resampled ``(data, aux)`` on the reference grid."""
        if self.kind == "integer-shift":
            dx, dy = (round(s) for s in self.shift)
            return (
                _integer_shift(data, dx, dy, self.shape_to, 0.0),
                _integer_shift(aux, dx, dy, self.shape_to, np.inf),
            )
        prefilter = pool.submit(
            ndimage.spline_filter, data, order=3, output=np.float32, mode="mirror"
        )
        if self.kind == "shift":
            dx, dy = self.shift
            ny, nx = self.shape_to
            aux_job = pool.submit(lambda: _shift_linear(_shift_linear(aux, dx, 1, nx), dy, 0, ny))
            coef = prefilter.result()
            out = _shift_coefficients(_shift_coefficients(coef, dx, 1, nx), dy, 0, ny)
            return out, aux_job.result()
        return self._run_blocks(data, aux, prefilter, pool)

    def _coordinates(self, rows: tuple[int, int]) -> np.ndarray:
        """``(2, rows, nx)`` input (row, col) coordinates of a block of output rows."""
        r0, r1 = rows
        if self.kind == "exact":
            from astropy.wcs.utils import pixel_to_pixel

            # Private copies: a WCS object is not safe to share between threads.
            w_to, w_from = (w.deepcopy() for w in self.exact_wcs)
            gx, gy = np.meshgrid(np.arange(self.shape_to[1], dtype=np.float64), np.arange(r0, r1))
            xi, yi = pixel_to_pixel(w_to, w_from, gx, gy)
            xi = np.nan_to_num(np.asarray(xi, dtype=np.float64), nan=-1e6)
            yi = np.nan_to_num(np.asarray(yi, dtype=np.float64), nan=-1e6)
        else:
            xi, yi = self.transform.grid(self.shape_to, rows)
        return np.stack([yi, xi])

    def _run_blocks(self, data, aux, prefilter, pool):
        ny, nx = self.shape_to
        out = np.empty(self.shape_to, dtype=np.float32)
        aux_out = np.empty(self.shape_to, dtype=np.float32)
        blocks = _row_blocks(ny, 4 * self.config.n_threads)
        linear = {"order": 1, "mode": "constant", "cval": np.inf, "prefilter": False}
        cubic = {"order": 3, "mode": "mirror", "prefilter": False}
        if self.kind == "affine":
            matrix, offset = self.transform.affine()
            # scipy works in (row, col): swap x and y.
            m_rc, o_rc = matrix[::-1, ::-1], offset[::-1]

            def resample(values, rows, target, kw):
                off = o_rc + m_rc @ np.array([rows[0], 0.0])
                ndimage.affine_transform(
                    values,
                    m_rc,
                    offset=off,
                    output_shape=(rows[1] - rows[0], nx),
                    output=target[rows[0] : rows[1]],
                    **kw,
                )

            aux_jobs = [pool.submit(resample, aux, rows, aux_out, linear) for rows in blocks]
            coef = prefilter.result()
            jobs = [pool.submit(resample, coef, rows, out, cubic) for rows in blocks]
        elif self.kind == "polynomial":

            def resample(values, rows, target, kw):
                ndimage.map_coordinates(
                    values, self._coordinates(rows), output=target[rows[0] : rows[1]], **kw
                )

            aux_jobs = [pool.submit(resample, aux, rows, aux_out, linear) for rows in blocks]
            coef = prefilter.result()
            jobs = [pool.submit(resample, coef, rows, out, cubic) for rows in blocks]
        else:
            coef = prefilter.result()

            def both(rows):
                coords = self._coordinates(rows)
                ndimage.map_coordinates(coef, coords, output=out[rows[0] : rows[1]], **cubic)
                ndimage.map_coordinates(aux, coords, output=aux_out[rows[0] : rows[1]], **linear)

            aux_jobs = []
            jobs = [pool.submit(both, rows) for rows in blocks]
        for job in [*aux_jobs, *jobs]:
            job.result()
        return out, aux_out


def _jacobian_scale(transform: PixelTransform, shape_to: tuple[int, int]) -> float | np.ndarray:
    """Area of an output pixel in input pixels: scalar, or a map if it varies."""
    if transform.is_affine:
        return abs(float(np.linalg.det(transform.affine()[0])))
    det = np.abs(transform.jacobian_determinant_grid(shape_to, (0, shape_to[0])))
    if np.ptp(det) < 1e-6 * np.mean(det):
        return float(np.mean(det))
    return det.astype(np.float32)


def _reproject(
    data: np.ndarray,
    variance: np.ndarray | None,
    bad: np.ndarray,
    w_from: Any,
    w_to: Any,
    shape_to: tuple[int, int],
    config: AlignConfig,
):
    from reproject import reproject_interp

    def run(values: np.ndarray, order: str) -> np.ndarray:
        out, _ = reproject_interp((values, w_from), w_to, shape_out=shape_to, order=order)
        return out

    if config.mask_grow and bad.any():
        bad = ndimage.binary_dilation(
            bad, structure=np.ones((3, 3), bool), iterations=config.mask_grow
        )
    out = run(data, "bicubic")
    var = None if variance is None else run(variance, "bicubic")
    bad_out = run(bad.astype(np.float64), "bilinear")
    mask = ~np.isfinite(out) | ~np.isfinite(bad_out) | (np.nan_to_num(bad_out, nan=1.0) > 1e-3)
    return (
        np.nan_to_num(out, nan=0.0).astype(np.float32),
        None if var is None else np.nan_to_num(var, nan=0.0).astype(np.float32),
        mask,
    )


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def _check_inputs(image, variance, mask, shape_to):
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if len(shape_to) != 2 or min(shape_to) < 1:
        raise ValueError(f"shape_to must be (ny, nx) with positive sizes, got {shape_to!r}")
    shape_to = (int(shape_to[0]), int(shape_to[1]))
    data = image.astype(np.float32)
    bad = ~np.isfinite(data)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
        bad |= mask.astype(bool)
    var = None
    if variance is not None:
        variance = np.asarray(variance)
        if variance.shape != image.shape:
            raise ValueError(
                f"variance shape {variance.shape} differs from image shape {image.shape}"
            )
        var = variance.astype(np.float32)
        bad |= ~np.isfinite(var) | (var < 0)
    return data, var, bad, shape_to


def align_to_grid(
    image: np.ndarray,
    wcs_from: Any,
    wcs_to: Any,
    shape_to: tuple[int, int],
    *,
    variance: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    sources_from: Any = None,
    sources_to: Any = None,
    config: AlignConfig = AlignConfig(),
) -> AlignedImage:
    """Resample an image (and its variance and mask) onto a reference grid.

    Parameters
    ----------
    image : numpy.ndarray
        2-D input image (any float dtype or byte order).
    wcs_from : astropy.wcs.WCS or None
        WCS of ``image``; None (or a WCS without celestial axes) when it has
        none, in which case the transform comes from star matching.
    wcs_to : astropy.wcs.WCS or None
        WCS of the reference grid, or None.
    shape_to : (int, int)
        ``(ny, nx)`` of the reference grid.
    variance : numpy.ndarray, optional
        Per-pixel variance of ``image``.
    mask : numpy.ndarray, optional
        True where ``image`` pixels are bad. Non-finite data or variance
        values are masked too.
    sources_from : array_like, optional
        ``(N, 2)`` star positions ``(x, y)`` in ``image``, brightest first.
        Detected with :func:`find_alignment_stars` when needed and not given.
    sources_to : array_like, optional
        ``(M, 2)`` star positions on the reference grid, brightest first;
        needed for any star matching (refinement, no WCS).
    config : AlignConfig

    Returns
    -------
    AlignedImage

    Raises
    ------
    ValueError
        On inconsistent shapes; or when a WCS is missing and the image
        cannot be aligned by stars (no reference star list, or too few
        stars), naming which image and what is missing.
    """
    data, var, bad, shape_to = _check_inputs(image, variance, mask, shape_to)
    w_from, w_to = _celestial(wcs_from), _celestial(wcs_to)

    if config.assume_aligned:
        if data.shape != shape_to:
            raise ValueError(
                f"assume_aligned was set but the image shape {data.shape} differs from the"
                f" reference grid {shape_to}"
            )
        out = np.where(bad, np.float32(0), data)
        var_out = None if var is None else np.where(bad, np.float32(0), var)
        noise = _noise_from_lists(PixelTransform.identity(), sources_from, sources_to, config)
        return AlignedImage(
            out,
            var_out,
            bad,
            PixelTransform.identity(),
            "assumed/copy",
            registration_sigma=noise,
        )

    match: StarMatch | None = None
    wcs_fit: WcsTransformFit | None = None
    exact: tuple[Any, Any] | None = None
    if w_from is not None and w_to is not None:
        wcs_fit = fit_wcs_transform(w_from, w_to, shape_to, config=config)
        transform = wcs_fit.transform
        if config.method == "exact" or (
            config.method == "auto" and wcs_fit.max_residual > config.max_fit_residual
        ):
            exact = (w_to, w_from)
        origin = "wcs"
        if config.refine is True and sources_to is None:
            raise ValueError("refine=True needs the reference star list (sources_to)")
        wants_stars = config.refine is True or (config.refine == "auto") or sources_from is not None
        if sources_to is not None and wants_stars:
            ref_xy = _as_xy(sources_to, "sources_to")
            src_xy = _sources_or_detect(sources_from, data, bad, config, "input image")
            offset, i_t, i_f = _systematic_offset(transform, src_xy, ref_xy, config)
            if config.refine is True or (
                config.refine == "auto" and offset > config.refine_threshold
            ):
                try:
                    match = refine_transform(src_xy, ref_xy, transform, config=config)
                except ValueError:
                    # In "auto" mode an unmatched star list leaves the WCS
                    # transform in place (no star statistics); asked for
                    # explicitly, the failure is the caller's to see.
                    if config.refine is True:
                        raise
                else:
                    transform = match.transform
                    exact = None  # the star fit replaces the WCS mapping
                    origin = "wcs+stars"
            elif len(i_t) >= config.min_matches:
                rms, sigma = _star_statistics(transform, ref_xy[i_t], src_xy[i_f])
                match = StarMatch(transform, rms, len(i_t), sigma, ref_xy[i_t], src_xy[i_f])
    else:
        missing = "input image" if w_from is None else "reference grid"
        if sources_to is None:
            raise ValueError(
                f"the {missing} has no celestial WCS, so the image must be aligned by star"
                " matching, but no reference star list (sources_to) was given; pass"
                " it, or set AlignConfig(assume_aligned=True) if the pair is already aligned"
            )
        ref_xy = _as_xy(sources_to, "sources_to")
        if len(ref_xy) < 3:
            raise ValueError(
                f"the {missing} has no celestial WCS and the reference star list has only"
                f" {len(ref_xy)} stars; star matching needs at least 3"
            )
        src_xy = _sources_or_detect(sources_from, data, bad, config, "input image")
        if len(src_xy) < 3:
            raise ValueError(
                f"the {missing} has no celestial WCS and only {len(src_xy)} stars were found in"
                " the input image; star matching needs at least 3"
            )
        match = refine_transform(src_xy, ref_xy, None, config=config)
        transform = match.transform
        origin = "stars"

    with ThreadPoolExecutor(max_workers=config.n_threads) as pool:
        data_f = _fill_masked(data, bad)
        if config.method == "reproject" and origin == "wcs":
            var_f = None if var is None else _fill_masked(var, bad)
            out, var_out, out_mask = _reproject(data_f, var_f, bad, w_from, w_to, shape_to, config)
            label = "reproject-bicubic"
        else:
            resampler = _Resampler(transform, shape_to, config, exact_wcs=exact)
            aux = np.zeros(data.shape, dtype=np.float32) if var is None else var
            if resampler.kind != "integer-shift":
                bad = _grow_mask(bad, config.mask_grow)
            aux[bad] = np.inf
            out, aux_out = resampler.run(data_f, aux, pool)
            out_mask = ~np.isfinite(aux_out)
            var_out = None if var is None else aux_out
            label = resampler.label

    if config.conserve_flux and label != "integer-shift":
        area = _jacobian_scale(transform, shape_to)
        if np.any(np.abs(np.asarray(area) - 1.0) > 1e-9):
            out *= area
            if var_out is not None:
                var_out *= np.square(area)
    out[out_mask] = 0.0
    if var_out is not None:
        var_out[out_mask] = 0.0
    return AlignedImage(
        data=out,
        variance=var_out,
        mask=out_mask,
        transform=transform,
        method=f"{origin}/{label}",
        residual_rms=None if match is None else match.residual_rms,
        n_matched=0 if match is None else match.n_matched,
        registration_sigma=None if match is None else match.registration_sigma,
        wcs_fit_residual=None if wcs_fit is None else wcs_fit.max_residual,
        star_match=match,
    )


def _sources_or_detect(sources, data, bad, config, name):
    if sources is not None:
        return _as_xy(sources, f"sources_from ({name})")
    return find_alignment_stars(data, mask=bad, n_max=config.max_stars)


def _noise_from_lists(transform, sources_from, sources_to, config):
    """Registration noise from two given star lists under ``transform``, if both exist."""
    if sources_from is None or sources_to is None:
        return None
    src_xy = _as_xy(sources_from, "sources_from")
    ref_xy = _as_xy(sources_to, "sources_to")
    _, i_t, i_f = _systematic_offset(transform, src_xy, ref_xy, config)
    if len(i_t) < config.min_matches:
        return None
    return _star_statistics(transform, ref_xy[i_t], src_xy[i_f])[1]
