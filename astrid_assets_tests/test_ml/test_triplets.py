"""Triplets made ready for the CNN: orientation by sign, unit-RMS stamps, padding."""

import numpy as np

from astrid_assets.ml.triplets import augment, normalize_triplets, orient_triplets, prepare_triplets


def test_a_fading_source_is_turned_into_a_brightening():
    rng = np.random.default_rng(0)
    triplets = rng.normal(size=(2, 3, 63, 63)).astype(np.float32)
    out = orient_triplets(triplets, np.array([True, False]))
    np.testing.assert_array_equal(out[0], triplets[0])
    np.testing.assert_array_equal(out[1, 0], triplets[1, 1])
    np.testing.assert_array_equal(out[1, 1], triplets[1, 0])
    np.testing.assert_array_equal(out[1, 2], -triplets[1, 2])


def test_each_stamp_has_unit_rms_and_no_nan():
    triplets = np.full((1, 3, 63, 63), 5.0, np.float32)
    triplets[0, 2, 10, 10] = np.nan
    triplets[0, 1] = 0.0
    out = normalize_triplets(triplets)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.sqrt((out[0, 0] ** 2).mean()), 1.0, rtol=1e-5)
    assert (out[0, 1] == 0).all()


def test_small_edge_stamps_are_padded_to_63():
    out = prepare_triplets(np.ones((3, 3, 45, 59), np.float32), np.ones(3, bool))
    assert out.shape == (3, 3, 63, 63)
    assert out[:, :, 0, :].sum() == 0  # padding rows stay empty


def test_augmentation_is_a_symmetry_of_the_square():
    rng = np.random.default_rng(1)
    stamp = rng.normal(size=(1, 3, 63, 63)).astype(np.float32)
    out = augment(stamp, rng)[0]
    candidates = [np.rot90(stamp[0], k, axes=(1, 2)) for k in range(4)]
    candidates += [c[:, :, ::-1] for c in candidates]
    assert any(np.array_equal(out, c) for c in candidates)
