"""Reference coadds: epoch selection, outlier rejection, noise, photometry, PSF."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from astrid_assets.science.align import AlignedImage, PixelTransform
from astrid_assets.science.psf import moffat_psf
from astrid_assets.science.reference import (
    ReferenceConfig,
    build_reference,
    psf_fwhm,
    psf_noise_equivalent_area,
)

SHAPE = (160, 160)
TARGET_ZP = 25.0
BRIGHT_MAG = 12.5
ASTEROID_XY = (33, 59)  # epoch 2 only, between stars
COSMIC_XY = (59, 111)  # epoch 4 only, between stars


@dataclass
class Epochs:
    images: list
    variances: list
    psfs: list
    zero_points: list
    sigmas: np.ndarray
    fwhms: np.ndarray
    star_xy: np.ndarray
    bright: int


def add_star(image, x, y, flux, psf):
    half = psf.shape[0] // 2
    image[y - half : y + half + 1, x - half : x + half + 1] += flux * psf


def simulate(
    seed=3,
    fwhms=(2.5, 3.0, 3.5, 4.0, 4.5, 5.5),
    zps=(25.0, 25.3, 24.8, 25.1, 24.6, 25.2),
    sigmas=(5.0, 8.0, 6.0, 10.0, 7.0, 6.0),
    artifacts=True,
):
    """Epochs of one field: a grid of stars, different seeing, depth and zero point.

    With ``artifacts``, epoch 2 has an asteroid and epoch 4 a cosmic ray;
    neither is masked. The noise does not depend on ``artifacts``.
    Variance maps are the background variance (sky + read noise).
    """
    rng = np.random.default_rng(seed)
    g = np.arange(20, 150, 26)
    xx, yy = np.meshgrid(g, g)
    star_xy = np.column_stack([xx.ravel(), yy.ravel()])
    mags = np.full(len(star_xy), 17.0)
    bright = 7
    mags[bright] = BRIGHT_MAG
    images, variances, psfs = [], [], []
    for i, (fwhm, zp, sigma) in enumerate(zip(fwhms, zps, sigmas, strict=True)):
        psf = moffat_psf(fwhm, size=31)
        image = rng.normal(0.0, sigma, SHAPE)
        for (x, y), m in zip(star_xy, mags, strict=True):
            add_star(image, x, y, 10 ** (-0.4 * (m - zp)), psf)
        if artifacts and i == 2:
            add_star(image, *ASTEROID_XY, 10 ** (-0.4 * (16.0 - zp)), psf)
        if artifacts and i == 4:
            image[COSMIC_XY[1], COSMIC_XY[0]] += 3000.0
            image[COSMIC_XY[1], COSMIC_XY[0] + 1] += 1500.0
        images.append(image)
        variances.append(np.full(SHAPE, sigma**2))
        psfs.append(psf)
    return Epochs(
        images, variances, psfs, list(zps), np.array(sigmas), np.array(fwhms), star_xy, bright
    )


@pytest.fixture(scope="module")
def epochs():
    return simulate()


@pytest.fixture(scope="module")
def reference(epochs):
    return build_reference(
        epochs.images,
        epochs.variances,
        epochs.psfs,
        epochs.zero_points,
        target_zero_point=TARGET_ZP,
    )


def expected_noise(epochs):
    """Inverse-variance combination of the scaled epochs' sky noise."""
    scales = 10 ** (0.4 * (TARGET_ZP - np.array(epochs.zero_points)))
    return 1.0 / np.sqrt(np.sum(1.0 / (scales * epochs.sigmas) ** 2))


def blank_sky(epochs):
    blank = np.ones(SHAPE, dtype=bool)
    for x, y in epochs.star_xy:
        blank[y - 13 : y + 14, x - 13 : x + 14] = False
    x, y = ASTEROID_XY
    blank[y - 13 : y + 14, x - 13 : x + 14] = False
    x, y = COSMIC_XY
    blank[y - 8 : y + 9, x - 8 : x + 9] = False
    return blank


