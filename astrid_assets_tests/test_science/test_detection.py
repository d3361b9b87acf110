"""Candidate detection on the score and measurement on the difference image."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

from astrid_assets.science.detection import (
    CANDIDATE_COLUMNS,
    DetectionConfig,
    detect_candidates,
    psf_equivalent_fwhm,
)
from astrid_assets.science.psf import moffat_psf
from astrid_assets.science.subtraction import SubtractionResult

PSF_SIZE = 25


def _add_psf(image: np.ndarray, fwhm: float, x: float, y: float, flux: float) -> None:
    xi, yi = round(x), round(y)
    h = PSF_SIZE // 2
    stamp = flux * moffat_psf(fwhm, size=PSF_SIZE, offset=(x - xi, y - yi))
    y0, x0 = max(yi - h, 0), max(xi - h, 0)
    y1, x1 = min(yi + h + 1, image.shape[0]), min(xi + h + 1, image.shape[1])
    image[y0:y1, x0:x1] += stamp[y0 - yi + h : y1 - yi + h, x0 - xi + h : x1 - xi + h]


def _result(
    difference: np.ndarray, fwhm: float, sigma: float, mask: np.ndarray | None = None
) -> SubtractionResult:
    """A subtraction whose score is D matched-filtered by its PSF, in sigma."""
    psf = moffat_psf(fwhm, size=PSF_SIZE)
    norm = np.sqrt(np.sum(psf**2))
    score = fftconvolve(difference, psf[::-1, ::-1], mode="same") / (sigma * norm)
    if mask is None:
        mask = np.zeros(difference.shape, dtype=bool)
    return SubtractionResult(
        method="zogy",
        difference=difference.astype(np.float32),
        difference_psf=psf,
        difference_noise=sigma,
        score=score.astype(np.float32),
        mask=mask,
        flux_ratio=1.0,
    )


def _flux_for_snr(snr: float, fwhm: float, sigma: float) -> float:
    """Flux whose matched-filter S/N in white noise ``sigma`` is ``snr``."""
    psf = moffat_psf(fwhm, size=PSF_SIZE)
    return snr * sigma / np.sqrt(np.sum(psf**2))


def _scene(
    shape: tuple[int, int],
    sources: list[tuple[float, float, float]],
    *,
    fwhm: float = 3.0,
    sigma: float = 1.0,
    seed: int = 0,
    noise: bool = True,
) -> SubtractionResult:
    """Difference image with point sources given as ``(x, y, signed S/N)``."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, sigma, shape) if noise else np.zeros(shape)
    for x, y, snr in sources:
        _add_psf(image, fwhm, x, y, _flux_for_snr(snr, fwhm, sigma))
    return _result(image, fwhm, sigma)


def _match(table, x: np.ndarray, y: np.ndarray, radius: float = 1.5):
    dist, idx = cKDTree(np.column_stack([table["x"], table["y"]])).query(
        np.column_stack([x, y]), distance_upper_bound=radius
    )
    return dist, idx


def _grid_sources(n_side: int, spacing: float, rng: np.random.Generator) -> tuple:
    g = spacing * (np.arange(n_side) + 1.0)
    x, y = np.meshgrid(g, g)
    x = x.ravel() + rng.uniform(-0.5, 0.5, x.size)
    y = y.ravel() + rng.uniform(-0.5, 0.5, y.size)
    return x, y


def _position_bound(snr: np.ndarray, fwhm: float) -> np.ndarray:
    """Cramér-Rao bound on one coordinate of a point source in white noise, px."""
    psf = moffat_psf(fwhm, size=PSF_SIZE)
    u = np.fft.fftfreq(PSF_SIZE)
    slope = np.fft.ifft2(np.fft.fft2(psf) * 2j * np.pi * u[None, :]).real
    flux = _flux_for_snr(1.0, fwhm, 1.0) * np.abs(snr)
    return 1.0 / (flux * np.sqrt(np.sum(slope**2)))


def test_finds_every_injected_source_of_either_sign_at_the_right_place() -> None:
    rng = np.random.default_rng(11)
    x, y = _grid_sources(8, 60.0, rng)
    snr = np.geomspace(7.0, 60.0, x.size) * np.where(np.arange(x.size) % 2, -1.0, 1.0)
    result = _scene((540, 540), list(zip(x, y, snr, strict=True)), seed=1)
    table = detect_candidates(result)

    dist, idx = _match(table, x, y)
    assert np.all(np.isfinite(dist)), "an injected source with S/N >= 7 was missed"
    assert np.array_equal(np.asarray(table["sign"])[idx], np.sign(snr).astype(int))
    assert np.all(np.sign(table["score_peak"][idx]) == np.sign(snr))
    assert len(table) <= x.size + 2
    # Errors follow the Cramér-Rao bound, about 0.3 px per axis at S/N 7 and
    # 0.08 px at S/N 25 for this PSF: the 0.3 px bound holds from S/N 25.
    assert np.all(dist[np.abs(snr) >= 25] < 0.3)
    bound = _position_bound(snr, 3.0)
    z = np.concatenate(
        [(np.asarray(table["x"])[idx] - x) / bound, (np.asarray(table["y"])[idx] - y) / bound]
    )
    assert 0.7 < np.sqrt(np.mean(z**2)) < 1.4
    assert np.max(np.abs(z)) < 4.5


