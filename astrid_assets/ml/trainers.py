"""Training runs: fit a model, judge it on the held-out split, record it in MLflow.

One function per model. Each trains on the ``train`` split (stopping on
``validation``), measures the energy it took, evaluates on ``test`` (fields
and nights never seen in training) with the metrics that suit rare events,
logs parameters, metrics, figures and the model to one MLflow run, and
registers the model: alias ``challenger``, and ``champion`` when it beats
the current champion on the same test rows. The Dagster assets and the
benchmark scripts call these; nothing here knows Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "RunOutcome",
    "fit_anomaly_run",
    "fit_ensemble_run",
    "train_realbogus_run",
    "train_unet_run",
]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class RunOutcome:
    """What a training run produced, for asset metadata and benchmark tables."""

    model: Any
    metrics: dict[str, float]
    run_id: str
    promotions: list[Any] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _figures(labels: np.ndarray, scores: np.ndarray, name: str, triplets=None) -> dict[str, bytes]:
    from astrid_assets.ml import metrics

    threshold = metrics.rare_event_metrics(labels, scores)["threshold_at_fnr_1pct"]
    figures = {
        "roc": metrics.roc_figure({name: (labels, scores)}),
        "precision_recall": metrics.pr_figure({name: (labels, scores)}),
        "confusion": metrics.confusion_figure(labels, scores, threshold),
        "reliability": metrics.reliability_figure({name: (labels, scores)}),
    }
    if triplets is not None:
        figures["mistakes"] = metrics.mistakes_figure(triplets, labels, scores, threshold)
    return {key: metrics.figure_png(fig) for key, fig in figures.items()}


def _log(metrics_: dict, params: dict, figures: dict[str, bytes], energy: dict, balance: dict):
    import mlflow

    from astrid_assets.ml import registry

    mlflow.log_params(params)
    mlflow.log_metrics({f"test_{k}": float(v) for k, v in metrics_.items()})
    mlflow.log_metrics(registry.energy_metrics(energy))
    mlflow.log_dict(balance, "class_balance.json")
    registry.log_figures(figures)


def _promote(tracking, uri: str, kind: str, value: float, champion_value_fn) -> Any:
    from astrid_assets.ml import registry

    client = tracking.client()
    name = registry.MODEL_NAMES[kind]
    champion = registry.champion_version(client, name)
    champion_value = champion_value_fn(name) if champion is not None else None
    return registry.register_and_promote(
        client,
        uri,
        name,
        metric="pr_auc",
        challenger_value=value,
        champion_value=champion_value,
    )


def train_realbogus_run(
    training: Any, config: Any, tracking: Any, *, country: str = "FRA", progress: Progress = _quiet
) -> RunOutcome:
    """The real-bogus CNN on the training set's triplets."""
    from dataclasses import asdict

    from astrid_assets.ml import registry
    from astrid_assets.ml.metrics import rare_event_metrics
    from astrid_assets.ml.networks import score_triplets, train_realbogus

    train, val, test = (training.subset(s) for s in ("train", "validation", "test"))
    labels = test.meta["label"].to_numpy()

    def held_out(model) -> np.ndarray:
        return score_triplets(model, test.triplets, test.meta["positive"].to_numpy())

    with tracking.start_run("realbogus-cnn", tags={"astrid.model": "realbogus"}) as run:
        with registry.energy_tracker(country) as energy:
            model, history = train_realbogus(
                train.triplets,
                train.meta["label"].to_numpy(),
                train.meta["positive"].to_numpy(),
                val.triplets,
                val.meta["label"].to_numpy(),
                val.meta["positive"].to_numpy(),
                config,
                progress=progress,
            )
        scores = held_out(model)
        result = rare_event_metrics(labels, scores)
        figures = _figures(labels, scores, "CNN", test.triplets)
        params = {**asdict(config), "parameters": model.parameter_count(), "n_train": len(train)}
        _log(result, params, figures, energy, training.class_balance())
        uri = registry.log_torch_model(model)
    promotion = _promote(
        tracking,
        uri,
        "realbogus",
        result["pr_auc"],
        lambda name: rare_event_metrics(labels, held_out(registry.load_champion(name, "pytorch")))[
            "pr_auc"
        ],
    )
    return RunOutcome(
        model, result, run.info.run_id, [promotion], figures, energy, {"history": history}
    )


def train_unet_run(
    training: Any,
    patches: Any,
    config: Any,
    tracking: Any,
    *,
    country: str = "FRA",
    progress: Progress = _quiet,
) -> RunOutcome:
    """The U-Net on difference-image patches; judged per detection like the others."""
    from dataclasses import asdict

    from astrid_assets.ml import registry
    from astrid_assets.ml.metrics import rare_event_metrics
    from astrid_assets.ml.networks import train_unet
    from astrid_assets.ml.scoring import unet_stamp_scores

    test = training.subset("test")
    labels = test.meta["label"].to_numpy()
    train_rows, val_rows = patches.split == "train", patches.split == "validation"
    with tracking.start_run("unet", tags={"astrid.model": "unet"}) as run:
        with registry.energy_tracker(country) as energy:
            model, history = train_unet(
                patches.inputs[train_rows],
                patches.targets[train_rows],
                patches.inputs[val_rows],
                patches.targets[val_rows],
                config,
                progress=progress,
            )
        scores = unet_stamp_scores(model, test.score_stamps)
        result = rare_event_metrics(labels, scores)
        figures = _figures(labels, scores, "U-Net")
        params = {**asdict(config), "parameters": model.parameter_count()}
        params["n_patches"] = int(train_rows.sum())
        _log(result, params, figures, energy, training.class_balance())
        uri = registry.log_torch_model(model)
    promotion = _promote(
        tracking,
        uri,
        "unet",
        result["pr_auc"],
        lambda name: rare_event_metrics(
            labels, unet_stamp_scores(registry.load_champion(name, "pytorch"), test.score_stamps)
        )["pr_auc"],
    )
    return RunOutcome(
        model, result, run.info.run_id, [promotion], figures, energy, {"history": history}
    )


