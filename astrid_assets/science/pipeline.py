"""The difference-imaging chain: two images in, a difference and candidates out.

This is the sequence that ``astrid diff`` runs on any pair of FITS images and
that the asset graph runs on each night and field: measure each image
(background, noise, sources, PSF), align the science image onto the
reference grid, subtract (ZOGY or classic), detect on the score image and
measure the candidates. Each step is a call into its own module; this one
only chains them, times them and fills in what a header did not say.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage

from astrid_assets.science.align import AlignConfig, align_to_grid
from astrid_assets.science.background import estimate_background
from astrid_assets.science.calibration import CosmicRayConfig, detect_cosmic_rays
from astrid_assets.science.classic import ClassicConfig, classic_subtract
from astrid_assets.science.cutouts import cutout_triplets
from astrid_assets.science.detection import DetectionConfig, detect_candidates
from astrid_assets.science.psf import measure_psf
from astrid_assets.science.reference import psf_fwhm
from astrid_assets.science.sources import extract_sources
from astrid_assets.science.subtraction import SubtractionResult
from astrid_assets.science.zogy import ZogyConfig, zogy_subtract

# Sources used for alignment and the PSF only need to be clearly stars.
SOURCE_THRESHOLD = 5.0

__all__ = [
    "SOURCE_THRESHOLD",
    "DiffConfig",
    "DiffProducts",
    "PreparedImage",
    "Subtraction",
    "bright_star_xy",
    "difference_pair",
    "estimate_gain",
    "find_candidates",
    "normalize_score",
    "prepare_image",
    "saturation_mask",
    "subtract_pair",
]


@dataclass(frozen=True)
class DiffConfig:
    """Knobs of the difference chain, shared by the CLI, the assets and the tests.

    Attributes
    ----------
    method : {"zogy", "classic"}
        Subtraction algorithm.
    threshold : float
        Detection threshold on the score image, in sigma.
    align : {"auto", "wcs", "stars", "none"}
        How the science image is put on the reference grid: "auto" uses the
        WCS when both images have one (refined by star matching when it is
        off), star matching when not, and nothing when the images already
        share a grid; "none" trusts that they do.
    dtype : {"float32", "float64"}
        Precision of the subtraction.
    stamp_size : int
        Side of the cutout triplets, px (63 like ZTF's).
    saturation_grow : int
        Pixels by which saturated regions are grown before masking.
    astrometric_floor : float
        Smallest registration noise (px) given to ZOGY's astrometric term.
    model_error : float
        Fraction of each pixel's own signal added to its noise for the
        score: PSF models and flux scaling are good to a few per cent, so
        the cores of bright stars would otherwise leave significant residuals.
    max_dipole : float
        Candidates whose opposite-sign flux exceeds this multiple of their
        own (misregistration and galaxy-subtraction residuals) are dropped.
    max_masked_fraction : float
        Candidates with more than this fraction of masked pixels in their
        PSF-fit footprint are dropped (edges of saturated stars, bad columns).
    streak_threshold : float
        Score level (sigma) at which long, thin features (satellite and
        aircraft trails) are traced; candidates on them are dropped.
    normalize_score : bool
        Divide the score by its robust (MAD) scatter over valid pixels when
        that exceeds 1, so that the threshold means at least what it says
        where the noise model is low (stacked images have correlated noise);
        a scatter below 1 is left alone, as the conservative side. The
        factor is kept in ``result.details["score_scale"]``.
    cosmic_rays : bool
        Look for cosmic rays (L.A.Cosmic) around every candidate in both
        input images, in the science image's own pixels, and drop the
        candidates they explain. Needed for single raw frames; harmless for
        calibrated frames and coadds, whose cosmic rays are already gone.
    """

    method: Literal["zogy", "classic"] = "zogy"
    threshold: float = 5.0
    align: Literal["auto", "wcs", "stars", "none"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    stamp_size: int = 63
    saturation_grow: int = 2
    astrometric_floor: float = 0.02
    model_error: float = 0.02
    max_dipole: float = 1.5
    max_masked_fraction: float = 0.1
    streak_threshold: float = 2.5
    normalize_score: bool = True
    cosmic_rays: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("zogy", "classic"):
            raise ValueError(f"method must be 'zogy' or 'classic', got {self.method!r}")
        if self.align not in ("auto", "wcs", "stars", "none"):
            raise ValueError(f"align must be auto, wcs, stars or none, got {self.align!r}")
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive number of sigma, got {self.threshold}")
        if self.stamp_size <= 0 or self.stamp_size % 2 == 0:
            raise ValueError(f"stamp_size must be odd and positive, got {self.stamp_size}")


@dataclass
class PreparedImage:
    """An image measured and ready to subtract.

    Attributes
    ----------
    data : numpy.ndarray
        Background-subtracted image (ADU), float32, masked pixels set to 0.
    variance : numpy.ndarray
        Per-pixel variance (ADU²): background plus the sources' photon noise.
    mask : numpy.ndarray
        bool, pixels not to be trusted (saturated and grown, non-finite, bad).
    sigma : float
        Global background rms (ADU).
    psf : numpy.ndarray
        Odd, unit-sum PSF stamp measured on the image (or given).
    sources : astropy.table.Table
        Sources extracted from the image.
    gain : float or None
        e-/ADU used for the source-noise term (from the header or estimated).
    sky : float
        The sky level that was subtracted (ADU), 0 for a sky-free image.
    read_noise : float
        e-, 0 when unknown.
    fwhm : float
        PSF FWHM, px (NaN when unknown).
    wcs : astropy.wcs.WCS or None
        Celestial WCS of the image grid.
    zero_point : float or None
        Photometric zero point, when known.
    name : str
        For messages.
    """

    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    sigma: float
    psf: np.ndarray
    sources: Table
    gain: float | None
    wcs: WCS | None
    zero_point: float | None
    name: str
    sky: float = 0.0
    read_noise: float = 0.0
    fwhm: float = float("nan")


@dataclass
class DiffProducts:
    """Everything one subtraction produces.

    Attributes
    ----------
    result : SubtractionResult
        D, its PSF and noise, the score image and the mask.
    candidates : astropy.table.Table
        One row per detection, with photometry, position and features.
    cutouts : numpy.ndarray
        (n, 3, size, size) float32 triplets (science, reference, difference).
    science : numpy.ndarray
        The science image on the reference grid, background-subtracted.
    reference : numpy.ndarray
        The reference image, background-subtracted.
    registration : dict
        How the science image was aligned (method, residual rms, sigma x/y).
    timings : dict
        Seconds per step.
    """

    result: SubtractionResult
    candidates: Table
    cutouts: np.ndarray
    science: np.ndarray
    reference: np.ndarray
    registration: dict[str, object]
    timings: dict[str, float] = field(default_factory=dict)


def saturation_mask(
    data: np.ndarray, saturation: float | None, grow: int = 2
) -> tuple[np.ndarray, float | None]:
    """Pixels at or above saturation, grown by ``grow`` px.

    When ``saturation`` is unknown, a level is taken from the data if many
    pixels share its maximum value (a clipped ADC), as in 16-bit frames
    without a SATURATE keyword.

    Returns
    -------
    mask : numpy.ndarray
        bool mask of saturated pixels, grown.
    level : float or None
        The saturation level used.
    """
    level = saturation
    if level is None:
        peak = float(np.max(data))
        if np.count_nonzero(data >= peak) >= 4:
            level = peak
    if level is None:
        return np.zeros(data.shape, bool), None
    mask = data >= 0.98 * level
    if grow > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=grow)
    return mask, level


def estimate_gain(level: float, sigma: float, read_noise: float | None) -> float | None:
    """Gain from a raw image's sky: ``var = sky / g + (rn / g)²`` solved for g."""
    if level <= 0 or sigma <= 0:
        return None
    rn = read_noise or 0.0
    # var*g² - sky*g - rn² = 0, positive root.
    var = sigma**2
    gain = (level + np.sqrt(level**2 + 4 * var * rn**2)) / (2 * var)
    return float(gain) if np.isfinite(gain) and gain > 0 else None


def prepare_image(
    data: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    gain: float | None = None,
    read_noise: float | None = None,
    saturation: float | None = None,
    wcs: WCS | None = None,
    psf: np.ndarray | None = None,
    zero_point: float | None = None,
    variance: np.ndarray | None = None,
    background_subtracted: bool = False,
    saturation_grow: int = 2,
    name: str = "image",
) -> PreparedImage:
    """Measure an image: background, noise, saturation, sources and PSF.

    Parameters
    ----------
    data : numpy.ndarray
        2-D image in ADU (raw sky included unless ``background_subtracted``).
    mask : numpy.ndarray, optional
        bool, pixels already known to be bad.
    gain, read_noise, saturation : float, optional
        From the header; the gain is estimated from the sky when missing and
        the image still holds its sky level.
    wcs : astropy.wcs.WCS, optional
        Celestial WCS.
    psf : numpy.ndarray, optional
        A known PSF stamp; measured from the image when not given.
    zero_point : float, optional
        Photometric zero point of the image, for candidate magnitudes.
    variance : numpy.ndarray, optional
        A per-pixel variance map already known (e.g. from calibration).
    background_subtracted : bool
        The image has no sky left (a coadd or a calibrated, sky-subtracted
        frame): the gain cannot be estimated from it.
    saturation_grow : int
        Growth of the saturation mask, px.
    name : str
        Used in error messages.
    """
    if data.ndim != 2:
        raise ValueError(f"{name}: image must be 2-D, got shape {data.shape}")
    # One float32 working copy, changed in place from here on: at 4096x4096
    # each extra image is 64 MB.
    image = np.array(data, dtype=np.float32, order="C", copy=True)
    bad = ~np.isfinite(image)
    if mask is not None:
        if mask.shape != image.shape:
            raise ValueError(f"{name}: mask shape {mask.shape} differs from image {image.shape}")
        bad |= mask
    image[bad] = 0.0
    sat, _level = saturation_mask(image, saturation, saturation_grow)
    bad |= sat
    image[bad] = 0.0

    bkg = estimate_background(image, mask=bad)
    rms_map = bkg.rms
    sigma = float(bkg.global_rms)
    sky = float(bkg.global_background)
    if gain is None and not background_subtracted:
        gain = estimate_gain(sky, sigma, read_noise)
    sub = image
    sub -= bkg.background
    sub[bad] = 0.0
    del bkg  # the sky map is not needed any more

    if variance is None:
        variance = np.square(rms_map, dtype=np.float32)
        if gain:
            positive = np.clip(sub, 0, None)
            positive /= np.float32(gain)
            variance += positive
            del positive
    variance = np.asarray(variance, dtype=np.float32)

    sources = extract_sources(sub, rms_map, mask=bad, threshold=SOURCE_THRESHOLD, gain=gain)
    if psf is None:
        model = measure_psf(sub, rms_map, sources=sources, mask=bad, gain=gain)
        psf, fwhm = model.stamp, float(model.fwhm_mean)
    else:
        fwhm = psf_fwhm(psf)
    return PreparedImage(
        data=sub,
        variance=variance,
        mask=bad,
        sigma=sigma,
        psf=psf,
        sources=sources,
        gain=gain,
        wcs=wcs,
        zero_point=zero_point,
        name=name,
        sky=sky,
        read_noise=float(read_noise or 0.0),
        fwhm=fwhm,
    )


def bright_star_xy(sources: Table, n_max: int = 80) -> np.ndarray:
    """(N, 2) positions of the brightest unsaturated sources, brightest first."""
    if len(sources) == 0:
        return np.zeros((0, 2))
    keep = ~np.asarray(sources["saturated"], bool) if "saturated" in sources.colnames else None
    table = sources[keep] if keep is not None else sources
    order = np.argsort(-np.asarray(table["flux"], float))[:n_max]
    return np.column_stack([np.asarray(table["x"], float), np.asarray(table["y"], float)])[order]


def _align(
    new: PreparedImage, ref: PreparedImage, config: DiffConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, object]]:
    """Put the science image, its variance and its mask on the reference grid."""
    if config.align == "none":
        if new.data.shape != ref.data.shape:
            raise ValueError(
                f"{new.name} {new.data.shape} and {ref.name} {ref.data.shape} differ in shape "
                "and cannot be subtracted without alignment"
            )
        return (
            new.data,
            new.variance,
            new.mask,
            {"method": "none", "sigma": (0.0, 0.0), "transform": None},
        )
    use_wcs = config.align in ("auto", "wcs") and new.wcs is not None and ref.wcs is not None
    refine: bool | str = "auto" if use_wcs else True
    if config.align == "wcs" and not use_wcs:
        missing = new.name if new.wcs is None else ref.name
        raise ValueError(f"{missing} has no celestial WCS; cannot align by WCS")
    aligned = align_to_grid(
        new.data,
        new.wcs if use_wcs else None,
        ref.wcs if use_wcs else None,
        ref.data.shape,
        variance=new.variance,
        mask=new.mask,
        sources_from=bright_star_xy(new.sources),
        sources_to=bright_star_xy(ref.sources),
        config=AlignConfig(refine=refine),
    )
    info = {
        "method": aligned.method,
        "residual_rms": aligned.residual_rms,
        "sigma": aligned.registration_sigma,
        "transform": aligned.transform,
    }
    return aligned.data, aligned.variance, aligned.mask, info


