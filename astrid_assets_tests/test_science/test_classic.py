"""Classic PSF-matched subtraction, the baseline for ZOGY."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from astrid_assets.science.classic import ClassicConfig, classic_subtract, matching_kernel
from astrid_assets.science.psf import moffat_psf
from astrid_assets.science.subtraction import fit_scale_offset
from astrid_assets_tests.test_science.test_zogy import (
    FLUX_RATIO,
    NEW_SHAPE,
    PSF_NEW,
    PSF_REF,
    REF_SHAPE,
    SIGMA_NEW,
    SIGMA_REF,
    SIZE,
    add_star,
    fit_flux,
    render_pair,
    star_field,
)


def subtract(new, ref, psf_new=PSF_NEW, psf_ref=PSF_REF, **kwargs):
    config = kwargs.pop("config", ClassicConfig())
    return classic_subtract(
        new,
        ref,
        psf_new,
        psf_ref,
        sigma_new=SIGMA_NEW,
        sigma_ref=SIGMA_REF,
        config=config,
        **kwargs,
    )


@pytest.fixture(scope="module")
def noise() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    return (
        rng.normal(0.0, SIGMA_NEW, (SIZE, SIZE)),
        rng.normal(0.0, SIGMA_REF, (SIZE, SIZE)),
    )


def test_matching_kernel_turns_the_narrow_psf_into_the_broad_one():
    kernel, residual = matching_kernel(PSF_NEW, PSF_REF, 25)
    assert kernel.shape == (25, 25)
    assert kernel.sum() == pytest.approx(1.0)
    assert residual < 1e-3
    matched = fftconvolve(PSF_NEW, kernel, mode="same")
    assert np.abs(matched - PSF_REF).max() < 1e-3 * PSF_REF.max()


def test_noiseless_pair_subtracts_to_zero_and_fits_the_scale():
    new, ref = render_pair(star_field(seed=2))
    res = subtract(new, ref)
    good = ~res.mask
    assert res.method == "classic"
    assert res.details["matched"] == "new"
    assert res.details["scale"] == pytest.approx(1.0 / FLUX_RATIO, rel=0.01)
    assert res.flux_ratio == pytest.approx(FLUX_RATIO, rel=0.01)
    # D is in new-image counts and PSF-matched to the broader (reference) PSF.
    np.testing.assert_array_equal(res.difference_psf, PSF_REF)
    peak = fftconvolve(new, res.details["kernel"], mode="same").max()
    assert np.abs(res.difference[good]).max() < 0.01 * peak


def test_sharper_reference_is_the_one_convolved():
    new, ref = render_pair(star_field(seed=2))
    # Swap roles: the broad image is now the new one; same sky, so the
    # reference (the sharp image) has 1 / FLUX_RATIO of the new counts.
    res = subtract(ref, new, psf_new=PSF_REF, psf_ref=PSF_NEW)
    good = ~res.mask
    assert res.details["matched"] == "ref"
    assert res.flux_ratio == pytest.approx(1.0 / FLUX_RATIO, rel=0.01)
    np.testing.assert_array_equal(res.difference_psf, PSF_REF)
    assert np.abs(res.difference[good]).max() < 0.01 * ref.max()


def test_score_has_unit_variance_on_noise_with_and_without_variance_maps():
    rng = np.random.default_rng(22)
    new = rng.normal(0.0, SIGMA_NEW, (384, 384))
    ref = rng.normal(0.0, SIGMA_REF, (384, 384))
    config = ClassicConfig(flux_ratio=FLUX_RATIO)
    plain = subtract(new, ref, config=config)
    mapped = subtract(
        new,
        ref,
        var_new=np.full(new.shape, SIGMA_NEW**2),
        var_ref=np.full(new.shape, SIGMA_REF**2),
        config=config,
    )
    good = ~plain.mask
    assert 0.95 <= np.std(plain.score[good]) <= 1.05
    np.testing.assert_allclose(mapped.score, plain.score, atol=1e-3)
    assert np.std(plain.difference[good]) / plain.difference_noise == pytest.approx(1.0, abs=0.03)


def test_fit_with_noise_recovers_scale_and_a_background_offset(noise):
    new, ref = render_pair(star_field(seed=23))
    new = new + noise[0] + 7.0
    ref = ref + noise[1]
    res = subtract(new, ref)
    good = ~res.mask
    assert res.flux_ratio == pytest.approx(FLUX_RATIO, rel=0.01)
    assert res.details["offset"] == pytest.approx(7.0, abs=0.5)
    assert abs(np.mean(res.difference[good])) < 0.1
    assert 0.93 <= np.std(res.score[good]) <= 1.07


def test_transient_and_fading_source_have_signed_scores_and_fluxes(noise):
    new, ref = noise[0].copy(), noise[1].copy()
    add_star(new, NEW_SHAPE, 80, 90, 3000.0)
    add_star(ref, REF_SHAPE, 170, 160, FLUX_RATIO * 3000.0)
    res = subtract(new, ref, config=ClassicConfig(flux_ratio=FLUX_RATIO))
    assert res.score[90, 80] > 20
    assert res.score[160, 170] < -20
    psf = res.difference_psf
    assert fit_flux(res.difference, psf, 80, 90) == pytest.approx(3000.0, rel=0.05)
    assert fit_flux(res.difference, psf, 170, 160) == pytest.approx(-3000.0, rel=0.05)


def test_masked_pixels_give_finite_outputs_and_are_flagged(noise):
    new, ref = noise[0].copy(), noise[1].copy()
    add_star(new, NEW_SHAPE, 128, 128, 1e6)
    add_star(ref, REF_SHAPE, 128, 128, FLUX_RATIO * 1e6)
    saturated = new > 5e4
    new[saturated] = 5e4
    ref[40:44, 200:204] = np.nan
    res = subtract(new, ref, mask=saturated, config=ClassicConfig(flux_ratio=FLUX_RATIO))
    assert np.isfinite(res.difference).all() and np.isfinite(res.score).all()
    assert res.mask[saturated].all() and res.mask[40:44, 200:204].all()
    good = ~res.mask
    assert np.abs(res.score[good]).max() < 6


def test_fit_scale_offset_is_unbiased_with_noise_in_both_variables():
    rng = np.random.default_rng(24)
    truth = rng.uniform(0.0, 20.0, 20000)
    x = truth + rng.normal(0.0, 3.0, truth.size)
    y = 0.5 * truth + 2.0 + rng.normal(0.0, 1.0, truth.size)
    fit = fit_scale_offset(y, x, 1.0, 9.0)
    assert fit["scale"] == pytest.approx(0.5, abs=0.01)
    assert fit["offset"] == pytest.approx(2.0, abs=0.1)
    # Ordinary least squares of y on x is pulled low by the noise in x.
    assert np.polyfit(x, y, 1)[0] < 0.45


def test_float64_path_and_dtype():
    new, ref = render_pair(star_field(seed=25))
    single = subtract(new, ref)
    double = subtract(new, ref, config=ClassicConfig(dtype="float64"))
    assert single.difference.dtype == single.score.dtype == np.float32
    assert double.difference.dtype == double.score.dtype == np.float64
    assert single.flux_ratio == pytest.approx(double.flux_ratio, rel=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 4}, "kernel_size"),
        ({"flux_ratio": -1.0}, "flux_ratio"),
        ({"clip_sigma": 0.0}, "clip_sigma"),
        ({"dtype": "int16"}, "dtype"),
    ],
)
def test_invalid_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassicConfig(**kwargs)


def test_mismatched_images_are_rejected():
    with pytest.raises(ValueError, match="same pixel grid"):
        classic_subtract(
            np.zeros((64, 64)),
            np.zeros((64, 60)),
            moffat_psf(2.5, size=15),
            moffat_psf(3.5, size=15),
            sigma_new=1.0,
            sigma_ref=1.0,
        )
