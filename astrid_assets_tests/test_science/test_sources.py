"""Source detection and measurement (SEP), on synthetic stars and a real image."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrid_assets.science.background import estimate_background
from astrid_assets.science.psf import moffat_psf
from astrid_assets.science.sources import (
    FLAG_SATURATED,
    SOURCE_COLUMNS,
    extract_sources,
    gaussian_kernel,
)

NOISE = 5.0


def _grid_of_stars(fwhm: float = 3.0, flux: float = 2e4, seed: int = 0, noise: float = NOISE):
    """Background-free image with a grid of stars at random sub-pixel positions."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, noise, (300, 300))
    xs, ys = [], []
    half = 15
    for gy in range(30, 280, 40):
        for gx in range(30, 280, 40):
            dx, dy = rng.uniform(-0.5, 0.5, 2)
            stamp = moffat_psf(fwhm, size=2 * half + 1, offset=(dx, dy))
            image[gy - half : gy + half + 1, gx - half : gx + half + 1] += flux * stamp
            xs.append(gx + dx)
            ys.append(gy + dy)
    return image, np.array(xs), np.array(ys)


def _match(table, xs, ys):
    d = np.hypot(table["x"][None, :] - xs[:, None], table["y"][None, :] - ys[:, None])
    return d.argmin(axis=1), d.min(axis=1)


def test_gaussian_kernel_of_fwhm_2_is_sextractors_default_mask() -> None:
    kernel = gaussian_kernel(2.0)
    expected = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0
    np.testing.assert_allclose(kernel, expected, rtol=1e-6)
    assert gaussian_kernel(4.0).shape == (5, 5)
    with pytest.raises(ValueError, match="FWHM"):
        gaussian_kernel(0.0)


def test_stars_are_found_with_accurate_positions_and_fluxes() -> None:
    image, xs, ys = _grid_of_stars()
    table = extract_sources(image, NOISE, gain=None)
    assert set(SOURCE_COLUMNS) <= set(table.colnames)
    idx, dist = _match(table, xs, ys)
    assert len(table) == len(xs)
    assert dist.max() < 0.05  # windowed centroids of S/N ~ 300 stars
    row = table[idx]
    # Kron flux holds nearly all of a Moffat (beta 3) star's light.
    assert np.median(row["flux"] / 2e4) == pytest.approx(0.97, abs=0.03)
    # Background-only errors: sqrt(area) * noise.
    assert np.all(row["snr"] > 100)
    assert np.all(row["flag"] == 0)
    assert np.median(row["ellipticity"]) < 0.05
    # 2 x half-light radius of a Moffat beta 3 is ~1.26 x its FWHM.
    assert np.median(row["fwhm"]) == pytest.approx(3.0 * 1.26, rel=0.1)
    assert np.all(row["flux_aper"] < row["flux"])
    assert np.all(row["peak"] > 0.05 * 2e4)


def test_gain_adds_source_poisson_noise_to_the_errors() -> None:
    image, _, _ = _grid_of_stars(seed=1)
    without = extract_sources(image, NOISE)
    with_gain = extract_sources(image, NOISE, gain=1.0)
    assert np.all(with_gain["flux_err"] > without["flux_err"])
    expected = np.sqrt(without["flux_err"] ** 2 + np.clip(without["flux"], 0, None) / 1.0)
    np.testing.assert_allclose(with_gain["flux_err"], expected, rtol=0.02)


def test_threshold_is_in_units_of_the_unfiltered_pixel_noise() -> None:
    rng = np.random.default_rng(2)
    noise_only = rng.normal(0.0, NOISE, (400, 400))
    # SExtractor's convention: 1.5 sigma of the raw pixel noise after a 3x3
    # smoothing is a ~4 sigma excursion of the smoothed image, and with
    # minarea 5 pure noise gives few detections.
    assert len(extract_sources(noise_only, NOISE)) < 40
    assert len(extract_sources(noise_only, NOISE, threshold=3.0)) == 0


def test_saturated_sources_are_flagged() -> None:
    image, xs, ys = _grid_of_stars(seed=3)
    background = 1000.0
    table = extract_sources(image, NOISE, saturation=background + 5000.0, background=background)
    idx, _ = _match(table, xs, ys)
    peak_of_stars = table["peak"][idx]
    saturated = table["saturated"][idx]
    assert np.all(saturated == (peak_of_stars + background >= background + 5000.0))
    assert np.all((table["flag"][idx][saturated] & FLAG_SATURATED) != 0)

    mask = np.zeros(image.shape, bool)
    mask[int(round(ys[0])), int(round(xs[0]))] = True
    table = extract_sources(image, NOISE, saturated_mask=mask)
    idx, _ = _match(table, xs, ys)
    assert table["saturated"][idx[0]] and table["saturated"].sum() == 1