def _cosmic_ray_hits(
    image: PreparedImage, x: np.ndarray, y: np.ndarray, radius: float = 2.0, half: int = 16
) -> np.ndarray:
    """Which positions have a cosmic ray within ``radius`` px in ``image``.

    L.A.Cosmic runs on a small stamp around each position (with the sky put
    back, as its noise model needs), which costs milliseconds per candidate
    instead of seconds per frame. astroscrappy's OpenMP threads cost far
    more than they save on stamps this small (10-100x slower on a busy
    2-core machine), so the loop runs on one thread.
    """
    hits = np.zeros(len(x), dtype=bool)
    if image.gain is None or len(x) == 0:
        return hits
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="openmp"):
        return _cosmic_ray_loop(image, x, y, radius, half, hits)


def _cosmic_ray_loop(
    image: PreparedImage, x: np.ndarray, y: np.ndarray, radius: float, half: int, hits: np.ndarray
) -> np.ndarray:
    # Anything sharper than most of this image's PSF is not a star here.
    narrowest = 0.6 * image.fwhm if np.isfinite(image.fwhm) else 1.2
    config = CosmicRayConfig(min_star_fwhm=max(1.2, narrowest))
    ny, nx = image.data.shape
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        if not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        ix, iy = int(round(xi)), int(round(yi))
        x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
        y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
        if x1 - x0 < 8 or y1 - y0 < 8:
            continue
        stamp = image.data[y0:y1, x0:x1] + np.float32(image.sky)
        found = detect_cosmic_rays(
            stamp,
            gain=image.gain,
            read_noise=image.read_noise,
            mask=image.mask[y0:y1, x0:x1],
            background=image.sky,
            config=config,
        ).mask
        if found.any():
            cy, cx = np.nonzero(found)
            hits[i] = bool(np.min(np.hypot(cx + x0 - xi, cy + y0 - yi)) <= radius)
    return hits


