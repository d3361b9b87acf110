"""MLflow, the memory of every training run: a Dagster resource.

Locally the tracking store is a SQLite file under ``ASTRID_HOME`` with the
artifacts beside it; in production it is a tracking server
(``MLFLOW_TRACKING_URI``) whose backend is PostgreSQL and whose artifacts
it proxies to the object store, so steps need no database password and
no bucket keys of their own. mlflow is imported inside the methods: every
Dagster step re-imports the code location, and mlflow is slow to import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

__all__ = ["MlflowTracking"]


def _quiet() -> None:
    """No usage telemetry from MLflow: a survey's machines call no one home."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class MlflowTracking(ConfigurableResource):
    """Where MLflow runs are recorded, and the experiment they belong to."""

    tracking_uri: str = Field(
        description="sqlite:///PATH locally, http(s)://HOST:PORT for a tracking server."
    )
    experiment: str = Field(default="astrid", description="The experiment's name.")
    artifact_location: str | None = Field(
        default=None,
        description="Where a new experiment keeps artifacts; None: the server's default.",
    )

    def client(self) -> Any:
        """An ``mlflow.MlflowClient`` on the tracking store."""
        _quiet()
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        """The experiment's id, created on first use."""
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(self.experiment, artifact_location=self.artifact_location)

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
        """An active MLflow run in the experiment; ``mlflow.log_*`` calls go to it.

        The tracking URI is set for this process, so ``mlflow.log_metric``
        and friends inside the block reach the same store.
        """
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        experiment_id = self.experiment_id()
        # Logged models belong to the active experiment, not the run's: set both.
        mlflow.set_experiment(experiment_id=experiment_id)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            yield run
