"""Master bias and flat, bad pixels, and calibrated frames with masks and variance."""

from __future__ import annotations

import numpy as np
import pytest

from astrid_assets.science.calibration import (
    BadPixelMask,
    CosmicRayConfig,
    MaskBit,
    MasterBias,
    MasterFlat,
    calibrate_frame,
    combine_frames,
    detect_cosmic_rays,
    make_bad_pixel_mask,
    make_master_bias,
    make_master_flat,
)
from astrid_assets.science.psf import moffat_psf

SHAPE = (256, 256)
GAIN = 2.0  # e-/ADU
READ_NOISE_E = 10.0  # e-
READ_NOISE = READ_NOISE_E / GAIN  # ADU


def _true_bias() -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    # Level, a gradient and a column pattern, as real amplifiers have.
    return (400.0 + 0.02 * yy + 3.0 * np.sin(xx / 7.0)).astype(np.float32)


def _true_flat() -> np.ndarray:
    rng = np.random.default_rng(99)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    r2 = ((xx - 128.0) ** 2 + (yy - 128.0) ** 2) / 128.0**2
    vignetting = 1.0 - 0.15 * r2
    pixel_response = rng.normal(1.0, 0.01, SHAPE)
    return (vignetting * pixel_response).astype(np.float32)


def _bias_frames(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    bias = _true_bias()
    return [bias + rng.normal(0.0, READ_NOISE, SHAPE).astype(np.float32) for _ in range(n)]


def _exposure(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Raw frame: bias + photon noise on ``signal`` (ADU, after the flat) + read noise."""
    electrons = rng.poisson(np.clip(signal, 0, None) * GAIN)
    return (_true_bias() + electrons / GAIN + rng.normal(0, READ_NOISE, SHAPE)).astype(np.float32)


def _flat_frames(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    levels = rng.uniform(15000, 25000, n)
    return [_exposure(level * _true_flat(), rng) for level in levels]


def test_master_bias_equals_the_true_bias_within_read_noise() -> None:
    rng = np.random.default_rng(0)
    n = 7
    frames = _bias_frames(n, rng)
    # A cosmic ray in one bias frame must not reach the master.
    frames[2][100:102, 50:60] += 3000.0
    master = make_master_bias(frames)
    assert isinstance(master, MasterBias) and master.n_frames == n
    assert master.data.dtype == np.float32
    error = master.data - _true_bias()
    assert abs(error.mean()) < 0.05 * READ_NOISE
    # A median of n frames is sqrt(pi/2) noisier than a mean (1/sqrt(n)).
    assert error.std() < 1.3 * READ_NOISE / np.sqrt(n)
    assert np.abs(error[100:102, 50:60]).max() < 5 * READ_NOISE / np.sqrt(n)
    assert master.read_noise == pytest.approx(READ_NOISE, rel=0.03)

    mean_master = make_master_bias(frames, method="mean")
    assert (mean_master.data - _true_bias()).std() < 1.1 * READ_NOISE / np.sqrt(n)
    assert np.abs(mean_master.data - _true_bias())[100:102, 50:60].max() < 5 * READ_NOISE


def test_clipping_rejects_outliers_in_two_of_five_frames() -> None:
    rng = np.random.default_rng(1)
    frames = [rng.normal(100.0, 1.0, (50, 50)) for _ in range(5)]
    frames[0][10, 10] = 1e4
    frames[3][10, 10] = 2e4
    frames[1][20, 20] = np.nan
    combined = combine_frames(frames, sigma=3.0)
    assert combined[10, 10] == pytest.approx(100.0, abs=3.0)
    assert np.isfinite(combined[20, 20])
    all_nan = [np.full((4, 4), np.nan)] * 3
    assert np.isnan(combine_frames(all_nan)).all()


def test_master_flat_makes_the_sky_flat_to_half_a_percent() -> None:
    rng = np.random.default_rng(2)
    master_bias = make_master_bias(_bias_frames(5, rng))
    flat = make_master_flat(_flat_frames(5, rng), master_bias)
    assert isinstance(flat, MasterFlat) and flat.n_frames == 5
    assert np.median(flat.data) == pytest.approx(1.0, abs=1e-3)
    assert np.all((flat.levels > 10000) & (flat.levels < 25000))
    truth = _true_flat() / np.median(_true_flat())
    assert np.std(flat.data / truth) < 0.004

    sky = 5000.0
    raw = _exposure(sky * _true_flat() / np.median(_true_flat()), rng)
    frame = calibrate_frame(
        raw, master_bias, flat, gain=GAIN, read_noise=READ_NOISE_E, saturation=60000.0
    )
    blocks = frame.data.reshape(8, 32, 8, 32).mean(axis=(1, 3))
    assert np.max(np.abs(blocks / blocks.mean() - 1.0)) < 0.005
    # The propagated variance matches the scatter of a calibrated faint sky
    # (where the master flat's own noise, not in the model, is negligible).
    raw = _exposure(500.0 * _true_flat() / np.median(_true_flat()), rng)
    frame = calibrate_frame(
        raw, master_bias, flat, gain=GAIN, read_noise=READ_NOISE_E, saturation=None
    )
    scatter = np.var(frame.data[frame.data.shape[0] // 2 :])
    assert np.median(frame.variance) == pytest.approx(scatter, rel=0.05)
    assert np.median(frame.variance) == pytest.approx(500.0 / GAIN + READ_NOISE**2, rel=0.03)


def test_bad_pixels_hot_noisy_dead_and_a_low_column_are_found() -> None:
    rng = np.random.default_rng(3)
    bias_frames = _bias_frames(6, rng)
    hot = (np.array([10, 50, 200]), np.array([20, 60, 210]))
    noisy = (np.array([30, 150]), np.array([40, 100]))
    for frame in bias_frames:
        frame[hot] += 80.0
        frame[noisy] += rng.normal(0, 40.0, 2)
    flat_frames = _flat_frames(5, rng)
    dead = (np.array([70, 71, 220]), np.array([80, 80, 30]))
    for frame in flat_frames:
        level = np.median(frame) - 400.0
        frame[dead] = 400.0 + 0.1 * level
        frame[:, 123] = 400.0 + 0.6 * (frame[:, 123] - 400.0)  # a 40% low column
    master_bias = make_master_bias(bias_frames)
    master_flat = make_master_flat(flat_frames, master_bias)
    bpm = make_bad_pixel_mask(master_bias, master_flat)
    assert isinstance(bpm, BadPixelMask)
    assert bpm.mask[hot].all() and bpm.mask[noisy].all() and bpm.mask[dead].all()
    assert list(bpm.bad_columns) == [123]
    assert bpm.mask[:, 123].all()
    false = bpm.mask.copy()
    false[hot] = false[noisy] = false[dead] = False
    false[:, 123] = False
    assert false.sum() <= 3
    assert bpm.n_hot >= 3 and bpm.n_noisy >= 2 and bpm.n_low >= 3


def _undersampled_field(rng: np.random.Generator, fwhm: float = 1.5):
    """Sky + undersampled stars (ADU after the flat) and their positions."""
    shape = (512, 512)
    signal = np.full(shape, 200.0)
    n = 250
    xs = rng.uniform(8, shape[1] - 9, n)
    ys = rng.uniform(8, shape[0] - 9, n)
    fluxes = 10 ** rng.uniform(2.5, 5.0, n)
    for x, y, flux in zip(xs, ys, fluxes, strict=True):
        ix, iy = round(x), round(y)
        stamp = moffat_psf(fwhm, size=15, offset=(x - ix, y - iy))
        signal[iy - 7 : iy + 8, ix - 7 : ix + 8] += flux * stamp
    return signal, xs, ys


def _add_cosmic_rays(raw: np.ndarray, rng: np.random.Generator, n: int = 120):
    """Tracks of 1-4 pixels (rows, columns, diagonals) and 2x2 blobs, 40-600 sigma."""
    truth = np.zeros(raw.shape, bool)
    hits = []
    for _ in range(n):
        x, y = rng.integers(10, raw.shape[1] - 10, 2)
        length = rng.integers(1, 5)
        amp = rng.uniform(400.0, 6000.0)
        kind = rng.integers(0, 4)
        if kind == 0:
            pix = (np.full(length, y), x + np.arange(length))
        elif kind == 1:
            pix = (y + np.arange(length), np.full(length, x))
        elif kind == 2:
            pix = (y + np.arange(length), x + np.arange(length))
        else:
            pix = (np.array([y, y, y + 1, y + 1]), np.array([x, x + 1, x, x + 1]))
        raw[pix] += amp * rng.uniform(0.5, 1.0, len(pix[0]))
        truth[pix] = True
        hits.append((y, x))
    return truth, hits


def test_cosmic_rays_are_masked_and_undersampled_stars_are_not() -> None:
    rng = np.random.default_rng(4)
    signal, xs, ys = _undersampled_field(rng)
    raw = (signal + rng.normal(0, 1, signal.shape) * np.sqrt(signal / GAIN + READ_NOISE**2)).astype(
        np.float32
    )
    truth, hits = _add_cosmic_rays(raw, rng)
    result = detect_cosmic_rays(raw, gain=GAIN, read_noise=READ_NOISE_E)
    found = np.array([result.mask[y, x] for y, x in hits])
    assert found.mean() >= 0.95
    near_cr = np.zeros_like(truth)
    for y, x in hits:
        near_cr[y - 3 : y + 6, x - 3 : x + 6] = True
    eaten = [
        result.mask[round(y) - 1 : round(y) + 2, round(x) - 1 : round(x) + 2].any()
        for x, y in zip(xs, ys, strict=True)
        if not near_cr[round(y), round(x)]
    ]
    assert sum(eaten) <= 1
    # Without the star test L.A.Cosmic flags a large share of these stars.
    plain = detect_cosmic_rays(
        raw, gain=GAIN, read_noise=READ_NOISE_E, config=CosmicRayConfig(protect_stars=False)
    )
    plain_eaten = sum(
        plain.mask[round(y) - 1 : round(y) + 2, round(x) - 1 : round(x) + 2].any()
        for x, y in zip(xs, ys, strict=True)
        if not near_cr[round(y), round(x)]
    )
    assert plain_eaten > 20 * max(sum(eaten), 1)
    # Cleaned values are close to the sky + star light that was there.
    assert (
        np.median(np.abs(result.cleaned[truth & result.mask] - signal[truth & result.mask])) < 100
    )


def test_calibrated_frame_masks_saturation_bleeds_crs_and_bad_pixels() -> None:
    rng = np.random.default_rng(5)
    master_bias = make_master_bias(_bias_frames(5, rng))
    master_flat = make_master_flat(_flat_frames(5, rng), master_bias)
    signal = np.full(SHAPE, 300.0) * _true_flat()
    raw = _exposure(signal, rng)
    saturation = 30000.0
    raw[100:104, 60:63] = saturation  # a saturated core ...
    raw[90:120, 61] = saturation  # ... bleeding along its column
    raw[50, 50] = np.nan
    raw[180:182, 30:33] += 5000.0  # a cosmic ray
    bpm = np.zeros(SHAPE, bool)
    bpm[:, 200] = True
    frame = calibrate_frame(
        raw,
        master_bias,
        master_flat,
        gain=GAIN,
        read_noise=READ_NOISE_E,
        saturation=saturation,
        bad_pixel_mask=bpm,
    )
    flags = frame.flags
    assert frame.data.dtype == np.float32 and frame.variance.dtype == np.float32
    assert np.isfinite(frame.data).all() and np.isfinite(frame.variance).all()
    assert frame.n_saturated == int((raw >= saturation).sum())
    assert np.all(flags[90:120, 61] & MaskBit.SATURATED)
    assert np.all(flags[87:90, 61] & MaskBit.BLEED)  # bleed_grow = 3 along the column
    assert not flags[86, 61]
    assert np.all(flags[120:123, 61] & MaskBit.BLEED)
    assert np.all(flags[100:104, 59] & MaskBit.BLEED)  # saturation_grow = 1 across
    assert not np.any(flags[80, :] & MaskBit.BLEED)
    assert flags[50, 50] & MaskBit.NONFINITE
    assert np.all(flags[:, 200] & MaskBit.BAD)
    assert np.all(flags[180:182, 30:33] & MaskBit.COSMIC_RAY)
    assert frame.n_cosmic_ray_pixels >= 6
    np.testing.assert_array_equal(frame.mask, flags != 0)
    assert frame.masked_fraction < 0.01
    sky = np.median(frame.data[~frame.mask])
    assert sky == pytest.approx(300.0 * np.median(_true_flat()), rel=0.01)
    # The cosmic ray is replaced by something close to the sky.
    assert np.all(np.abs(frame.data[180:182, 30:33] - sky) < 60)


def test_without_cosmic_ray_detection_and_with_a_scalar_bias() -> None:
    rng = np.random.default_rng(6)
    raw = 500.0 + rng.normal(0.0, 5.0, (64, 64))
    raw[10, 10] = 9000.0
    frame = calibrate_frame(
        raw, 400.0, np.ones((64, 64)), gain=1.0, read_noise=5.0, saturation=None, cosmic_rays=None
    )
    assert frame.n_cosmic_ray_pixels == 0 and frame.n_saturated == 0
    assert not frame.mask.any()
    assert np.median(frame.data) == pytest.approx(100.0, abs=1.0)


def test_zero_or_nonfinite_flat_pixels_are_masked_bad() -> None:
    flat = np.ones((32, 32), np.float32)
    flat[5, 5] = 0.0
    flat[6, 6] = np.nan
    raw = np.full((32, 32), 600.0)
    frame = calibrate_frame(
        raw, 100.0, flat, gain=1.0, read_noise=5.0, saturation=65000.0, cosmic_rays=None
    )
    assert frame.flags[5, 5] & MaskBit.BAD and frame.flags[6, 6] & MaskBit.BAD
    assert np.isfinite(frame.data).all()
    assert frame.data[5, 5] == pytest.approx(500.0)


def test_shape_mismatches_name_both_shapes() -> None:
    raw = np.zeros((32, 32))
    with pytest.raises(ValueError, match=r"master flat shape \(16, 16\).*\(32, 32\)"):
        calibrate_frame(raw, 0.0, np.ones((16, 16)), gain=1, read_noise=1, saturation=None)
    with pytest.raises(ValueError, match=r"master bias shape \(32, 16\).*\(32, 32\)"):
        calibrate_frame(
            raw, np.zeros((32, 16)), np.ones((32, 32)), gain=1, read_noise=1, saturation=None
        )
    with pytest.raises(ValueError, match=r"bad pixel mask shape \(8, 8\).*\(32, 32\)"):
        calibrate_frame(
            raw,
            0.0,
            np.ones((32, 32)),
            gain=1,
            read_noise=1,
            saturation=None,
            bad_pixel_mask=np.zeros((8, 8), bool),
        )
    with pytest.raises(ValueError, match=r"frame 1 has shape \(4, 4\).*\(5, 5\)"):
        make_master_bias([np.zeros((5, 5)), np.zeros((4, 4))])
    with pytest.raises(ValueError, match="gain"):
        calibrate_frame(raw, 0.0, np.ones((32, 32)), gain=0.0, read_noise=1, saturation=None)
    with pytest.raises(ValueError, match="no bias frames"):
        make_master_bias([])
    with pytest.raises(ValueError, match="median level"):
        make_master_flat([np.zeros((8, 8))] * 3, 10.0)
