"""Drift statistics on small seeded samples: PSI, its p-value, KS, Wasserstein,
missing values, constant columns, tiny samples, frames and the night's verdict."""

import math

import numpy as np
import polars as pl
import pytest

from astrid_assets.ml.drift import (
    DRIFT_SCHEMA,
    FRAME_QUANTITIES,
    SCORE_COLUMNS,
    DriftThresholds,
    NightSample,
    compare_frame_quantity,
    compare_night,
    compare_samples,
    drift_figure,
    population_stability_index,
    psi_p_value,
    robust_spread,
)
from astrid_assets.ml.metrics import figure_png
from astrid_assets.ml.training_data import FEATURE_COLUMNS


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _feature(reference, tonight, **kwargs):
    return compare_samples(
        reference, tonight, comparison="nights", kind="feature", quantity="snr", **kwargs
    )


def _candidates(n: int, rng: np.random.Generator, shift: float = 0.0, shifted=()) -> pl.DataFrame:
    return pl.DataFrame(
        {name: rng.normal(shift if name in shifted else 0.0, 1.0, n) for name in FEATURE_COLUMNS}
    )


def _frames(seeing: float, zero_point: float, depth: float, n: int = 4) -> pl.DataFrame:
    rng = _rng(n)
    return pl.DataFrame(
        {
            "night": ["2026-01-10"] * n,
            "fwhm_arcsec": seeing * (1 + 0.05 * rng.standard_normal(n)),
            "limiting_mag": depth + 0.05 * rng.standard_normal(n),
            "zero_point": zero_point + 0.02 * rng.standard_normal(n),
            "sky": 700.0 * (1 + 0.1 * rng.standard_normal(n)),
        }
    )


def test_identical_samples_have_no_drift() -> None:
    values = _rng().normal(size=500)
    assert population_stability_index(values, values) == 0.0
    row = _feature(values, values)
    assert (row.psi, row.ks, row.wasserstein) == (0.0, 0.0, 0.0)
    assert row.psi_p == pytest.approx(1.0) and row.ks_p == pytest.approx(1.0)
    assert row.status == "ok" and not row.drifted
    same = _feature(values, _rng(1).normal(size=500))  # another draw of the same distribution
    assert same.psi < 0.1 and not same.drifted


def test_a_shifted_normal_passes_psi_and_ks_thresholds() -> None:
    rng = _rng()
    reference, tonight = rng.normal(size=2000), rng.normal(1.0, 1.0, 500)
    row = _feature(reference, tonight)
    assert row.psi >= 0.25 and row.psi_p < 1e-6
    assert row.ks > 0.3 and row.ks_p < 1e-6
    # Scaled by the reference's sigma: a shift of one sigma reads about 1.
    assert row.wasserstein == pytest.approx(1.0, abs=0.1)
    assert row.shift == pytest.approx(1.0, abs=0.15)
    assert row.drifted
    small = _feature(reference, rng.normal(0.15, 1.0, 500))
    assert small.psi < 0.1 and not small.drifted  # the conventional "no real change"


def test_psi_on_small_samples_is_not_called_drift_by_chance() -> None:
    """30 values against 2000 have a PSI near 9 (1/30 + 1/2000) = 0.3 from sampling
    alone; the p-value keeps that from being called drift."""
    rng = _rng(3)
    reference = rng.normal(size=2000)
    rows = [_feature(reference, rng.normal(size=30)) for _ in range(200)]
    psi = np.array([r.psi for r in rows])
    assert 0.2 < psi.mean() < 0.45
    assert np.mean([r.drifted for r in rows]) <= 0.04
    shifted = [_feature(reference, rng.normal(1.5, 1.0, 30)) for _ in range(50)]
    assert np.mean([r.drifted for r in shifted]) >= 0.9


def test_missing_values_take_a_bin_of_their_own() -> None:
    rng = _rng()
    reference = rng.normal(size=1000)
    tonight = rng.normal(size=400)
    tonight[:200] = np.nan  # half of tonight's values missing: drift of its own
    row = _feature(reference, tonight)
    assert row.drifted and row.psi > 1.0
    assert row.ks_p > 0.01  # the finite values alone have not moved
    assert "missing: 50% tonight, 0% reference" in row.note
    assert row.n_tonight == 400
    nothing = _feature(reference, np.full(50, np.nan))
    assert nothing.drifted and math.isnan(nothing.ks) and math.isnan(nothing.median_tonight)
    assert "only the PSI" in nothing.note
    both = rng.normal(size=1000)
    both[::10] = np.nan
    alike = both.copy()
    rng.shuffle(alike)
    assert not _feature(both, alike).drifted


