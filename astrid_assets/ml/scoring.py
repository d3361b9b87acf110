"""Every model's score for a set of detections, and the champions that give them.

The members of the ensemble, each a score where higher means more like a
real transient:

``realbogus``
    The CNN's probability real, from the (oriented, normalised) triplet.
``unet``
    The U-Net's transient probability, the maximum within 2 px of the
    detection on its map of the difference image (D / noise and S_corr).
``isolation_forest``, ``one_class_svm``
    How normal the detection's features are for a real point source.

``ensemble`` stacks them (:mod:`astrid_assets.ml.ensemble`). torch and
mlflow are imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "MEMBERS",
    "Models",
    "candidate_scores",
    "load_champions",
    "row_scores",
    "unet_stamp_scores",
]

MEMBERS = ("realbogus", "unet", "isolation_forest", "one_class_svm")
STAMP_RADIUS = 2.0


@dataclass
class Models:
    """The trained models; ``ensemble`` may be None before it is fitted."""

    realbogus: Any
    unet: Any
    anomaly: Any
    ensemble: Any = None


def unet_stamp_scores(unet: Any, stamps: np.ndarray) -> np.ndarray:
    """The U-Net's score at the centre of each (2, h, w) input stamp."""
    from astrid_assets.ml.networks import probability_map, scores_at

    scores = np.zeros(len(stamps), np.float32)
    for k, stamp in enumerate(stamps):
        prob = probability_map(unet, stamp)
        cy, cx = (np.array(prob.shape) - 1) / 2.0
        scores[k] = scores_at(prob, np.array([cx]), np.array([cy]), radius=STAMP_RADIUS)[0]
    return scores


def row_scores(models: Models, training: Any) -> dict[str, np.ndarray]:
    """Member scores (and the ensemble's, when there is one) for a training set's rows."""
    from astrid_assets.ml.anomaly import anomaly_scores
    from astrid_assets.ml.networks import score_triplets

    positive = training.meta["positive"].to_numpy()
    scores = {
        "realbogus": score_triplets(models.realbogus, training.triplets, positive),
        "unet": unet_stamp_scores(models.unet, training.score_stamps),
        **anomaly_scores(models.anomaly, training.features),
    }
    if models.ensemble is not None:
        scores["ensemble"] = models.ensemble.predict_proba(scores)
    return scores


def candidate_scores(
    models: Models, candidates: pl.DataFrame, subtraction: Any, feature_columns: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Member and ensemble scores of a night x field's candidates.

    ``subtraction`` is the partition's :class:`~astrid_assets.science.pipeline.Subtraction`:
    the U-Net maps its whole difference image once.
    """
    from astrid_assets.ml.anomaly import anomaly_scores
    from astrid_assets.ml.networks import probability_map, score_triplets, scores_at
    from astrid_assets.ml.training_data import unet_input_image

    n = candidates.height
    if n == 0:
        return {name: np.zeros(0, np.float32) for name in (*MEMBERS, "ensemble")}
    size = int(round(np.sqrt(candidates.schema["cutout_science"].size)))
    triplets = np.stack(
        [
            candidates[name].to_numpy().reshape(n, size, size)
            for name in ("cutout_science", "cutout_reference", "cutout_difference")
        ],
        axis=1,
    ).astype(np.float32)
    positive = candidates["sign"].to_numpy() > 0
    result = subtraction.result
    prob = probability_map(
        models.unet,
        unet_input_image(result.difference, result.score, result.difference_noise, result.mask),
    )
    x, y = candidates["x"].to_numpy(), candidates["y"].to_numpy()
    features = np.column_stack([candidates[c].cast(pl.Float64).to_numpy() for c in feature_columns])
    scores = {
        "realbogus": score_triplets(models.realbogus, triplets, positive),
        "unet": scores_at(prob, x, y, radius=STAMP_RADIUS),
        **anomaly_scores(models.anomaly, features),
    }
    scores["ensemble"] = models.ensemble.predict_proba(scores)
    return scores


def load_champions(
    tracking: Any, feature_columns: tuple[str, ...], *, with_ensemble: bool = True
) -> Models:
    """Every member's (and the ensemble's) ``champion`` from the MLflow registry."""
    import mlflow

    from astrid_assets.ml import registry
    from astrid_assets.ml.anomaly import AnomalyModels

    mlflow.set_tracking_uri(tracking.tracking_uri)
    names = registry.MODEL_NAMES
    ensemble = None
    if with_ensemble:
        loaded = registry.load_champion(names["ensemble"], "pyfunc")
        ensemble = loaded.unwrap_python_model().ensemble
    return Models(
        realbogus=registry.load_champion(names["realbogus"], "pytorch"),
        unet=registry.load_champion(names["unet"], "pytorch"),
        anomaly=AnomalyModels(
            isolation_forest=registry.load_champion(names["isolation_forest"], "sklearn"),
            one_class_svm=registry.load_champion(names["one_class_svm"], "sklearn"),
            feature_names=list(feature_columns),
            n_fit=0,
        ),
        ensemble=ensemble,
    )
