"""One lake day into one warehouse (MySQL/SQLite or Snowflake), then its parity with the lake.

Why a layer between the loaders and the assets: the same three ways of loading a day apply to both
warehouses, and the parity that follows depends on which one ran. Keeping the sequence here lets the
tests drive it without Dagster, and keeps the twelve warehouse assets one small factory.

How a day is loaded (``incremental`` = a stream-sensor run, tag ``crypto/segments``):

====================  =====================================  ==========================================
table has segments?   incremental                            otherwise (UI, backfill)
====================  =====================================  ==========================================
yes (trades, quotes,  rows with segment > the day's load     the whole day replaced; watermark set to
aggregates)           watermark upserted, watermark raised   the day's highest segment
no, lake table       the rows of the lake files added since  the whole day replaced
(minute bars)         the table version the day's copy last
                      read (its watermark), upserted
no (sessions, daily   the whole day upserted (a few rows)    the whole day replaced
open/close)
====================  =====================================  ==========================================

Incremental loads read only what is new from the lake (rows above the watermark, found through the
files' segment statistics; or the files added since a version): their cost does not grow with the
day, which at the whole feed holds millions of rows.

Parity: a rebuild or whole-day upsert compares every row of the day. An incremental load compares
the rows it covered column by column against the warehouse's rows of the same keys, plus the day's
row counts (the lake's from its commit log); when the counts differ the whole day is compared to
name the rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

from crypto_platform.lake.tables import time_ranges
from crypto_platform.warehouse.frames import segment_mask
from crypto_platform.warehouse.parity import ParityReport, compare, diff_rows
from crypto_platform.warehouse.snowflake import (
    DATABASE,
    SCHEMA,
    count_snowflake_partition,
    load_snowflake,
    load_snowflake_new_segments,
    migrate_snowflake,
    read_snowflake_partition,
    snowflake_watermark,
)
from crypto_platform.warehouse.sources import lake_row_count
from crypto_platform.warehouse.sql import LoadResult, SqlWarehouse
from crypto_platform.warehouse.tables import Table

Segments = tuple[int | None, int | None]
# [lo, hi) of the table's partition column (a time in ms or ns) inside the day
Within = tuple[int, int]


class Target(Protocol):
    """A warehouse as the loads see it."""

    label: str

    def migrate(self) -> None: ...

    def rebuild(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult: ...

    def upsert_day(self, t: Table, day: str, frame: pd.DataFrame, watermark: int | None = None) -> LoadResult: ...

    def upsert(self, t: Table, frame: pd.DataFrame) -> LoadResult: ...

    def upsert_new_segments(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult: ...

    def read(
        self, t: Table, day: str, segments: Segments | None = None, within: Within | None = None
    ) -> pd.DataFrame: ...

    def count(self, t: Table, day: str) -> int: ...

    def watermark(self, t: Table, day: str) -> int | None: ...


class SqlTarget:
    """MySQL/MariaDB or the SQLite stand-in (:class:`~crypto_platform.warehouse.sql.SqlWarehouse`)."""

    def __init__(self, warehouse: SqlWarehouse) -> None:
        self.warehouse = warehouse
        self.label: str = warehouse.dialect

    def migrate(self) -> None:
        self.warehouse.migrate()

    def rebuild(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult:
        return self.warehouse.rebuild_day(t, day, frame)

    def upsert_day(self, t: Table, day: str, frame: pd.DataFrame, watermark: int | None = None) -> LoadResult:
        return self.warehouse.upsert(t, frame, day=day, watermark_floor=watermark)

    def upsert(self, t: Table, frame: pd.DataFrame) -> LoadResult:
        return self.warehouse.upsert(t, frame)

    def upsert_new_segments(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult:
        return self.warehouse.upsert_new_segments(t, day, frame)

    def read(self, t: Table, day: str, segments: Segments | None = None, within: Within | None = None) -> pd.DataFrame:
        return self.warehouse.read_partition(t, day, segments=segments, within=within)

    def count(self, t: Table, day: str) -> int:
        return self.warehouse.count_partition(t, day)

    def watermark(self, t: Table, day: str) -> int | None:
        return self.warehouse.watermark(t, day)


class SnowflakeTarget:
    """``<database>.<schema>`` on one open Snowflake connection (one login per run, not per statement)."""

    label = "snowflake"

    def __init__(self, conn: Any, database: str = DATABASE, schema: str = SCHEMA) -> None:
        self.conn = conn
        self.where: dict[str, Any] = {"database": database, "schema": schema}

    def migrate(self) -> None:
        migrate_snowflake(self.conn, **self.where)

    def rebuild(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult:
        return load_snowflake(self.conn, t, frame, day=day, rebuild=True, **self.where)

    def upsert_day(self, t: Table, day: str, frame: pd.DataFrame, watermark: int | None = None) -> LoadResult:
        return load_snowflake(self.conn, t, frame, day=day, _watermark_floor=watermark, **self.where)

    def upsert(self, t: Table, frame: pd.DataFrame) -> LoadResult:
        return load_snowflake(self.conn, t, frame, **self.where)

    def upsert_new_segments(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult:
        return load_snowflake_new_segments(self.conn, t, day, frame, **self.where)

    def read(self, t: Table, day: str, segments: Segments | None = None, within: Within | None = None) -> pd.DataFrame:
        return read_snowflake_partition(self.conn, t, day, segments=segments, within=within, **self.where)

    def count(self, t: Table, day: str) -> int:
        return count_snowflake_partition(self.conn, t, day, **self.where)

    def watermark(self, t: Table, day: str) -> int | None:
        return snowflake_watermark(self.conn, t, day, **self.where)


@dataclass(frozen=True)
class DayLoad:
    """What loading one day did, and whether the warehouse now agrees with the lake."""

    result: LoadResult
    parity: ParityReport


def load_day(
    target: Target,
    t: Table,
    day: str,
    lake: pd.DataFrame,
    *,
    incremental: bool,
    source: str = "lake",
    lake_rows: int | None = None,
    whole_day: Callable[[], pd.DataFrame] | None = None,
    recount: bool = False,
) -> DayLoad:
    """Load the lake rows ``lake`` of ``day`` into ``target`` and compare (see the module doc).

    ``lake`` is the whole day, or for an incremental load of a table with segments it may be only
    the rows above the target's watermark; then ``lake_rows`` is the day's row count in the lake and
    ``whole_day`` reads the whole day (only to name differing rows when the counts disagree).
    ``recount``: parity counts the target's whole day instead of taking the load's count, which adds
    the span the load wrote to the last count and so cannot see rows changed behind the loads' back.
    """
    labels = (source, target.label)
    if incremental and t.has_segments:
        result = target.upsert_new_segments(t, day, lake)
        segments = (result.watermark_before, result.watermark)
        day_rows = None if recount else result.day_rows
        parity = batch_parity(target, t, day, lake, segments, labels, day_rows, lake_rows, whole_day)
        return DayLoad(result, parity)
    result = target.upsert_day(t, day, lake) if incremental else target.rebuild(t, day, lake)
    return DayLoad(result, compare(t, lake, target.read(t, day), labels))


def load_changes(
    target: Target,
    t: Table,
    day: str,
    changed: pd.DataFrame,
    version: int | None,
    lake_rows: int,
    whole_day: Callable[[], pd.DataFrame],
    source: str = "lake",
    recount: bool = False,
) -> DayLoad:
    """Upsert the ``changed`` rows of a lake table without segments, raising the day's watermark to ``version``.

    Parity compares those rows with the warehouse's rows of the same keys (read by the partition
    column's ranges that hold them), plus the day's row counts.
    """
    labels = (source, target.label)
    result = target.upsert_day(t, day, changed, watermark=version)
    if changed.empty:
        right = changed
    else:
        column = pd.to_numeric(changed[t.partition]).astype("int64")
        parts = [target.read(t, day, within=(lo, hi + 1)) for lo, hi in time_ranges(pa.array(column.to_numpy()))]
        right = pd.concat(parts, ignore_index=True) if parts else changed.iloc[0:0]
        keys = changed[list(t.key)].astype(object).apply(tuple, axis=1)
        right = right[right[list(t.key)].astype(object).apply(tuple, axis=1).isin(set(keys))]
    report = compare(t, changed, right, labels)
    day_rows = recounted(target, t, day, lake_rows, None if recount else result.day_rows)
    differences = report.differences
    if lake_rows != day_rows and not differences:
        differences = diff_rows(t, whole_day(), target.read(t, day), labels)
    since = result.watermark_before
    scope = f"rows changed since lake version {since}" if since is not None else "day"
    report = dataclasses.replace(report, scope=scope, day_rows=(lake_rows, day_rows), differences=differences)
    return DayLoad(result, report)


def recounted(target: Target, t: Table, day: str, lake_rows: int, day_rows: int | None) -> int:
    """The target's rows of the day: the load's own count, or a count of the whole day when it has none
    or when it differs from the lake's (a load counts only the span it wrote, on top of the last count)."""
    return day_rows if day_rows is not None and day_rows == lake_rows else target.count(t, day)