def test_asteroid_and_cosmic_ray_do_not_survive(epochs, reference):
    clean = simulate(artifacts=False)
    without = build_reference(
        clean.images, clean.variances, clean.psfs, clean.zero_points, target_zero_point=TARGET_ZP
    )
    sigma = expected_noise(epochs)
    # Left in, the asteroid would add ~500 ADU here (its epoch's weight is 0.13)
    # and the cosmic ray ~170 ADU to its pixel.
    x, y = ASTEROID_XY
    box = np.s_[y - 6 : y + 7, x - 6 : x + 7]
    assert abs(reference.data[box].sum() - without.data[box].sum()) < 3 * sigma * 13
    x, y = COSMIC_XY
    box = np.s_[y - 2 : y + 3, x - 2 : x + 4]
    assert np.max(np.abs(reference.data[box] - without.data[box])) < 3 * sigma
    assert np.max(np.abs(reference.data[box])) < 5 * sigma
    assert reference.n_epochs[COSMIC_XY[1], COSMIC_XY[0]] == 5
    assert reference.n_epochs[ASTEROID_XY[1], ASTEROID_XY[0]] == 5
    assert reference.rejected_fraction[2] > 0 and reference.rejected_fraction[4] > 0
    # Stars are not outliers, whatever the seeing.
    assert np.all(reference.rejected_fraction[[0, 1, 3, 5]] < 1e-3)
    assert np.all(without.rejected_fraction < 1e-3)


def test_flare_in_one_epoch_is_rejected(epochs, reference):
    images = [im.copy() for im in epochs.images]
    x, y = epochs.star_xy[12]
    # The star doubles its flux in epoch 3 only.
    add_star(images[3], x, y, 10 ** (-0.4 * (17.0 - epochs.zero_points[3])), epochs.psfs[3])
    flared = build_reference(
        images, epochs.variances, epochs.psfs, epochs.zero_points, target_zero_point=TARGET_ZP
    )
    box = np.s_[y - 15 : y + 16, x - 15 : x + 16]
    quiescent = 10 ** (-0.4 * (17.0 - TARGET_ZP))
    # Kept, the flare would add about 8% (epoch 3's weight) to the star.
    excess = flared.data[box].sum() - reference.data[box].sum()
    assert abs(excess) < 0.02 * quiescent
    assert flared.n_epochs[y, x] == 5


def test_coadd_noise_matches_inverse_variance_expectation(epochs, reference):
    blank = blank_sky(epochs)
    measured = reference.data[blank].std()
    assert measured == pytest.approx(expected_noise(epochs), rel=0.05)
    assert np.sqrt(reference.variance[blank].mean()) == pytest.approx(
        expected_noise(epochs), rel=1e-3
    )


def test_star_flux_is_right_at_the_target_zero_point(epochs, reference):
    x, y = epochs.star_xy[epochs.bright]
    flux = reference.data[y - 15 : y + 16, x - 15 : x + 16].sum()
    assert reference.zero_point == TARGET_ZP
    assert flux == pytest.approx(10 ** (-0.4 * (BRIGHT_MAG - TARGET_ZP)), rel=0.01)


def test_coadd_psf_is_a_normalised_weighted_mean_between_best_and_worst(epochs, reference):
    psf = reference.psf
    assert psf.shape == (31, 31)
    assert psf.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (15, 15)
    used = np.array(reference.epochs_used)
    fwhm = reference.epoch_fwhm[used]
    assert fwhm.min() < reference.fwhm < fwhm.max()
    assert reference.weights.sum() == pytest.approx(1.0)
    # Weights are the epochs' inverse variances at the target zero point.
    scales = 10 ** (0.4 * (TARGET_ZP - np.array(epochs.zero_points)))
    inv_var = 1.0 / (scales * epochs.sigmas) ** 2
    assert np.allclose(reference.weights, inv_var / inv_var.sum(), rtol=1e-3)
    # The bright star in the coadd has the coadd PSF's shape.
    x, y = epochs.star_xy[epochs.bright]
    star = reference.data[y - 15 : y + 16, x - 15 : x + 16]
    assert np.max(np.abs(star / star.sum() - psf)) < 0.01 * psf.max()


@pytest.mark.parametrize("weighting", ["pixel", "epoch"])
def test_other_weightings_agree_when_the_variance_is_flat(epochs, reference, weighting):
    ref = build_reference(
        epochs.images,
        epochs.variances,
        epochs.psfs,
        epochs.zero_points,
        target_zero_point=TARGET_ZP,
        config=ReferenceConfig(weighting=weighting),
    )
    assert np.allclose(ref.data, reference.data, atol=1e-3 * expected_noise(epochs))
    assert np.allclose(ref.weights, reference.weights, rtol=1e-4)


