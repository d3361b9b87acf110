"""Machine learning as assets: the training set, the models and every candidate's scores.

``training_set`` and ``unet_patches`` come from injection on the simulated
survey (:mod:`astrid_assets.ml.training_data`). Each model asset trains,
judges itself on the held-out split, and records the run in MLflow, where
the model is registered (``challenger``, and ``champion`` when it beats the
current one); the asset's metadata carries the held-out metrics, the energy
and the decision. ``candidate_scores`` loads every ``champion`` and scores a
night x field's candidates. The default sizes train in seconds; full sizes
are a matter of config. torch and mlflow are imported inside the functions.
"""

import time

import numpy as np
import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Config,
    MaterializeResult,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
    multi_asset,
)
from pydantic import Field

from astrid_assets.defs.previews import png_bytes_markdown
from astrid_assets.labels import LabelStore
from astrid_assets.partitions import night_and_field, night_field_partitions
from astrid_assets.science.pipeline import Subtraction
from astrid_assets.sources import SimulatedSurvey, SurveySource
from astrid_assets.storage.io_managers import ParquetStore
from astrid_assets.tracking import MlflowTracking

__all__ = [
    "ML_ASSETS",
    "anomaly_models",
    "candidate_scores",
    "ensemble_model",
    "realbogus_model",
    "training_set",
    "unet_model",
]

ML_ASSETS = (
    "training_set",
    "unet_patches",
    "realbogus_model",
    "unet_model",
    "anomaly_models",
    "ensemble_model",
)


class TrainingSetConfig(Config):
    """Which simulated images the examples come from, and how many per image."""

    size: int = Field(default=512, ge=256, le=4096, description="Detector side, px.")
    fields: list[str] = Field(default=["F01", "F02", "F03"], description="Fields used.")
    nights: list[str] = Field(
        default=["2026-01-05", "2026-01-06", "2026-01-07", "2026-01-08", "2026-01-09"],
        description="Nights used.",
    )
    validation_nights: list[str] = Field(default=["2026-01-08"])
    test_fields: list[str] = Field(default=["F03"], description="Held out: never trained on.")
    test_nights: list[str] = Field(default=["2026-01-09"], description="Held out as well.")
    real_per_image: int = Field(default=60, ge=1)
    artefacts_per_kind: int = Field(default=8, ge=1)
    patches_per_image: int = Field(default=24, ge=1)
    seed: int = Field(default=0)


class TrainingConfig(Config):
    """Network training; the defaults fit CI, full runs raise ``epochs``."""

    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=128, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    ema_decay: float = Field(
        default=0.99, ge=0, lt=1, description="Moving average of the weights; 0: last step's."
    )
    patience: int = Field(default=6, ge=0, description="Epochs without improvement to wait.")
    seed: int = Field(default=0)
    device: str = Field(default="auto", description="auto: the GPU when there is one.")
    country: str = Field(default="FRA", description="Grid for codecarbon's emissions.")


class UNetTrainingConfig(TrainingConfig):
    """The U-Net learns from a few hundred patches: smaller batches, more epochs."""

    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)


def _progress(context: AssetExecutionContext):
    return lambda message: context.log.info(message)


def _metadata(outcome, extra: dict | None = None) -> dict:
    meta: dict = {f"test_{k}": float(v) for k, v in outcome.metrics.items()}
    meta.update({k: float(v) for k, v in outcome.energy.items()})
    meta["mlflow_run_id"] = outcome.run_id
    for promotion in outcome.promotions:
        meta[f"{promotion.name}_version"] = promotion.version
        meta[f"{promotion.name}_decision"] = promotion.decision
        meta[f"{promotion.name}_challenger_{promotion.metric}"] = promotion.challenger_value
        if promotion.champion_value is not None:
            meta[f"{promotion.name}_champion_{promotion.metric}"] = promotion.champion_value
    for name in ("roc", "precision_recall", "roc_all"):
        if name in outcome.figures:
            meta[name] = png_bytes_markdown(outcome.figures[name], name)
    meta.update(extra or {})
    return meta


