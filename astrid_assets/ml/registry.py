"""MLflow as the models' memory: training runs, the model registry and its aliases.

Every trained model is logged in an MLflow run (parameters, metrics, figures,
the energy it took) and registered under its name as a new version with the
alias ``challenger``. The alias ``champion`` moves to it when it beats the
current champion on the same held-out data (or when there is no champion
yet); scoring always loads ``models:/NAME@champion``. The decision and its
numbers are tags of the model version.

This module imports mlflow (and, for the networks, torch) at its top: import
it inside functions, never while the Dagster code location loads.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from a survey

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MODEL_NAMES",
    "Promotion",
    "champion_version",
    "energy_tracker",
    "load_champion",
    "log_ensemble_model",
    "log_figures",
    "log_sklearn_model",
    "log_torch_model",
    "register_and_promote",
]

CHAMPION = "champion"
CHALLENGER = "challenger"

# Registered model names, one per kind of model.
MODEL_NAMES = {
    "realbogus": "astrid-realbogus-cnn",
    "unet": "astrid-unet",
    "isolation_forest": "astrid-isolation-forest",
    "one_class_svm": "astrid-one-class-svm",
    "ensemble": "astrid-ensemble",
}


@contextmanager
def energy_tracker(country_iso_code: str = "FRA", project: str = "astrid") -> Iterator[dict]:
    """Measure the energy of the block with codecarbon (offline: no network).

    Yields a dict that is filled when the block ends: ``energy_cpu_kwh``,
    ``energy_ram_kwh``, ``energy_gpu_kwh``, ``energy_kwh``, ``emissions_kg``
    (for ``country_iso_code``'s grid) and, when an NVIDIA GPU is present,
    ``gpu_power_w`` read from NVML at the end of the block. Where the CPU
    exposes no power counters (RAPL) codecarbon estimates from the CPU's TDP.
    """
    import logging

    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="astrid-codecarbon-") as folder:
        tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code,
            project_name=project,
            output_dir=folder,
            save_to_file=False,
            log_level="error",
            measure_power_secs=5,
        )
        result: dict[str, Any] = {}
        tracker.start()
        started = time.perf_counter()
        try:
            yield result
        finally:
            emissions = tracker.stop()
            data = tracker.final_emissions_data
            result.update(
                {
                    "energy_cpu_kwh": float(getattr(data, "cpu_energy", 0.0) or 0.0),
                    "energy_ram_kwh": float(getattr(data, "ram_energy", 0.0) or 0.0),
                    "energy_gpu_kwh": float(getattr(data, "gpu_energy", 0.0) or 0.0),
                    "energy_kwh": float(getattr(data, "energy_consumed", 0.0) or 0.0),
                    "emissions_kg": float(emissions or 0.0),
                    "energy_seconds": time.perf_counter() - started,
                }
            )
            power = _gpu_power_watts()
            if power is not None:
                result["gpu_power_w"] = power


def _gpu_power_watts() -> float | None:
    """Total power draw of the NVIDIA GPUs now, from NVML; None without a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        watts = sum(
            pynvml.nvmlDeviceGetPowerUsage(pynvml.nvmlDeviceGetHandleByIndex(i)) / 1000.0
            for i in range(count)
        )
        return float(watts) if count else None
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def energy_metrics(energy: dict) -> dict[str, float]:
    """The numeric entries of an :func:`energy_tracker` result, for ``mlflow.log_metrics``."""
    return {k: float(v) for k, v in energy.items() if isinstance(v, int | float)}


def log_figures(figures: dict[str, Any]) -> None:
    """Log matplotlib figures (or PNG bytes) of the active run under ``plots/NAME.png``."""
    import matplotlib.pyplot as plt

    for name, figure in figures.items():
        if isinstance(figure, bytes | bytearray):
            mlflow.log_image(_png_image(figure), f"plots/{name}.png")
        else:
            mlflow.log_figure(figure, f"plots/{name}.png")
            plt.close(figure)


def _png_image(data: bytes) -> Any:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def _requirements(*packages: str) -> list[str]:
    """Pinned pip requirements of the installed ``packages`` (no inference: it is slow)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in packages]


def log_torch_model(model: Any) -> str:
    """Log a torch module in the active run; returns its model URI."""
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pickle",  # pt2 would need an example input to trace
        pip_requirements=_requirements("torch", "numpy"),
    )
    return info.model_uri


def log_sklearn_model(model: Any) -> str:
    """Log a scikit-learn estimator in the active run; returns its model URI."""
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        serialization_format="cloudpickle",
        pip_requirements=_requirements("scikit-learn", "numpy"),
    )
    return info.model_uri


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """The stacked ensemble as an MLflow pyfunc: member scores in, probability real out."""

    def load_context(self, context: Any) -> None:
        from astrid_assets.ml.ensemble import StackedEnsemble

        with open(context.artifacts["ensemble"]) as handle:
            self.ensemble = StackedEnsemble.from_dict(json.load(handle))

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads hints
        scores = {name: model_input[name].to_numpy() for name in self.ensemble.members}
        return self.ensemble.predict_proba(scores)


def log_ensemble_model(ensemble: Any) -> str:
    """Log a :class:`~astrid_assets.ml.ensemble.StackedEnsemble` (as JSON, no pickle)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ensemble.json"
        path.write_text(json.dumps(ensemble.to_dict(), indent=1))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=EnsembleModel(),
            artifacts={"ensemble": str(path)},
            pip_requirements=_requirements("scikit-learn", "numpy", "pandas"),
        )
    return info.model_uri


