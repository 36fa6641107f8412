"""Dagster events -> MLflow runs, in one place: ``mlflow_sensor``.

Why a sensor over finished Dagster runs, and not logging inside each asset and check:

- every kind of run is covered the same way: sensor-launched, materialized from the UI, a backfill,
  automation, a run that failed or was cancelled. The sensor reads the instance's run-status changes
  (``RUN_SUCCESS``, ``RUN_FAILURE``, ``RUN_CANCELED``) with a cursor, then each run's
  ``ASSET_MATERIALIZATION``, ``ASSET_FAILED_TO_MATERIALIZE`` and ``ASSET_CHECK_EVALUATION`` events;
- checks written by anyone (minute bars, warehouse parity) are logged without calling anything;
- MLflow stays out of the assets' critical path: a slow or unreachable tracking server cannot fail
  or slow a load. The tick fails instead, its cursor does not move, and the next tick retries;
- no MLflow run can be left RUNNING: each is created, filled and terminated in one call
  (:meth:`MlflowTrackingResource.log_run`), FINISHED for a load or a check evaluation and FAILED for
  a load that did not happen. Nothing waits for a hook or for the Dagster run to end well, which is
  exactly where dagster-mlflow's resource leaves runs open (README, "Data quality and MLflow").

What is logged (experiment ``crypto-ingestion`` for loads, ``crypto-quality`` for checks):
tags ``dagster.asset``, ``dagster.check``, ``dagster.partition``, ``dagster.run_id``, ``dagster.job``,
``dagster.run_kind``, ``dagster.run_status``, ``dagster.code_version``; params: the secret-free
settings (pairs, channels, ...); metrics: every numeric metadata value of the event plus
``rows_loaded`` (a load's ``batch_rows`` or ``rows_written`` where it reports one, else
``dagster/row_count``), ``duration_s``, ``rows_per_s``, ``duplicate_rate`` (loads) and ``passed`` (checks).
A run that materializes several partitions of an asset (a backfill range) is one MLflow run tagged
with the range, since its metadata describes the whole range.

Re-processing is harmless: before logging a Dagster run, the MLflow runs already tagged with its id
are looked up and their records skipped (a tick that died half-way is retried without duplicates).
"""

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import orjson
from dagster._core.definitions.sensor_definition import DagsterRunReaction
from dagster._core.events import DagsterEventType
from dagster._core.storage.event_log.base import EventLogCursor

from crypto_platform.resources.mlflow import INGESTION_EXPERIMENT, QUALITY_EXPERIMENT, MlflowTrackingResource

TERMINAL = {
    DagsterEventType.RUN_SUCCESS: "SUCCESS",
    DagsterEventType.RUN_FAILURE: "FAILURE",
    DagsterEventType.RUN_CANCELED: "CANCELED",
}
_RUN_EVENTS = {
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
    DagsterEventType.ASSET_CHECK_EVALUATION,
    DagsterEventType.STEP_FAILURE,
}
RUNS_PER_TICK = 25
TICK_BUDGET_S = 30.0  # well inside Dagster's 60 s sensor evaluation limit
RECORD_TAG = "dagster.record"


@dataclass
class MlflowRecord:
    """One MLflow run to write."""

    experiment: str
    run_name: str
    record: str  # unique per Dagster run: what was logged ("check:raw_trades:unique_key")
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "FINISHED"
    timestamp_ms: int | None = None


