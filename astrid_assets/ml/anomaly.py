"""Feature-based anomaly detectors: how normal a detection looks for a real point source.

Two unsupervised detectors learn the distribution of the features of normal
detections (the real point-source detections of the training set) and score
new detections by how well they fit it; bogus detections (cosmic rays, bad
subtractions, satellite trails) have features a real point source does not:

* Isolation Forest (Liu, Ting & Zhou 2008, ICDM, 413): random axis-aligned
  splits isolate an unusual point in fewer splits than a normal one;
* One-Class SVM (Schölkopf et al. 2001, Neural Computation 13, 1443) with an
  RBF kernel: the smallest region in feature space holding a fraction
  ``1 - nu`` of the normal detections.

Each is a scikit-learn :class:`~sklearn.pipeline.Pipeline`:

``SimpleImputer(median)``
    A missing feature (NaN; ``inf`` is treated as missing too) takes the
    median of the normal detections. A feature with no value at all among
    them is dropped by the imputer (and named in a warning at fit time): it
    has nothing to say about what is normal.
``QuantileTransformer(output_distribution="normal")``
    Each feature mapped through its empirical distribution onto a standard
    normal. Detection features are heavy-tailed (fluxes, distances) and
    partly discrete (flags); after the map every feature has unit variance,
    so the RBF kernel's ``gamma="scale"`` (``1 / (n_features * var)``) weighs
    them alike and a few extreme normal detections cannot stretch the kernel.
    Values beyond the range of the fitted data land at about +-5.2 (the
    transformer's clip), far out in the tail. A RobustScaler would keep those
    distances but let the heaviest-tailed feature set the kernel width.
the detector
    ``IsolationForest`` or ``OneClassSVM(kernel="rbf", gamma="scale")``.

Scores: :func:`anomaly_scores` returns each pipeline's ``decision_function``,
for which HIGHER means MORE NORMAL (more like a real point source), zero is
the detector's own boundary (``contamination`` for the forest, ``nu`` for the
SVM) and negative values lie outside the learned normal region. These are
unbounded scores, not probabilities: the ensemble standardises them.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import QuantileTransformer
from sklearn.svm import OneClassSVM

__all__ = [
    "DETECTORS",
    "AnomalyModels",
    "anomaly_scores",
    "fit_anomaly_models",
    "load_anomaly_models",
    "save_anomaly_models",
]

DETECTORS = ("isolation_forest", "one_class_svm")

_N_TREES = 200
_N_QUANTILES = 1000
_EMPTY_FEATURE_WARNING = "Skipping features without any observed values"
_FORMAT = "astrid-anomaly-models"


@dataclass
class AnomalyModels:
    """The two fitted detectors and what they were fitted on.

    Attributes
    ----------
    isolation_forest, one_class_svm
        Pipelines: imputer, quantile transform, detector.
    feature_names
        The feature columns, in the order the pipelines expect them.
    n_fit
        Normal detections given to :func:`fit_anomaly_models` (the forest saw
        all of them; 0 when the models were loaded from a registry that does
        not record it).
    n_fit_svm
        How many of them the One-Class SVM was fitted on (``<= max_fit``).
    """

    isolation_forest: Pipeline
    one_class_svm: Pipeline
    feature_names: list[str]
    n_fit: int
    n_fit_svm: int = 0


def _as_features(features: np.ndarray, n_features: int) -> np.ndarray:
    """(n, f) float64 with ``inf`` as NaN, checked against the expected feature count."""
    x = np.array(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"features must be (n, {n_features}), got shape {x.shape}")
    x[np.isinf(x)] = np.nan
    return x


def _pipeline(detector, n_rows: int, seed: int) -> Pipeline:
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            (
                "scale",
                QuantileTransformer(
                    n_quantiles=min(_N_QUANTILES, n_rows),
                    output_distribution="normal",
                    random_state=seed,
                ),
            ),
            ("detector", detector),
        ]
    )


def fit_anomaly_models(
    features: np.ndarray,
    feature_names: Sequence[str],
    *,
    seed: int = 0,
    max_fit: int = 20_000,
    nu: float = 0.05,
    contamination: float | str = "auto",
) -> AnomalyModels:
    """Fit the Isolation Forest and the One-Class SVM on normal detections.

    Parameters
    ----------
    features
        (n, f) features of NORMAL detections only: the caller selects them
        (the real point-source detections). NaN and inf mean missing.
    feature_names
        The f column names.
    seed
        Seeds the forest, the quantile transform and the SVM's subsample.
    max_fit
        The One-Class SVM's training cost grows as n^2 to n^3 (kernel
        matrix), so it is fitted on a random subsample of at most ``max_fit``
        rows drawn without replacement; the forest (about n log n, 256 rows
        a tree) uses every row.
    nu
        The SVM's bound on the fraction of normal detections outside its region.
    contamination
        The forest's expected fraction of outliers in the fit data; ``"auto"``
        puts its boundary at the original paper's score 0.5.

    Returns
    -------
    AnomalyModels
    """
    names = list(feature_names)
    x = _as_features(features, len(names))
    if len(x) < 2:
        raise ValueError(f"need at least 2 normal detections to fit, got {len(x)}")
    if max_fit < 2:
        raise ValueError(f"max_fit must be at least 2, got {max_fit}")
    empty = [name for name, column in zip(names, x.T, strict=True) if np.isnan(column).all()]
    if empty:
        warnings.warn(
            f"features with no value among the normal detections are ignored: {empty}",
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    svm_rows = np.sort(rng.choice(len(x), size=min(max_fit, len(x)), replace=False))
    forest = _pipeline(
        IsolationForest(n_estimators=_N_TREES, contamination=contamination, random_state=seed),
        len(x),
        seed,
    )
    svm = _pipeline(OneClassSVM(kernel="rbf", gamma="scale", nu=nu), len(svm_rows), seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EMPTY_FEATURE_WARNING)
        forest.fit(x)
        svm.fit(x[svm_rows])
    return AnomalyModels(forest, svm, names, n_fit=len(x), n_fit_svm=len(svm_rows))


def anomaly_scores(models: AnomalyModels, features: np.ndarray) -> dict[str, np.ndarray]:
    """Each detector's score: HIGHER means MORE NORMAL (more like a real point source).

    Parameters
    ----------
    models
        From :func:`fit_anomaly_models` or :func:`load_anomaly_models`.
    features
        (n, f) in the order of ``models.feature_names``; NaN and inf are
        imputed with the fitted medians.

    Returns
    -------
    dict
        ``"isolation_forest"`` and ``"one_class_svm"``: float64 arrays of the
        pipelines' ``decision_function`` (negative outside the learned normal
        region). Empty arrays for n = 0.
    """
    x = _as_features(features, len(models.feature_names))
    if len(x) == 0:
        return {name: np.zeros(0) for name in DETECTORS}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EMPTY_FEATURE_WARNING)
        return {
            name: np.asarray(getattr(models, name).decision_function(x), dtype=np.float64)
            for name in DETECTORS
        }


def save_anomaly_models(models: AnomalyModels, path: str | os.PathLike) -> None:
    """Write the models to ``path`` with joblib, atomically (a temporary file, then rename).

    joblib is scikit-learn's recommended persistence, and a pickle: only load
    such a file from storage you trust, since loading it can run arbitrary code.
    """
    import joblib
    import sklearn

    path = Path(path)
    payload = {
        "format": _FORMAT,
        "version": 1,
        "sklearn_version": sklearn.__version__,
        "isolation_forest": models.isolation_forest,
        "one_class_svm": models.one_class_svm,
        "feature_names": list(models.feature_names),
        "n_fit": int(models.n_fit),
        "n_fit_svm": int(models.n_fit_svm),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        joblib.dump(payload, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_anomaly_models(path: str | os.PathLike) -> AnomalyModels:
    """Read models written by :func:`save_anomaly_models`.

    The file is a pickle: load it ONLY from trusted storage (your own object
    store), since unpickling can run arbitrary code. scikit-learn warns when
    the file was written by another version of it.
    """
    import joblib

    payload = joblib.load(Path(path))
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} does not hold AstrID anomaly models")
    return AnomalyModels(
        isolation_forest=payload["isolation_forest"],
        one_class_svm=payload["one_class_svm"],
        feature_names=list(payload["feature_names"]),
        n_fit=int(payload["n_fit"]),
        n_fit_svm=int(payload["n_fit_svm"]),
    )
