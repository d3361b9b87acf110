"""From raw exposures to measured frames and field references.

The survey-level steps, each a short chain of calls into the single-purpose
modules: calibration masters from a night's bias and flat frames; a raw
exposure calibrated, cleaned and measured (background, sources, PSF, zero
point, quality); the best epochs of a field aligned onto its grid and
coadded into a reference. The asset graph calls these once per partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from astrid_assets.science.align import AlignConfig, align_to_grid, refine_transform
from astrid_assets.science.background import Background, estimate_background
from astrid_assets.science.calibration import (
    BadPixelMask,
    MasterBias,
    MasterFlat,
    calibrate_delivered_frame,
    calibrate_frame,
    make_bad_pixel_mask,
    make_master_bias,
    make_master_flat,
)
from astrid_assets.science.photcal import ZeroPoint, ZeroPointError, fit_zero_point
from astrid_assets.science.pipeline import SOURCE_THRESHOLD, PreparedImage, bright_star_xy
from astrid_assets.science.psf import PsfModel, measure_psf
from astrid_assets.science.quality import FrameQuality, frame_quality
from astrid_assets.science.reference import Reference, ReferenceConfig, build_reference
from astrid_assets.science.sources import extract_sources

__all__ = [
    "CalibrationMasters",
    "FieldReference",
    "ProcessedExposure",
    "build_field_reference",
    "make_calibration_masters",
    "process_exposure",
    "refine_wcs",
    "satellite_trails",
]


@dataclass
class CalibrationMasters:
    """A night's master bias, master flat and bad-pixel mask.

    All three are None for a night whose frames arrive calibrated (the
    source delivered no bias or flat frames): :meth:`delivered`.
    """

    bias: MasterBias | None
    flat: MasterFlat | None
    bad_pixels: BadPixelMask | None

    @classmethod
    def delivered(cls) -> CalibrationMasters:
        """No masters: the night's exposures were calibrated by their observatory."""
        return cls(bias=None, flat=None, bad_pixels=None)

    @property
    def empty(self) -> bool:
        """True when there are no masters to apply."""
        return self.bias is None


def make_calibration_masters(
    bias_frames: Sequence[np.ndarray], flat_frames: Sequence[np.ndarray]
) -> CalibrationMasters:
    """Combine a night's bias and flat frames and find the bad pixels."""
    bias = make_master_bias(bias_frames)
    flat = make_master_flat(flat_frames, bias)
    return CalibrationMasters(bias=bias, flat=flat, bad_pixels=make_bad_pixel_mask(bias, flat))


def refine_wcs(
    wcs: WCS, sources: Table, catalog: Table, *, tolerance: float = 0.5
) -> tuple[WCS, bool]:
    """Correct a header WCS that is off, by matching the frame's stars to the catalogue.

    The catalogue is projected through ``wcs``; when its bright stars do not
    fall within ``tolerance`` px (median) of detected sources, the two star
    lists are matched by their patterns (astroalign) and the affine map
    ``p_header = M p_true + o`` found is folded into the WCS:
    ``CRPIX -> M^-1 (CRPIX - o)`` and ``PC -> PC M`` (0-based pixels).

    Returns
    -------
    wcs : astropy.wcs.WCS
        The corrected WCS, or ``wcs`` itself when it was good.
    changed : bool
    """
    from astrid_assets.science.pipeline import bright_star_xy

    detected = bright_star_xy(sources)
    if len(detected) < 5 or len(catalog) < 5:
        return wcs, False
    cx, cy = wcs.world_to_pixel_values(np.asarray(catalog["ra"]), np.asarray(catalog["dec"]))
    order = np.argsort(np.asarray(catalog["mag"]))
    predicted = np.column_stack([cx, cy])[order]
    lo, hi = detected.min(axis=0) - 20, detected.max(axis=0) + 20
    predicted = predicted[np.all((predicted > lo) & (predicted < hi), axis=1)][:80]
    if len(predicted) < 5:
        return wcs, False
    dist, _ = cKDTree(detected).query(predicted, distance_upper_bound=3 * tolerance)
    close = np.isfinite(dist)
    if (
        close.sum() >= 0.3 * min(len(predicted), len(detected))
        and np.median(dist[close]) < tolerance
    ):
        return wcs, False
    try:
        match = refine_transform(predicted, detected)
    except ValueError:
        return wcs, False
    # The match maps detected (true) pixels to header-predicted pixels.
    matrix, offset = match.transform.affine()
    fixed = wcs.deepcopy()
    inverse = np.linalg.inv(matrix)
    fixed.wcs.crpix = inverse @ (np.asarray(wcs.wcs.crpix) - 1.0 - offset) + 1.0
    if fixed.wcs.has_cd():
        fixed.wcs.cd = np.asarray(wcs.wcs.cd) @ matrix
    else:
        fixed.wcs.pc = np.asarray(wcs.wcs.get_pc()) @ matrix
    fixed.wcs.set()
    return fixed, True


