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
no (bars, sessions,   the whole day upserted (at most 1,440  the whole day replaced
daily open/close)     bars per pair: cheap)
====================  =====================================  ==========================================

Parity: a rebuild or whole-day upsert compares every row of the day. A per-segment load compares
the rows it covered (segments above the old watermark up to the new one) column by column, plus the
day's row counts; when the counts differ the whole day is compared to name the rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

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
)
from crypto_platform.warehouse.sources import lake_row_count
from crypto_platform.warehouse.sql import LoadResult, SqlWarehouse
from crypto_platform.warehouse.tables import Table

Segments = tuple[int | None, int | None]


class Target(Protocol):
    """A warehouse as the loads see it."""

    label: str

    def migrate(self) -> None: ...

    def rebuild(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult: ...

    def upsert_day(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult: ...

    def upsert(self, t: Table, frame: pd.DataFrame) -> LoadResult: ...

    def upsert_new_segments(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult: ...

    def read(self, t: Table, day: str, segments: Segments | None = None) -> pd.DataFrame: ...

    def count(self, t: Table, day: str) -> int: ...


class SqlTarget:
    """MySQL/MariaDB or the SQLite stand-in (:class:`~crypto_platform.warehouse.sql.SqlWarehouse`)."""

    def __init__(self, warehouse: SqlWarehouse) -> None:
        self.warehouse = warehouse
        self.label: str = warehouse.dialect

    def migrate(self) -> None:
        self.warehouse.migrate()

    def rebuild(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult:
        return self.warehouse.rebuild_day(t, day, frame)

    def upsert_day(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult:
        return self.warehouse.upsert(t, frame, day=day)

    def upsert(self, t: Table, frame: pd.DataFrame) -> LoadResult:
        return self.warehouse.upsert(t, frame)

    def upsert_new_segments(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult:
        return self.warehouse.upsert_new_segments(t, day, frame)

    def read(self, t: Table, day: str, segments: Segments | None = None) -> pd.DataFrame:
        return self.warehouse.read_partition(t, day, segments=segments)

    def count(self, t: Table, day: str) -> int:
        return self.warehouse.count_partition(t, day)


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

    def upsert_day(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult:
        return load_snowflake(self.conn, t, frame, day=day, **self.where)

    def upsert(self, t: Table, frame: pd.DataFrame) -> LoadResult:
        return load_snowflake(self.conn, t, frame, **self.where)

    def upsert_new_segments(self, t: Table, day: str, frame: pd.DataFrame) -> LoadResult:
        return load_snowflake_new_segments(self.conn, t, day, frame, **self.where)

    def read(self, t: Table, day: str, segments: Segments | None = None) -> pd.DataFrame:
        return read_snowflake_partition(self.conn, t, day, segments=segments, **self.where)

    def count(self, t: Table, day: str) -> int:
        return count_snowflake_partition(self.conn, t, day, **self.where)


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
) -> DayLoad:
    """Load the lake partition ``lake`` of ``day`` into ``target`` and compare (see the module doc)."""
    labels = (source, target.label)
    if incremental and t.has_segments:
        result = target.upsert_new_segments(t, day, lake)
        segments = (result.watermark_before, result.watermark)
        return DayLoad(result, batch_parity(target, t, day, lake, segments, labels, result.day_rows))
    result = target.upsert_day(t, day, lake) if incremental else target.rebuild(t, day, lake)
    return DayLoad(result, compare(t, lake, target.read(t, day), labels))


def batch_parity(
    target: Target,
    t: Table,
    day: str,
    lake: pd.DataFrame,
    segments: Segments,
    labels: tuple[str, str],
    day_rows: int | None = None,
) -> ParityReport:
    """Rows of segments ``(after, upto]`` column by column, plus the whole day's row counts.

    ``day_rows``: the day's rows in the target as the load counted them (saves counting again).
    """
    after, upto = segments
    report = compare(t, lake[segment_mask(lake, after, upto)], target.read(t, day, segments), labels)
    counts = (lake_row_count(t, lake), target.count(t, day) if day_rows is None else day_rows)
    differences = report.differences
    if counts[0] != counts[1] and not differences:
        differences = diff_rows(t, lake, target.read(t, day), labels)
    scope = f"segments {'1' if after is None else after + 1}-{upto}" if upto is not None else "segments"
    return dataclasses.replace(report, scope=scope, day_rows=counts, differences=differences)