def test_constant_columns_are_compared_without_a_spread() -> None:
    ones = np.ones(200)
    row = _feature(ones, np.ones(50))
    assert row.psi == 0.0 and not row.drifted
    assert math.isnan(row.wasserstein) and "constant in the reference" in row.note
    flipped = _feature(ones, np.r_[np.ones(25), np.zeros(25)])
    assert flipped.drifted and flipped.psi > 1.0
    # A boolean feature, mostly 0: each value gets its own bin.
    flags = (_rng().random(1000) < 0.1).astype(float)
    assert not _feature(flags, (_rng(1).random(300) < 0.1).astype(float)).drifted
    assert _feature(flags, (_rng(1).random(300) < 0.5).astype(float)).drifted
    assert robust_spread(np.r_[np.zeros(90), np.ones(10)]) == pytest.approx(0.3)


def test_tiny_samples_say_too_few_rather_than_a_number() -> None:
    row = _feature(_rng().normal(size=1000), [0.1, 5.0, 7.0])
    assert row.status == "too few" and not row.drifted
    assert math.isnan(row.psi) and math.isnan(row.ks) and math.isnan(row.wasserstein)
    assert "3 tonight" in row.note and "at least 30" in row.note
    assert row.median_tonight == 5.0
    missing = _feature(None, [1.0, 2.0])
    assert missing.status == "not available" and missing.note == "none for the reference"


def test_psi_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="both sides"):
        population_stability_index([], [1.0])
    with pytest.raises(ValueError, match="bins"):
        population_stability_index([1.0, 2.0], [1.0], bins=1)
    with pytest.raises(ValueError, match="floor"):
        population_stability_index([1.0, 2.0], [1.0], floor=0.0)
    with pytest.raises(ValueError, match="one-dimensional"):
        population_stability_index(np.ones((2, 2)), [1.0])
    assert psi_p_value(np.ones(40), np.ones(40)) == 1.0