def numeric_metadata(metadata: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of event metadata (ints, floats, bools) as MLflow metrics."""
    out = {}
    for label, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(raw, bool | int | float):
            out[label] = float(raw)
    return out


def run_kind(tags: Mapping[str, str]) -> str:
    """How the run was launched, from Dagster's own run tags."""
    if "dagster/backfill" in tags:
        return f"backfill:{tags['dagster/backfill']}"
    if "dagster/sensor_name" in tags:
        return f"sensor:{tags['dagster/sensor_name']}"
    if "dagster/schedule_name" in tags:
        return f"schedule:{tags['dagster/schedule_name']}"
    if tags.get("dagster/from_automation_condition") == "true":
        return "automation"
    return "manual"


def partition_label(tags: Mapping[str, str], partitions: Sequence[str] = ()) -> str:
    keys = sorted({p for p in partitions if p})
    if len(keys) == 1:
        return keys[0]
    if keys:
        return f"{keys[0]}...{keys[-1]}"
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return f"{start}...{end}" if start and end else "none"


def records_for_run(
    instance: dg.DagsterInstance, run: Any, status: str, code_versions: Mapping[str, str]
) -> list[MlflowRecord]:
    """What one finished Dagster run contributes to MLflow."""
    events = instance.get_records_for_run(run.run_id, of_type=_RUN_EVENTS).records
    step_start = {s.step_key: s.start_time for s in instance.get_run_step_stats(run.run_id) if s.start_time}
    base = {
        "dagster.run_id": run.run_id,
        "dagster.job": run.job_name,
        "dagster.run_kind": run_kind(run.tags),
        "dagster.run_status": status,
    }
    loads: dict[str, list[Any]] = {}
    failed: dict[str, list[Any]] = {}
    errors: dict[str, str] = {}  # step -> first line of its error
    out: list[MlflowRecord] = []
    for rec in events:
        event = rec.event_log_entry.dagster_event
        if event is None:  # the query asks for Dagster events only; a plain log line carries none
            continue
        if event.event_type in (DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_FAILED_TO_MATERIALIZE):
            into = loads if event.event_type == DagsterEventType.ASSET_MATERIALIZATION else failed
            into.setdefault(event.asset_key.to_user_string() if event.asset_key else "unknown", []).append(rec)
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            # A step that raised: its asset (one asset per step here) did not materialize.
            error = event.step_failure_data.error
            cause = getattr(error, "cause", None) or error
            errors[event.step_key or "unknown"] = str(getattr(cause, "message", "") or "").strip()[:500]
            failed.setdefault(event.step_key or "unknown", []).append(rec)
        else:
            evaluation = event.asset_check_evaluation_data
            asset = evaluation.asset_key.to_user_string()
            partition = partition_label(run.tags, [evaluation.partition] if evaluation.partition else [])
            metrics = numeric_metadata(evaluation.metadata)
            metrics["passed"] = float(evaluation.passed)
            tags = {
                **base,
                "dagster.asset": asset,
                "dagster.check": evaluation.check_name,
                "dagster.partition": partition,
                "dagster.code_version": code_versions.get(asset, "unknown"),
                "dagster.severity": str(getattr(evaluation.severity, "value", evaluation.severity)),
                "dagster.blocking": str(bool(evaluation.blocking)).lower(),
                "passed": str(evaluation.passed).lower(),
            }
            examples = evaluation.metadata.get("examples")
            if examples is not None and not evaluation.passed:
                tags["examples"] = str(getattr(examples, "value", examples))[:5000]
            out.append(
                MlflowRecord(
                    QUALITY_EXPERIMENT,
                    f"{asset}.{evaluation.check_name} {partition}",
                    f"check:{asset}:{evaluation.check_name}:{rec.storage_id}",
                    tags,
                    metrics,
                    timestamp_ms=int(rec.event_log_entry.timestamp * 1000),
                )
            )
    for asset, recs in loads.items():
        last = recs[-1]
        event = last.event_log_entry.dagster_event
        mat = event.step_materialization_data.materialization
        partition = partition_label(run.tags, [r.event_log_entry.dagster_event.partition for r in recs])
        metrics = numeric_metadata(mat.metadata)
        metrics["partitions"] = float(len(recs))
        # What the run loaded: its batch where the asset reports one (warehouse copies), else the
        # partition's rows (dagster/row_count; a lake partition is rewritten whole).
        rows = metrics.get("batch_rows", metrics.get("rows_written", metrics.get("dagster/row_count")))
        if rows is not None:
            metrics["rows_loaded"] = rows
        started = step_start.get(event.step_key or "")
        if started is not None:
            metrics["duration_s"] = max(0.0, last.event_log_entry.timestamp - started)
            if rows is not None and metrics["duration_s"] > 0:
                metrics["rows_per_s"] = rows / metrics["duration_s"]
        if metrics.get("rows_read"):
            metrics["duplicate_rate"] = metrics.get("duplicates_dropped", 0.0) / metrics["rows_read"]
        tags = {
            **base,
            "dagster.asset": asset,
            "dagster.partition": partition,
            "dagster.code_version": (mat.tags or {}).get("dagster/code_version") or code_versions.get(asset, "unknown"),
        }
        out.append(
            MlflowRecord(
                INGESTION_EXPERIMENT,
                f"{asset} {partition}",
                f"load:{asset}",
                tags,
                metrics,
                timestamp_ms=int(last.event_log_entry.timestamp * 1000),
            )
        )
    for asset, recs in failed.items():
        if asset in loads:
            continue  # some partitions loaded: the load run above already says so
        partition = partition_label(run.tags, [r.event_log_entry.dagster_event.partition for r in recs])
        tags = {**base, "dagster.asset": asset, "dagster.partition": partition}
        tags["dagster.code_version"] = code_versions.get(asset, "unknown")
        if errors.get(asset):
            tags["dagster.error"] = errors[asset]
        out.append(
            MlflowRecord(
                INGESTION_EXPERIMENT,
                f"{asset} {partition} (failed)",
                f"load:{asset}",
                tags,
                {"failed": 1.0, "partitions": float(len(recs))},
                status="FAILED",
                timestamp_ms=int(recs[-1].event_log_entry.timestamp * 1000),
            )
        )
    return out


def already_logged(mlflow: MlflowTrackingResource, client: Any, run_id: str) -> set[str]:
    """Records of this Dagster run that are in MLflow already (a retried tick)."""
    ids = [mlflow.experiment_id(client, name) for name in (QUALITY_EXPERIMENT, INGESTION_EXPERIMENT)]
    found = client.search_runs(ids, filter_string=f"tags.`dagster.run_id` = '{run_id}'", max_results=5000)
    return {r.data.tags.get(RECORD_TAG, "") for r in found}


def write_records(mlflow: MlflowTrackingResource, client: Any, records: Sequence[MlflowRecord], skip: set[str]) -> int:
    written = 0
    for r in records:
        if r.record in skip:
            continue
        mlflow.log_run(
            r.experiment,
            r.run_name,
            tags={**r.tags, RECORD_TAG: r.record},
            metrics=r.metrics,
            status=r.status,
            client=client,
            timestamp_ms=r.timestamp_ms,
        )
        written += 1
    return written


def log_runless_check(mlflow: MlflowTrackingResource, evaluation: dg.AssetCheckEvaluation, reporter: str) -> str:
    """Log a check evaluation reported outside any run (by a sensor): same shape as in-run ones."""
    asset = evaluation.asset_key.to_user_string()
    metrics = numeric_metadata(evaluation.metadata)
    metrics["passed"] = float(evaluation.passed)
    return mlflow.log_run(
        QUALITY_EXPERIMENT,
        f"{asset}.{evaluation.check_name}",
        tags={
            "dagster.asset": asset,
            "dagster.check": evaluation.check_name,
            "dagster.partition": "none",
            "dagster.run_id": "none",
            "dagster.run_kind": f"sensor:{reporter}",
            "passed": str(evaluation.passed).lower(),
            RECORD_TAG: f"check:{asset}:{evaluation.check_name}:runless",
        },
        metrics=metrics,
    )


def code_versions_of(context: dg.SensorEvaluationContext) -> dict[str, str]:
    try:
        graph = context.repository_def.asset_graph  # type: ignore[union-attr]
    except Exception:  # evaluated without definitions (a bare unit test): tags say "unknown"
        return {}
    return {key.to_user_string(): graph.get(key).code_version or "none" for key in graph.get_all_asset_keys()}


def log_new_runs(
    context: dg.SensorEvaluationContext, mlflow: MlflowTrackingResource, budget_s: float = TICK_BUDGET_S
) -> tuple[dict[str, str], int, int, list[Any]]:
    """Log the runs that finished since the cursor.

    Returns the new cursor, the runs looked at, the MLflow runs written and the Dagster runs that
    got at least one.
    """
    cursor: dict[str, str] = orjson.loads(context.cursor) if context.cursor else {}
    instance = context.instance
    client = mlflow.client()
    versions = code_versions_of(context)
    started = time.monotonic()
    runs = written = 0
    logged: list[Any] = []
    for event_type, status in TERMINAL.items():
        changes = instance.fetch_run_status_changes(
            event_type, limit=RUNS_PER_TICK, cursor=cursor.get(event_type.value), ascending=True
        )
        for change in changes.records:
            run = instance.get_run_by_id(change.run_id)
            if run is not None:
                records = records_for_run(instance, run, status, versions)
                if records:
                    new = write_records(mlflow, client, records, already_logged(mlflow, client, run.run_id))
                    written += new
                    if new:
                        logged.append(run)
                runs += 1
            cursor[event_type.value] = EventLogCursor.from_storage_id(change.storage_id).to_string()
            if time.monotonic() - started > budget_s:
                return cursor, runs, written, logged
    return cursor, runs, written, logged


# Dagster's sensor type names a single run reaction, while its evaluation takes a list of them too
# (as run-status sensors return): the ignore on the decorator is for that.
@dg.sensor(  # type: ignore[arg-type]
    name="mlflow_sensor",
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Logs every finished run's partition loads (crypto-ingestion) and asset-check evaluations (crypto-quality) "
        "to MLflow, whatever launched the run and however it ended; no MLflow run is left RUNNING."
    ),
)
def mlflow_sensor(
    context: dg.SensorEvaluationContext, mlflow: MlflowTrackingResource
) -> list[DagsterRunReaction] | dg.SkipReason:
    """A tick that logged runs answers with one run reaction per Dagster run it logged.

    A sensor tick counts as a success only when it requested runs or reacted to runs; one that
    logged to MLflow did the latter, so it is recorded as a success naming those runs (and each of
    them shows "mlflow_sensor acted on run status ..." in its log), never as "skipped: empty result".
    A tick with nothing new is skipped with the reason.
    """
    cursor, runs, written, logged = log_new_runs(context, mlflow)
    summary = f"{runs} finished run(s): {written} MLflow run(s) logged" if runs else "no finished runs"
    context.log.info(summary)
    context.update_cursor(orjson.dumps(cursor).decode())
    if not logged:
        return dg.SkipReason(summary)
    return [DagsterRunReaction(dagster_run=run, run_status=run.status) for run in logged]