def test_masked_and_nonfinite_pixels_are_not_detected() -> None:
    image, _, _ = _grid_of_stars(seed=4)
    mask = np.zeros(image.shape, bool)
    mask[:150] = True
    polluted = image.copy()
    polluted[200:210, 10:20] = np.nan
    polluted[250, 5] = np.inf
    table = extract_sources(polluted, NOISE, mask=mask)
    assert len(table) > 0
    assert np.all(table["y"] > 145)
    assert np.all(np.isfinite(table["x"])) and np.all(np.isfinite(table["flux"]))


def test_rms_map_and_scalar_give_the_same_sources() -> None:
    image, _, _ = _grid_of_stars(seed=5)
    scalar = extract_sources(image, NOISE)
    mapped = extract_sources(image, np.full(image.shape, NOISE, np.float32))
    assert len(scalar) == len(mapped)
    np.testing.assert_allclose(scalar["x"], mapped["x"], atol=1e-6)


def test_empty_image_gives_an_empty_table_with_all_columns() -> None:
    table = extract_sources(np.zeros((64, 64)), 1.0)
    assert len(table) == 0
    assert set(SOURCE_COLUMNS) <= set(table.colnames)


def test_wcs_adds_sky_coordinates() -> None:
    image, _, _ = _grid_of_stars(seed=6)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [150.0, 150.0]
    wcs.wcs.cdelt = [-0.5 / 3600, 0.5 / 3600]
    table = extract_sources(image, NOISE, wcs=wcs)
    sky = wcs.pixel_to_world(table["x"], table["y"])
    np.testing.assert_allclose(table["ra"], sky.ra.deg)
    np.testing.assert_allclose(table["dec"], sky.dec.deg)


def test_invalid_inputs_raise_clear_errors() -> None:
    image = np.zeros((64, 64))
    with pytest.raises(ValueError, match=r"rms shape \(32, 32\).*\(64, 64\)"):
        extract_sources(image, np.ones((32, 32)))
    with pytest.raises(ValueError, match=r"mask shape \(64, 32\).*\(64, 64\)"):
        extract_sources(image, 1.0, mask=np.zeros((64, 32), bool))
    with pytest.raises(ValueError, match="rms"):
        extract_sources(image, 0.0)
    with pytest.raises(ValueError, match="threshold"):
        extract_sources(image, 1.0, threshold=-1.0)
    with pytest.raises(ValueError, match="background shape"):
        extract_sources(image, 1.0, saturation=10.0, background=np.zeros((3, 3)))


def _ntt(real_data):
    folder = real_data / "images" / "sep_ntt"
    image = fits.getdata(folder / "image.fits")
    catalogue = np.loadtxt(folder / "image.cat")
    return image, catalogue


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
def test_recovers_sextractors_catalogue_on_a_real_image(real_data) -> None:
    image, cat = _ntt(real_data)
    bkg = estimate_background(image)
    table = extract_sources(bkg.subtract(image), bkg.rms)  # our defaults, deblending on
    # SExtractor's XWIN_IMAGE / YWIN_IMAGE are 1-based.
    _, dist = _match(table, cat[:, 3] - 1.0, cat[:, 4] - 1.0)
    assert len(cat) == 65
    assert np.mean(dist < 1.5) >= 0.95
    assert np.median(dist) < 0.05


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
def test_measurements_match_sextractor_with_its_settings(real_data) -> None:
    """The catalogue was made without deblending and with the global noise."""
    image, cat = _ntt(real_data)
    bkg = estimate_background(image)
    table = extract_sources(bkg.subtract(image), bkg.global_rms, deblend=False)
    assert len(table) == 65
    d = np.hypot(
        table["x_iso"][None, :] - (cat[:, 1] - 1.0)[:, None],
        table["y_iso"][None, :] - (cat[:, 2] - 1.0)[:, None],
    )
    idx = d.argmin(axis=1)
    assert np.all(d.min(axis=1) < 1e-3)
    row = table[idx]
    # That run had no minimum AUTO radius; compare where ours is not in force.
    good = 2.5 * row["kron_radius"] * np.sqrt(row["a"] * row["b"]) >= 1.75
    assert good.sum() >= 55
    np.testing.assert_allclose(row["flux"][good], cat[good, 15], rtol=2e-3)
    np.testing.assert_allclose(row["flux_err"][good], cat[good, 16], rtol=2e-3)
    np.testing.assert_allclose(row["flux_radius"][good], cat[good, 18], rtol=0.04, atol=0.01)
    win = np.hypot(row["x"] - (cat[:, 3] - 1.0), row["y"] - (cat[:, 4] - 1.0))
    assert np.median(win) < 0.01