@dataclass
class Promotion:
    """What happened to a newly registered model version."""

    name: str
    version: str
    metric: str
    challenger_value: float
    champion_version: str | None
    champion_value: float | None
    promoted: bool

    @property
    def decision(self) -> str:
        if self.champion_version is None:
            return "promoted: no champion yet"
        verb = "promoted" if self.promoted else "kept the champion"
        return (
            f"{verb}: challenger v{self.version} {self.metric}={self.challenger_value:.4f} "
            f"against champion v{self.champion_version} {self.champion_value:.4f}"
        )

    def as_metadata(self) -> dict:
        return {**asdict(self), "decision": self.decision}


def champion_version(client: MlflowClient, name: str) -> Any | None:
    """The model version the ``champion`` alias points at, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register_and_promote(
    client: MlflowClient,
    model_uri: str,
    name: str,
    *,
    metric: str,
    challenger_value: float,
    champion_value: float | None = None,
    higher_is_better: bool = True,
) -> Promotion:
    """Register ``model_uri`` as a new version of ``name`` with alias ``challenger``;
    move ``champion`` to it when it is better on ``metric`` (or when there is none).

    ``champion_value`` is the current champion's ``metric`` on the SAME held-out
    data as ``challenger_value``; the caller evaluates both.
    """
    version = mlflow.register_model(model_uri, name).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    current = champion_version(client, name)
    if current is not None and champion_value is None:
        raise ValueError(f"{name} has a champion (v{current.version}): give champion_value")
    if current is None:
        promoted = True
    elif not (math.isfinite(challenger_value) and math.isfinite(champion_value)):
        promoted = math.isfinite(challenger_value) and not math.isfinite(champion_value)
    elif higher_is_better:
        promoted = challenger_value > champion_value
    else:
        promoted = challenger_value < champion_value
    outcome = Promotion(
        name=name,
        version=str(version),
        metric=metric,
        challenger_value=float(challenger_value),
        champion_version=None if current is None else str(current.version),
        champion_value=None if champion_value is None else float(champion_value),
        promoted=promoted,
    )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, f"astrid.{metric}", f"{challenger_value:.6g}")
    client.set_model_version_tag(name, version, "astrid.decision", outcome.decision)
    if current is not None:
        client.set_model_version_tag(name, version, "astrid.champion_version", current.version)
        client.set_model_version_tag(
            name, version, f"astrid.champion_{metric}", f"{champion_value:.6g}"
        )
    return outcome


def load_champion(name: str, flavor: str = "pyfunc") -> Any:
    """``models:/NAME@champion`` as a torch module (``pytorch``), a scikit-learn
    estimator (``sklearn``) or a pyfunc model; a clear error when none is registered."""
    uri = f"models:/{name}@{CHAMPION}"
    loader = {
        "pytorch": lambda: mlflow.pytorch.load_model(uri, map_location="cpu"),
        "sklearn": lambda: mlflow.sklearn.load_model(uri),
        "pyfunc": lambda: mlflow.pyfunc.load_model(uri),
    }[flavor]
    try:
        return loader()
    except MlflowException as err:
        raise LookupError(
            f"no {CHAMPION} for {name} at {mlflow.get_tracking_uri()}: train it first "
            f"(materialize the model assets) ({err})"
        ) from err