def test_positions_are_unbiased_without_noise() -> None:
    rng = np.random.default_rng(4)
    x, y = _grid_sources(6, 40.0, rng)
    result = _scene((280, 280), [(a, b, 30.0) for a, b in zip(x, y, strict=True)], noise=False)
    table = detect_candidates(result)
    dist, idx = _match(table, x, y)
    assert len(table) == x.size
    assert np.max(dist) < 0.05
    assert np.asarray(table["flux"])[idx] == pytest.approx(_flux_for_snr(30.0, 3.0, 1.0), rel=5e-3)


def test_pure_noise_gives_the_gaussian_number_of_false_detections() -> None:
    fwhm = 3.0
    rng = np.random.default_rng(2024)
    result = _result(rng.standard_normal((1024, 1024)), fwhm, 1.0)
    at_5 = detect_candidates(result, config=DetectionConfig(threshold=5.0, edge=12))
    at_4 = detect_candidates(result, config=DetectionConfig(threshold=4.0, edge=12))

    # Expected number of peaks above u of a smooth 2-D Gaussian field, both
    # signs (Euler characteristic, Adler 1981): 2 A lam u exp(-u^2/2) / (2 pi)^1.5,
    # lam the variance of the field's derivative along one axis. Sampling the
    # field on pixels misses some of the smallest excursions, so it is an
    # upper bound the count comes close to.
    psf = moffat_psf(fwhm, size=PSF_SIZE)
    power = np.abs(np.fft.fft2(psf, s=(256, 256))) ** 2
    k = 2.0 * np.pi * np.fft.fftfreq(256)
    lam = np.sum(k[None, :] ** 2 * power) / np.sum(power)
    area = 1000.0**2

    def expected(u: float) -> float:
        return 2.0 * area * lam * u * np.exp(-0.5 * u * u) / (2.0 * np.pi) ** 1.5

    assert expected(5.0) < 1.0
    assert len(at_5) <= 3
    assert 0.4 * expected(4.0) <= len(at_4) <= 1.2 * expected(4.0)
    assert 0.3 < np.mean(np.asarray(at_4["sign"]) > 0) < 0.7


def test_psf_flux_and_its_error_match_the_true_scatter() -> None:
    sigma, flux = 4.0, _flux_for_snr(25.0, 3.0, 4.0)
    rng = np.random.default_rng(7)
    x, y = _grid_sources(30, 33.0, rng)
    result = _scene(
        (1024, 1024), [(a, b, 25.0) for a, b in zip(x, y, strict=True)], sigma=sigma, seed=3
    )
    table = detect_candidates(result)
    dist, idx = _match(table, x, y)
    assert np.all(np.isfinite(dist))
    fluxes = np.asarray(table["flux"])[idx]
    errors = np.asarray(table["flux_err"])[idx]
    assert np.mean(fluxes) == pytest.approx(flux, rel=0.03)
    # 900 realisations: their scatter is itself known to 2.4%.
    assert np.median(errors) == pytest.approx(np.std(fluxes), rel=0.10)
    assert np.median(table["snr"][idx]) == pytest.approx(25.0, rel=0.05)
    assert np.median(table["chi2"][idx]) == pytest.approx(1.0, abs=0.1)


def test_hot_pixel_is_much_sharper_than_a_point_source() -> None:
    fwhm, sigma = 3.0, 1.0
    image = np.random.default_rng(5).normal(0.0, sigma, (200, 200))
    _add_psf(image, fwhm, 60.2, 100.4, _flux_for_snr(30.0, fwhm, sigma))
    psf = moffat_psf(fwhm, size=PSF_SIZE)
    image[100, 140] += 30.0 * sigma * np.sqrt(np.sum(psf**2)) / psf.max()
    table = detect_candidates(_result(image, fwhm, sigma))
    star = table[np.argmin(np.hypot(table["x"] - 60.2, table["y"] - 100.4))]
    spike = table[np.argmin(np.hypot(table["x"] - 140.0, table["y"] - 100.0))]
    assert star["sharpness"] == pytest.approx(1.0, abs=0.2)
    assert star["fwhm_ratio"] == pytest.approx(1.0, abs=0.2)
    assert spike["sharpness"] > 3.0
    assert spike["sharpness"] > 3.0 * star["sharpness"]
    assert spike["fwhm_ratio"] < 0.5
    assert spike["chi2"] > 5.0 * star["chi2"]


