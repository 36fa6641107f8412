"""MLflow tracking: a ``sqlite:///`` file under the state directory locally, a server in production.

A small ``ConfigurableResource`` around ``MlflowClient`` rather than dagster-mlflow's beta resource,
which leaves MLflow runs RUNNING for assets (reference dagster.md §4). It holds no active-run state,
so it is safe from sensors, run workers and threads. Local artifacts go to a pinned directory under
the state dir; MLflow would otherwise put them in ``./mlruns`` relative to whatever the cwd is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import dagster as dg

from crypto_platform.settings import Settings

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "crypto-data-quality"


class MlflowTrackingResource(dg.ConfigurableResource):
    """Where quality checks log their MLflow runs."""

    tracking_uri: str
    experiment_name: str = DEFAULT_EXPERIMENT
    # Only used when this resource creates the experiment (a sqlite store has no artifact server).
    artifact_location: str | None = None

    def client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self, client: MlflowClient | None = None) -> str:
        """The experiment's id, creating the experiment on first use."""
        client = client or self.client()
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return str(exp.experiment_id)
        try:
            return str(client.create_experiment(self.experiment_name, artifact_location=self.artifact_location))
        except Exception:
            # Another process created it between our lookup and create.
            exp = client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise
            return str(exp.experiment_id)


def build_mlflow_resource(settings: Settings) -> MlflowTrackingResource:
    uri = settings.mlflow_tracking_uri
    artifacts = None
    if uri.startswith("sqlite:"):
        artifacts = (settings.state_dir / "mlflow-artifacts").as_uri()
    # A tracking URI with an embedded password is a secret: show only the variable name in the UI.
    tracking_uri = dg.EnvVar("MLFLOW_TRACKING_URI") if urlsplit(uri).password else uri
    return MlflowTrackingResource(tracking_uri=tracking_uri, artifact_location=artifacts)