def test_thresholds_are_validated_with_their_names() -> None:
    for bad in (
        {"psi": 0.0},
        {"alpha": 1.5},
        {"max_drifted_share": 0.0},
        {"min_samples": 1},
        {"bins": 1},
        {"max_seeing_ratio": 0.9},
        {"max_sky_ratio": 1.0},
        {"max_depth_loss": -1.0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DriftThresholds(**bad)


def test_frame_quality_is_judged_on_medians() -> None:
    reference = _frames(seeing=2.2, zero_point=27.95, depth=21.3, n=12)
    worse = _frames(seeing=4.4, zero_point=26.95, depth=20.2)
    rows = {
        q: compare_frame_quantity(reference[q], worse[q], comparison="nights", quantity=q)
        for q in FRAME_QUANTITIES
    }
    assert rows["fwhm_arcsec"].drifted and rows["fwhm_arcsec"].ratio == pytest.approx(2.0, 0.1)
    assert rows["zero_point"].drifted and rows["zero_point"].shift == pytest.approx(-1.0, abs=0.1)
    assert rows["limiting_mag"].drifted
    assert not rows["sky"].drifted and "not judged" in rows["sky"].note
    assert math.isnan(rows["fwhm_arcsec"].psi)  # 4 frames: medians only
    judged_sky = compare_frame_quantity(
        [700.0] * 5,
        [2000.0] * 2,
        comparison="nights",
        quantity="sky",
        thresholds=DriftThresholds(max_sky_ratio=2.0),
    )
    assert judged_sky.drifted
    better = _frames(seeing=1.6, zero_point=27.97, depth=21.6)
    for q in FRAME_QUANTITIES:
        assert not compare_frame_quantity(
            reference[q], better[q], comparison="nights", quantity=q
        ).drifted
    nan = compare_frame_quantity([2.0, 2.1], [np.nan], comparison="nights", quantity="zero_point")
    assert nan.status == "too few" and not nan.drifted
    with pytest.raises(ValueError, match="unknown frame quantity"):
        compare_frame_quantity([1.0], [1.0], comparison="nights", quantity="airmass")


def test_without_any_reference_the_report_says_so() -> None:
    tonight = NightSample(_candidates(40, _rng()), _frames(2.2, 27.9, 21.3))
    report = compare_night("2026-01-10", tonight)
    assert not report.available and report.rows == []
    assert report.missing == {"training": "no training set", "nights": "no earlier night"}
    assert report.reasons() == []
    assert report.table().schema == pl.Schema(DRIFT_SCHEMA)


def test_shifted_features_and_scores_fail_the_night() -> None:
    rng = _rng(5)
    shifted = FEATURE_COLUMNS[:5]
    training = _candidates(1000, rng).with_columns(
        pl.lit("train").alias("split"), pl.lit(True).alias("vetted")
    )
    training = pl.concat(
        [training, training.with_columns(pl.lit("test").alias("split"), pl.col("snr") + 9)]
    )
    earlier = NightSample(
        _candidates(300, rng),
        _frames(2.2, 27.95, 21.3, n=12),
        pl.DataFrame({name: rng.beta(2, 5, 300) for name in SCORE_COLUMNS}),
        nights=("2026-01-08", "2026-01-09"),
    )
    tonight = NightSample(
        _candidates(200, rng, shift=1.0, shifted=shifted),
        _frames(2.3, 27.94, 21.2),
        pl.DataFrame(
            {
                **{name: rng.beta(2, 5, 200) for name in SCORE_COLUMNS},
                "ensemble": rng.beta(5, 2, 200),  # the ensemble thinks far more is real
            }
        ),
    )
    report = compare_night("2026-01-10", tonight, training=training, earlier=earlier)
    assert report.references["training"] == "1000 vetted detections of the train split"
    for comparison in ("training", "nights"):
        share = report.drifted_share(comparison)
        assert share == pytest.approx(5 / 13, abs=1 / 13), comparison
    reasons = report.reasons()
    assert any(r.startswith("training: ") and "features drifted" in r for r in reasons)
    assert any("score ensemble PSI" in r for r in reasons)
    assert not any("seeing" in r or "zero point" in r for r in reasons)
    drifted = report.drifted_quantities()
    assert "nights/ensemble" in drifted and "nights/realbogus" not in drifted
    assert {f"training/{name}" for name in shifted} <= set(drifted)
    headline = report.headline()
    assert headline["ensemble_median_shift"] == pytest.approx(0.43, abs=0.1)
    assert headline["worst_feature"].split("/")[1] in shifted
    assert headline["worst_feature_psi"] >= 0.25
    assert headline["seeing_ratio"] == pytest.approx(2.3 / 2.2, abs=0.1)
    table = report.table()
    assert table.height == 13 + 13 + len(SCORE_COLUMNS) + len(FRAME_QUANTITIES)
    assert set(table["night"]) == {"2026-01-10"}
    assert (
        figure_png(drift_figure(report, earlier.frames, tonight.frames))[:8] == b"\x89PNG\r\n\x1a\n"
    )


def test_a_night_like_the_last_ones_passes() -> None:
    rng = _rng(6)
    scores = {name: rng.beta(2, 5, 300) for name in SCORE_COLUMNS}
    earlier = NightSample(
        _candidates(300, rng), _frames(2.2, 27.95, 21.3, 12), pl.DataFrame(scores)
    )
    tonight = NightSample(
        _candidates(150, rng),
        _frames(2.4, 27.93, 21.2),
        pl.DataFrame({name: rng.beta(2, 5, 150) for name in SCORE_COLUMNS}),
    )
    report = compare_night("2026-01-10", tonight, earlier=earlier)
    assert report.available and report.missing == {"training": "no training set"}
    assert report.reasons() == []
    # 18 quantities at alpha = 0.01: one may be called drifted by chance, not a night's share.
    assert len(report.drifted_quantities()) <= 1
    assert report.drifted_share("nights") <= 1 / 13
    assert math.isnan(report.drifted_share("training"))


def test_unscored_nights_report_scores_as_not_available() -> None:
    rng = _rng(7)
    earlier = NightSample(_candidates(100, rng), _frames(2.2, 27.95, 21.3), None, ("2026-01-09",))
    tonight = NightSample(_candidates(100, rng), _frames(2.2, 27.95, 21.3), None)
    report = compare_night("2026-01-10", tonight, earlier=earlier)
    scores = [r for r in report.rows if r.kind == "score"]
    assert [r.quantity for r in scores] == list(SCORE_COLUMNS)
    assert {r.status for r in scores} == {"not available"}
    assert math.isnan(report.headline()["ensemble_psi"])
    # With no training rows in the train split, the training comparison is left out.
    training = _candidates(50, rng).with_columns(
        pl.lit("test").alias("split"), pl.lit(True).alias("vetted")
    )
    report = compare_night("2026-01-10", tonight, training=training, earlier=earlier)
    assert "no vetted rows" in report.missing["training"]
    with pytest.raises(ValueError, match="split"):
        compare_night("2026-01-10", tonight, training=_candidates(5, rng))