def _drop_cosmic_rays(
    candidates: Table, new: PreparedImage, ref: PreparedImage, transform: object
) -> Table:
    """Candidates that a cosmic ray in either input explains, removed."""
    if len(candidates) == 0:
        return candidates
    x, y = np.asarray(candidates["x"], float), np.asarray(candidates["y"], float)
    nx_, ny_ = (x, y) if transform is None else transform(x, y)  # type: ignore[operator]
    hit = _cosmic_ray_hits(new, np.asarray(nx_), np.asarray(ny_)) | _cosmic_ray_hits(ref, x, y)
    kept = candidates[~hit]
    kept.meta["n_cosmic_rays"] = int(hit.sum())
    return kept


def normalize_score(result: SubtractionResult, stride: int = 7) -> float:
    """Scale ``result.score`` down to unit robust scatter; returns the factor divided out.

    Sources are a small fraction of the pixels, so the median absolute
    deviation of a sparse sample of valid pixels measures the noise. A
    scatter below 1 is kept (factor 1): raising the score would turn the
    noise model's caution into false candidates.
    """
    sample = result.score[~result.mask][::stride]
    if sample.size < 1000:
        return 1.0
    scale = float(1.4826 * np.median(np.abs(sample - np.median(sample))))
    result.details["score_mad"] = scale
    if not np.isfinite(scale) or scale <= 1.0:
        return 1.0
    result.score = result.score / np.float32(scale)
    result.details["score_scale"] = scale
    return scale


