"""Logistic stacking of synthetic members of known quality."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import average_precision_score, brier_score_loss

from astrid_assets.ml.ensemble import StackedEnsemble

PROBABILITIES = ("good", "weak")
# The stack's held-out average precision may fall below the best member's by at
# most this much (here it gains about 0.1).
AP_TOLERANCE = 0.005


def members(n: int, prevalence: float, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Three members: a good but overconfident probability, a weak one, an unbounded
    score with a little independent information, and one of pure noise."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(int)
    sign = 2 * labels - 1
    scores = {
        "good": expit(2.5 * (2.0 * sign + rng.normal(0, 1.5, n))),
        "weak": expit(0.8 * sign + rng.normal(0, 1.5, n)),
        "anomaly": 0.03 * sign + rng.normal(0, 0.1, n),
        "noise": rng.normal(size=n),
    }
    return scores, labels


@pytest.fixture(scope="module")
def validation():
    return members(2000, 0.1, seed=0)


@pytest.fixture(scope="module")
def held_out():
    return members(20000, 0.1, seed=1)


@pytest.fixture(scope="module")
def ensemble(validation) -> StackedEnsemble:
    return StackedEnsemble(PROBABILITIES).fit(*validation)


def test_the_stack_ranks_at_least_as_well_as_its_best_member(ensemble, held_out):
    scores, labels = held_out
    best = max(average_precision_score(labels, s) for s in scores.values())
    assert best == average_precision_score(labels, scores["good"])
    stacked = average_precision_score(labels, ensemble.predict_proba(scores))
    assert stacked >= best - AP_TOLERANCE


def test_the_coefficients_favour_the_good_member(ensemble):
    coef = ensemble.coefficients()
    assert ensemble.members == ("good", "weak", "anomaly", "noise")
    assert coef["good"] > coef["weak"] > 0
    assert coef["good"] > coef["anomaly"] > 0
    assert abs(coef["noise"]) < 0.1 * coef["good"]
    assert ensemble.selection["chosen"] == "stacked"


def test_the_stack_recalibrates_an_overconfident_best_member(ensemble, held_out):
    scores, labels = held_out
    raw = brier_score_loss(labels, scores["good"])
    stacked = brier_score_loss(labels, ensemble.predict_proba(scores))
    assert stacked < 0.5 * raw
    # and the probabilities are right on average
    assert ensemble.predict_proba(scores).mean() == pytest.approx(labels.mean(), abs=0.01)


def test_class_weights_would_have_inflated_the_probabilities(validation, held_out):
    from sklearn.linear_model import LogisticRegression

    ensemble = StackedEnsemble(PROBABILITIES, cv_folds=1).fit(*validation)
    z = {
        part: np.column_stack([ensemble.transforms[n].apply(s[n]) for n in ensemble.members])
        for part, (s, _) in (("validation", validation), ("held_out", held_out))
    }
    balanced = LogisticRegression(class_weight="balanced").fit(z["validation"], validation[1])
    p_balanced = balanced.predict_proba(z["held_out"])[:, 1]
    labels = held_out[1]
    assert brier_score_loss(labels, ensemble.predict_proba(held_out[0])) < brier_score_loss(
        labels, p_balanced
    )


def test_a_json_round_trip_gives_identical_probabilities(ensemble, held_out):
    text = json.dumps(ensemble.to_dict())
    restored = StackedEnsemble.from_dict(json.loads(text))
    assert restored.members == ensemble.members
    assert restored.coefficients() == ensemble.coefficients()
    np.testing.assert_array_equal(
        restored.predict_proba(held_out[0]), ensemble.predict_proba(held_out[0])
    )


def test_from_dict_refuses_something_else():
    with pytest.raises(ValueError, match="stacked ensemble"):
        StackedEnsemble.from_dict({"format": "other", "version": 1})


def test_only_noise_besides_the_best_member_keeps_the_best_members_ranking():
    def noisy(n: int, seed: int):
        rng = np.random.default_rng(seed)
        labels = (rng.random(n) < 0.05).astype(int)
        scores = {"good": expit(2.0 * (2 * labels - 1) + rng.normal(0, 1.5, n))}
        scores.update({f"noise{k}": rng.normal(size=n) for k in range(4)})
        return scores, labels

    ensemble = StackedEnsemble(("good",)).fit(*noisy(300, seed=5))
    assert ensemble.selection["chosen"] == "best_member"
    assert ensemble.selection["cv_pr_auc_stacked"] < ensemble.selection["cv_pr_auc_best_member"]
    assert ensemble.members == ("good",)
    scores, labels = noisy(5000, seed=6)
    assert average_precision_score(labels, ensemble.predict_proba(scores)) == pytest.approx(
        average_precision_score(labels, scores["good"]), abs=1e-12
    )


def test_constant_and_missing_members_are_dropped_with_a_warning(validation, held_out):
    scores, labels = validation
    given = {
        **scores,
        "constant": np.full(len(labels), 0.3),
        "all_nan": np.full(len(labels), np.nan),
        "absent": None,
    }
    with pytest.warns(UserWarning, match="dropped") as record:
        ensemble = StackedEnsemble(PROBABILITIES).fit(given, labels)
    assert len(record) == 3
    assert ensemble.dropped == {
        "constant": "constant score",
        "all_nan": "no finite score",
        "absent": "no scores",
    }
    assert "constant" not in ensemble.members
    assert np.isfinite(ensemble.predict_proba(held_out[0])).all()


def test_missing_scores_at_prediction_push_neither_way(ensemble, held_out):
    scores = {name: s[:100].copy() for name, s in held_out[0].items()}
    scores["weak"][:] = np.nan
    p = ensemble.predict_proba({**scores, "ensemble": np.zeros(100)})  # extra keys ignored
    assert np.isfinite(p).all()
    with pytest.raises(ValueError, match="missing for \\['noise'\\]"):
        ensemble.predict_proba({k: v for k, v in scores.items() if k != "noise"})


def test_a_lower_prevalence_moves_the_probabilities_down_to_it(ensemble):
    scores, labels = members(40000, 0.02, seed=2)
    assert ensemble.fit_prevalence == pytest.approx(0.1, abs=0.02)
    default = ensemble.predict_proba(scores)
    shifted = ensemble.predict_proba(scores, prevalence=0.02)
    assert (shifted < default).all()
    assert abs(shifted.mean() - labels.mean()) < abs(default.mean() - labels.mean())
    assert shifted.mean() == pytest.approx(labels.mean(), abs=0.005)


def test_bad_inputs_raise_clear_errors(validation):
    scores, labels = validation
    with pytest.raises(ValueError, match="both real and bogus"):
        StackedEnsemble().fit(scores, np.zeros_like(labels))
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        StackedEnsemble(("noise",)).fit(scores, labels)
    with pytest.raises(ValueError, match="scores for"):
        StackedEnsemble().fit({"good": scores["good"][:10]}, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no usable ensemble member"):
            StackedEnsemble().fit({"flat": np.ones(len(labels))}, labels)
    with pytest.raises(ValueError, match="not fitted"):
        StackedEnsemble().predict_proba(scores)