def batch_parity(
    target: Target,
    t: Table,
    day: str,
    lake: pd.DataFrame,
    segments: Segments,
    labels: tuple[str, str],
    day_rows: int | None = None,
    lake_rows: int | None = None,
    whole_day: Callable[[], pd.DataFrame] | None = None,
) -> ParityReport:
    """Rows of segments ``(after, upto]`` column by column, plus the whole day's row counts.

    ``day_rows``: the day's rows in the target as the load counted them (saves counting again);
    ``lake_rows``: the lake's (default: counted in ``lake``, the whole day); ``whole_day``: the lake's
    whole day when ``lake`` is not (read only to name rows when the counts differ).
    """
    after, upto = segments
    report = compare(t, lake[segment_mask(lake, after, upto)], target.read(t, day, segments), labels)
    lake_count = lake_row_count(t, lake) if lake_rows is None else lake_rows
    counts = (lake_count, recounted(target, t, day, lake_count, day_rows))
    differences = report.differences
    if counts[0] != counts[1] and not differences:
        differences = diff_rows(t, lake if whole_day is None else whole_day(), target.read(t, day), labels)
    scope = f"segments {'1' if after is None else after + 1}-{upto}" if upto is not None else "segments"
    return dataclasses.replace(report, scope=scope, day_rows=counts, differences=differences)
