"""The difference chain end to end on the simulated survey, and its helpers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from astrid_assets.science.pipeline import (
    DiffConfig,
    difference_pair,
    estimate_gain,
    saturation_mask,
    streak_mask,
)
from astrid_assets.science.psf import moffat_psf
from astrid_assets.science.simulate import SurveyConfig, field_names, survey_nights
from astrid_assets.science.survey import (
    process_simulated,
    simulated_reference,
    subtract_night,
)


@pytest.fixture(scope="module")
def small_survey():
    config = SurveyConfig(shape=(640, 640))
    field = field_names(config)[0]
    nights = survey_nights(config, 5)
    reference = simulated_reference(config, field, nights[:4])
    return config, field, nights[4], reference


def test_simulated_night_recovers_bright_fakes_with_few_false_candidates(small_survey) -> None:
    config, field, night, reference = small_survey
    result = subtract_night(
        config, field, night, reference, n_fakes=40, snr_range=(12.0, 20.0), seed=3
    )
    fakes = result.injection.table
    usable = fakes[~np.asarray(fakes["masked"])]
    assert len(usable) >= 25
    assert np.mean(usable["recovered"]) >= 0.9
    found = usable[np.asarray(usable["recovered"])]
    ratio = np.asarray(found["measured_flux"]) / np.asarray(found["flux"])
    assert np.median(ratio) == pytest.approx(1.0, abs=0.06)
    assert result.false_candidates <= 2
    cands = result.products.candidates
    assert np.all(np.isfinite(cands["ra"])) and np.all(np.isfinite(cands["mag"]))
    assert result.products.cutouts.shape == (len(cands), 3, 63, 63)
    score = result.products.result.score[~result.products.result.mask]
    mad = 1.4826 * np.median(np.abs(score - np.median(score)))
    assert 0.85 <= mad <= 1.15


def test_classic_method_runs_the_same_chain(small_survey) -> None:
    config, field, night, reference = small_survey
    result = subtract_night(
        config,
        field,
        night,
        reference,
        diff_config=DiffConfig(method="classic"),
        n_fakes=30,
        snr_range=(15.0, 20.0),
        seed=4,
    )
    fakes = result.injection.table
    usable = fakes[~np.asarray(fakes["masked"])]
    assert result.products.result.method == "classic"
    assert np.mean(usable["recovered"]) >= 0.8


def test_saturation_level_is_found_from_a_clipped_adc() -> None:
    data = np.full((50, 50), 100.0, np.float32)
    data[10:13, 20:22] = 65535.0
    mask, level = saturation_mask(data, None, grow=1)
    assert level == 65535.0
    assert mask[10:13, 20:22].all() and mask[9, 20] and not mask[30, 30]
    assert mask.sum() == 6 + 2 * 2 + 2 * 3  # the block grown by one pixel, 4-connected
    none_mask, none_level = saturation_mask(np.arange(100.0).reshape(10, 10), None)
    assert none_level is None and not none_mask.any()


def test_gain_is_estimated_from_the_sky() -> None:
    rng = np.random.default_rng(1)
    gain, sky = 2.5, 1500.0
    image = rng.poisson(sky * gain, (300, 300)) / gain
    estimate = estimate_gain(sky, float(np.std(image)), None)
    assert estimate == pytest.approx(gain, rel=0.03)


def test_streak_mask_traces_a_trail_and_not_point_sources() -> None:
    rng = np.random.default_rng(5)
    score = rng.normal(0.0, 1.0, (400, 400)).astype(np.float32)
    yy, xx = np.mgrid[:400, :400]
    distance = np.abs(0.5 * xx - yy + 80) / np.hypot(0.5, 1.0)
    score += (6.0 * np.exp(-0.5 * (distance / 1.5) ** 2)).astype(np.float32)
    psf = moffat_psf(3.0, size=15) / moffat_psf(3.0, size=15).max()
    score[300:315, 50:65] += 20 * psf.astype(np.float32)
    trail = streak_mask(score, np.zeros(score.shape, bool), fwhm=3.0, threshold=2.5)
    assert trail[np.abs(distance) < 1].mean() > 0.9
    assert not trail[307, 57]
    assert trail.mean() < 0.05


def test_config_rejects_wrong_values() -> None:
    with pytest.raises(ValueError, match="method"):
        DiffConfig(method="hotpants")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        DiffConfig(threshold=float("nan"))
    with pytest.raises(ValueError, match="stamp_size"):
        DiffConfig(stamp_size=64)


def test_zogy_flux_ratio_from_pixels_agrees_with_catalogue_zero_points(small_survey) -> None:
    config, field, night, reference = small_survey
    _, processed = process_simulated(config, night, field)
    science = replace(processed.prepared(), zero_point=None)
    solved = difference_pair(science, reference.prepared).result.flux_ratio
    from_zero_points = 10 ** (
        0.4 * (reference.prepared.zero_point - processed.zero_point.zero_point)
    )
    assert solved == pytest.approx(from_zero_points, rel=0.03)
