"""ZOGY subtraction (Zackay, Ofek & Gal-Yam 2016) on simulated image pairs."""

from __future__ import annotations

import numpy as np
import pytest

from astrid_assets.science.classic import ClassicConfig, classic_subtract
from astrid_assets.science.psf import moffat_psf
from astrid_assets.science.subtraction import SubtractionResult
from astrid_assets.science.zogy import ZogyConfig, solve_flux_ratio, zogy_subtract

SIZE = 256
STAMP = 25
FLUX_RATIO = 1.7
SIGMA_NEW, SIGMA_REF = 5.0, 3.0
NEW_SHAPE = {"fwhm": 2.5, "ellipticity": 0.1, "theta": 0.3}
REF_SHAPE = {"fwhm": 3.8, "ellipticity": 0.2, "theta": 1.0}
PSF_NEW = moffat_psf(size=STAMP, **NEW_SHAPE)
PSF_REF = moffat_psf(size=STAMP, **REF_SHAPE)


def add_star(
    image: np.ndarray,
    shape: dict,
    x: float,
    y: float,
    flux: float,
) -> None:
    """Add a pixel-integrated Moffat star centred at ``(x, y)`` (0-based)."""
    xi, yi = round(x), round(y)
    h = STAMP // 2
    stamp = flux * moffat_psf(size=STAMP, offset=(x - xi, y - yi), **shape)
    image[yi - h : yi + h + 1, xi - h : xi + h + 1] += stamp


def star_field(
    n_stars: int = 60,
    *,
    size: int = SIZE,
    flux_range: tuple[float, float] = (1e3, 1e5),
    subpixel: bool = True,
    seed: int = 1,
) -> list[tuple[float, float, float]]:
    """Stars ``(x, y, flux)`` in new-image ADU, away from the border."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(30, size - 30, n_stars)
    y = rng.uniform(30, size - 30, n_stars)
    if not subpixel:
        x, y = np.round(x), np.round(y)
    flux = 10 ** rng.uniform(np.log10(flux_range[0]), np.log10(flux_range[1]), n_stars)
    return list(zip(x, y, flux, strict=True))


def render_pair(
    stars: list[tuple[float, float, float]],
    *,
    size: int = SIZE,
    shift: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless new and reference images of ``stars``; the reference has
    ``FLUX_RATIO`` times the counts, and the new image's stars are moved by
    ``shift``."""
    new = np.zeros((size, size))
    ref = np.zeros((size, size))
    for x, y, flux in stars:
        add_star(new, NEW_SHAPE, x + shift[0], y + shift[1], flux)
        add_star(ref, REF_SHAPE, x, y, FLUX_RATIO * flux)
    return new, ref


def subtract(new, ref, **kwargs) -> SubtractionResult:
    config = kwargs.pop("config", ZogyConfig(flux_ratio=FLUX_RATIO))
    return zogy_subtract(
        new,
        ref,
        PSF_NEW,
        PSF_REF,
        sigma_new=SIGMA_NEW,
        sigma_ref=SIGMA_REF,
        config=config,
        **kwargs,
    )


def fit_flux(difference: np.ndarray, psf: np.ndarray, x: int, y: int) -> float:
    """Least-squares flux of ``psf`` centred on pixel ``(x, y)``."""
    h = psf.shape[0] // 2
    stamp = difference[y - h : y + h + 1, x - h : x + h + 1]
    return float(np.sum(stamp * psf) / np.sum(psf**2))


@pytest.fixture(scope="module")
def noise() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (
        rng.normal(0.0, SIGMA_NEW, (SIZE, SIZE)),
        rng.normal(0.0, SIGMA_REF, (SIZE, SIZE)),
    )


def test_noiseless_pair_subtracts_to_zero_and_solves_flux_ratio():
    new, ref = render_pair(star_field(subpixel=False))
    res = subtract(new, ref, config=ZogyConfig(dtype="float64"))
    good = ~res.mask
    assert res.method == "zogy"
    assert abs(res.flux_ratio / FLUX_RATIO - 1) < 0.01
    assert res.details["flux_ratio_fit"]["n_pixels"] > 100
    # Stars of up to 1e5 ADU (peaks of ~1e4) vanish to rounding.
    assert np.abs(res.difference[good]).max() < 1e-6 * res.difference_noise
    assert np.abs(res.score[good]).max() < 1e-6


