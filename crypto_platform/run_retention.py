"""Retention of Dagster's own storage: old stream micro-batch runs go, what the UI shows stays.

The stream sensor launches a ``stream_batch`` run every ``CRYPTO_BATCH_INTERVAL_S``. Each run leaves
a run row, a couple of hundred event-log records, one asset-check execution row per check, its
captured compute logs and, on the SQLite instance, an event-log database file of its own. Kept
forever that is gigabytes a day and a Runs page that is a wall of micro-batches.

Deleted: finished runs of ``stream_batch`` that ``stream_sensor`` launched (or the daemon retried
automatically), created before the cutoff. Kept, whatever their age:

- per asset and partition, the runs of the latest materialization, the latest materialization
  attempt and the latest failure to materialize. Deleting a run deletes its event log, its
  materializations with it, so these runs are what the partition status and each asset's latest
  materialization in the UI rest on;
- per asset check and partition, the run of its latest execution;
- backfill runs, runs launched by hand (from the UI, the CLI, a re-execution), unfinished runs.

``DagsterInstance.delete_run`` removes the run, its tags and its event log. It leaves three things
that grow as fast, which this module removes as well: the run's asset-check execution rows (each
holds its evaluation event), its captured compute logs, and on SQLite the run's own event-log
database file (about 140 KB even once emptied, since SQLite files do not shrink).

Work is bounded: runs are read oldest first in pages of ``batch_size`` and at most ``max_runs`` are
looked at per call; the rest waits for the next call, which starts again from the oldest. Calling
it again deletes nothing more (the kept runs are kept for the same reasons).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import dagster as dg
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.tags import (
    BACKFILL_TAGS,
    PARENT_RUN_ID_TAG,
    PARTITION_NAME_TAG,
    RETRY_NUMBER_TAG,
    SENSOR_NAME_TAG,
)
from sqlalchemy import func, select

from crypto_platform.stream_batches import LANDING_LOG_TAG

STREAM_JOB = "stream_batch"
STREAM_SENSOR = "stream_sensor"
LOG = logging.getLogger(__name__)
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


@dataclass
class RetentionReport:
    """What one retention pass looked at, deleted and kept, and the bytes it freed."""

    cutoff: datetime
    examined: int = 0
    deleted: int = 0
    kept_for_ui: int = 0  # hold a latest materialization, attempt or check execution
    kept_not_micro_batch: int = 0  # backfills, manual launches and re-executions
    event_log_bytes: int = 0  # stored event records of the deleted runs
    check_rows: int = 0  # asset-check execution rows of the deleted runs
    file_bytes: int = 0  # local files of the deleted runs: SQLite event-log file, compute logs
    events_in_files: bool = False  # SQLite: the event records were inside those files
    complete: bool = True  # False: max_runs was reached, older runs are left for the next call
    deleted_run_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def bytes_removed(self) -> int:
        return self.file_bytes if self.events_in_files else self.event_log_bytes + self.file_bytes

    def metadata(self) -> dict[str, int | str | bool]:
        return {
            "cutoff": self.cutoff.isoformat(timespec="seconds"),
            "runs_examined": self.examined,
            "runs_deleted": self.deleted,
            "runs_kept_for_ui": self.kept_for_ui,
            "runs_kept_not_micro_batch": self.kept_not_micro_batch,
            "event_log_bytes_removed": self.event_log_bytes,
            "check_execution_rows_removed": self.check_rows,
            "file_bytes_removed": self.file_bytes,
            "bytes_removed": self.bytes_removed,
            "complete": self.complete,
        }


def is_micro_batch(run: dg.DagsterRun) -> bool:
    """A run the stream sensor launched for a landing-log batch (or the daemon's automatic retry of one)."""
    tags = run.tags
    if run.job_name != STREAM_JOB or tags.get(SENSOR_NAME_TAG) != STREAM_SENSOR or LANDING_LOG_TAG not in tags:
        return False
    if any(tag in tags for tag in BACKFILL_TAGS):
        return False
    # A re-execution carries its parent's tags; only the daemon's automatic retries number themselves.
    return PARENT_RUN_ID_TAG not in tags or RETRY_NUMBER_TAG in tags


class UiRuns:
    """The runs that hold what the UI shows, looked up once per (asset, partition) and once for checks."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._instance = instance
        self._asset_keys = list(instance.get_asset_keys())
        self._by_partition: dict[str, set[str]] = {}
        self._check_runs: set[str] | None = None

    def for_partition(self, partition: str) -> set[str]:
        if partition not in self._by_partition:
            runs: set[str] = set()
            for key in self._asset_keys:
                where = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition])
                for fetch in (self._instance.fetch_materializations, self._instance.fetch_failed_materializations):
                    runs.update(r.run_id for r in fetch(where, limit=1).records)
                planned = self._instance.get_latest_planned_materialization_info(key, partition)
                if planned is not None:
                    runs.add(planned.run_id)
            self._by_partition[partition] = runs | self._latest_check_runs(partition)
        return self._by_partition[partition]

    def _latest_check_runs(self, partition: str) -> set[str]:
        """Runs of the partition's latest execution of each check.

        Dagster 1.13 records a check's evaluation without its partition (only the planned row has
        it), so the partition comes from the runs' partition tag instead of the rows.
        """
        storage = self._instance.event_log_storage
        if not isinstance(storage, SqlEventLogStorage):
            return set()
        run_ids = self._instance.get_run_ids(dg.RunsFilter(tags={PARTITION_NAME_TAG: partition}))
        table = AssetCheckExecutionsTable
        latest: dict[tuple[str, str], tuple[int, str]] = {}
        with storage.index_connection() as conn:
            for start in range(0, len(run_ids), 5000):
                rows = conn.execute(
                    select(table.c.asset_key, table.c.check_name, table.c.id, table.c.run_id).where(
                        table.c.run_id.in_(run_ids[start : start + 5000])
                    )
                ).fetchall()
                for asset_key, check_name, row_id, run_id in rows:
                    latest[(asset_key, check_name)] = max(
                        latest.get((asset_key, check_name), (0, "")), (row_id, run_id)
                    )
        return {run_id for _, run_id in latest.values()}

    def for_checks(self) -> set[str]:
        """Runs of the latest execution row of every check, per partition as stored (one query)."""
        if self._check_runs is None:
            storage = self._instance.event_log_storage
            table = AssetCheckExecutionsTable
            latest = (
                select(func.max(table.c.id))
                .group_by(table.c.asset_key, table.c.check_name, table.c.partition)
                .scalar_subquery()
            )
            self._check_runs = set()
            if isinstance(storage, SqlEventLogStorage):
                with storage.index_connection() as conn:
                    rows = conn.execute(select(table.c.run_id).where(table.c.id.in_(latest))).fetchall()
                self._check_runs = {r[0] for r in rows}
        return self._check_runs

    def holds_ui_state(self, run: dg.DagsterRun) -> bool:
        partition = run.tags.get(PARTITION_NAME_TAG)
        if partition is None:  # a stream run always has one; without it, what it holds is unknown
            return True
        return run.run_id in self.for_partition(partition) or run.run_id in self.for_checks()


def _local_files(instance: dg.DagsterInstance, run_id: str) -> list[Path]:
    files: list[Path] = []
    storage = instance.event_log_storage
    if isinstance(storage, SqliteEventLogStorage):
        shard = Path(storage.path_for_shard(run_id))
        files += [p for p in (shard, Path(f"{shard}-wal"), Path(f"{shard}-shm")) if p.exists()]
    logs = instance.compute_log_manager
    if isinstance(logs, LocalComputeLogManager):
        run_dir = Path(logs.get_captured_local_path([run_id, "_"], "log")).parent
        if run_dir.is_dir():
            files += [p for p in run_dir.rglob("*") if p.is_file()]
    return files


def _delete(instance: dg.DagsterInstance, run_ids: list[str], report: RetentionReport) -> None:
    storage = instance.event_log_storage
    for run_id in run_ids:
        report.file_bytes += sum(p.stat().st_size for p in _local_files(instance, run_id))
        if isinstance(storage, SqlEventLogStorage):
            events = SqlEventLogStorageTable
            with storage.run_connection(run_id) as conn:
                size = conn.execute(
                    select(func.coalesce(func.sum(func.length(events.c.event)), 0)).where(events.c.run_id == run_id)
                ).scalar()
            report.event_log_bytes += int(size or 0)
        instance.delete_run(run_id)
        instance.compute_log_manager.delete_logs(prefix=[run_id])
        if isinstance(storage, SqliteEventLogStorage):
            shard = Path(storage.path_for_shard(run_id))
            for path in (shard, Path(f"{shard}-wal"), Path(f"{shard}-shm")):
                path.unlink(missing_ok=True)
            # The storage remembers the shards it created its tables in; a later read of this run
            # (there should be none, the run is gone) then creates an empty shard instead of failing.
            getattr(storage, "_initialized_dbs", set()).discard(run_id)
        report.deleted += 1
        report.deleted_run_ids.append(run_id)
    if isinstance(storage, SqlEventLogStorage) and run_ids:
        table = AssetCheckExecutionsTable
        with storage.index_connection() as conn:
            result = conn.execute(table.delete().where(table.c.run_id.in_(run_ids)))
        report.check_rows += max(result.rowcount or 0, 0)


def prune_stream_runs(
    instance: dg.DagsterInstance,
    cutoff: datetime,
    *,
    batch_size: int = 200,
    max_runs: int = 50_000,
    log: Callable[[str], None] = LOG.info,
) -> RetentionReport:
    """Delete the finished micro-batch runs created before ``cutoff`` that hold nothing the UI shows."""
    report = RetentionReport(
        cutoff=cutoff, events_in_files=isinstance(instance.event_log_storage, SqliteEventLogStorage)
    )
    ui = UiRuns(instance)
    filters = dg.RunsFilter(
        job_name=STREAM_JOB, statuses=FINISHED, tags={SENSOR_NAME_TAG: STREAM_SENSOR}, created_before=cutoff
    )
    cursor: str | None = None
    # The page's last run is the next page's cursor (a run id), so it is deleted after that read.
    pending: list[str] = []
    while report.examined < max_runs:
        limit = min(batch_size, max_runs - report.examined)
        page = instance.get_run_records(filters=filters, limit=limit, cursor=cursor, ascending=True)
        _delete(instance, pending, report)
        pending = []
        if not page:
            break
        doomed = _classify(page, ui, report)
        cursor = page[-1].dagster_run.run_id
        if cursor in doomed:
            doomed.remove(cursor)
            pending = [cursor]
        _delete(instance, doomed, report)
        log(f"{report.examined:,} runs examined, {report.deleted:,} deleted, {report.bytes_removed:,} bytes removed")
    else:
        report.complete = not instance.get_run_records(filters=filters, limit=1, cursor=cursor, ascending=True)
    _delete(instance, pending, report)
    return report


def _classify(page: Iterable[dg.RunRecord], ui: UiRuns, report: RetentionReport) -> list[str]:
    doomed = []
    for record in page:
        run = record.dagster_run
        report.examined += 1
        if not is_micro_batch(run):
            report.kept_not_micro_batch += 1
        elif ui.holds_ui_state(run):
            report.kept_for_ui += 1
        else:
            doomed.append(run.run_id)
    return doomed
