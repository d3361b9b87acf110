"""Our real-bogus CNN on other surveys' alerts, scored beside the surveys' own verdicts.

``astrid alerts score`` runs the ``champion`` of our real-bogus CNN (from the
MLflow registry) on the triplets of ``external_candidates``
(:mod:`astrid_assets.alerts.ingest`) and writes the table ``external_scores``
(``survey``, ``candid``, ``realbogus``, ``model_version``, ``scored_at``; one
Parquet file per survey, ``external_scores/<survey>.parquet``, replaced at
each scoring; DuckDB view ``external_scores``), to be joined on
``(survey, candid)``::

    SELECT c.object_id, c.drb, s.realbogus
    FROM external_candidates c JOIN external_scores s USING (survey, candid)

It then asks how well our score ranks the alerts the survey's own classifier
calls real above those it calls bogus: the ROC AUC against ``drb > 0.5`` for
ZTF (braai; Duev et al. 2019, MNRAS 489, 3582) and ``reliability > 0.5`` for
Rubin. The survey's score is a label here, not a truth.

Only the CNN applies: the U-Net needs the full difference image and S_corr,
the anomaly models our own detection features. The CNN normalises each stamp
by its own RMS (:func:`astrid_assets.ml.triplets.prepare_triplets`), so ZTF's
DN and Rubin's nJy need no conversion, but the network was trained on our
survey's stamps: on ZTF and Rubin this is a transfer without fine-tuning
(Rubin's stamps also cover fewer pixels, 30 px and up, the rest of the 63 x 63
canvas is padding). torch and mlflow are imported inside the functions.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from astrid_assets.alerts.ingest import CUTOUT_COLUMNS, SURVEYS, load_external_candidates
from astrid_assets.storage.atomic import atomic_write_bytes

__all__ = [
    "LABELS",
    "SCORES_TABLE",
    "SurveyEvaluation",
    "load_realbogus_champion",
    "score_external",
]

SCORES_TABLE = "external_scores"
# The survey's own score taken as the label, and the threshold above which it says real.
LABELS = {"ztf": ("drb", 0.5), "rubin": ("reliability", 0.5)}


@dataclass(frozen=True)
class SurveyEvaluation:
    """Our score against one survey's own, on its stored alerts.

    ``n_labelled`` alerts carry the survey's score (``label``), ``n_real`` of
    them above ``threshold``; ``roc_auc`` is NaN when one side is empty.
    """

    survey: str
    n_scored: int
    label: str
    threshold: float
    n_labelled: int
    n_real: int
    n_bogus: int
    roc_auc: float

    def line(self) -> str:
        """The evaluation as the line ``astrid alerts score`` prints."""
        auc = "n/a" if math.isnan(self.roc_auc) else f"{self.roc_auc:.3f}"
        return (
            f"{self.survey}: {self.n_scored} alerts scored; ROC AUC of realbogus against "
            f"{self.label} > {self.threshold:g}: {auc} ({self.n_labelled} with {self.label}: "
            f"{self.n_real} real, {self.n_bogus} bogus)"
        )


def load_realbogus_champion(tracking: Any) -> tuple[Any, str]:
    """The real-bogus CNN's champion and its version, from ``tracking``'s registry.

    Raises
    ------
    LookupError
        When no champion is registered: train the models first.
    """
    import mlflow

    from astrid_assets.ml import registry

    mlflow.set_tracking_uri(tracking.tracking_uri)
    name = registry.MODEL_NAMES["realbogus"]
    model = registry.load_champion(name, "pytorch")
    version = registry.champion_version(tracking.client(), name)
    return model, f"{name}/{version.version if version is not None else '?'}"


def score_external(
    store: Any, model: Any, surveys: tuple[str, ...] = SURVEYS, *, model_version: str = ""
) -> list[SurveyEvaluation]:
    """Score the stored alerts of ``surveys`` with ``model``, store the scores, evaluate.

    Parameters
    ----------
    store
        The tables store (a ``ParquetStore``); its catalog, when it has one,
        gets the ``external_scores`` view.
    model
        The real-bogus CNN (a torch module).
    surveys
        Surveys to score; one without stored alerts is left out of the result.
    model_version
        Written beside each score, e.g. ``astrid-realbogus-cnn/3``.

    Returns
    -------
    list of SurveyEvaluation
        One per survey that has stored alerts.
    """
    from astrid_assets.ml.networks import score_triplets

    evaluations = []
    for survey in surveys:
        label, threshold = LABELS[survey]
        frame = load_external_candidates(
            store, survey, columns=["candid", "positive", label, *CUTOUT_COLUMNS]
        )
        if frame.is_empty():
            continue
        triplets = np.stack([frame[c].to_numpy() for c in CUTOUT_COLUMNS], axis=1)
        scores = score_triplets(model, triplets, frame["positive"].to_numpy())
        _write_scores(store, survey, frame["candid"], scores, model_version)
        evaluations.append(_evaluate(survey, scores, frame[label].to_numpy(), label, threshold))
    return evaluations


def _write_scores(
    store: Any, survey: str, candid: pl.Series, scores: np.ndarray, model_version: str
) -> None:
    table = pl.DataFrame(
        {
            "survey": pl.Series([survey] * len(candid), dtype=pl.Utf8),
            "candid": candid,
            "realbogus": pl.Series(scores, dtype=pl.Float32),
            "model_version": pl.Series([model_version] * len(candid), dtype=pl.Utf8),
            "scored_at": pl.Series([datetime.now(UTC)] * len(candid)),
        }
    )
    folder = store._base_path / SCORES_TABLE
    path = folder / f"{survey}.parquet"
    buffer = io.BytesIO()
    table.write_parquet(buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue())
    if store.catalog is not None:
        store.catalog.ensure_view(SCORES_TABLE, f"{folder}/*.parquet", written=str(path))


def _evaluate(
    survey: str, scores: np.ndarray, theirs: np.ndarray, label: str, threshold: float
) -> SurveyEvaluation:
    from sklearn.metrics import roc_auc_score

    theirs = np.asarray(theirs, dtype=np.float64)  # nulls are NaN
    labelled = np.isfinite(theirs)
    real = theirs[labelled] > threshold
    auc = (
        float(roc_auc_score(real, scores[labelled])) if real.any() and not real.all() else math.nan
    )
    return SurveyEvaluation(
        survey=survey,
        n_scored=len(scores),
        label=label,
        threshold=threshold,
        n_labelled=int(labelled.sum()),
        n_real=int(real.sum()),
        n_bogus=int((~real).sum()),
        roc_auc=auc,
    )
