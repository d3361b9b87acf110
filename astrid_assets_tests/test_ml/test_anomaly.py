"""Anomaly detectors fitted on a Gaussian cloud of 'normal' detections."""

from __future__ import annotations

import numpy as np
import pytest

from astrid_assets.ml.anomaly import (
    DETECTORS,
    AnomalyModels,
    anomaly_scores,
    fit_anomaly_models,
    load_anomaly_models,
    save_anomaly_models,
)

NAMES = ["fwhm", "elongation", "snr", "sharpness"]
# Both decision functions put the boundary of the normal region at 0; points in
# the cloud's core score above it, points 8 sigma away well below. The margin is
# in each detector's own units (the forest's scores span about -0.5..0.5).
MARGIN = 0.1


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1500, len(NAMES)))


@pytest.fixture(scope="module")
def models(cloud) -> AnomalyModels:
    return fit_anomaly_models(cloud, NAMES, seed=0)


def test_points_far_from_the_cloud_score_lower_than_points_in_it(models):
    rng = np.random.default_rng(1)
    inside = 0.5 * rng.normal(size=(100, len(NAMES)))
    far = inside + 8.0 * np.array([1.0, -1.0, 1.0, 0.0])
    scores_in, scores_far = anomaly_scores(models, inside), anomaly_scores(models, far)
    assert set(scores_in) == set(DETECTORS) == {"isolation_forest", "one_class_svm"}
    for name in DETECTORS:
        assert scores_far[name].max() < scores_in[name].min() - MARGIN, name
        assert np.median(scores_in[name]) > 0.0 > scores_far[name].max(), name


def test_a_single_odd_feature_is_enough_to_lower_the_score(models):
    typical = np.zeros((1, len(NAMES)))
    odd = typical.copy()
    odd[0, 1] = 10.0
    for name in DETECTORS:
        assert anomaly_scores(models, odd)[name][0] < anomaly_scores(models, typical)[name][0]


def test_missing_features_are_imputed_and_an_empty_column_is_ignored(cloud):
    rng = np.random.default_rng(2)
    features = cloud.copy()
    features[rng.random(features.shape) < 0.1] = np.nan
    features[:, 3] = np.nan
    features[:5, 0] = np.inf
    with pytest.warns(UserWarning, match="sharpness"):
        models = fit_anomaly_models(features, NAMES, seed=0)
    queries = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [np.nan, 0.0, np.nan, 0.0],
            [np.nan, np.nan, np.nan, np.nan],
            [np.inf, np.nan, -np.inf, 1e6],
        ]
    )
    scores = anomaly_scores(models, queries)
    for name in DETECTORS:
        assert np.isfinite(scores[name]).all()
        # inf counts as missing, and the column never seen among normal detections
        # does not move the score
        assert scores[name][3] == pytest.approx(scores[name][2])


def test_the_svm_is_fitted_on_a_subsample_of_at_most_max_fit_rows(cloud):
    models = fit_anomaly_models(cloud, NAMES, seed=0, max_fit=300)
    assert (models.n_fit, models.n_fit_svm) == (1500, 300)
    assert len(models.one_class_svm[-1].support_) <= 300


def test_fitting_is_reproducible_with_the_seed(cloud, models):
    again = fit_anomaly_models(cloud, NAMES, seed=0)
    for name in DETECTORS:
        np.testing.assert_array_equal(
            anomaly_scores(again, cloud[:50])[name], anomaly_scores(models, cloud[:50])[name]
        )


def test_save_and_load_give_identical_scores(tmp_path, cloud, models):
    path = tmp_path / "models" / "anomaly.joblib"
    save_anomaly_models(models, path)
    loaded = load_anomaly_models(path)
    assert loaded.feature_names == NAMES
    assert (loaded.n_fit, loaded.n_fit_svm) == (models.n_fit, models.n_fit_svm)
    for name in DETECTORS:
        np.testing.assert_array_equal(
            anomaly_scores(loaded, cloud)[name], anomaly_scores(models, cloud)[name]
        )
    assert [p.name for p in path.parent.iterdir()] == ["anomaly.joblib"]


def test_loading_another_joblib_file_is_refused(tmp_path):
    import joblib

    path = tmp_path / "other.joblib"
    joblib.dump({"something": 1}, path)
    with pytest.raises(ValueError, match="anomaly models"):
        load_anomaly_models(path)


def test_wrong_shapes_are_named_and_no_rows_give_empty_scores(models):
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        anomaly_scores(models, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        fit_anomaly_models(np.zeros((1, 4)), NAMES)
    empty = anomaly_scores(models, np.zeros((0, 4)))
    assert all(empty[name].shape == (0,) for name in DETECTORS)
