"""The embedded survey end to end: simulate, calibrate, build references, subtract.

These functions run the same chain on the simulated survey that the asset
graph runs on any survey, and add what only a simulation can: the truth. The
demo, the completeness benchmark and the end-to-end tests use them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from astrid_assets.science.injection import (
    difference_snr,
    inject_point_sources,
    match_to_truth,
    place_sources,
)
from astrid_assets.science.photcal import ZeroPoint
from astrid_assets.science.pipeline import (
    DiffConfig,
    DiffProducts,
    difference_pair,
    subtract_pair,
    zero_point_through,
)
from astrid_assets.science.processing import (
    CalibrationMasters,
    FieldReference,
    ProcessedExposure,
    build_field_reference,
    make_calibration_masters,
    process_exposure,
)
from astrid_assets.science.simulate import (
    SimulatedExposure,
    SurveyConfig,
    field_wcs,
    reference_catalog,
    simulate_calibration_frames,
    simulate_exposure,
)

__all__ = [
    "InjectionRun",
    "NightResult",
    "catalog_stars_on_grid",
    "classify_candidates",
    "grid_stars",
    "inject_fakes",
    "process_simulated",
    "recover_fakes",
    "simulated_reference",
    "subtract_night",
    "truth_on_grid",
]

ASTROPHYSICAL = ("supernova", "variable", "asteroid", "flare")
Progress = Callable[[str], None]


def _noop(_: str) -> None:
    return None


def process_simulated(
    config: SurveyConfig, night: str, field: str, masters: CalibrationMasters | None = None
) -> tuple[SimulatedExposure, ProcessedExposure]:
    """Simulate one exposure and process it with its night's calibration masters
    (made from the night's simulated frames unless given)."""
    if masters is None:
        frames = simulate_calibration_frames(config, night)
        masters = make_calibration_masters(frames.biases, frames.flats)
    exposure = simulate_exposure(config, night, field)
    header = exposure.header
    processed = process_exposure(
        exposure.data,
        masters,
        gain=float(header["GAIN"]),
        read_noise=float(header["RDNOISE"]),
        saturation=float(header["SATURATE"]),
        wcs=WCS(header),
        catalog=reference_catalog(config, field),
        pixel_scale=config.pixel_scale,
    )
    return exposure, processed


def catalog_stars_on_grid(
    catalog: Table, wcs: WCS, shape: tuple[int, int], n_max: int = 80
) -> np.ndarray:
    """Catalogue stars projected onto a grid, brightest first, (N, 2).

    Stars within 10 px of an edge are left out; ``n_max`` at most.
    """
    x, y = wcs.world_to_pixel_values(np.asarray(catalog["ra"]), np.asarray(catalog["dec"]))
    ny, nx = shape
    inside = (x > 10) & (x < nx - 10) & (y > 10) & (y < ny - 10)
    mags = np.asarray(catalog["mag"])
    order = np.argsort(mags[inside])
    return np.column_stack([x[inside], y[inside]])[order][:n_max]


def grid_stars(config: SurveyConfig, field: str, n_max: int = 80) -> np.ndarray:
    """Bright catalogue stars on the field's grid, brightest first, (N, 2)."""
    return catalog_stars_on_grid(
        reference_catalog(config, field), field_wcs(config, field), config.shape, n_max
    )


def simulated_reference(
    config: SurveyConfig,
    field: str,
    nights: Sequence[str],
    progress: Progress = _noop,
) -> FieldReference:
    """Simulate and process a field's reference epochs and coadd them."""
    processed = []
    for night in nights:
        progress(f"reference epoch {night}")
        processed.append(process_simulated(config, night, field)[1])
    return build_field_reference(
        processed,
        field_wcs(config, field),
        config.shape,
        grid_stars_xy=grid_stars(config, field),
    )


def truth_on_grid(truth: Table, grid_wcs: WCS) -> Table:
    """A simulated exposure's astrophysical truth with positions on the reference grid."""
    keep = np.isin(np.asarray(truth["type"]).astype(str), ASTROPHYSICAL)
    out = Table(truth[keep], copy=True)
    gx, gy = grid_wcs.world_to_pixel_values(np.asarray(out["ra"]), np.asarray(out["dec"]))
    out["grid_x"] = gx
    out["grid_y"] = gy
    return out


@dataclass
class InjectionRun:
    """Fake point sources injected into one exposure and whether they came back.

    Attributes
    ----------
    table : astropy.table.Table
        One row per fake: x, y (exposure pixels), grid_x, grid_y, flux (ADU),
        mag, snr (ideal difference S/N), snr_science (PSF S/N in the science
        image alone), masked (it fell where the difference is invalid),
        recovered, and the candidate's measured flux.
    """

    table: Table


@dataclass
class NightResult:
    """One night and field subtracted against the field's reference.

    Attributes
    ----------
    exposure : SimulatedExposure
    processed : ProcessedExposure
    products : DiffProducts
    truth : astropy.table.Table
        Astrophysical truth on the grid, with ``matched``.
    injection : InjectionRun or None
    false_candidates : int
        Candidates matching neither truth nor an injected fake.
    candidate_class : numpy.ndarray
        Per candidate: "fake", the truth type it matched, or "false".
    """

    exposure: SimulatedExposure
    processed: ProcessedExposure
    products: DiffProducts
    truth: Table
    injection: InjectionRun | None
    false_candidates: int
    candidate_class: np.ndarray


def tie_to_reference(
    processed: ProcessedExposure, reference: FieldReference, config: DiffConfig | None = None
) -> ProcessedExposure:
    """``processed`` with a zero point, when it has none, from its reference's and the
    flux ratio of their subtraction (as the candidates' magnitudes are tied)."""
    if processed.zero_point is not None:
        return processed
    result = subtract_pair(processed.prepared(), reference.prepared, config).result
    zero_point = zero_point_through(reference.prepared.zero_point, result.flux_ratio)
    if zero_point is None:
        return processed
    return replace(processed, zero_point=ZeroPoint.stated(zero_point))


def inject_fakes(
    processed: ProcessedExposure,
    psf: np.ndarray,
    wcs: WCS,
    reference: FieldReference,
    grid_wcs: WCS,
    n_fakes: int,
    snr_range: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[ProcessedExposure, Table]:
    """Add fakes spanning ``snr_range`` in ideal difference S/N.

    Parameters
    ----------
    processed : ProcessedExposure
        The calibrated exposure to inject into.
    psf : numpy.ndarray
        PSF stamp the fakes are drawn with: the true one on a simulation,
        the measured one (``processed.psf.stamp``) anywhere else.
    wcs : astropy.wcs.WCS
        The exposure's pixel-to-sky map, to place the fakes on the grid.
    reference : FieldReference
    grid_wcs : astropy.wcs.WCS
        The reference grid.
    n_fakes : int
    snr_range : (float, float)
    rng : numpy.random.Generator

    Returns
    -------
    ProcessedExposure
        A copy with the fakes added to the data and their photon noise to
        the variance.
    astropy.table.Table
        One row per fake: x, y, grid_x, grid_y, flux, mag, snr, snr_science.
    """
    x, y = place_sources(
        processed.data.shape, n_fakes, rng, margin=60, min_separation=30, avoid=processed.mask
    )
    world = wcs.pixel_to_world_values(x, y)
    gx, gy = grid_wcs.world_to_pixel_values(*world)
    ix, iy = np.round(gx).astype(int), np.round(gy).astype(int)
    ny, nx = reference.prepared.data.shape
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    inside[inside] &= ~reference.prepared.mask[iy[inside], ix[inside]]
    x, y, gx, gy, ix, iy = (a[inside] for a in (x, y, gx, gy, ix, iy))
    var_new = processed.variance[np.round(y).astype(int), np.round(x).astype(int)]
    var_ref = reference.prepared.variance[iy, ix]
    ratio = 10 ** (0.4 * (reference.prepared.zero_point - processed.zero_point.zero_point))
    unit = difference_snr(np.ones_like(x), psf, reference.prepared.psf, var_new, var_ref, ratio)
    target = rng.uniform(*snr_range, size=x.size)
    flux = target / unit
    injected = inject_point_sources(processed.data, psf, x, y, flux, gain=processed.gain, rng=rng)
    variance = processed.variance + (injected.model / processed.gain).astype(np.float32)
    science_only = difference_snr(flux, psf, psf, var_new, 0.0)
    zp = processed.zero_point.zero_point
    table = Table(
        {
            "x": x,
            "y": y,
            "grid_x": gx,
            "grid_y": gy,
            "flux": flux,
            "mag": zp - 2.5 * np.log10(flux),
            "snr": target,
            "snr_science": science_only,
        }
    )
    return replace(processed, data=injected.image, variance=variance), table


def classify_candidates(candidates: Table, truth: Table, match_radius: float = 2.0) -> np.ndarray:
    """What each candidate is, by position against the simulator's truth.

    Parameters
    ----------
    candidates : astropy.table.Table
        x, y on the reference grid.
    truth : astropy.table.Table
        From :func:`truth_on_grid`; gains a ``matched`` column.
    match_radius : float
        Pixels.

    Returns
    -------
    numpy.ndarray of str
        Per candidate: the truth type it matched (supernova, variable,
        asteroid, flare), "truth" when it lies near an entry matched by a
        closer candidate, or "false".
    """
    cx, cy = np.asarray(candidates["x"], float), np.asarray(candidates["y"], float)
    klass = np.full(len(candidates), "false", dtype=object)
    tm = match_to_truth(cx, cy, truth["grid_x"], truth["grid_y"], match_radius)
    truth["matched"] = tm.truth_matched
    for ti, ci in enumerate(tm.truth_to_candidate):
        if ci >= 0:
            klass[ci] = str(truth["type"][ti])
    # Candidates near a truth entry but not its nearest still belong to it.
    klass[(klass == "false") & tm.candidate_matched] = "truth"
    return klass


def recover_fakes(
    fakes: Table, candidates: Table, mask: np.ndarray, match_radius: float = 2.0
) -> Table:
    """Which injected fakes came back as positive candidates.

    Parameters
    ----------
    fakes : astropy.table.Table
        From :func:`inject_fakes` (grid_x, grid_y on the reference grid).
    candidates : astropy.table.Table
        The candidates of the difference made with the fakes in.
    mask : numpy.ndarray
        The difference's invalid pixels.
    match_radius : float
        Pixels.

    Returns
    -------
    astropy.table.Table
        ``fakes`` with ``masked`` (it fell where the difference is invalid,
        so no method could find it), ``recovered`` and ``measured_flux``;
        ``meta["candidate_is_fake"]`` flags the candidates that matched one.
    """
    out = Table(fakes, copy=True)
    cx, cy = np.asarray(candidates["x"], float), np.asarray(candidates["y"], float)
    fm = match_to_truth(cx, cy, out["grid_x"], out["grid_y"], match_radius)
    sign = np.asarray(candidates["sign"]) if len(candidates) else np.zeros(0)
    idx = fm.truth_to_candidate
    positive = np.array([i >= 0 and sign[i] > 0 for i in idx], dtype=bool)
    gx = np.clip(np.round(np.asarray(out["grid_x"])).astype(int), 0, mask.shape[1] - 1)
    gy = np.clip(np.round(np.asarray(out["grid_y"])).astype(int), 0, mask.shape[0] - 1)
    out["masked"] = mask[gy, gx]
    out["recovered"] = positive
    flux = np.asarray(candidates["flux"]) if len(candidates) else np.zeros(1)
    out["measured_flux"] = np.where(positive, flux[np.maximum(idx, 0)], np.nan)
    out.meta["candidate_is_fake"] = np.asarray(fm.candidate_matched, dtype=bool)
    return out


def subtract_night(
    config: SurveyConfig,
    field: str,
    night: str,
    reference: FieldReference,
    *,
    diff_config: DiffConfig | None = None,
    n_fakes: int = 0,
    snr_range: tuple[float, float] = (2.0, 20.0),
    match_radius: float = 2.0,
    seed: int = 0,
) -> NightResult:
    """Simulate, process and subtract one night, optionally with injected fakes.

    Candidates are matched to the astrophysical truth and to the fakes within
    ``match_radius`` px on the reference grid; the rest are false.
    """
    exposure, processed = process_simulated(config, night, field)
    if processed.zero_point is None:
        raise ValueError(f"{field} {night}: no zero point could be fitted")
    grid_wcs = field_wcs(config, field)
    injection_table = None
    science = processed
    if n_fakes:
        rng = np.random.default_rng([seed, config.seed, int(night.replace("-", ""))])
        science, injection_table = inject_fakes(
            processed, exposure.psf, exposure.wcs, reference, grid_wcs, n_fakes, snr_range, rng
        )
    products = difference_pair(science.prepared(), reference.prepared, diff_config)
    cands = products.candidates

    truth = truth_on_grid(exposure.truth, grid_wcs)
    klass = classify_candidates(cands, truth, match_radius)
    run = None
    if injection_table is not None:
        recovered = recover_fakes(injection_table, cands, products.result.mask, match_radius)
        klass[(klass == "false") & recovered.meta.pop("candidate_is_fake")] = "fake"
        run = InjectionRun(table=recovered)
    return NightResult(
        exposure=exposure,
        processed=processed,
        products=products,
        truth=truth,
        injection=run,
        false_candidates=int(np.sum(klass == "false")),
        candidate_class=klass.astype(str),
    )