def test_subpixel_stars_leave_residuals_far_below_the_noise():
    new, ref = render_pair(star_field(subpixel=True))
    res = subtract(new, ref, config=ZogyConfig())
    good = ~res.mask
    assert abs(res.flux_ratio / FLUX_RATIO - 1) < 0.01
    assert np.abs(res.score[good]).max() < 1.0


def test_difference_is_white_with_the_stated_noise_and_score_has_unit_variance():
    rng = np.random.default_rng(11)
    new = rng.normal(0.0, SIGMA_NEW, (384, 384))
    ref = rng.normal(0.0, SIGMA_REF, (384, 384))
    res = subtract(new, ref)
    good = ~res.mask
    expected_noise = np.sqrt(SIGMA_NEW**2 + SIGMA_REF**2 / FLUX_RATIO**2)
    assert res.difference_noise == pytest.approx(expected_noise, rel=1e-6)
    assert res.details["F_D"] == pytest.approx(1.0 / expected_noise, rel=1e-6)
    assert np.std(res.difference[good]) / res.difference_noise == pytest.approx(1.0, abs=0.02)
    assert 0.95 <= np.std(res.score[good]) <= 1.05
    assert abs(np.mean(res.score[good])) < 0.05
    # White: neighbouring pixels of D are uncorrelated.
    d = res.difference[40:-40, 40:-40]
    lag1 = np.mean(d[:, 1:] * d[:, :-1]) / np.mean(d * d)
    assert abs(lag1) < 0.02


def test_transient_is_found_at_its_expected_significance_and_flux(noise):
    new, ref = render_pair(star_field(seed=3))
    new, ref = new + noise[0], ref + noise[1]
    flux, x, y = 2500.0, 140, 120
    add_star(new, NEW_SHAPE, x, y, flux)
    res = subtract(new, ref)
    psf_d = res.difference_psf
    expected_snr = flux * res.details["F_D"] * np.sqrt(np.sum(psf_d**2))
    assert 40 < expected_snr < 100
    peak = res.score[y - 1 : y + 2, x - 1 : x + 2].max()
    assert peak == pytest.approx(expected_snr, abs=4.0)
    assert np.unravel_index(np.argmax(res.score), res.score.shape) == (y, x)
    assert fit_flux(res.difference, psf_d, x, y) == pytest.approx(flux, rel=0.05)


def test_fading_source_gives_a_negative_score(noise):
    new, ref = noise[0].copy(), noise[1].copy()
    add_star(ref, REF_SHAPE, 100, 90, FLUX_RATIO * 2000.0)
    res = subtract(new, ref)
    assert res.score[90, 100] < -20
    assert fit_flux(res.difference, res.difference_psf, 100, 90) == pytest.approx(-2000.0, rel=0.1)


def test_zogy_detects_a_transient_at_least_as_well_as_classic(noise):
    new, ref = render_pair(star_field(seed=4))
    new, ref = new + noise[0], ref + noise[1]
    spots = [(60, 60), (196, 60), (60, 196), (196, 196), (128, 128)]
    for x, y in spots:
        add_star(new, NEW_SHAPE, x, y, 600.0)
    zogy = subtract(new, ref)
    classic = classic_subtract(
        new,
        ref,
        PSF_NEW,
        PSF_REF,
        sigma_new=SIGMA_NEW,
        sigma_ref=SIGMA_REF,
        config=ClassicConfig(flux_ratio=FLUX_RATIO),
    )
    snr_zogy = [zogy.score[y, x] for x, y in spots]
    snr_classic = [classic.score[y, x] for x, y in spots]
    assert min(snr_zogy) > 10
    assert np.mean(snr_zogy) >= np.mean(snr_classic)


def test_source_noise_term_keeps_bright_stars_below_threshold():
    rng = np.random.default_rng(5)
    stars = star_field(40, flux_range=(2e4, 3e5), seed=5)
    model_new, model_ref = render_pair(stars)
    # Photon noise with 1 e-/ADU in the new image; the deeper reference was
    # scaled to FLUX_RATIO times the counts of the same photons' rate.
    var_new = SIGMA_NEW**2 + model_new
    var_ref = SIGMA_REF**2 + FLUX_RATIO * model_ref
    new = model_new + rng.normal(size=model_new.shape) * np.sqrt(var_new)
    ref = model_ref + rng.normal(size=model_ref.shape) * np.sqrt(var_ref)
    plain = subtract(new, ref)
    corrected = subtract(new, ref, var_new=var_new, var_ref=var_ref)
    s_alone = plain.details["S"] / plain.details["score_background_sigma"]
    bright = [(round(x), round(y)) for x, y, f in stars if f > 1e5]
    assert len(bright) >= 5
    for x, y in bright:
        box = (slice(y - 3, y + 4), slice(x - 3, x + 4))
        assert np.abs(s_alone[box]).max() > 5
        assert np.abs(corrected.score[box]).max() < 5
    good = ~corrected.mask
    assert np.abs(corrected.score[good]).max() < 5.5
    assert 0.95 <= np.std(corrected.score[good]) <= 1.05