def streak_mask(score: np.ndarray, mask: np.ndarray, fwhm: float, threshold: float) -> np.ndarray:
    """Pixels of long, thin features in the score image (satellite trails).

    A trail is a ridge in the matched-filtered score; traced at a low
    threshold it is one long segment, much longer than the PSF and thin.
    """
    import sep

    data = np.ascontiguousarray(np.where(mask, 0, np.abs(score)), dtype=np.float32)
    try:
        objects, segments = sep.extract(
            data,
            threshold,
            minarea=int(max(10, 2 * fwhm)),
            filter_kernel=None,
            deblend_cont=1.0,
            segmentation_map=True,
        )
    except Exception:  # sep gives up on pathological images; nothing to trace then
        return np.zeros(score.shape, bool)
    long_thin = (objects["a"] > 3.0 * max(fwhm, 1.0)) & (objects["b"] < 0.25 * objects["a"])
    if not long_thin.any():
        return np.zeros(score.shape, bool)
    labels = np.nonzero(long_thin)[0] + 1
    return ndimage.binary_dilation(np.isin(segments, labels), iterations=2)


def _vet(candidates: Table, result: SubtractionResult, config: DiffConfig) -> Table:
    """Drop what the images themselves show is not a transient.

    Cuts that need no training: too much of the PSF footprint masked;
    sharper than the PSF (cosmic rays and hot pixels that calibration
    missed: second-moment size under 0.65 of the PSF's and a peak over 1.25
    times the PSF's for that flux); on a traced streak; a dipole; clearly
    not point-like where the shape is well measured (ellipticity over 0.6
    at S/N >= 15, or twice and a half the PSF's width at S/N >= 8: injected
    point sources never reach either). The streak's pixels
    join ``result.mask``: nothing there can be measured.
    """
    meta = candidates.meta
    psf_width = float(meta.get("psf_fwhm", np.nan))
    trails = streak_mask(result.score, result.mask, psf_width, config.streak_threshold)
    result.mask = result.mask | trails
    if len(candidates) == 0:
        return candidates
    area = np.pi * (DetectionConfig().fit_radius * psf_width) ** 2
    masked = np.asarray(candidates["n_bad"]) > config.max_masked_fraction * area
    sharp = (np.asarray(candidates["fwhm_ratio"]) < 0.65) & (
        np.asarray(candidates["sharpness"]) > 1.25
    )
    ix = np.clip(np.round(np.asarray(candidates["x"])).astype(int), 0, trails.shape[1] - 1)
    iy = np.clip(np.round(np.asarray(candidates["y"])).astype(int), 0, trails.shape[0] - 1)
    on_trail = trails[iy, ix]
    dipole = np.nan_to_num(np.asarray(candidates["dipole"], float)) > config.max_dipole
    # Well-measured shapes that no point source has: cosmic-ray tracks,
    # pieces of trails, galaxy residuals.
    snr = np.abs(np.nan_to_num(np.asarray(candidates["snr"], float)))
    ellipticity = np.nan_to_num(np.asarray(candidates["ellipticity"], float))
    width = np.nan_to_num(np.asarray(candidates["fwhm_ratio"], float))
    extended = ((snr >= 15) & (ellipticity > 0.6)) | ((snr >= 8) & (width > 2.5))
    extended &= ~(masked | sharp | on_trail | dipole)
    kept = candidates[~(masked | sharp | on_trail | dipole | extended)]
    kept.meta.update(
        n_masked_footprint=int(masked.sum()),
        n_sharp=int((sharp & ~masked).sum()),
        n_streak=int((on_trail & ~masked & ~sharp).sum()),
        n_dipole=int((dipole & ~on_trail & ~masked & ~sharp).sum()),
        n_extended=int(extended.sum()),
    )
    return kept


