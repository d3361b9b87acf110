"""PSF measured from an image's own stars, and the Moffat model helpers."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from astrid_assets.science.background import estimate_background
from astrid_assets.science.psf import (
    InsufficientStarsError,
    PsfModel,
    measure_psf,
    moffat_psf,
)
from astrid_assets.science.sources import extract_sources

NOISE = 5.0


def _star_field(
    fwhm: float,
    *,
    beta: float = 3.0,
    ellipticity: float = 0.0,
    theta: float = 0.0,
    n: int = 150,
    shape: tuple[int, int] = (512, 512),
    seed: int = 0,
    gain: float | None = 2.0,
) -> np.ndarray:
    """Background-subtracted image of Moffat stars with sky and photon noise."""
    rng = np.random.default_rng(seed)
    half = max(10, int(4 * fwhm))
    model = np.zeros(shape)
    xs = rng.uniform(half, shape[1] - half - 1, n)
    ys = rng.uniform(half, shape[0] - half - 1, n)
    fluxes = 10 ** rng.uniform(3.0, 5.5, n)
    for x, y, flux in zip(xs, ys, fluxes, strict=True):
        ix, iy = round(x), round(y)
        stamp = moffat_psf(
            fwhm,
            beta=beta,
            ellipticity=ellipticity,
            theta=theta,
            size=2 * half + 1,
            offset=(x - ix, y - iy),
        )
        model[iy - half : iy + half + 1, ix - half : ix + half + 1] += flux * stamp
    noise = rng.normal(0.0, NOISE, shape)
    if gain:
        noise += rng.normal(0.0, 1.0, shape) * np.sqrt(model / gain)
    return model + noise


def _measure(image: np.ndarray, **kwargs) -> PsfModel:
    sources = extract_sources(image, NOISE)
    return measure_psf(image, NOISE, sources=sources, **kwargs)


@pytest.mark.parametrize(
    ("fwhm", "beta", "ellipticity", "theta"),
    [(3.0, 3.0, 0.0, 0.0), (4.5, 2.5, 0.15, 0.6), (2.2, 4.0, 0.1, -1.0)],
)
def test_fitted_moffat_recovers_the_simulated_psf(fwhm, beta, ellipticity, theta) -> None:
    image = _star_field(fwhm, beta=beta, ellipticity=ellipticity, theta=theta, seed=1)
    psf = _measure(image, gain=2.0)
    assert psf.fwhm == pytest.approx(fwhm, rel=0.03)
    assert psf.beta == pytest.approx(beta, rel=0.1)
    assert psf.ellipticity == pytest.approx(ellipticity, abs=0.02)
    if ellipticity > 0:
        assert np.cos(2 * (psf.theta - theta)) > np.cos(2 * 0.1)
    assert psf.n_stars >= 20
    assert psf.residual_rms == pytest.approx(1.0, abs=0.15)
    assert not psf.fallback


def test_undersampled_psf_is_measured_without_pixel_bias() -> None:
    image = _star_field(1.5, seed=2)
    psf = _measure(image)  # no gain: background-only weights
    assert psf.fwhm == pytest.approx(1.5, rel=0.03)
    assert psf.ellipticity < 0.03


def test_stamp_is_odd_unit_sum_centred_float64() -> None:
    image = _star_field(3.0, seed=3)
    psf = _measure(image, size=25)
    stamp = psf.stamp
    assert stamp.shape == (25, 25) and stamp.dtype == np.float64
    assert stamp.sum() == pytest.approx(1.0)
    yy, xx = np.mgrid[:25, :25]
    assert (stamp * xx).sum() == pytest.approx(12.0, abs=1e-6)
    assert (stamp * yy).sum() == pytest.approx(12.0, abs=1e-6)
    assert np.unravel_index(stamp.argmax(), stamp.shape) == (12, 12)
    np.testing.assert_allclose(psf.render(), stamp)
    shifted = psf.render(size=31, offset=(0.3, -0.2))
    assert shifted.shape == (31, 31)
    yy, xx = np.mgrid[:31, :31]
    assert (shifted * xx).sum() == pytest.approx(15.3, abs=0.01)
    assert (shifted * yy).sum() == pytest.approx(14.8, abs=0.01)
    assert psf.fwhm_mean == pytest.approx(psf.fwhm * np.sqrt(1 - psf.ellipticity))


def test_galaxies_cosmic_rays_and_saturated_stars_are_rejected() -> None:
    rng = np.random.default_rng(4)
    image = _star_field(3.0, seed=4, n=120)
    # Extended galaxies: broad Moffats, as bright as the stars.
    for _ in range(60):
        x, y = rng.integers(30, 482, 2)
        image[y - 25 : y + 26, x - 25 : x + 26] += 10 ** rng.uniform(3.5, 5) * moffat_psf(
            rng.uniform(7, 12),
            beta=2.0,
            ellipticity=rng.uniform(0, 0.5),
            theta=rng.uniform(0, 3),
            size=51,
        )
    # Cosmic rays: single hot pixels.
    cy, cx = rng.integers(5, 507, (2, 60))
    image[cy, cx] += rng.uniform(500, 5000, 60)
    # A saturated star (flat-topped).
    stamp = 3e6 * moffat_psf(3.0, size=41)
    image[200:241, 300:341] += np.minimum(stamp, 3e4)
    sources = extract_sources(image, NOISE, saturation=2.9e4)
    assert sources["saturated"].sum() >= 1
    psf = measure_psf(image, NOISE, sources=sources, gain=2.0)
    assert psf.fwhm == pytest.approx(3.0, rel=0.03)
    assert psf.beta == pytest.approx(3.0, rel=0.1)


def test_sources_are_detected_when_not_given() -> None:
    image = _star_field(2.5, seed=5)
    psf = measure_psf(image, np.full(image.shape, NOISE))
    assert psf.fwhm == pytest.approx(2.5, rel=0.03)


def test_masked_pixels_are_ignored() -> None:
    image = _star_field(3.0, seed=6)
    mask = np.zeros(image.shape, bool)
    mask[:, 100:103] = True  # bad columns
    mask[300:400, 300:400] = True  # a blemish
    image[mask] = 1e5
    image[5, 5] = np.nan
    sources = extract_sources(image, NOISE, mask=mask)
    psf = measure_psf(image, NOISE, sources=sources, mask=mask)
    assert psf.fwhm == pytest.approx(3.0, rel=0.03)


def test_too_few_stars_is_a_clear_error_or_the_fallback() -> None:
    image = _star_field(3.0, n=2, seed=7)
    with pytest.raises(InsufficientStarsError, match="usable PSF stars"):
        _measure(image)
    psf = _measure(image, fallback_fwhm=4.0)
    assert psf.fallback and psf.n_stars == 0
    assert psf.fwhm == 4.0 and psf.ellipticity == 0.0
    assert psf.stamp.sum() == pytest.approx(1.0)


def test_invalid_inputs_raise_clear_errors() -> None:
    image = np.zeros((64, 64))
    with pytest.raises(ValueError, match=r"rms shape \(32, 32\).*\(64, 64\)"):
        measure_psf(image, np.ones((32, 32)))
    with pytest.raises(ValueError, match=r"mask shape \(10, 10\).*\(64, 64\)"):
        measure_psf(image, 1.0, mask=np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="odd"):
        measure_psf(image, 1.0, size=20)
    with pytest.raises(ValueError, match="min_stars"):
        measure_psf(image, 1.0, min_stars=0)


@pytest.mark.parametrize(
    ("name", "header_fwhm"), [("Stack-DEC-OBS04", 5.23), ("Stack-DEC-OBS18", 3.85)]
)
def test_real_decam_psf_matches_the_header_fwhm(real_data, name, header_fwhm) -> None:
    path = real_data / "images" / "decam_sfft" / f"{name}.fits"
    with fits.open(path) as hdul:
        image = hdul[0].data  # big-endian float64
        header = hdul[0].header
    assert header["FWHM"] == pytest.approx(header_fwhm, abs=0.01)
    bkg = estimate_background(image)
    sub = bkg.subtract(image)
    sources = extract_sources(
        sub, bkg.rms, saturation=header["SATURATE"], background=bkg.background
    )
    psf = measure_psf(sub, bkg.rms, sources=sources, gain=header["GAIN"])
    assert psf.fwhm == pytest.approx(header_fwhm, rel=0.15)
    assert psf.ellipticity < 0.15
    assert psf.n_stars >= 3


def test_full_frame_with_thousands_of_sources() -> None:
    image = _star_field(3.0, n=3000, shape=(2048, 2048), seed=8)
    sources = extract_sources(image, NOISE)
    assert len(sources) > 2000
    psf = measure_psf(image, NOISE, sources=sources, gain=2.0)
    assert psf.fwhm == pytest.approx(3.0, rel=0.03)