def test_best_epochs_are_selected_by_point_source_signal_to_noise():
    # Epoch 1 is shallow (3x the noise), epoch 4 has poor seeing and a low
    # zero point; the other four are the best and are the ones kept.
    ep = simulate(
        seed=11,
        fwhms=(3.0, 3.2, 3.4, 3.1, 6.5, 3.3),
        zps=(25.0, 25.0, 24.9, 25.1, 24.5, 25.0),
        sigmas=(6.0, 18.0, 6.0, 6.0, 6.0, 6.5),
    )
    ref = build_reference(
        ep.images, ep.variances, ep.psfs, ep.zero_points, config=ReferenceConfig(max_epochs=4)
    )
    assert ref.epochs_used == (0, 2, 3, 5)
    assert np.argmax(ref.merit) == 3  # deepest zero point, low noise, good seeing
    assert ref.zero_point == 25.1  # by default, the best epoch's
    assert ref.n_epochs.max() == 4
    assert set(np.argsort(ref.merit)[:2]) == {1, 4}


def test_masked_pixels_are_left_out_and_uncovered_pixels_flagged(epochs):
    masks = [np.zeros(SHAPE, dtype=bool) for _ in epochs.images]
    masks[0][55:64, 81:90] = True  # between stars
    for m in masks:
        m[150:155, 150:155] = True
    images = [im.copy() for im in epochs.images]
    images[0][55:64, 81:90] = 1e6  # garbage under the mask
    ref = build_reference(images, epochs.variances, epochs.psfs, epochs.zero_points, masks)
    assert np.all(ref.n_epochs[55:64, 81:90] == 5)
    # Five epochs without the best one: a little noisier than the full coadd.
    assert np.max(np.abs(ref.data[55:64, 81:90])) < 5 * 1.3 * expected_noise(epochs)
    assert ref.mask[150:155, 150:155].all() and np.all(ref.data[150:155, 150:155] == 0)
    assert np.all(ref.variance[150:155, 150:155] == 0)
    assert ref.mask.sum() == 25


def test_aligned_images_are_accepted_directly(epochs):
    aligned = [
        AlignedImage(
            data=im.astype(np.float32),
            variance=v.astype(np.float32),
            mask=np.zeros(SHAPE, dtype=bool),
            transform=PixelTransform.identity(),
            method="assumed/copy",
        )
        for im, v in zip(epochs.images, epochs.variances, strict=True)
    ]
    ref = build_reference(aligned, None, epochs.psfs, epochs.zero_points, target_zero_point=25.0)
    direct = build_reference(
        epochs.images, epochs.variances, epochs.psfs, epochs.zero_points, target_zero_point=25.0
    )
    assert np.allclose(ref.data, direct.data, atol=1e-3)


def test_psfs_of_different_sizes_are_padded_to_the_largest(epochs):
    psfs = [
        moffat_psf(f, size=s) for f, s in zip(epochs.fwhms, (15, 21, 25, 31, 35, 41), strict=True)
    ]
    ref = build_reference(epochs.images[:3], epochs.variances[:3], psfs[3:], epochs.zero_points[:3])
    assert ref.psf.shape == (41, 41)
    assert ref.psf.sum() == pytest.approx(1.0)


def test_psf_measures_of_a_moffat_stamp():
    psf = moffat_psf(4.0, size=41, oversample=9)
    assert psf_fwhm(psf) == pytest.approx(4.0, rel=0.05)
    # Moffat beta=3: NEA = 4 pi alpha**2 (beta-1)... close to the value summed here.
    nea = psf_noise_equivalent_area(psf)
    assert nea == pytest.approx(1.0 / np.sum(psf**2))
    assert psf_noise_equivalent_area(moffat_psf(6.0, size=41)) > nea


def test_invalid_inputs_raise_named_errors(epochs):
    ims, vs, ps, zs = epochs.images, epochs.variances, epochs.psfs, epochs.zero_points
    with pytest.raises(ValueError, match="at least one epoch"):
        build_reference([], [], [], [])
    with pytest.raises(ValueError, match="epoch 1 has shape"):
        build_reference([ims[0], ims[1][:100]], vs[:2], ps[:2], zs[:2])
    with pytest.raises(ValueError, match="epoch 0 has no variance"):
        build_reference(ims[:2], None, ps[:2], zs[:2])
    with pytest.raises(ValueError, match="PSF of epoch 1 must be a 2-D stamp with odd sides"):
        build_reference(ims[:2], vs[:2], [ps[0], np.ones((4, 4))], zs[:2])
    with pytest.raises(ValueError, match="zero_points has 1 entries for 2 images"):
        build_reference(ims[:2], vs[:2], ps[:2], zs[:1])
    with pytest.raises(ValueError, match="weighting"):
        ReferenceConfig(weighting="median")