def test_astrometric_term_absorbs_a_registration_error(noise):
    stars = star_field(50, flux_range=(3e3, 1e5), seed=6)
    new, ref = render_pair(stars, shift=(0.1, 0.0))
    new, ref = new + noise[0], ref + noise[1]
    plain = subtract(new, ref)
    corrected = subtract(
        new, ref, config=ZogyConfig(flux_ratio=FLUX_RATIO, astrometric_sigma=(0.1, 0.1))
    )
    good = ~plain.mask
    assert np.abs(plain.score[good]).max() > 20
    assert np.abs(corrected.score[good]).max() < 5
    assert corrected.details["astrometric_sigma"] == (0.1, 0.1)


def test_masked_saturated_star_and_nan_region_do_not_ring(noise):
    new, ref = noise[0].copy(), noise[1].copy()
    add_star(new, NEW_SHAPE, 128, 128, 1e7)
    add_star(ref, REF_SHAPE, 128, 128, FLUX_RATIO * 1e7)
    saturated = new > 5e4
    new[saturated] = 5e4
    ref[60:64, 60:66] = np.nan
    new[190:193, 40:45] = 1e6  # a cosmic-ray hit
    mask = saturated.copy()
    mask[190:193, 40:45] = True
    new_before = new.copy()
    res = subtract(new, ref, mask=mask)
    for image in (res.difference, res.score, res.details["S"]):
        assert np.isfinite(image).all()
    assert res.mask[saturated].all()
    assert res.mask[60:64, 60:66].all()
    assert res.mask[190:193, 40:45].all()
    good = ~res.mask
    assert good.mean() > 0.4
    assert np.abs(res.score[good]).max() < 5
    assert 0.93 <= np.std(res.score[good]) <= 1.07
    # The saturated star's wings outside the grown mask subtract cleanly.
    assert not res.mask[128, 128 + 60]
    np.testing.assert_array_equal(new, new_before)


def test_float32_path_stays_float32_and_matches_float64(noise):
    new, ref = render_pair(star_field(seed=8))
    new, ref = new + noise[0], ref + noise[1]
    var_new = SIGMA_NEW**2 + np.clip(new, 0, None)
    var_ref = SIGMA_REF**2 + np.clip(ref, 0, None)
    results = {
        dtype: subtract(
            new,
            ref,
            var_new=var_new,
            var_ref=var_ref,
            config=ZogyConfig(dtype=dtype, astrometric_sigma=(0.03, 0.05)),
        )
        for dtype in ("float32", "float64")
    }
    single, double = results["float32"], results["float64"]
    for name in ("difference", "score"):
        assert getattr(single, name).dtype == np.float32
        assert getattr(double, name).dtype == np.float64
        a, b = getattr(single, name), getattr(double, name)
        assert np.abs(a - b).max() < 1e-4 * np.abs(b).max()
    assert single.details["S"].dtype == np.float32
    assert single.flux_ratio == pytest.approx(double.flux_ratio, rel=1e-5)
    np.testing.assert_array_equal(single.mask, double.mask)