def test_misalignment_dipole_is_flagged_and_a_clean_source_is_not() -> None:
    fwhm, sigma = 3.0, 1.0
    flux = _flux_for_snr(80.0, fwhm, sigma)
    image = np.random.default_rng(8).normal(0.0, sigma, (200, 200))
    _add_psf(image, fwhm, 50.0, 100.0, flux)
    _add_psf(image, fwhm, 51.0, 100.0, -flux)
    _add_psf(image, fwhm, 150.0, 100.0, _flux_for_snr(20.0, fwhm, sigma))
    table = detect_candidates(_result(image, fwhm, sigma))

    lobes = table[np.hypot(table["x"] - 50.5, table["y"] - 100.0) < 4.0]
    assert sorted(lobes["sign"]) == [-1, 1]
    assert np.all(lobes["dipole"] > 0.7)
    assert np.all(lobes["dipole"] < 1.4)
    assert np.all(lobes["dipole_pair"])
    assert lobes["partner_id"][0] == lobes["id"][1]
    assert lobes["partner_id"][1] == lobes["id"][0]

    clean = table[np.argmin(np.hypot(table["x"] - 150.0, table["y"] - 100.0))]
    assert clean["dipole"] < 0.1
    assert not clean["dipole_pair"]
    assert clean["partner_id"] == -1
    assert clean["neg_frac"] < 0.3


def test_a_bright_source_is_listed_once() -> None:
    result = _scene((200, 200), [(100.3, 99.6, 400.0)], seed=9)
    table = detect_candidates(result)
    assert len(table) == 1
    assert table["sign"][0] == 1


def test_sky_positions_magnitudes_and_time_columns() -> None:
    fwhm, sigma = 3.0, 2.0
    flux = 5000.0
    image = np.random.default_rng(6).normal(0.0, sigma, (256, 256))
    _add_psf(image, fwhm, 127.0, 127.0, flux)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [128.0, 128.0]  # FITS 1-based: pixel (127, 127) 0-based
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-1.0 / 3600.0, 1.0 / 3600.0]
    table = detect_candidates(_result(image, fwhm, sigma), wcs=wcs, zero_point=27.0, mjd=60123.25)
    assert len(table) == 1
    row = table[0]
    assert row["ra"] == pytest.approx(150.0, abs=0.3 / 3600.0)
    assert row["dec"] == pytest.approx(2.0, abs=0.3 / 3600.0)
    ra, dec = wcs.all_pix2world(row["x"], row["y"], 0)
    assert row["ra"] == pytest.approx(float(ra), abs=1e-9)
    assert row["dec"] == pytest.approx(float(dec), abs=1e-9)
    assert row["mag"] == pytest.approx(27.0 - 2.5 * np.log10(row["flux"]), abs=1e-9)
    assert row["mag"] == pytest.approx(27.0 - 2.5 * np.log10(flux), abs=0.03)
    assert row["mag_err"] == pytest.approx(1.0857 * row["flux_err"] / row["flux"], rel=1e-3)
    assert row["mjd"] == 60123.25
    assert table["ra"].unit == "deg"
    assert table["mag"].unit == "mag"


def test_context_features_from_the_optional_inputs() -> None:
    result = _scene((200, 200), [(80.0, 90.0, 30.0), (150.0, 40.0, -30.0)], seed=2)
    science = np.arange(200 * 200, dtype=np.float64).reshape(200, 200)
    reference = -science
    bright = np.zeros((200, 200), dtype=bool)
    bright[90, 88] = True
    table = detect_candidates(
        result,
        science=science,
        reference=reference,
        reference_sources_xy=np.array([[80.0, 93.0], [10.0, 10.0]]),
        bright_star_mask=bright,
        bright_star_xy=np.array([[150.0, 45.0]]),
        config=DetectionConfig(bright_radius=8.0, match_radius=2.0),
    )
    table.sort("x")
    assert list(table["sign"]) == [1, -1]
    assert table["sci_peak"][0] == science[90, 80]
    assert table["ref_peak"][1] == reference[40, 150]
    assert table["dist_ref_source"][0] == pytest.approx(3.0, abs=0.3)
    assert not table["ref_match"][0]
    assert list(table["near_bright"]) == [True, True]

    plain = detect_candidates(result)
    assert np.all(np.isnan(plain["ra"])) and np.all(np.isnan(plain["mag"]))
    assert np.all(np.isnan(plain["sci_peak"])) and np.all(np.isnan(plain["dist_ref_source"]))
    assert not np.any(plain["near_bright"])