@multi_asset(
    outs={
        "training_set": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"parquet", "duckdb"},
            metadata={"table": "training_set"},
            description="Labelled detections from injection on the simulated survey: real "
            "point sources (empty sky, galaxies, true transients) and bogus artefacts "
            "(dipoles, star residuals, cosmic rays, hot pixels, bad columns, streaks, PSF "
            "rings, synthetic anomalies), with features, triplets and a split by field "
            "and night; the DuckDB view `training_set`.",
        ),
        "unet_patches": AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"parquet"},
            description="Difference-image patches (D / noise, S_corr) and their transient "
            "maps, for the U-Net.",
        ),
    },
    group_name="ml",
)
def training_set(
    context: AssetExecutionContext,
    config: TrainingSetConfig,
    survey: SurveySource,
    labels: LabelStore,
    parquet_io_manager: ResourceParam[ParquetStore],
):
    """Simulate, inject, subtract, detect and label; then join the vetters' labels."""
    from dataclasses import replace

    from astrid_assets.ml.training_data import build_training_set
    from astrid_assets.ml.vetting import join_vetted

    if not isinstance(survey, SimulatedSurvey):
        raise ValueError(
            f"the training set is made by injection on the simulated survey; the survey "
            f"resource is a {type(survey).__name__}"
        )
    survey_config = replace(survey.survey_config, shape=(config.size, config.size))
    started = time.perf_counter()
    training, patches = build_training_set(
        survey_config,
        fields=config.fields,
        nights=config.nights,
        test_fields=config.test_fields,
        test_nights=config.test_nights,
        validation_nights=config.validation_nights,
        real_per_image=config.real_per_image,
        artefacts_per_kind=config.artefacts_per_kind,
        patches_per_image=config.patches_per_image,
        seed=config.seed,
        progress=_progress(context),
    )
    training, human = join_vetted(
        training,
        labels.latest(),
        lambda night, field: parquet_io_manager.read_partition("candidates", night, field),
        held_out_fields=config.test_fields,
        held_out_nights=[*config.test_nights, *config.validation_nights],
    )
    context.log.info(
        f"human labels: {human.joined_real} real and {human.joined_bogus} bogus joined the "
        f"training split; {human.tied} tied, {human.held_out} of held-out fields or nights, "
        f"{human.not_found} not found in their candidates table"
    )
    balance = training.class_balance()
    truth = training.meta["label"].to_numpy()
    yield Output(
        training.to_frame(),
        output_name="training_set",
        metadata={
            "rows": len(training),
            "real": int((truth == 1).sum()),
            "bogus": int((truth == 0).sum()),
            "class_balance": MetadataValue.json(balance),
            "human_labels": MetadataValue.json(human.as_dict()),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    yield Output(
        patches_frame(patches),
        output_name="unet_patches",
        metadata={"patches": int(len(patches.inputs))},
    )


def patches_frame(patches) -> pl.DataFrame:
    """U-Net patches as a table: split, inputs and targets as fixed-size arrays."""
    m, channels, size, _ = patches.inputs.shape
    return pl.DataFrame(
        [
            pl.Series("split", patches.split.astype(str)),
            pl.Series(
                "inputs",
                patches.inputs.reshape(m, -1),
                dtype=pl.Array(pl.Float32, channels * size * size),
            ),
            pl.Series(
                "targets", patches.targets.reshape(m, -1), dtype=pl.Array(pl.Float32, size**2)
            ),
        ]
    )


def patches_from_frame(frame: pl.DataFrame):
    """The inverse of :func:`patches_frame`."""
    from astrid_assets.ml.training_data import UNetSet

    m = frame.height
    targets = frame["targets"].to_numpy().reshape(m, 1, -1)
    size = int(round(np.sqrt(targets.shape[-1])))
    return UNetSet(
        inputs=frame["inputs"].to_numpy().reshape(m, -1, size, size).astype(np.float32),
        targets=targets.reshape(m, 1, size, size).astype(np.float32),
        split=frame["split"].to_numpy().astype(str),
    )


def _training(frame: pl.DataFrame):
    from astrid_assets.ml.training_data import TrainingSet

    return TrainingSet.from_frame(frame)


def _train_config(config: TrainingConfig):
    from astrid_assets.ml.networks import TrainConfig

    return TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        ema_decay=config.ema_decay,
        patience=config.patience,
        seed=config.seed,
        device=config.device,
    )


@asset(
    ins={"training": AssetIn("training_set")},
    group_name="ml",
    kinds={"pytorch", "mlflow"},
    description="The real-bogus CNN (braai-like: four 3x3 convolutions on the oriented, "
    "normalised science/reference/difference triplet), registered in MLflow as "
    "astrid-realbogus-cnn.",
)
def realbogus_model(
    context: AssetExecutionContext,
    config: TrainingConfig,
    mlflow: MlflowTracking,
    training: pl.DataFrame,
) -> MaterializeResult:
    from astrid_assets.ml.trainers import train_realbogus_run

    outcome = train_realbogus_run(
        _training(training),
        _train_config(config),
        mlflow,
        country=config.country,
        progress=_progress(context),
    )
    history = outcome.extra["history"]
    return MaterializeResult(
        metadata=_metadata(outcome, {"epochs_run": int(history.get("epochs", 0))})
    )


@asset(
    ins={"training": AssetIn("training_set"), "patches": AssetIn("unet_patches")},
    group_name="ml",
    kinds={"pytorch", "mlflow"},
    description="The U-Net: difference image and S_corr in, transient probability map out; "
    "a candidate's score is the map's maximum within 2 px. Registered as astrid-unet.",
)
def unet_model(
    context: AssetExecutionContext,
    config: UNetTrainingConfig,
    mlflow: MlflowTracking,
    training: pl.DataFrame,
    patches: pl.DataFrame,
) -> MaterializeResult:
    from astrid_assets.ml.trainers import train_unet_run

    outcome = train_unet_run(
        _training(training),
        patches_from_frame(patches),
        _train_config(config),
        mlflow,
        country=config.country,
        progress=_progress(context),
    )
    return MaterializeResult(metadata=_metadata(outcome))


class AnomalyConfig(Config):
    seed: int = Field(default=0)
    country: str = Field(default="FRA")


@asset(
    ins={"training": AssetIn("training_set")},
    group_name="ml",
    kinds={"scikitlearn", "mlflow"},
    description="Isolation Forest and One-Class SVM on candidate features, fitted on real "
    "point-source detections; registered as astrid-isolation-forest and "
    "astrid-one-class-svm.",
)
def anomaly_models(
    context: AssetExecutionContext,
    config: AnomalyConfig,
    mlflow: MlflowTracking,
    training: pl.DataFrame,
) -> MaterializeResult:
    from astrid_assets.ml.trainers import fit_anomaly_run

    outcome = fit_anomaly_run(_training(training), mlflow, seed=config.seed, country=config.country)
    return MaterializeResult(metadata=_metadata(outcome))


@asset(
    ins={"training": AssetIn("training_set")},
    deps=["realbogus_model", "unet_model", "anomaly_models"],
    group_name="ml",
    kinds={"scikitlearn", "mlflow"},
    description="Logistic stacking of the champions' scores, fitted on the validation split: "
    "a calibrated probability real. Registered as astrid-ensemble.",
)
def ensemble_model(
    context: AssetExecutionContext,
    config: AnomalyConfig,
    mlflow: MlflowTracking,
    training: pl.DataFrame,
) -> MaterializeResult:
    from astrid_assets.ml.scoring import load_champions
    from astrid_assets.ml.trainers import fit_ensemble_run
    from astrid_assets.ml.training_data import FEATURE_COLUMNS

    members = load_champions(mlflow, FEATURE_COLUMNS, with_ensemble=False)
    outcome = fit_ensemble_run(_training(training), members, mlflow, country=config.country)
    table = outcome.extra["table"]
    rows = "\n".join(
        f"| {name} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['fpr_at_fnr_1pct']:.4f} | "
        f"{m['fnr_at_fpr_1pct']:.4f} |"
        for name, m in table.items()
    )
    summary = (
        "| model | ROC-AUC | PR-AUC | FPR at 1% FNR | FNR at 1% FPR |\n|---|---|---|---|---|\n"
        + rows
    )
    return MaterializeResult(metadata=_metadata(outcome, {"held_out": MetadataValue.md(summary)}))


@asset(
    ins={
        "candidates": AssetIn("candidates"),
        "difference": AssetIn("difference_images"),
    },
    deps=["ensemble_model"],
    partitions_def=night_field_partitions,
    io_manager_key="parquet_io_manager",
    group_name="ml",
    kinds={"parquet", "duckdb"},
    metadata={"table": "candidate_scores"},
    description="Every candidate's score from each champion model and the ensemble's "
    "probability real; the DuckDB view `candidate_scores` (join on candidate_id).",
)
def candidate_scores(
    context: AssetExecutionContext,
    mlflow: MlflowTracking,
    candidates: pl.DataFrame,
    difference: Subtraction,
) -> Output:
    from astrid_assets.ml.scoring import candidate_scores as score
    from astrid_assets.ml.scoring import load_champions
    from astrid_assets.ml.training_data import FEATURE_COLUMNS

    night, field = night_and_field(context.partition_key)
    started = time.perf_counter()
    models = load_champions(mlflow, FEATURE_COLUMNS)
    scores = score(models, candidates, difference, FEATURE_COLUMNS)
    frame = pl.DataFrame(
        [
            candidates["candidate_id"],
            pl.Series("night", [night] * candidates.height, dtype=pl.Utf8),
            pl.Series("field", [field] * candidates.height, dtype=pl.Utf8),
            *(pl.Series(name, np.asarray(v, np.float32)) for name, v in scores.items()),
        ]
    )
    high = int((scores["ensemble"] > 0.5).sum()) if candidates.height else 0
    return Output(
        frame,
        metadata={
            "rows": frame.height,
            "ensemble_above_0_5": high,
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