@dataclass
class ProcessedExposure:
    """A calibrated exposure with everything measured on it.

    Attributes
    ----------
    data : numpy.ndarray
        Calibrated, background-subtracted image (ADU), float32; 0 where masked.
    variance : numpy.ndarray
        Per-pixel variance (ADU²), sky and source photon noise plus read noise.
    mask, flags : numpy.ndarray
        bool mask and the calibration's reason bits.
    background : Background
        The subtracted sky and its rms.
    sources : astropy.table.Table
        Sources above :data:`~astrid_assets.science.pipeline.SOURCE_THRESHOLD`.
    psf : PsfModel
        PSF measured on the frame.
    zero_point : ZeroPoint or None
        Fitted against the reference catalogue, when one was given and matched.
    quality : FrameQuality
        Seeing, depth, sky, star count, masked fraction.
    wcs : astropy.wcs.WCS or None
    gain, read_noise : float
    """

    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    flags: np.ndarray
    background: Background
    sources: Table
    psf: PsfModel
    zero_point: ZeroPoint | None
    quality: FrameQuality
    wcs: WCS | None
    gain: float
    read_noise: float

    def prepared(self, name: str = "science") -> PreparedImage:
        """This exposure as the science side of a subtraction."""
        return PreparedImage(
            data=self.data,
            variance=self.variance,
            mask=self.mask,
            sigma=float(self.background.global_rms),
            psf=self.psf.stamp,
            sources=self.sources,
            gain=self.gain,
            wcs=self.wcs,
            zero_point=None if self.zero_point is None else self.zero_point.zero_point,
            name=name,
            sky=float(self.background.global_background),
            read_noise=self.read_noise,
            fwhm=float(self.psf.fwhm_mean),
        )


def process_exposure(
    raw: np.ndarray,
    masters: CalibrationMasters | None,
    *,
    gain: float,
    read_noise: float,
    saturation: float | None,
    wcs: WCS | None = None,
    catalog: Table | None = None,
    pixel_scale: float | None = None,
    header_zero_point: float | None = None,
) -> ProcessedExposure:
    """Calibrate a raw exposure and measure it.

    Parameters
    ----------
    raw : numpy.ndarray
        Raw frame (ADU, bias included), or a frame its observatory already
        calibrated when ``masters`` is None or empty.
    masters : CalibrationMasters or None
        The night's masters; None (or :meth:`CalibrationMasters.delivered`)
        for a delivered calibrated frame
        (:func:`~astrid_assets.science.calibration.calibrate_delivered_frame`).
    gain, read_noise, saturation : float
        e-/ADU, e-, raw ADU (bias included).
    wcs : astropy.wcs.WCS, optional
        The frame's WCS; needed to match the reference catalogue.
    catalog : astropy.table.Table, optional
        Reference catalogue (ra, dec, mag[, mag_err]) for the zero point.
    pixel_scale : float, optional
        Arcseconds per pixel, for the seeing in arcseconds.
    header_zero_point : float, optional
        The zero point the frame's header states, used when no catalogue
        calibrates the frame (``n_stars`` 0, error NaN).
    """
    if masters is None or masters.empty:
        cal = calibrate_delivered_frame(
            raw, gain=gain, read_noise=read_noise, saturation=saturation
        )
    else:
        cal = calibrate_frame(
            raw,
            masters.bias,
            masters.flat,
            gain=gain,
            read_noise=read_noise,
            saturation=saturation,
            bad_pixel_mask=masters.bad_pixels,
        )
    mask = cal.mask
    background = estimate_background(cal.data, mask=mask)
    data = background.subtract(cal.data).astype(np.float32)
    data[mask] = 0.0
    sources = extract_sources(
        data,
        background.rms,
        threshold=SOURCE_THRESHOLD,
        mask=mask,
        gain=gain,
        saturated_mask=mask,
        wcs=wcs,
    )
    psf = measure_psf(data, background.rms, sources=sources, mask=mask, gain=gain)
    zero_point = None
    if catalog is not None and wcs is not None:
        wcs, corrected = refine_wcs(wcs, sources, catalog)
        if corrected:
            world = wcs.pixel_to_world_values(np.asarray(sources["x"]), np.asarray(sources["y"]))
            sources["ra"], sources["dec"] = world
        try:
            zero_point = fit_zero_point(sources, catalog, wcs=wcs)
        except ZeroPointError:
            zero_point = None
    if zero_point is None and header_zero_point is not None:
        zero_point = ZeroPoint.stated(header_zero_point)
    quality = frame_quality(
        background, psf, sources=sources, zero_point=zero_point, mask=mask, pixel_scale=pixel_scale
    )
    return ProcessedExposure(
        data=data,
        variance=cal.variance,
        mask=mask,
        flags=cal.flags,
        background=background,
        sources=sources,
        psf=psf,
        zero_point=zero_point,
        quality=quality,
        wcs=wcs,
        gain=gain,
        read_noise=read_noise,
    )


