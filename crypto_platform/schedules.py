"""Schedules, and the jobs that only they launch.

``stream_run_retention`` runs daily at 03:17 UTC (a quiet minute, off the hour other deployments'
jobs crowd): it deletes the stream sensor's ``stream_batch`` runs older than
``CRYPTO_RUN_RETENTION_DAYS`` and keeps every run the UI still needs (see
:mod:`crypto_platform.run_retention`), so Dagster's storage stays flat at that many days of runs
instead of growing by every micro-batch. A daily pass is enough: its cost is a day of runs, and the
window it keeps is measured in days. It is on by default, like the stream sensor that makes the
runs it deletes.
"""

# No ``from __future__ import annotations``: Dagster reads the op's config annotation at definition time.
import dagster as dg
from pydantic import Field

from crypto_platform.resources.dagster_storage import DagsterStorageResource


class RunRetentionConfig(dg.Config):
    older_than_days: float | None = Field(
        default=None,
        ge=0,
        description="Delete micro-batch runs older than this many days (default: CRYPTO_RUN_RETENTION_DAYS; "
        "0 = everything finished before now that the UI does not need).",
    )


@dg.op(description="Deletes old stream_batch runs, keeping those that hold what the UI shows.")
def prune_stream_batch_runs(
    context: dg.OpExecutionContext, config: RunRetentionConfig, dagster_storage: DagsterStorageResource
) -> dg.Output[None]:
    report = dagster_storage.prune(context.instance, config.older_than_days, log=context.log.info)
    if report is None:
        context.log.info("CRYPTO_RUN_RETENTION_DAYS=0: every run is kept")
        return dg.Output(None, metadata={"runs_deleted": 0, "retention": "off"})
    context.log.info(
        f"deleted {report.deleted:,} of {report.examined:,} stream_batch runs created before "
        f"{report.cutoff:%Y-%m-%d %H:%M} UTC ({report.bytes_removed:,} bytes); kept {report.kept_for_ui:,} "
        f"that hold the UI's latest materializations and check results and {report.kept_not_micro_batch:,} "
        f"backfill or manual runs{'' if report.complete else '; more are left for the next pass'}"
    )
    return dg.Output(None, metadata=report.metadata())


@dg.job(
    name="stream_run_retention",
    executor_def=dg.in_process_executor,
    description="Deletes stream_batch runs older than CRYPTO_RUN_RETENTION_DAYS; keeps each partition's latest "
    "materialization, check results, backfills and manual runs.",
)
def stream_run_retention() -> None:
    prune_stream_batch_runs()


stream_run_retention_schedule = dg.ScheduleDefinition(
    name="stream_run_retention_daily",
    job=stream_run_retention,
    cron_schedule="17 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
