"""Candidate stamps and science / reference / difference triplets."""

from __future__ import annotations

import numpy as np
import pytest

from astrid_assets.science.cutouts import cutout_stamps, cutout_triplets, nearest_pixel


def _ramp(shape: tuple[int, int] = (50, 80)) -> np.ndarray:
    """Pixel value 1000 * row + column, so a value names its pixel."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (1000.0 * yy + xx).astype(np.float64)


def test_stamp_is_centred_on_the_nearest_pixel() -> None:
    image = _ramp()
    stamps = cutout_stamps(image, [10.0, 20.4, 30.5, 40.6], [5.0, 7.49, 9.5, 12.51], size=7)
    assert stamps.shape == (4, 7, 7)
    assert stamps.dtype == np.float32
    assert list(stamps[:, 3, 3]) == [5010.0, 7020.0, 10031.0, 13041.0]
    # Rows run along y, columns along x.
    assert stamps[0, 0, 3] == image[2, 10]
    assert stamps[0, 3, 0] == image[5, 7]
    np.testing.assert_array_equal(stamps[0], image[2:9, 7:14])


def test_nearest_pixel_rounds_halves_up() -> None:
    xi, yi = nearest_pixel(np.array([0.5, 1.5, -0.5, 2.49]), np.array([2.5, 3.5, 0.0, -0.51]))
    assert list(xi) == [1, 2, 0, 2]
    assert list(yi) == [3, 4, 0, -1]


def test_scalar_position_gives_one_stamp() -> None:
    stamps = cutout_stamps(_ramp(), 40, 25, size=63)
    assert stamps.shape == (1, 63, 63)
    assert stamps[0, 31, 31] == 25040.0


def test_stamp_beyond_the_edge_is_filled() -> None:
    image = _ramp()
    stamps = cutout_stamps(image, [0.0, 79.0], [0.0, 49.0], size=5)
    corner = stamps[0]
    assert np.all(np.isnan(corner[:2])) and np.all(np.isnan(corner[:, :2]))
    np.testing.assert_array_equal(corner[2:, 2:], image[:3, :3])
    far = stamps[1]
    assert np.all(np.isnan(far[3:])) and np.all(np.isnan(far[:, 3:]))
    np.testing.assert_array_equal(far[:3, :3], image[47:, 77:])

    zero = cutout_stamps(image, 0.0, 0.0, size=5, fill=0.0)
    assert np.count_nonzero(zero[0] == 0.0) == 25 - 9 + 1  # pixel (0, 0) is itself 0


def test_stamp_entirely_off_the_image_is_all_fill() -> None:
    stamps = cutout_stamps(_ramp(), [-20.0], [-20.0], size=9, fill=-1.0)
    assert np.all(stamps == -1.0)


def test_many_stamps_at_once_match_slicing() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(300, 400)).astype(np.float32)
    x = rng.uniform(40, 360, 2000)
    y = rng.uniform(40, 260, 2000)
    stamps = cutout_stamps(image, x, y, size=63)
    assert stamps.shape == (2000, 63, 63)
    for k in (0, 999, 1999):
        xi, yi = int(np.floor(x[k] + 0.5)), int(np.floor(y[k] + 0.5))
        np.testing.assert_array_equal(stamps[k], image[yi - 31 : yi + 32, xi - 31 : xi + 32])


def test_triplet_channels_are_science_reference_difference() -> None:
    shape = (40, 40)
    science = np.full(shape, 1.0)
    reference = np.full(shape, 2.0)
    difference = np.full(shape, 3.0, dtype=np.float32)
    triplets = cutout_triplets(science, reference, difference, [20.0, 0.0], [20.0, 20.0], size=9)
    assert triplets.shape == (2, 3, 9, 9)
    assert triplets.dtype == np.float32
    assert np.all(triplets[0, 0] == 1.0)
    assert np.all(triplets[0, 1] == 2.0)
    assert np.all(triplets[0, 2] == 3.0)
    assert np.all(np.isnan(triplets[1, :, :, :4]))
    assert np.all(triplets[1, 2, :, 4:] == 3.0)


def test_empty_positions_give_no_stamps() -> None:
    assert cutout_stamps(_ramp(), [], [], size=5).shape == (0, 5, 5)
    image = _ramp()
    assert cutout_triplets(image, image, image, [], [], size=5).shape == (0, 3, 5, 5)


@pytest.mark.parametrize("size", [0, -3, 4, 64, 2.5])
def test_size_must_be_odd_and_positive(size) -> None:
    with pytest.raises(ValueError, match="odd positive"):
        cutout_stamps(_ramp(), 10.0, 10.0, size=size)
    with pytest.raises(ValueError, match="odd positive"):
        cutout_triplets(_ramp(), _ramp(), _ramp(), 10.0, 10.0, size=size)


def test_images_must_be_two_dimensional_and_alike() -> None:
    with pytest.raises(ValueError, match="2-D"):
        cutout_stamps(np.zeros((3, 10, 10)), 5.0, 5.0, size=3)
    with pytest.raises(ValueError, match="same shape"):
        cutout_triplets(_ramp(), _ramp(), _ramp((50, 81)), 5.0, 5.0, size=3)
    with pytest.raises(ValueError, match="equal length"):
        cutout_stamps(_ramp(), [1.0, 2.0], [1.0], size=3)
    with pytest.raises(ValueError, match="finite"):
        cutout_stamps(_ramp(), [np.nan], [1.0], size=3)
