"""MLflow tracking: a ``sqlite:///`` file under the state directory locally, a server in production.

A small ``ConfigurableResource`` around ``MlflowClient`` rather than dagster-mlflow's beta
``mlflow_tracking`` resource. That resource starts one MLflow run when a Dagster run initialises it
and relies on the ``end_mlflow_on_run_finished`` hook to end it; hooks are not applied to the
implicit asset jobs that sensors, backfills and UI materializations launch, so the MLflow run stays
RUNNING (``crypto_platform_tests/checks/test_mlflow_logging.py`` shows it).
It also keeps a fluent "active run" in process globals, unsafe across the sensor threads of one code
server. :meth:`MlflowTrackingResource.log_run` instead creates, fills and terminates one MLflow run
in a single call, with ``try/finally``: no MLflow run it opens can outlive the call, whatever the
Dagster run does afterwards (fails, is cancelled, or its process is killed).

Local artifacts go to a pinned directory under the state dir; MLflow would otherwise put them in
``./mlruns`` relative to whatever the cwd is.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import dagster as dg

from crypto_platform.settings import Settings, mask_url_password

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "crypto-quality"
QUALITY_EXPERIMENT = "crypto-quality"
INGESTION_EXPERIMENT = "crypto-ingestion"

# MLflow's limits: a key is letters, digits and _ - . space / (max 250); a param value max 6000.
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_PARAM = 6000
# mlflow is imported on first use (it costs seconds, and most code-server loads never log), but two
# sensors ticking on Dagster's sensor threads must not import it at once: its package imports itself
# circularly, and the second thread sees a half-initialised ``mlflow.tracking`` (ImportError).
_IMPORT_LOCK = threading.Lock()


def _mlflow_client_class() -> type[MlflowClient]:
    with _IMPORT_LOCK:
        import mlflow.entities  # noqa: F401  (log_run needs it; imported here under the lock)
        from mlflow.tracking import MlflowClient

    return MlflowClient


def metric_key(name: str) -> str:
    """A Dagster metadata label as an MLflow metric/param key (``dagster/row_count`` stays as it is)."""
    return _BAD_KEY.sub("_", name)[:250]


def settings_params(settings: Settings) -> dict[str, str]:
    """MLflow params from ``Settings.describe()``: flat strings, URL passwords masked, never a secret.

    ``describe()`` already drops the API key and Snowflake credentials and masks ``MYSQL_URL``; a
    password inside any other URL (``MLFLOW_TRACKING_URI=https://u:pw@host``) is masked here too.
    """
    out: dict[str, str] = {}

    def put(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                put(f"{prefix}.{k}", v)
            return
        text = mask_url_password(str(value)) if "://" in str(value) else str(value)
        out[metric_key(prefix)] = text[:_MAX_PARAM]

    for name, value in settings.describe().items():
        put(name, value)
    return out


class MlflowTrackingResource(dg.ConfigurableResource):
    """Where quality checks and partition loads log their MLflow runs."""

    tracking_uri: str
    experiment_name: str = DEFAULT_EXPERIMENT
    # Only used when this resource creates the experiment (a sqlite store has no artifact server).
    artifact_location: str | None = None
    # Logged as params on every run: the secret-free settings (pairs, channels, ...).
    params: dict[str, str] = {}

    def client(self) -> MlflowClient:
        return _mlflow_client_class()(tracking_uri=self.tracking_uri)

    def experiment_id(self, client: MlflowClient | None = None, name: str | None = None) -> str:
        """The experiment's id (default: ``experiment_name``), creating the experiment on first use."""
        client = client or self.client()
        name = name or self.experiment_name
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        location = f"{self.artifact_location.rstrip('/')}/{name}" if self.artifact_location else None
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except Exception:
            # Another process created it between our lookup and create.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def log_run(
        self,
        experiment: str,
        run_name: str,
        *,
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
        status: str = "FINISHED",
        client: MlflowClient | None = None,
        timestamp_ms: int | None = None,
    ) -> str:
        """One complete MLflow run: created, filled, terminated with ``status``; returns its id.

        An error while logging terminates the run as FAILED before it propagates, so no run is ever
        left RUNNING. Non-finite metrics (NaN, inf) are dropped: MLflow stores them but charts break.
        """
        client = client or self.client()  # imports mlflow (under the lock) before the next line does
        from mlflow.entities import Metric, Param, RunTag

        exp_id = self.experiment_id(client, experiment)
        run = client.create_run(exp_id, run_name=run_name, tags=dict(tags), start_time=timestamp_ms)
        run_id = run.info.run_id
        final = "FAILED"
        try:
            ts = timestamp_ms or int(run.info.start_time)
            batch_metrics = [
                Metric(metric_key(k), float(v), ts, 0) for k, v in metrics.items() if math.isfinite(float(v))
            ]
            params = [Param(k, v) for k, v in self.params.items()]
            # log_batch takes at most 1000 metrics and 100 params per call.
            for i in range(0, max(len(batch_metrics), len(params), 1), 100):
                client.log_batch(
                    run_id,
                    metrics=batch_metrics[i : i + 100],
                    params=params[i : i + 100],
                    tags=[RunTag("mlflow.runName", run_name)] if i == 0 else [],
                )
            final = status
        finally:
            client.set_terminated(run_id, final)
        return run_id


def build_mlflow_resource(settings: Settings) -> MlflowTrackingResource:
    uri = settings.mlflow_tracking_uri
    artifacts = None
    if uri.startswith("sqlite:"):
        artifacts = (settings.state_dir / "mlflow-artifacts").as_uri()
    # A tracking URI with an embedded password is a secret: show only the variable name in the UI.
    tracking_uri = dg.EnvVar("MLFLOW_TRACKING_URI") if urlsplit(uri).password else uri
    return MlflowTrackingResource(
        tracking_uri=tracking_uri, artifact_location=artifacts, params=settings_params(settings)
    )
