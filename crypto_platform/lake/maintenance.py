"""Upkeep of the lake's Delta tables: compact closed days, checkpoint the log, vacuum old files.

Appends arrive as segments seal, so a day ends as thousands of small files and the log as thousands
of commits. Left alone, every reader lists and opens them all, and opening a table replays the whole
log. Three operations keep that flat:

- **compaction of closed days** into files of ``target_mb`` (128-512 MB), by Delta's ``OPTIMIZE``:
  bin-packing, or z-order by ``pair`` for the tables analysts read one pair at a time (ticks and
  books), which lets a reader skip most files of a day for one pair. Only *closed* days: a day whose
  end lies ``closed_after_s`` in the past. Compaction rewrites a partition's files, and a commit that
  races an append to the same partition is refused by Delta's conflict check, so touching only days
  that no longer receive appends means maintenance and the writer never contend. A day already in one
  file is skipped, so a run is cheap when there is nothing to do and can be repeated safely;
- **a checkpoint** of the log, so opening a table reads one Parquet checkpoint plus the commits
  after it instead of every commit since the table began;
- **vacuum** of the files no version newer than ``vacuum_retention_h`` still references (the ones
  compaction replaced, and old rebuilds), plus the expired log entries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, TableNotFoundError

DAY_S = 86_400
# Tables read one pair at a time: clustering their closed days by pair lets a reader skip files.
Z_ORDER = {"raw_trades": ("pair",), "raw_quotes": ("pair",), "raw_book": ("pair",)}


@dataclass(frozen=True)
class MaintenancePolicy:
    """How maintenance treats the tables (from settings)."""

    target_mb: int = 256
    closed_after_s: float = 2 * 3600.0
    vacuum_retention_h: int = 168


@dataclass
class TableReport:
    """What one maintenance pass did to one table."""

    table: str
    days_compacted: list[str] = field(default_factory=list)
    files_removed: int = 0
    files_added: int = 0
    days_skipped_busy: list[str] = field(default_factory=list)
    checkpoint_version: int | None = None
    files_vacuumed: int = 0
    seconds: float = 0.0


def closed_days(days: Iterable[str], now_s: float, closed_after_s: float) -> list[str]:
    """The days among ``days`` whose end (next UTC midnight) lies at least ``closed_after_s`` before ``now_s``."""
    out = []
    for day in days:
        end = datetime.combine(date.fromisoformat(day) + timedelta(days=1), datetime.min.time(), UTC)
        if end.timestamp() + closed_after_s <= now_s:
            out.append(day)
    return sorted(out)


def files_per_day(table: DeltaTable) -> dict[str, int]:
    """How many data files each ``date`` partition holds now."""
    actions = table.get_add_actions(flatten=True)
    column = "partition.date" if "partition.date" in actions.schema.names else "partition_values.date"
    counts: dict[str, int] = {}
    for day in actions.column(column).to_pylist():
        counts[str(day)] = counts.get(str(day), 0) + 1
    return counts


def maintain_table(
    name: str,
    uri: str,
    storage_options: Mapping[str, str] | None,
    policy: MaintenancePolicy,
    now_s: float | None = None,
    on_day: Callable[[str], None] | None = None,
) -> TableReport:
    """Compact ``name``'s closed days that hold more than one file, checkpoint its log, vacuum it.

    ``on_day`` is called with each day compacted (the job runs that day's whole-day checks).
    A compaction refused because a commit raced it is reported as busy and left for the next pass.
    """
    started = time.monotonic()
    report = TableReport(name)
    options = dict(storage_options or {})
    try:
        table = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return report
    target = policy.target_mb * 1024 * 1024
    counts = files_per_day(table)
    for day in closed_days([d for d, n in counts.items() if n > 1], now_s or time.time(), policy.closed_after_s):
        filters = [("date", "=", day)]
        try:
            if name in Z_ORDER:
                metrics = table.optimize.z_order(list(Z_ORDER[name]), partition_filters=filters, target_size=target)
            else:
                metrics = table.optimize.compact(partition_filters=filters, target_size=target)
        except CommitFailedError:
            report.days_skipped_busy.append(day)
            table = DeltaTable(uri, storage_options=options)
            continue
        report.days_compacted.append(day)
        report.files_removed += int(metrics.get("numFilesRemoved", 0))
        report.files_added += int(metrics.get("numFilesAdded", 0))
        if on_day is not None:
            on_day(day)
    table = DeltaTable(uri, storage_options=options)
    table.create_checkpoint()
    report.checkpoint_version = table.version()
    vacuumed = table.vacuum(retention_hours=policy.vacuum_retention_h, dry_run=False, enforce_retention_duration=False)
    report.files_vacuumed = len(vacuumed)
    table.cleanup_metadata()
    report.seconds = round(time.monotonic() - started, 3)
    return report