def fit_anomaly_run(
    training: Any, tracking: Any, *, seed: int = 0, country: str = "FRA"
) -> RunOutcome:
    """Isolation Forest and One-Class SVM fitted on the real detections of ``train``."""
    import mlflow

    from astrid_assets.ml import registry
    from astrid_assets.ml.anomaly import anomaly_scores, fit_anomaly_models
    from astrid_assets.ml.metrics import rare_event_metrics
    from astrid_assets.ml.training_data import FEATURE_COLUMNS

    train, test = training.subset("train"), training.subset("test")
    normal = train.meta["label"].to_numpy() == 1
    labels = test.meta["label"].to_numpy()
    with tracking.start_run("anomaly-detectors", tags={"astrid.model": "anomaly"}) as run:
        with registry.energy_tracker(country) as energy:
            models = fit_anomaly_models(train.features[normal], list(FEATURE_COLUMNS), seed=seed)
        scores = anomaly_scores(models, test.features)
        results = {name: rare_event_metrics(labels, s) for name, s in scores.items()}
        figures = {}
        for name, s in scores.items():
            figures.update({f"{name}_{k}": v for k, v in _figures(labels, s, name).items()})
        flat = {f"{name}_{k}": v for name, r in results.items() for k, v in r.items()}
        params = {"seed": seed, "n_fit": int(normal.sum()), "features": ",".join(FEATURE_COLUMNS)}
        _log(flat, params, figures, energy, training.class_balance())
        uris = {}
        for name in ("isolation_forest", "one_class_svm"):
            with mlflow.start_run(run_name=name, nested=True):
                uris[name] = registry.log_sklearn_model(getattr(models, name))

    def champion_pr_auc(kind: str):
        def value(registered: str) -> float:
            from astrid_assets.ml.anomaly import AnomalyModels

            other = "one_class_svm" if kind == "isolation_forest" else "isolation_forest"
            loaded = AnomalyModels(
                **{
                    kind: registry.load_champion(registered, "sklearn"),
                    other: getattr(models, other),
                },
                feature_names=list(FEATURE_COLUMNS),
                n_fit=0,
            )
            return rare_event_metrics(labels, anomaly_scores(loaded, test.features)[kind])["pr_auc"]

        return value

    promotions = [
        _promote(tracking, uris[k], k, results[k]["pr_auc"], champion_pr_auc(k)) for k in uris
    ]
    return RunOutcome(models, flat, run.info.run_id, promotions, figures, energy)


def fit_ensemble_run(
    training: Any, members: Any, tracking: Any, *, country: str = "FRA"
) -> RunOutcome:
    """Logistic stacking of the members' scores, fitted on ``validation``, judged on ``test``.

    ``members`` is a :class:`~astrid_assets.ml.scoring.Models` without ensemble.
    """
    import mlflow

    from astrid_assets.ml import registry
    from astrid_assets.ml.ensemble import StackedEnsemble
    from astrid_assets.ml.metrics import metrics_table, rare_event_metrics, roc_figure
    from astrid_assets.ml.scoring import row_scores

    val, test = training.subset("validation"), training.subset("test")
    with tracking.start_run("ensemble", tags={"astrid.model": "ensemble"}) as run:
        with registry.energy_tracker(country) as energy:
            ensemble = StackedEnsemble().fit(row_scores(members, val), val.meta["label"].to_numpy())
        members.ensemble = ensemble
        scores = row_scores(members, test)
        labels = test.meta["label"].to_numpy()
        table = {name: rare_event_metrics(labels, s) for name, s in scores.items()}
        result = table["ensemble"]
        best_member = max((n for n in table if n != "ensemble"), key=lambda n: table[n]["pr_auc"])
        result = {
            **result,
            "best_member_pr_auc": table[best_member]["pr_auc"],
            "pr_auc_over_best_member": result["pr_auc"] - table[best_member]["pr_auc"],
        }
        figures = _figures(labels, scores["ensemble"], "ensemble", test.triplets)
        figures["roc_all"] = _all_roc(roc_figure, labels, scores)
        params = {"members": ",".join(ensemble.members), "best_member": best_member}
        _log(result, params, figures, energy, training.class_balance())
        mlflow.log_dict(ensemble.coefficients(), "coefficients.json")
        mlflow.log_text(metrics_table(table), "metrics_table.md")
        uri = registry.log_ensemble_model(ensemble)
    promotion = _promote(
        tracking,
        uri,
        "ensemble",
        result["pr_auc"],
        lambda name: rare_event_metrics(
            labels,
            registry.load_champion(name, "pyfunc")
            .unwrap_python_model()
            .ensemble.predict_proba(scores),
        )["pr_auc"],
    )
    return RunOutcome(
        ensemble, result, run.info.run_id, [promotion], figures, energy, {"table": table}
    )


def _all_roc(roc_figure, labels: np.ndarray, scores: dict[str, np.ndarray]) -> bytes:
    from astrid_assets.ml.metrics import figure_png

    return figure_png(roc_figure({name: (labels, s) for name, s in scores.items()}))
