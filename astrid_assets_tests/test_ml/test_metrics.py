"""Rare-event metrics: hand-computed operating points, edge cases, figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from astrid_assets.ml.metrics import (
    confusion_figure,
    expected_calibration_error,
    figure_png,
    fnr_at_fpr,
    fpr_at_fnr,
    metrics_table,
    mistakes_figure,
    pr_figure,
    rare_event_metrics,
    reliability_figure,
    roc_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def hand_example() -> tuple[np.ndarray, np.ndarray]:
    """100 reals and 200 bogus with tied scores, small enough to count by hand.

    reals: 0.1, 0.4 (tied with 40 bogus), 98 at 0.9
    bogus: 150 at 0.2, 40 at 0.4, 8 at 0.5, 2 at 0.95
    """
    real = np.array([0.1, 0.4] + [0.9] * 98)
    bogus = np.array([0.2] * 150 + [0.4] * 40 + [0.5] * 8 + [0.95] * 2)
    labels = np.r_[np.ones(100, int), np.zeros(200, int)]
    return labels, np.r_[real, bogus]


def test_fpr_at_fnr_counts_tied_bogus_at_the_threshold_as_called_real():
    labels, scores = hand_example()
    # 1 % of 100 reals: one may be missed, so the threshold is the 2nd lowest real
    # score, 0.4; every bogus at >= 0.4 passes: 40 + 8 + 2 of 200.
    assert fpr_at_fnr(labels, scores, 0.01) == (0.25, 0.4)
    # 2 %: two may be missed, threshold 0.9; only the two bogus at 0.95 pass.
    assert fpr_at_fnr(labels, scores, 0.02) == (0.01, 0.9)


def test_fnr_at_fpr_misses_the_reals_at_or_below_the_third_highest_bogus():
    labels, scores = hand_example()
    # 1 % of 200 bogus: two may pass, so the threshold must exceed the 3rd highest
    # bogus score, 0.5; the lowest score above it is 0.9, and the reals at 0.1 and
    # 0.4 are missed.
    assert fnr_at_fpr(labels, scores, 0.01) == (0.02, 0.9)


def test_rare_event_metrics_on_the_hand_example():
    labels, scores = hand_example()
    result = rare_event_metrics(labels, scores)
    assert result["fpr_at_fnr_1pct"] == 0.25
    assert result["threshold_at_fnr_1pct"] == 0.4
    assert result["fpr_at_fnr_2pct"] == 0.01
    assert result["fnr_at_fpr_1pct"] == 0.02
    assert (result["n_real"], result["n_bogus"]) == (100, 200)
    squared_errors = 0.9**2 + 0.6**2 + 98 * 0.1**2 + 150 * 0.2**2 + 40 * 0.4**2
    squared_errors += 8 * 0.5**2 + 2 * 0.95**2
    assert result["brier"] == pytest.approx(squared_errors / 300)


def test_operating_points_match_the_best_roc_point_on_tied_random_scores():
    rng = np.random.default_rng(3)
    labels = (rng.random(3000) < 0.2).astype(int)
    scores = np.round(rng.normal(size=3000) + 1.5 * labels, 1)  # many ties
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    for target in (0.01, 0.02, 0.1):
        assert fpr_at_fnr(labels, scores, target)[0] == pytest.approx(
            fpr[1 - tpr <= target + 1e-12].min()
        )
        assert fnr_at_fpr(labels, scores, target)[0] == pytest.approx(
            (1 - tpr[fpr <= target + 1e-12]).min()
        )


def test_perfect_scores_give_unit_areas_and_zero_error_rates():
    labels = np.r_[np.ones(20, int), np.zeros(500, int)]
    scores = np.r_[np.full(20, 0.9), np.full(500, 0.1)]
    result = rare_event_metrics(labels, scores)
    assert result["roc_auc"] == 1.0
    assert result["pr_auc"] == 1.0
    assert result["fpr_at_fnr_1pct"] == 0.0
    assert result["fpr_at_fnr_2pct"] == 0.0
    assert result["fnr_at_fpr_1pct"] == 0.0


def test_random_scores_give_an_roc_area_near_one_half():
    rng = np.random.default_rng(0)
    labels = (rng.random(4000) < 0.5).astype(int)
    result = rare_event_metrics(labels, rng.random(4000))
    # standard error of the AUC here is about 0.009
    assert abs(result["roc_auc"] - 0.5) < 0.03
    assert abs(result["pr_auc"] - labels.mean()) < 0.03


def test_a_single_class_raises_a_clear_error():
    with pytest.raises(ValueError, match="both real"):
        rare_event_metrics(np.ones(10, int), np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="both real"):
        rare_event_metrics(np.zeros(10, int), np.linspace(0, 1, 10))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same length"):
        rare_event_metrics(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        rare_event_metrics(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="1 \\(real\\) or 0"):
        rare_event_metrics(np.array([0, 2]), np.array([0.1, 0.2]))


def test_brier_and_ece_are_nan_for_scores_that_are_not_probabilities():
    result = rare_event_metrics(np.array([0, 1, 0, 1]), np.array([-2.0, 3.0, -1.0, 0.5]))
    assert math.isnan(result["brier"]) and math.isnan(result["ece"])
    assert result["roc_auc"] == 1.0


def test_expected_calibration_error_by_hand():
    # bin [0.2, 0.3): 10 detections at p = 0.25, half real: gap 0.25, weight 10/30;
    # bin [0.9, 1]: 20 at p = 0.95 with 19 real: gap 0.
    p = np.r_[np.full(10, 0.25), np.full(20, 0.95)]
    labels = np.r_[np.ones(5, int), np.zeros(5, int), np.ones(19, int), np.zeros(1, int)]
    assert expected_calibration_error(labels, p) == pytest.approx(10 / 30 * 0.25)
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error(labels, p + 1.0)


def test_metrics_table_has_one_row_per_model_in_markdown():
    labels, scores = hand_example()
    table = metrics_table(
        {
            "cnn": rare_event_metrics(labels, scores),
            "forest": rare_event_metrics(labels, scores * 4 - 2),
        }
    )
    lines = table.strip().splitlines()
    assert lines[0].startswith("| model | n_real | n_bogus | roc_auc | pr_auc |")
    assert set(lines[1]) <= set("|-:")
    assert lines[2].startswith("| cnn | 100 | 200 |")
    assert "| 0.25 |" in lines[2]
    assert lines[3].startswith("| forest |") and lines[3].endswith("| n/a | n/a |")


def test_figures_render_to_png():
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.1).astype(int)
    p = np.clip(0.2 + 0.6 * labels + rng.normal(0, 0.2, 400), 0, 1)
    unbounded = rng.normal(size=400) + labels
    curves = {"cnn": (labels, p), "forest": (labels, unbounded)}
    triplets = rng.normal(size=(400, 3, 63, 63)).astype(np.float32)
    threshold = rare_event_metrics(labels, p)["threshold_at_fnr_1pct"]
    figures = [
        roc_figure(curves),
        roc_figure(curves, log_fpr=True),
        pr_figure(curves),
        confusion_figure(labels, p, threshold),
        reliability_figure(curves),
        reliability_figure({"forest": (labels, unbounded)}),
        mistakes_figure(triplets, labels, p, threshold),
        mistakes_figure(triplets, labels, p, threshold=2.0, n=3),  # no false positives
    ]
    for fig in figures:
        assert figure_png(fig).startswith(PNG_SIGNATURE)


def test_mistakes_figure_shows_the_worst_of_each_kind_first():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.9, 0.7, 0.1, 0.2, 0.05, 0.95])
    triplets = np.zeros((6, 3, 15, 15))
    fig = mistakes_figure(triplets, labels, scores, threshold=0.5, n=8)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    # false positives by falling score, then false negatives by rising score
    assert titles == ["0.9", "0.7", "0.05", "0.2"]
    with pytest.raises(ValueError, match="triplets"):
        mistakes_figure(triplets[:, :2], labels, scores, threshold=0.5)
