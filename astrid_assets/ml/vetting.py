"""Human labels as training rows: the vetters' consensus joined to the candidates they judged.

The label store keeps every label a vetter gave (:mod:`astrid_assets.labels`).
For training, each candidate needs one answer:

* each vetter's last word counts, once (a vetter who changed their mind is
  not two votes);
* ``unsure`` is no vote;
* the majority of ``real`` against ``bogus`` decides; a tie decides nothing
  and the candidate stays out.

A candidate with a consensus becomes a row like an injected one, of kind
``human`` (and ``vetted`` true: the candidates table holds only what the
pipeline's vetting kept); its triplet and features come from the candidates
table of its night and field, exactly as scoring reads them.

Vetted rows only ever train. The validation and test splits stay the
injected ones, so a retrained model is judged on the same held-out set as
the champion it may replace; and a vetted candidate from a held-out field or
night is left out altogether, because its sky is the sky of the held-out
rows (training on it would leak the test into training).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl

from astrid_assets.ml.training_data import (
    CUTOUT_COLUMNS,
    FEATURE_COLUMNS,
    STAMP_SIZE,
    TrainingSet,
)
from astrid_assets.ml.triplets import pad_to

__all__ = ["HUMAN_KIND", "VettedJoin", "consensus", "join_vetted", "vetted_rows"]

HUMAN_KIND = "human"


def consensus(latest: pl.DataFrame) -> pl.DataFrame:
    """One answer per candidate from each vetter's last label.

    ``latest`` has the columns of :meth:`LabelStore.latest
    <astrid_assets.labels.LabelStore.latest>` (``candidate_id``, ``night``,
    ``field``, ``label``, ``vetter``). Returns ``candidate_id``, ``night``,
    ``field``, ``label`` (1 real, 0 bogus), ``n_real``, ``n_bogus`` for the
    candidates where real and bogus votes are not tied.
    """
    votes = (
        latest.filter(pl.col("label") != "unsure")
        .group_by(["candidate_id", "night", "field"])
        .agg(
            n_real=(pl.col("label") == "real").sum().cast(pl.Int32),
            n_bogus=(pl.col("label") == "bogus").sum().cast(pl.Int32),
        )
    )
    return (
        votes.filter(pl.col("n_real") != pl.col("n_bogus"))
        .with_columns(label=(pl.col("n_real") > pl.col("n_bogus")).cast(pl.Int8))
        .select("candidate_id", "night", "field", "label", "n_real", "n_bogus")
        .sort("candidate_id")
    )


def vetted_rows(candidates: pl.DataFrame, agreed: pl.DataFrame) -> TrainingSet:
    """The training rows of the ``agreed`` candidates found in ``candidates``.

    ``candidates`` is (part of) the candidates table: ``candidate_id``, ``x``,
    ``y``, ``sign``, ``mag``, the features and the cutouts. The rows are in
    the train split; the U-Net's input stamps are NaN (the candidates table
    does not hold S_corr), which its scoring reads as a missing score.
    """
    answers = agreed.select(pl.col("candidate_id").cast(pl.Utf8), pl.col("label").cast(pl.Int8))
    rows = candidates.join(answers, on="candidate_id", how="inner").sort("candidate_id")
    n = rows.height
    if n:
        side = int(round(np.sqrt(rows.schema[CUTOUT_COLUMNS[0]].size)))  # type: ignore[attr-defined]
        triplets = pad_to(
            np.stack([rows[c].to_numpy().reshape(n, side, side) for c in CUTOUT_COLUMNS], axis=1),
            STAMP_SIZE,
        )
    else:
        triplets = np.zeros((0, 3, STAMP_SIZE, STAMP_SIZE), np.float32)
    missing = [c for c in FEATURE_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"the candidates table lacks the feature columns {missing}")
    features = np.column_stack([rows[c].cast(pl.Float64).to_numpy() for c in FEATURE_COLUMNS])
    mag = rows["mag"].cast(pl.Float64) if "mag" in rows.columns else pl.Series([np.nan] * n)
    meta = pl.DataFrame(
        {
            "label": rows["label"].cast(pl.Int8),
            "kind": pl.Series([HUMAN_KIND] * n, dtype=pl.Utf8),
            "field": rows["field"].cast(pl.Utf8),
            "night": rows["night"].cast(pl.Utf8),
            "split": pl.Series(["train"] * n, dtype=pl.Utf8),
            "x": rows["x"].cast(pl.Float64),
            "y": rows["y"].cast(pl.Float64),
            "positive": rows["sign"].cast(pl.Int64) > 0,
            "snr": rows["snr"].cast(pl.Float64),
            "mag": mag.alias("mag"),
            "snr_injected": pl.Series([np.nan] * n, dtype=pl.Float64),
            "vetted": pl.Series([True] * n, dtype=pl.Boolean),
        }
    )
    return TrainingSet(
        triplets=triplets,
        features=features.reshape(n, len(FEATURE_COLUMNS)),
        meta=meta,
        score_stamps=np.full((n, 2, STAMP_SIZE, STAMP_SIZE), np.nan, np.float32),
    )


@dataclass
class VettedJoin:
    """What became of the vetters' labels: counts for the asset's metadata."""

    candidates: int = 0  # candidates with at least one real/bogus vote
    tied: int = 0
    held_out: int = 0
    not_found: int = 0
    joined_real: int = 0
    joined_bogus: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def join_vetted(
    training: TrainingSet,
    latest: pl.DataFrame,
    read_candidates: Callable[[str, str], pl.DataFrame | None],
    *,
    held_out_fields: Iterable[str],
    held_out_nights: Iterable[str],
) -> tuple[TrainingSet, VettedJoin]:
    """``training`` with the vetted candidates added to its train split.

    ``read_candidates(night, field)`` gives that partition's candidates table
    (None when it was never made). Candidates of a held-out field or night,
    and labels whose candidate is no longer in its table, are counted, not joined.
    """
    report = VettedJoin()
    judged = latest.filter(pl.col("label") != "unsure")
    report.candidates = judged["candidate_id"].n_unique()
    agreed = consensus(latest)
    report.tied = report.candidates - agreed.height
    fields, nights = set(held_out_fields), set(held_out_nights)
    held = agreed["field"].is_in(list(fields)) | agreed["night"].is_in(list(nights))
    report.held_out = int(held.sum())
    agreed = agreed.filter(~held)
    parts = [training]
    for (night, field), group in agreed.group_by(["night", "field"], maintain_order=True):
        table = read_candidates(str(night), str(field))
        found = vetted_rows(table, group) if table is not None else None
        joined = 0 if found is None else len(found)
        report.not_found += group.height - joined
        if found is not None and joined:
            labels = found.meta["label"].to_numpy()
            report.joined_real += int((labels == 1).sum())
            report.joined_bogus += int((labels == 0).sum())
            parts.append(found)
    if len(parts) == 1:
        return training, report
    return (
        TrainingSet(
            triplets=np.concatenate([p.triplets for p in parts]),
            features=np.concatenate([p.features for p in parts]),
            meta=pl.concat([p.meta for p in parts], how="diagonal_relaxed"),
            score_stamps=np.concatenate([_stamps(p) for p in parts]),
        ),
        report,
    )


def _stamps(part: TrainingSet) -> np.ndarray:
    if part.score_stamps is not None:
        return part.score_stamps
    return np.full((len(part), 2, STAMP_SIZE, STAMP_SIZE), np.nan, np.float32)