def test_masked_pixels_and_the_edge_are_not_detected() -> None:
    sources = [(50.0, 50.0, 40.0), (150.0, 150.0, 40.0), (4.0, 100.0, 40.0), (100.0, 60.0, 40.0)]
    result = _scene((200, 200), sources, seed=4)
    result.mask[140:161, 140:161] = True
    result.mask[60, 102] = True
    table = detect_candidates(result, config=DetectionConfig(edge=8))
    dist, _ = _match(table, np.array([s[0] for s in sources]), np.array([s[1] for s in sources]))
    assert list(np.isfinite(dist)) == [True, False, False, True]
    near = table[np.argmin(np.hypot(table["x"] - 100.0, table["y"] - 60.0))]
    assert near["n_bad"] == 1
    assert near["flux"] == pytest.approx(_flux_for_snr(40.0, 3.0, 1.0), rel=0.05)


def test_only_positive_peaks_when_asked_and_the_cap_keeps_the_strongest() -> None:
    sources = [(40.0, 40.0, 10.0), (100.0, 40.0, -30.0), (160.0, 40.0, 20.0), (40.0, 140.0, 50.0)]
    result = _scene((200, 200), sources, seed=12)
    positive = detect_candidates(result, config=DetectionConfig(both_signs=False))
    assert sorted(positive["x"].round()) == [40.0, 40.0, 160.0]

    capped = detect_candidates(result, config=DetectionConfig(max_candidates=2))
    assert len(capped) == 2
    assert capped.meta["truncated"] and capped.meta["n_detected"] == 4
    assert list(np.sign(capped["score_peak"])) == [1, -1]
    assert list(capped["id"]) == [1, 2]
    assert not detect_candidates(result).meta["truncated"]


def test_no_candidate_gives_an_empty_table_with_every_column() -> None:
    result = _result(np.zeros((64, 64)), 3.0, 1.0)
    table = detect_candidates(result, wcs=None, zero_point=25.0, mjd=60000.0)
    assert len(table) == 0
    assert table.colnames == list(CANDIDATE_COLUMNS)
    for name, (dtype, _, _) in CANDIDATE_COLUMNS.items():
        assert table[name].dtype == np.dtype(dtype), name
    assert table.meta["n_detected"] == 0
    assert table.meta["psf_fwhm"] == pytest.approx(psf_equivalent_fwhm(result.difference_psf))


def test_psf_equivalent_fwhm_of_a_gaussian_is_its_fwhm() -> None:
    yy, xx = np.mgrid[-15:16, -15:16]
    sigma = 2.0
    gauss = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    assert psf_equivalent_fwhm(gauss) == pytest.approx(2.3548 * sigma, rel=1e-3)


def test_inconsistent_inputs_are_rejected() -> None:
    good = _result(np.zeros((64, 64)), 3.0, 1.0)
    bad_shape = _result(np.zeros((64, 64)), 3.0, 1.0)
    bad_shape.score = np.zeros((60, 64), np.float32)
    with pytest.raises(ValueError, match="shape"):
        detect_candidates(bad_shape)
    even_psf = _result(np.zeros((64, 64)), 3.0, 1.0)
    even_psf.difference_psf = np.ones((4, 4)) / 16
    with pytest.raises(ValueError, match="odd"):
        detect_candidates(even_psf)
    no_noise = _result(np.zeros((64, 64)), 3.0, 1.0)
    no_noise.difference_noise = 0.0
    with pytest.raises(ValueError, match="difference_noise"):
        detect_candidates(no_noise)
    with pytest.raises(ValueError, match="science"):
        detect_candidates(good, science=np.zeros((10, 10)))
    with pytest.raises(ValueError, match="reference_sources_xy"):
        detect_candidates(_scene((64, 64), [(32.0, 32.0, 30.0)]), reference_sources_xy=np.zeros(5))
    with pytest.raises(ValueError, match="threshold"):
        DetectionConfig(threshold=-1.0)
    with pytest.raises(ValueError, match="stamp_size"):
        DetectionConfig(stamp_size=64)


def test_full_frame_with_two_hundred_candidates() -> None:
    rng = np.random.default_rng(1)
    x, y = _grid_sources(14, 140.0, rng)
    snr = rng.uniform(7.0, 50.0, x.size) * rng.choice([-1.0, 1.0], x.size)
    result = _scene((2048, 2048), list(zip(x, y, snr, strict=True)), seed=2)
    table = detect_candidates(result)
    assert len(table) >= x.size