def test_difference_psf_is_a_centred_unit_stamp_and_equals_psf_new_for_a_perfect_reference():
    res = subtract(np.zeros((96, 96)), np.zeros((96, 96)))
    psf = res.difference_psf
    assert psf.shape == (STAMP, STAMP)
    assert psf.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (STAMP // 2, STAMP // 2)
    # With a noiseless reference, D is the new image's own PSF (eq. 14).
    perfect = zogy_subtract(
        np.zeros((96, 96)),
        np.zeros((96, 96)),
        PSF_NEW,
        PSF_REF,
        sigma_new=SIGMA_NEW,
        sigma_ref=1e-6,
        config=ZogyConfig(flux_ratio=FLUX_RATIO),
    )
    np.testing.assert_allclose(perfect.difference_psf, PSF_NEW, atol=1e-6)
    assert perfect.difference_noise == pytest.approx(SIGMA_NEW, rel=1e-6)


def test_awkward_shapes_and_different_stamp_sizes_are_handled():
    rng = np.random.default_rng(9)
    shape = (187, 233)
    new = rng.normal(0.0, SIGMA_NEW, shape)
    ref = rng.normal(0.0, SIGMA_REF, shape)
    psf_ref = moffat_psf(size=19, **REF_SHAPE)
    res = zogy_subtract(
        new,
        ref,
        PSF_NEW,
        psf_ref,
        sigma_new=SIGMA_NEW,
        sigma_ref=SIGMA_REF,
        config=ZogyConfig(flux_ratio=FLUX_RATIO),
    )
    assert res.difference.shape == res.score.shape == res.mask.shape == shape
    assert res.details["fft_shape"][0] >= shape[0]
    assert res.difference_psf.shape == (STAMP, STAMP)
    assert 0.9 <= np.std(res.score[~res.mask]) <= 1.1
    edge = STAMP // 2 + 19 // 2
    assert res.mask[:edge].all() and res.mask[:, -edge:].all()
    assert not res.mask[edge:-edge, edge:-edge].any()


def test_solve_flux_ratio_rejects_a_variable_star():
    rng = np.random.default_rng(10)
    matched_new = np.zeros((64, 64))
    matched_new[8:56:8, 8:56:8] = rng.uniform(500, 5000, (6, 6))
    matched_ref = 2.0 * matched_new
    matched_ref[16, 16] *= 3.0  # a variable
    noisy_ref = matched_ref + rng.normal(0, 1.0, matched_ref.shape)
    noisy_new = matched_new + rng.normal(0, 1.0, matched_new.shape)
    fit = solve_flux_ratio(noisy_ref, noisy_new, np.zeros((64, 64), bool), 1.0, 1.0, min_pixels=10)
    assert fit["flux_ratio"] == pytest.approx(2.0, rel=1e-3)
    assert fit["n_pixels"] == 35


def test_blank_images_without_a_flux_ratio_raise():
    rng = np.random.default_rng(12)
    blank = rng.normal(0.0, 1.0, (96, 96))
    with pytest.raises(ValueError, match="flux ratio"):
        zogy_subtract(blank, blank, PSF_NEW, PSF_REF, sigma_new=1.0, sigma_ref=1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ref": np.zeros((64, 65))}, "same pixel grid"),
        ({"psf_new": np.ones((4, 4))}, "odd sides"),
        ({"psf_ref": np.ones((81, 81))}, "larger than the images"),
        ({"sigma_new": 0.0}, "sigma_new"),
        ({"sigma_ref": float("nan")}, "sigma_ref"),
        ({"var_new": -np.ones((64, 64))}, "negative"),
        ({"var_ref": np.ones((32, 32))}, "var_ref shape"),
        ({"mask": np.zeros((64, 63), bool)}, "mask shape"),
        ({"new": np.zeros(64)}, "2-D"),
    ],
)
def test_invalid_inputs_are_rejected_with_a_message(kwargs, message):
    args = {
        "new": np.zeros((64, 64)),
        "ref": np.zeros((64, 64)),
        "psf_new": moffat_psf(2.5, size=15),
        "psf_ref": moffat_psf(3.8, size=15),
        "sigma_new": 1.0,
        "sigma_ref": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        zogy_subtract(
            args.pop("new"),
            args.pop("ref"),
            args.pop("psf_new"),
            args.pop("psf_ref"),
            config=ZogyConfig(flux_ratio=1.0),
            **args,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"astrometric_sigma": (-0.1, 0.0)}, "astrometric_sigma"),
        ({"flux_ratio": 0.0}, "flux_ratio"),
        ({"dtype": "float16"}, "dtype"),
        ({"fft_workers": 0}, "fft_workers"),
        ({"edge": -1}, "edge"),
    ],
)
def test_invalid_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ZogyConfig(**kwargs)


def test_float32_inputs_with_masked_pixels_are_not_modified():
    rng = np.random.default_rng(13)
    new = rng.normal(0.0, SIGMA_NEW, (96, 96)).astype(np.float32)
    ref = rng.normal(0.0, SIGMA_REF, (96, 96)).astype(np.float32)
    new[40, 40] = np.nan
    mask = np.zeros(new.shape, bool)
    mask[50, 50] = True
    before = new.copy(), ref.copy()
    res = subtract(new, ref, mask=mask)
    np.testing.assert_array_equal(new, before[0])
    np.testing.assert_array_equal(ref, before[1])
    assert res.mask[40, 40] and res.mask[50, 50]
    assert np.isfinite(res.score).all()