def _with_model_error(
    variance: np.ndarray, data: np.ndarray, error: float, *, in_place: bool = False
) -> np.ndarray:
    """``variance + (error * data)²`` in float32: into ``variance`` when it is ours."""
    term = np.multiply(data, np.float32(error), dtype=np.float32)
    np.square(term, out=term)
    if in_place and variance.dtype == np.float32:
        variance += term
        return variance
    term += variance
    return term


@dataclass
class Subtraction:
    """A science image subtracted from a reference, before detection.

    Attributes
    ----------
    result : SubtractionResult
        D, its PSF and noise, the score image and the mask.
    science : numpy.ndarray
        The science image on the reference grid, background-subtracted, 0
        where ``result.mask`` is set.
    registration : dict
        How the science image was aligned: method, residual rms, sigma (x, y)
        and the ``transform`` (a PixelTransform from grid to science pixels,
        or None).
    timings : dict
        Seconds per step.
    """

    result: SubtractionResult
    science: np.ndarray
    registration: dict[str, object]
    timings: dict[str, float] = field(default_factory=dict)


def subtract_pair(
    new: PreparedImage, ref: PreparedImage, config: DiffConfig | None = None
) -> Subtraction:
    """Align ``new`` onto ``ref``'s grid and subtract (ZOGY or classic).

    Parameters
    ----------
    new, ref : PreparedImage
        Science and reference images from :func:`prepare_image`. The result
        lives on the reference grid.
    config : DiffConfig, optional
    """
    config = config or DiffConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sci, sci_var, sci_mask, registration = _align(new, ref, config)
    timings["align"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mask = sci_mask | ref.mask
    if sci is new.data:
        sci = sci.copy()  # never write into the caller's image
    sci[mask] = 0.0  # spares the subtraction a copy of its own
    reg_sigma = registration.get("sigma") or (0.0, 0.0)
    ast = tuple(max(float(s), config.astrometric_floor) for s in reg_sigma)  # type: ignore[union-attr]
    # Zero points fitted against a catalogue fix the flux scaling better than
    # the pixels of one pair can; the data decide only when they are missing.
    flux_ratio = None
    if new.zero_point is not None and ref.zero_point is not None:
        flux_ratio = float(10 ** (0.4 * (ref.zero_point - new.zero_point)))
    if config.model_error > 0:
        sci_var = _with_model_error(
            sci_var, sci, config.model_error, in_place=sci_var is not new.variance
        )
        ref_var = _with_model_error(ref.variance, ref.data, config.model_error)
        # Both maps are ours now: fill the invalid pixels the way the
        # subtraction would, so it need not copy them.
        ref_var[mask] = np.float32(ref.sigma**2)
        if sci_var is not new.variance:
            sci_var[mask] = np.float32(new.sigma**2)
    else:
        ref_var = ref.variance
    if config.method == "zogy":
        subtract, method_config = (
            zogy_subtract,
            ZogyConfig(astrometric_sigma=ast, dtype=config.dtype, flux_ratio=flux_ratio),
        )
    else:
        subtract, method_config = (
            classic_subtract,
            ClassicConfig(dtype=config.dtype, flux_ratio=flux_ratio),
        )
    result = subtract(
        sci,
        ref.data,
        new.psf,
        ref.psf,
        sigma_new=new.sigma,
        sigma_ref=ref.sigma,
        var_new=sci_var,
        var_ref=ref_var,
        mask=mask,
        config=method_config,  # type: ignore[arg-type]
    )
    if config.normalize_score:
        normalize_score(result)
    timings["subtract"] = time.perf_counter() - t0
    return Subtraction(result=result, science=sci, registration=registration, timings=timings)


def zero_point_through(reference_zero_point: float | None, flux_ratio: float) -> float | None:
    """The zero point of a science image that has none, from its reference's and the
    flux ratio a subtraction fitted (reference counts per science count); None when
    the reference has none or the ratio is unusable."""
    ratio = float(flux_ratio)
    if reference_zero_point is None or not (np.isfinite(ratio) and ratio > 0):
        return None
    return float(reference_zero_point - 2.5 * np.log10(ratio))


def detect_unvetted(
    subtraction: Subtraction, new: PreparedImage, ref: PreparedImage, config: DiffConfig
) -> Table:
    """Every detection of a subtraction, measured, before :func:`find_candidates` vets them."""
    ref_xy = (
        np.column_stack([np.asarray(ref.sources["x"]), np.asarray(ref.sources["y"])])
        if len(ref.sources)
        else None
    )
    zero_point = new.zero_point
    if zero_point is None:
        zero_point = zero_point_through(ref.zero_point, subtraction.result.flux_ratio)
    return detect_candidates(
        subtraction.result,
        config=DetectionConfig(threshold=config.threshold, stamp_size=config.stamp_size),
        wcs=ref.wcs,
        zero_point=zero_point,
        science=subtraction.science,
        reference=ref.data,
        reference_sources_xy=ref_xy,
    )


def find_candidates(
    subtraction: Subtraction,
    new: PreparedImage,
    ref: PreparedImage,
    config: DiffConfig | None = None,
) -> tuple[Table, np.ndarray, dict[str, float]]:
    """Detect, measure and vet the candidates of a subtraction; cut their triplets.

    Parameters
    ----------
    subtraction : Subtraction
        From :func:`subtract_pair` on ``new`` and ``ref``.
    new, ref : PreparedImage
        The images it was made from (cosmic rays are looked for in each).
    config : DiffConfig, optional

    Returns
    -------
    candidates : astropy.table.Table
    cutouts : numpy.ndarray
        (n, 3, size, size) float32 triplets (science, reference, difference).
    timings : dict
        Seconds for detection and for the cutouts.
    """
    config = config or DiffConfig()
    result, sci = subtraction.result, subtraction.science
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    candidates = detect_unvetted(subtraction, new, ref, config)
    candidates = _vet(candidates, result, config)
    if config.cosmic_rays:
        candidates = _drop_cosmic_rays(
            candidates, new, ref, subtraction.registration.get("transform")
        )
    timings["detect"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cutouts = cutout_triplets(
        sci,
        ref.data,
        result.difference,
        np.asarray(candidates["x"]),
        np.asarray(candidates["y"]),
        size=config.stamp_size,
    )
    timings["cutouts"] = time.perf_counter() - t0
    return candidates, cutouts, timings


def difference_pair(
    new: PreparedImage, ref: PreparedImage, config: DiffConfig | None = None
) -> DiffProducts:
    """Subtract ``ref`` from ``new`` and find the candidates.

    :func:`subtract_pair` then :func:`find_candidates`.

    Parameters
    ----------
    new, ref : PreparedImage
        Science and reference images from :func:`prepare_image`. The result
        lives on the reference grid.
    config : DiffConfig, optional

    Returns
    -------
    DiffProducts
    """
    subtraction = subtract_pair(new, ref, config)
    candidates, cutouts, timings = find_candidates(subtraction, new, ref, config)
    return DiffProducts(
        result=subtraction.result,
        candidates=candidates,
        cutouts=cutouts,
        science=subtraction.science,
        reference=ref.data,
        registration=subtraction.registration,
        timings={**subtraction.timings, **timings},
    )
