"""The simulated survey: determinism, camera physics, truth tables, calibration frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from astrid_assets.science.psf import moffat_psf
from astrid_assets.science.simulate import (
    NightOverride,
    SurveyConfig,
    detector_defects,
    field_catalog,
    field_names,
    field_supernovae,
    field_variables,
    field_wcs,
    night_conditions,
    reference_catalog,
    simulate_calibration_frames,
    simulate_exposure,
    supernova_mag,
    survey_nights,
    variable_flux_ratio,
)

NIGHT = "2026-01-07"

# A small sky with nothing in it; tests switch on what they look at.
EMPTY = SurveyConfig(
    seed=7,
    shape=(256, 256),
    star_density=0.0,
    galaxy_density=0.0,
    supernova_rate=0.0,
    variable_fraction=0.0,
    asteroid_density=0.0,
    flare_rate=0.0,
    streak_probability=0.0,
    cosmic_ray_rate=0.0,
    hot_pixel_density=0.0,
    n_bad_columns=0,
    wcs_error_fraction=0.0,
)


def calibrated(config: SurveyConfig, exposure) -> np.ndarray:
    """Bias-subtracted, flat-fielded ADU using the true bias and flat."""
    det = detector_defects(config)
    return (exposure.data - det.bias - exposure.bias_offset) / det.flat


def aperture(image: np.ndarray, x: float, y: float, radius: float) -> np.ndarray:
    yy, xx = np.indices(image.shape)
    return np.hypot(xx - x, yy - y) <= radius


def test_same_inputs_give_byte_identical_exposures() -> None:
    config = SurveyConfig(shape=(256, 256), asteroid_density=20.0, cosmic_ray_rate=200.0)
    first = simulate_exposure(config, NIGHT, "F02")
    detector_defects.cache_clear()
    second = simulate_exposure(config, NIGHT, 1)
    assert first.data.dtype == np.float32
    assert first.data.tobytes() == second.data.tobytes()
    assert first.header.tostring() == second.header.tostring()
    assert first.truth.pformat(max_lines=-1, max_width=-1) == second.truth.pformat(
        max_lines=-1, max_width=-1
    )
    assert first.artefacts.pformat(max_lines=-1, max_width=-1) == second.artefacts.pformat(
        max_lines=-1, max_width=-1
    )
    other_night = simulate_exposure(config, "2026-01-08", "F02")
    other_field = simulate_exposure(config, NIGHT, "F03")
    assert not np.array_equal(first.data, other_night.data)
    assert not np.array_equal(first.data, other_field.data)


def test_raw_data_are_whole_adu_within_the_adc_range() -> None:
    exposure = simulate_exposure(SurveyConfig(shape=(256, 256)), NIGHT, "F01")
    assert np.all(exposure.data == np.rint(exposure.data))
    assert exposure.data.min() >= 0 and exposure.data.max() <= 65535


def test_header_has_camera_keywords_and_the_wcs_maps_truth_to_pixels() -> None:
    config = dataclasses.replace(
        SurveyConfig(shape=(512, 512)), supernova_rate=60.0, variable_fraction=0.2
    )
    config = dataclasses.replace(config, wcs_error_fraction=0.0)
    exposure = simulate_exposure(config, NIGHT, "F01")
    h = exposure.header
    cond = exposure.conditions
    for key in (
        "DATE-OBS",
        "MJD-OBS",
        "EXPTIME",
        "FILTER",
        "GAIN",
        "RDNOISE",
        "SATURATE",
        "AIRMASS",
        "OBJECT",
        "IMAGETYP",
        "TELESCOP",
        "INSTRUME",
    ):
        assert key in h, key
    assert h["IMAGETYP"] == "object" and h["OBJECT"] == "F01"
    assert h["EXPTIME"] == config.exptime and h["GAIN"] == config.gain
    assert h["MJD-OBS"] == pytest.approx(cond.mjd, abs=1e-7)
    assert h["DATE-OBS"].startswith("2026-01-08T")  # the morning UTC date of the evening
    assert config.bias_level < h["SATURATE"] < config.bias_level + config.saturation
    truth = exposure.truth
    assert len(truth) > 5
    x, y = WCS(h).world_to_pixel_values(truth["ra"], truth["dec"])
    np.testing.assert_allclose(x, truth["x"], atol=1e-3)
    np.testing.assert_allclose(y, truth["y"], atol=1e-3)


def test_a_wrong_header_wcs_is_off_by_the_recorded_amount() -> None:
    config = SurveyConfig(shape=(256, 256), wcs_error_fraction=1.0, supernova_rate=300.0)
    exposure = simulate_exposure(config, NIGHT, "F01")
    cond = exposure.conditions
    assert cond.wcs_off
    assert 3.0 <= np.hypot(cond.wcs_error_x, cond.wcs_error_y) <= 10.0
    truth = exposure.truth
    x, y = WCS(exposure.header).world_to_pixel_values(truth["ra"], truth["dec"])
    np.testing.assert_allclose(x - truth["x"], cond.wcs_error_x, atol=1e-3)
    np.testing.assert_allclose(y - truth["y"], cond.wcs_error_y, atol=1e-3)


def test_star_flux_lands_at_its_true_position() -> None:
    config = dataclasses.replace(
        EMPTY, shape=(512, 512), star_density=40.0, star_mag_range=(15.0, 16.5)
    )
    exposure = simulate_exposure(config, NIGHT, "F01")
    cond = exposure.conditions
    image = calibrated(config, exposure)
    cat = field_catalog(config, "F01")
    x, y = exposure.wcs.world_to_pixel_values(cat["ra"], cat["dec"])
    checked = 0
    for i in range(len(cat)):
        if not (30 < x[i] < 481 and 30 < y[i] < 481):
            continue
        others = np.hypot(x - x[i], y - y[i])
        if np.sort(others)[1] < 40:
            continue
        inner = aperture(image, x[i], y[i], 10.0)
        annulus = aperture(image, x[i], y[i], 30.0) & ~aperture(image, x[i], y[i], 20.0)
        measured = (image[inner] - np.median(image[annulus])).sum()
        noise = np.sqrt(inner.sum()) * np.std(image[annulus])
        ix, iy = round(x[i]), round(y[i])
        psf = moffat_psf(
            cond.fwhm,
            beta=cond.beta,
            ellipticity=cond.ellipticity,
            theta=cond.theta,
            size=101,
            offset=(x[i] - ix, y[i] - iy),
        )
        sy, sx = np.indices(psf.shape) - 50
        stamp_mask = np.hypot(sx + ix - x[i], sy + iy - y[i]) <= 10.0
        expected = 10 ** (-0.4 * (cat["mag"][i] - cond.zero_point)) * psf[stamp_mask].sum()
        assert measured == pytest.approx(expected, abs=max(0.015 * expected, 4 * noise))
        core = aperture(image, x[i], y[i], 2.0 * cond.fwhm)
        weights = image[core] - np.median(image[annulus])
        yy, xx = np.nonzero(core)
        assert (weights * xx).sum() / weights.sum() == pytest.approx(x[i], abs=0.05)
        assert (weights * yy).sum() / weights.sum() == pytest.approx(y[i], abs=0.05)
        checked += 1
    assert checked >= 3


def test_empty_sky_noise_is_photon_plus_read_noise() -> None:
    exposure = simulate_exposure(EMPTY, NIGHT, "F01")
    cond = exposure.conditions
    image = calibrated(EMPTY, exposure)[28:228, 28:228]
    expected = np.sqrt(cond.sky * EMPTY.gain + EMPTY.read_noise**2) / EMPTY.gain
    assert image.mean() == pytest.approx(cond.sky, rel=0.01)
    assert image.std() == pytest.approx(expected, rel=0.05)


def test_saturated_stars_are_capped_and_bleeding_conserves_charge() -> None:
    config = dataclasses.replace(
        EMPTY, shape=(512, 512), star_density=25.0, star_mag_range=(12.5, 13.0), saturation=8000.0
    )
    exposure = simulate_exposure(config, NIGHT, "F01")
    det = detector_defects(config)
    above_bias = exposure.data - det.bias - exposure.bias_offset
    cap = config.saturation + 5 * config.read_noise / config.gain
    assert above_bias.max() <= cap
    saturated = exposure.artefacts[exposure.artefacts["type"] == "saturated_star"]
    assert len(saturated) >= 1
    cond = exposure.conditions
    cat = field_catalog(config, "F01")
    x, y = exposure.wcs.world_to_pixel_values(cat["ra"], cat["dec"])
    checked = 0
    for row in saturated:
        # Bleed trails run along the column: take the star's full column strip.
        xs, ys = row["x"], row["y"]
        others = (np.abs(x - xs) < 40) & (np.hypot(x - xs, y - ys) > 0.5)
        if others.any() or not (30 < xs < 481 and 150 < ys < 361):
            continue
        strip = slice(round(xs) - 25, round(xs) + 26)
        electrons = above_bias[:, strip] * config.gain
        sky = cond.sky * config.gain * det.flat[:, strip]
        star = np.argmin(np.hypot(x - xs, y - ys))
        flux_e = 10 ** (-0.4 * (cat["mag"][star] - cond.zero_point)) * config.gain
        local_flat = float(det.flat[round(ys) - 5 : round(ys) + 6, strip].mean())
        assert (electrons - sky).sum() == pytest.approx(flux_e * local_flat, rel=0.03)
        column = above_bias[:, round(xs)]
        assert (column > 0.97 * config.saturation).sum() > 2 * cond.fwhm  # a bleed trail
        checked += 1
    assert checked >= 1


def test_calibration_frames_reproduce_the_detector_bias_and_flat() -> None:
    config = dataclasses.replace(EMPTY, hot_pixel_density=300.0, n_bad_columns=1)
    frames = simulate_calibration_frames(config, NIGHT, n_bias=5, n_flat=5)
    det = detector_defects(config)
    assert [h["IMAGETYP"] for h in frames.bias_headers] == ["bias"] * 5
    assert [h["IMAGETYP"] for h in frames.flat_headers] == ["flat"] * 5
    assert all(f.dtype == np.float32 for f in frames.biases + frames.flats)

    master_bias = np.median(np.stack(frames.biases), axis=0)
    residual = master_bias - det.bias
    assert np.median(residual) == pytest.approx(np.mean(frames.bias_offsets), abs=0.3)
    # Median of 5 frames: ~1.2 x the mean's noise.
    per_frame = config.read_noise / config.gain
    assert residual.std() < 1.4 * per_frame / np.sqrt(5)
    hot = master_bias[det.hot_y, det.hot_x] - np.median(master_bias)
    assert np.all(hot > 15.0)  # hot pixels stand out in the biases too

    normalised = [(f - master_bias) / np.median(f - master_bias) for f in frames.flats]
    master_flat = np.median(np.stack(normalised), axis=0)
    master_flat /= np.median(master_flat)
    good = np.ones(det.flat.shape, bool)
    good[det.hot_y, det.hot_x] = False
    ratio = master_flat[good] / det.flat[good]
    assert np.std(ratio) < 0.005
    assert np.median(ratio) == pytest.approx(1.0, abs=0.002)
    bad = det.bad_columns[0]
    start = det.bad_column_start[0]
    assert np.median(master_flat[start:, bad]) < 0.5


def test_detector_is_fixed_by_the_seed_not_the_night() -> None:
    config = dataclasses.replace(EMPTY, hot_pixel_density=100.0, n_bad_columns=2)
    det = detector_defects(config)
    assert det.flat.dtype == np.float32 and not det.flat.flags.writeable
    assert np.median(det.flat) == pytest.approx(1.0, abs=1e-6)
    assert len(det.hot_x) == round(100.0 * 256 * 256 / 1e6)
    assert len(det.bad_columns) == 2
    a = simulate_exposure(config, "2026-01-05", "F01").artefacts
    b = simulate_exposure(config, "2026-01-20", "F02").artefacts
    hot_a = a[a["type"] == "hot_pixel"]
    hot_b = b[b["type"] == "hot_pixel"]
    np.testing.assert_array_equal(hot_a["x"], hot_b["x"])
    np.testing.assert_array_equal(hot_a["y"], hot_b["y"])
    other = detector_defects(dataclasses.replace(config, seed=8))
    assert not np.array_equal(other.hot_x, det.hot_x)


def test_asteroids_move_linearly_from_night_to_night() -> None:
    config = dataclasses.replace(EMPTY, shape=(512, 512), asteroid_density=60.0)
    nights = survey_nights(config, 3)
    seen: dict[str, list] = {}
    for night in nights:
        exposure = simulate_exposure(config, night, "F01")
        mid = exposure.conditions.mjd + 0.5 * config.exptime / 86400
        for row in exposure.truth[exposure.truth["type"] == "asteroid"]:
            seen.setdefault(row["id"], []).append((mid, row["ra"], row["dec"]))
            assert row["delta_flux"] == row["flux"]
    repeated = {k: v for k, v in seen.items() if len(v) >= 2}
    assert repeated, "no asteroid was seen on two nights"
    for track in repeated.values():
        (t0, ra0, dec0), (t1, ra1, dec1) = track[0], track[-1]
        moved = SkyCoord(ra0, dec0, unit="deg").separation(SkyCoord(ra1, dec1, unit="deg"))
        assert moved.arcsec > 10.0
        if len(track) == 3:
            tm, ram, decm = track[1]
            f = (tm - t0) / (t1 - t0)
            assert ram == pytest.approx(ra0 + f * (ra1 - ra0), abs=1.0 / 3600)
            assert decm == pytest.approx(dec0 + f * (dec1 - dec0), abs=1.0 / 3600)


def test_supernova_flux_follows_its_light_curve() -> None:
    config = dataclasses.replace(EMPTY, supernova_rate=300.0)
    nights = survey_nights(config, 30)[::4]
    mjds, mags = {}, {}
    for night in nights:
        exposure = simulate_exposure(config, night, "F01")
        mid = exposure.conditions.mjd + 0.5 * config.exptime / 86400
        sne = exposure.truth[exposure.truth["type"] == "supernova"]
        np.testing.assert_allclose(sne["delta_flux"], sne["flux"])
        for row in sne:
            mjds.setdefault(row["id"], []).append(mid)
            mags.setdefault(row["id"], []).append(row["mag"])
    every = [t for v in mjds.values() for t in v]
    catalogue = field_supernovae(config, "F01", min(every), max(every))
    by_id = {row["id"]: row for row in catalogue}
    long_ones = [k for k, v in mjds.items() if len(v) >= 5]
    assert long_ones
    for ident in long_ones:
        sn = by_id[ident]
        expected = supernova_mag(
            np.array(mjds[ident]), sn["peak_mjd"], sn["peak_mag"], sn["tau_rise"], sn["tau_fall"]
        )
        np.testing.assert_allclose(mags[ident], expected, atol=1e-6)

    # The pixels agree with the truth: aperture flux of the brightest one.
    exposure = simulate_exposure(config, nights[3], "F01")
    image = calibrated(config, exposure) - exposure.conditions.sky
    sne = exposure.truth[exposure.truth["type"] == "supernova"]
    inside = (sne["x"] > 20) & (sne["x"] < 235) & (sne["y"] > 20) & (sne["y"] < 235)
    best = sne[inside][np.argmax(sne["flux"][inside])]
    neighbours = np.hypot(sne["x"] - best["x"], sne["y"] - best["y"])
    nearby = sne["flux"][(neighbours > 0) & (neighbours < 25)].sum()
    mask = aperture(image, best["x"], best["y"], 12.0)
    noise = np.sqrt(mask.sum()) * np.sqrt(exposure.conditions.sky / config.gain)
    assert image[mask].sum() == pytest.approx(
        best["flux"], abs=5 * noise + 0.05 * best["flux"] + nearby
    )


def test_supernova_light_curve_rises_for_weeks_then_declines() -> None:
    t = np.arange(-40.0, 100.0, 0.5)
    mag = supernova_mag(t, 0.0, 19.0, 4.0, 30.0)
    assert mag.min() == pytest.approx(19.0, abs=1e-9)
    assert t[np.argmin(mag)] == pytest.approx(0.0, abs=0.5)
    assert np.all(np.diff(mag[t < 0]) < 0) and np.all(np.diff(mag[t > 0.5]) > 0)
    assert mag[t == -14.0][0] - 19.0 > 1.0  # two weeks before peak: >1 mag fainter
    with pytest.raises(ValueError, match="tau_fall"):
        supernova_mag(0.0, 0.0, 19.0, 10.0, 15.0)


def test_variable_stars_vary_about_their_mean_flux() -> None:
    phases = np.linspace(0.0, 1.0, 20001)[:-1]
    for shape in ("sine", "pulsator", "eclipsing"):
        ratio = variable_flux_ratio(phases, 1.0, 0.0, 0.5, shape)
        assert ratio.mean() == pytest.approx(1.0, abs=1e-4)
        assert ratio.min() == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="shape"):
        variable_flux_ratio(0.0, 1.0, 0.0, 0.5, "cepheid")

    config = dataclasses.replace(EMPTY, shape=(512, 512), star_density=300.0, variable_fraction=0.2)
    variables = field_variables(config, "F01")
    assert len(variables) >= 3
    exposure = simulate_exposure(config, NIGHT, "F01")
    cond = exposure.conditions
    truth = exposure.truth[exposure.truth["type"] == "variable"]
    assert len(truth) >= 3
    mid = cond.mjd + 0.5 * config.exptime / 86400
    for row in truth:
        var = variables[variables["id"] == row["id"]][0]
        mean_flux = 10 ** (-0.4 * (var["mean_mag"] - cond.zero_point))
        ratio = variable_flux_ratio(
            mid, var["period"], var["phase0"], var["amplitude"], var["shape"]
        )
        assert row["flux"] == pytest.approx(mean_flux * ratio, rel=1e-9)
        assert row["delta_flux"] == pytest.approx(row["flux"] - mean_flux, rel=1e-6, abs=1e-6)


def test_flares_brighten_a_catalogue_star_for_one_night() -> None:
    config = dataclasses.replace(EMPTY, shape=(512, 512), star_density=800.0, flare_rate=40.0)
    nights = survey_nights(config, 2)
    flares = [simulate_exposure(config, n, "F01").truth for n in nights]
    flares = [t[t["type"] == "flare"] for t in flares]
    assert len(flares[0]) > 3 and len(flares[1]) > 3
    assert not set(flares[0]["id"]) & set(flares[1]["id"])
    cat = field_catalog(config, "F01")
    for row in flares[0]:
        star = cat[row["host_id"]]
        assert star["type"] == "star"
        assert row["flux"] - row["delta_flux"] == pytest.approx(
            10 ** (-0.4 * (star["mag"] - row["mag"])) * row["flux"], rel=1e-6
        )
        assert row["delta_flux"] > 0.4 * (row["flux"] - row["delta_flux"])


def test_cosmic_rays_are_sharper_than_the_psf() -> None:
    config = dataclasses.replace(EMPTY, cosmic_ray_rate=600.0)
    exposure = simulate_exposure(config, NIGHT, "F01")
    image = calibrated(config, exposure) - exposure.conditions.sky
    crs = exposure.artefacts[exposure.artefacts["type"] == "cosmic_ray"]
    assert len(crs) > 20
    psf = exposure.psf
    c = psf.shape[0] // 2
    psf_sharpness = psf.max() / psf[c - 2 : c + 3, c - 2 : c + 3].sum()
    compact = crs[np.isnan(crs["x_end"])]
    checked = 0
    for row in compact:
        ix, iy = round(row["x"]), round(row["y"])
        if not (4 <= ix < 252 and 4 <= iy < 252):
            continue
        box = image[iy - 3 : iy + 4, ix - 3 : ix + 4]
        peak = np.unravel_index(np.argmax(box), box.shape)
        py, px = iy - 3 + peak[0], ix - 3 + peak[1]
        core = image[py - 2 : py + 3, px - 2 : px + 3]
        if core.shape != (5, 5) or core.max() < 20 * np.sqrt(exposure.conditions.sky):
            continue
        assert core.max() / core.sum() > 1.5 * psf_sharpness
        checked += 1
    assert checked >= 5


def test_streak_crosses_the_frame_and_is_listed() -> None:
    config = dataclasses.replace(EMPTY, streak_probability=1.0)
    exposure = simulate_exposure(config, NIGHT, "F01")
    streaks = exposure.artefacts[exposure.artefacts["type"] == "streak"]
    assert len(streaks) == 1
    s = streaks[0]
    length = np.hypot(s["x_end"] - s["x"], s["y_end"] - s["y"])
    assert length > 50
    image = calibrated(config, exposure) - exposure.conditions.sky
    t = np.linspace(0.1, 0.9, 50)
    xs = np.rint(s["x"] + t * (s["x_end"] - s["x"])).astype(int)
    ys = np.rint(s["y"] + t * (s["y_end"] - s["y"])).astype(int)
    sigma = np.sqrt(exposure.conditions.sky / config.gain)
    assert np.median(image[ys, xs]) > 2 * sigma


def test_field_catalogue_and_reference_catalogue() -> None:
    config = SurveyConfig(shape=(512, 512))
    cat = field_catalog(config, "F01")
    assert {"id", "type", "ra", "dec", "mag", "sersic_n", "r_eff", "ellipticity", "pa"} <= set(
        cat.colnames
    )
    stars = cat[cat["type"] == "star"]
    galaxies = cat[cat["type"] == "galaxy"]
    area = (512 + 200) ** 2 / 1e6
    assert len(stars) == pytest.approx(config.star_density * area, rel=0.15)
    assert len(galaxies) == pytest.approx(config.galaxy_density * area, rel=0.15)
    assert stars["mag"].min() < 15.0 and stars["mag"].max() > 23.0
    assert np.all(np.isnan(stars["sersic_n"]))
    assert galaxies["sersic_n"].min() < 1.2 and galaxies["sersic_n"].max() > 3.5
    assert np.all((galaxies["ellipticity"] >= 0) & (galaxies["ellipticity"] < 0.8))
    # Star counts rise towards faint magnitudes as a power law.
    bright = ((stars["mag"] > 17) & (stars["mag"] < 19)).sum()
    faint = ((stars["mag"] > 21) & (stars["mag"] < 23)).sum()
    assert faint > 3 * bright

    ref = reference_catalog(config, "F01")
    assert set(ref.colnames) == {"id", "ra", "dec", "mag", "mag_err"}
    assert np.all((ref["mag_err"] >= 0.01) & (ref["mag_err"] <= 0.03))
    truth = cat[np.searchsorted(cat["id"], ref["id"])]
    pulls = (ref["mag"] - truth["mag"]) / ref["mag_err"]
    assert np.std(pulls) == pytest.approx(1.0, abs=0.15)
    np.testing.assert_array_equal(ref["ra"], truth["ra"])


def test_fields_and_nights() -> None:
    config = SurveyConfig()
    assert field_names(config) == ["F01", "F02", "F03", "F04"]
    assert survey_nights(config, 3) == ["2026-01-05", "2026-01-06", "2026-01-07"]
    centres = [field_wcs(config, f).wcs.crval for f in field_names(config)]
    coords = SkyCoord([c[0] for c in centres], [c[1] for c in centres], unit="deg")
    for i in range(len(coords)):
        assert np.all(coords[i].separation(coords[i + 1 :]).deg > 5.0)
    wcs = field_wcs(config, "F02")
    ra, dec = wcs.pixel_to_world_values(1023.5, 1023.5)
    assert (ra, dec) == pytest.approx(tuple(wcs.wcs.crval), abs=1e-9)
    ra_east, _ = wcs.pixel_to_world_values(1022.5, 1023.5)
    assert ra_east > ra  # east is to the left
    assert np.hypot(*np.diag(wcs.wcs.cd)) * 3600 / np.sqrt(2) == pytest.approx(1.0)


def test_observing_conditions_are_realistic() -> None:
    config = SurveyConfig()
    conds = [night_conditions(config, n, f) for n in survey_nights(config, 30) for f in range(4)]
    fwhm = np.array([c.fwhm for c in conds])
    assert 1.3 <= fwhm.min() and fwhm.max() <= 6.0 and 1.8 < np.median(fwhm) < 3.2
    assert all(1.0 <= c.airmass < 2.5 for c in conds)
    assert all(0 <= c.ellipticity <= 0.15 and 2.5 <= c.beta <= 4.5 for c in conds)
    assert all(abs(c.jitter_x) <= 20 and abs(c.jitter_y) <= 20 for c in conds)
    assert all(abs(c.rotation) <= 0.3 for c in conds)
    zp = np.array([c.zero_point for c in conds])
    assert zp.max() < 28.1 and np.median(zp) > 27.7 and zp.min() > 26.0
    assert all(c.sky > 100 for c in conds)
    assert 19.5 < np.median([c.limiting_mag for c in conds]) < 22.5
    # Exposures happen at night: within 6.5 h of local solar midnight.
    for c in conds:
        local_hours = ((c.mjd % 1.0) * 24 + config.site_longitude / 15.0) % 24
        assert local_hours > 17.5 or local_hours < 6.5
        assert c.date_obs[:10] > c.night  # UTC is already the next day
    # Weather and the moon change from night to night.
    assert len({round(c.sky, 3) for c in conds}) == len(conds)
    assert np.ptp([c.moon_illumination for c in conds]) > 0.8


def test_invalid_inputs_are_rejected_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="shape"):
        SurveyConfig(shape=(32, 512))
    with pytest.raises(ValueError, match="gain"):
        SurveyConfig(gain=0.0)
    with pytest.raises(ValueError, match="streak_probability"):
        SurveyConfig(streak_probability=1.5)
    with pytest.raises(ValueError, match="start_night"):
        SurveyConfig(start_night="05/01/2026")
    with pytest.raises(ValueError, match="night"):
        simulate_exposure(EMPTY, "tomorrow", "F01")
    with pytest.raises(ValueError, match="unknown field"):
        simulate_exposure(EMPTY, NIGHT, "F99")
    with pytest.raises(ValueError, match="n_nights"):
        survey_nights(EMPTY, 0)


def test_full_size_exposure_has_a_realistic_mix() -> None:
    exposure = simulate_exposure(SurveyConfig(), "2026-01-06", "F01")
    kinds = exposure.truth["type"]
    visible = exposure.truth["mag"] < exposure.conditions.limiting_mag
    assert 3 <= visible.sum() <= 40
    assert {"supernova", "variable", "asteroid"} <= set(kinds)
    artefacts = exposure.artefacts["type"]
    assert (artefacts == "cosmic_ray").sum() > 10
    assert (artefacts == "saturated_star").sum() >= 3


def test_a_night_override_changes_that_night_only() -> None:
    """Forced bad weather (for the drift test) leaves every other night, and
    everything but seeing, zero point and what follows from them, as it was."""
    plain = SurveyConfig(shape=(256, 256))
    bad = dataclasses.replace(plain, night_overrides=(NightOverride(NIGHT, 2.0, -1.0),))
    for night in ("2026-01-06", "2026-01-08"):
        assert night_conditions(bad, night, "F01") == night_conditions(plain, night, "F01")
    before, after = night_conditions(plain, NIGHT, "F01"), night_conditions(bad, NIGHT, "F01")
    assert after.fwhm == pytest.approx(min(6.0, 2.0 * before.fwhm))
    assert after.zero_point == pytest.approx(before.zero_point - 1.0)
    assert after.sky == pytest.approx(before.sky * 10**-0.4)  # a grey cloud dims the sky too
    assert after.limiting_mag < before.limiting_mag - 0.8
    assert (after.airmass, after.jitter_x, after.mjd) == (
        before.airmass,
        before.jitter_x,
        before.mjd,
    )
    with pytest.raises(ValueError, match="seeing_factor"):
        NightOverride(NIGHT, seeing_factor=0.0)
    with pytest.raises(ValueError, match="night"):
        NightOverride("07/01/2026")
    with pytest.raises(ValueError, match="twice"):
        SurveyConfig(night_overrides=(NightOverride(NIGHT), NightOverride(NIGHT, 1.5)))