def satellite_trails(exposure: ProcessedExposure, threshold: float = 2.5) -> np.ndarray:
    """Pixels of satellite and aircraft trails in a calibrated exposure.

    A trail is spread over a few pixels at a few sigma each, under a
    per-pixel rejection threshold, but in the image filtered with its own
    PSF it is a long thin ridge, traced like trails in the score image.

    Parameters
    ----------
    exposure : ProcessedExposure
    threshold : float
        Tracing threshold on the PSF-filtered S/N.

    Returns
    -------
    numpy.ndarray
        bool, True on the trails (grown by two pixels).
    """
    from astrid_assets.science.pipeline import streak_mask
    from astrid_assets.science.subtraction import fftconvolve

    psf = exposure.psf.stamp / exposure.psf.stamp.sum()
    data = np.where(exposure.mask, 0.0, exposure.data).astype(np.float32)
    filtered = fftconvolve(data, psf[::-1, ::-1], mode="same")
    noise = exposure.background.global_rms * np.sqrt(np.sum(psf**2))
    snr = (filtered / noise).astype(np.float32)
    return streak_mask(snr, exposure.mask, float(exposure.psf.fwhm_mean), threshold)


@dataclass
class FieldReference:
    """A field's reference coadd, measured and ready to subtract from."""

    reference: Reference
    prepared: PreparedImage
    registration: list[dict[str, object]]


def build_field_reference(
    exposures: Sequence[ProcessedExposure],
    wcs: WCS,
    shape: tuple[int, int],
    *,
    grid_stars_xy: np.ndarray | None = None,
    config: ReferenceConfig | None = None,
) -> FieldReference:
    """Align epochs of a field onto its grid and coadd the best of them.

    Parameters
    ----------
    exposures : sequence of ProcessedExposure
        Candidate epochs, each with a WCS and a zero point.
    wcs : astropy.wcs.WCS
        The field's reference grid.
    shape : (int, int)
        Shape of the grid.
    grid_stars_xy : numpy.ndarray, optional
        (N, 2) positions of bright catalogue stars on the grid, brightest
        first, to refine an epoch whose WCS is off.
    config : ReferenceConfig
    """
    usable = [e for e in exposures if e.wcs is not None and e.zero_point is not None]
    if not usable:
        raise ValueError("no epoch with both a WCS and a zero point to build a reference from")
    aligned = []
    registration = []
    for exposure in usable:
        # A trail in one epoch sits below the coadd's per-pixel rejection; the
        # other epochs fill in where it is masked.
        trails = satellite_trails(exposure)
        result = align_to_grid(
            exposure.data,
            exposure.wcs,
            wcs,
            shape,
            variance=exposure.variance,
            mask=exposure.mask | trails,
            sources_from=bright_star_xy(exposure.sources),
            sources_to=grid_stars_xy,
            config=AlignConfig(refine="auto" if grid_stars_xy is not None else False),
        )
        aligned.append(result)
        registration.append(
            {
                "method": result.method,
                "residual_rms": result.residual_rms,
                "trail_fraction": float(trails.mean()),
            }
        )
    reference = build_reference(
        aligned,
        None,
        [e.psf.stamp for e in usable],
        [e.zero_point.zero_point for e in usable],  # type: ignore[union-attr]
        config=config or ReferenceConfig(),
    )
    background = estimate_background(reference.data, mask=reference.mask)
    data = background.subtract(reference.data).astype(np.float32)
    data[reference.mask] = 0.0
    sources = extract_sources(
        data, background.rms, threshold=SOURCE_THRESHOLD, mask=reference.mask, wcs=wcs
    )
    prepared = PreparedImage(
        data=data,
        variance=reference.variance.astype(np.float32),
        mask=reference.mask,
        sigma=float(background.global_rms),
        psf=reference.psf,
        sources=sources,
        gain=None,
        wcs=wcs,
        zero_point=reference.zero_point,
        name="reference",
        fwhm=float(reference.fwhm),
    )
    return FieldReference(reference=reference, prepared=prepared, registration=registration)
