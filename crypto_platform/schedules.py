"""Schedules, and the jobs that only they launch.

``stream_run_retention`` runs daily at 03:17 UTC (a quiet minute, off the hour other deployments'
jobs crowd): it deletes the stream sensor's ``stream_batch`` runs older than
``CRYPTO_RUN_RETENTION_DAYS`` and keeps every run the UI still needs (see
:mod:`crypto_platform.run_retention`), so Dagster's storage stays flat at that many days of runs
instead of growing by every micro-batch. A daily pass is enough: its cost is a day of runs, and the
window it keeps is measured in days. It is on by default, like the stream sensor that makes the
runs it deletes.

``lake_maintenance`` runs hourly: it compacts the lake's closed days, runs their whole-day checks on
the compacted files, checkpoints each table's Delta log and vacuums replaced files
(:mod:`crypto_platform.lake.maintenance` says why each step, and why closed days only).
"""

# No ``from __future__ import annotations``: Dagster reads the op's config annotation at definition time.
import dagster as dg
from pydantic import Field

from crypto_platform.checks import bars as bars_checks
from crypto_platform.checks import lake as lake_checks
from crypto_platform.lake.maintenance import maintain_table
from crypto_platform.resources.dagster_storage import DagsterStorageResource
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.stream import StreamResource


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


# The lake's tables, in the order maintenance visits them (ticks first: they hold the most files).
MAINTAINED_TABLES = ("raw_trades", "raw_quotes", "raw_aggregates", "raw_book", "minute_bars", "daily_open_close")


def _whole_day_checks(
    lake: LakeResource, stream: StreamResource, table: str, day: str
) -> list[dg.AssetCheckEvaluation]:
    """The table's whole-day checks on ``day`` as it reads after compaction (none for tables without any)."""
    if table == "minute_bars":
        found = bars_checks.evaluate_bars_day(
            lake.read_partition(table, day), lake.read_partition("raw_aggregates", day), day
        )
        blocking = {s.name: s.blocking for s in bars_checks.SPECS}
    elif table in lake_checks.TABLE_CHECKS:
        checks = lake_checks.TABLE_CHECKS[table]
        found = lake_checks.evaluate_day(checks, lake.read_partition(table, day), day, stream.landing_dir, None)
        found.pop(lake_checks.FRESHNESS, None)  # about the stream's lag, not about a closed day's rows
        blocking = {s.name: s.blocking for s in lake_checks._specs(table, checks)}
    else:
        return []
    return [
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(table),
            check_name=name,
            passed=figures.passed,
            severity=dg.AssetCheckSeverity.ERROR if blocking.get(name, False) else dg.AssetCheckSeverity.WARN,
            metadata={**figures.metadata(), "partition": day, "after": "compaction"},
        )
        for name, figures in found.items()
    ]


@dg.op(description="Compacts the lake's closed days, checkpoints each table's log and vacuums replaced files.")
def maintain_lake_tables(context: dg.OpExecutionContext, lake: LakeResource, stream: StreamResource) -> dg.Output[None]:
    tables = lake.tables()
    policy = lake.maintenance_policy()
    totals = {"days_compacted": 0, "files_removed": 0, "files_added": 0, "files_vacuumed": 0, "days_busy": 0}
    for table in MAINTAINED_TABLES:

        def after_compaction(day: str, table: str = table) -> None:
            for evaluation in _whole_day_checks(lake, stream, table, day):
                context.log_event(evaluation)  # type: ignore[arg-type]  # accepted at run time (tested)

        # No table lock: maintenance touches closed days only, so it never waits for (or holds up) the
        # writer's appends; a rebuild that races a compaction makes one of the two commits fail, and a
        # compaction that fails is left for the next pass.
        report = maintain_table(table, tables.uri(table), tables.storage_options, policy, on_day=after_compaction)
        context.log.info(
            f"{table}: compacted {report.days_compacted or 'no day'} ({report.files_removed} files -> "
            f"{report.files_added}), busy {report.days_skipped_busy or 'none'}, checkpoint at version "
            f"{report.checkpoint_version}, {report.files_vacuumed} files vacuumed, {report.seconds}s"
        )
        totals["days_compacted"] += len(report.days_compacted)
        totals["files_removed"] += report.files_removed
        totals["files_added"] += report.files_added
        totals["files_vacuumed"] += report.files_vacuumed
        totals["days_busy"] += len(report.days_skipped_busy)
    return dg.Output(None, metadata=totals)


@dg.job(
    name="lake_maintenance",
    executor_def=dg.in_process_executor,
    description="Compacts closed days of the lake's Delta tables (z-order by pair for ticks and books), runs their "
    "whole-day checks, checkpoints the logs and vacuums replaced files. Never touches a day still receiving appends.",
)
def lake_maintenance() -> None:
    maintain_lake_tables()


# Hourly: a pass with nothing to do costs a listing per table, and a day is compacted within the hour
# after it closes (or after a pass found it busy).
lake_maintenance_schedule = dg.ScheduleDefinition(
    name="lake_maintenance_hourly",
    job=lake_maintenance,
    cron_schedule="41 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
