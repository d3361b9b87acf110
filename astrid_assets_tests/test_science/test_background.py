"""Sky background and noise maps from SEP."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from astrid_assets.science.background import Background, estimate_background, sep_ready
from astrid_assets.science.psf import moffat_psf


def _sky_with_stars(seed: int = 1, shape: tuple[int, int] = (512, 512), noise: float = 10.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sky = 1000.0 + 0.1 * xx + 0.06 * yy
    image = sky + rng.normal(0.0, noise, shape)
    psf = moffat_psf(3.0, size=21)
    for _ in range(60):
        x, y = rng.integers(10, shape[1] - 11), rng.integers(10, shape[0] - 11)
        image[y - 10 : y + 11, x - 10 : x + 11] += rng.uniform(1e3, 5e4) * psf
    return image, sky


def test_background_follows_a_known_gradient_within_one_percent() -> None:
    image, sky = _sky_with_stars()
    bkg = estimate_background(image)
    assert isinstance(bkg, Background)
    assert bkg.background.shape == image.shape
    assert np.max(np.abs(bkg.background - sky) / sky) < 0.01
    # Away from the edges it is much better than that.
    inner = (slice(64, -64), slice(64, -64))
    assert np.max(np.abs(bkg.background - sky)[inner]) < 1.0
    assert np.median(bkg.rms) == pytest.approx(10.0, rel=0.05)
    assert bkg.global_rms == pytest.approx(10.0, rel=0.05)
    assert bkg.global_background == pytest.approx(np.median(sky), rel=0.01)


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", ">f8", "<i4", ">i2"])
def test_any_dtype_and_byte_order_gives_the_same_background(dtype: str) -> None:
    image, _ = _sky_with_stars(seed=2, shape=(256, 256))
    converted = np.clip(image, 0, 30000).astype(dtype)
    reference = estimate_background(converted.astype(np.float64))
    bkg = estimate_background(converted)
    assert bkg.background.dtype.kind == "f"
    assert bkg.background.dtype.isnative
    np.testing.assert_allclose(bkg.background, reference.background, rtol=1e-6)
    np.testing.assert_allclose(bkg.rms, reference.rms, rtol=1e-5)


def test_sep_ready_makes_native_contiguous_copies() -> None:
    big = np.arange(12, dtype=">f8").reshape(3, 4)[:, ::2]
    out = sep_ready(big)
    assert out.dtype == np.float64 and out.dtype.isnative and out.flags.c_contiguous
    np.testing.assert_array_equal(out, big)
    assert sep_ready(np.ones((2, 2), np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="2-D"):
        sep_ready(np.ones(5))


def test_masked_and_nonfinite_pixels_are_ignored() -> None:
    image, sky = _sky_with_stars(seed=3, shape=(256, 256))
    polluted = image.copy()
    polluted[100:140, 100:140] = 1e6  # a saturated blob, masked
    polluted[10:20, 200:230] = np.nan
    polluted[50, 50] = np.inf
    mask = np.zeros(image.shape, bool)
    mask[100:140, 100:140] = True
    bkg = estimate_background(polluted, mask=mask)
    assert np.isfinite(bkg.background).all() and np.isfinite(bkg.rms).all()
    assert np.max(np.abs(bkg.background - sky) / sky) < 0.01


def test_subtract_checks_the_shape() -> None:
    rng = np.random.default_rng(4)
    image = 500.0 + rng.normal(0.0, 5.0, (128, 128))
    bkg = estimate_background(image, box_size=32)
    assert np.median(bkg.subtract(image)) == pytest.approx(0.0, abs=1.0)
    with pytest.raises(ValueError, match=r"\(64, 64\).*\(128, 128\)"):
        bkg.subtract(np.zeros((64, 64)))


def test_invalid_inputs_raise_clear_errors() -> None:
    image = np.zeros((64, 64))
    with pytest.raises(ValueError, match=r"mask shape \(32, 32\).*\(64, 64\)"):
        estimate_background(image, mask=np.zeros((32, 32), bool))
    with pytest.raises(ValueError, match="2-D"):
        estimate_background(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="no finite"):
        estimate_background(np.full((64, 64), np.nan))
    with pytest.raises(ValueError, match="filter_size"):
        estimate_background(image, filter_size=2)
    with pytest.raises(ValueError, match="box_size"):
        estimate_background(image, box_size=0)


def test_box_larger_than_the_image_is_clipped() -> None:
    rng = np.random.default_rng(5)
    bkg = estimate_background(100.0 + rng.normal(0, 1, (40, 50)), box_size=64)
    assert bkg.global_background == pytest.approx(100.0, abs=0.2)


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
def test_matches_sextractor_maps_on_a_real_image(real_data) -> None:
    folder = real_data / "images" / "sep_ntt"
    image = fits.getdata(folder / "image.fits")  # big-endian float32
    bkg = estimate_background(image, box_size=64, filter_size=3)
    np.testing.assert_allclose(bkg.background, fits.getdata(folder / "back.fits"), rtol=1e-5)
    np.testing.assert_allclose(bkg.rms, fits.getdata(folder / "rms.fits"), rtol=1e-4)
