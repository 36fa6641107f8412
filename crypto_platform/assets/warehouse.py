"""The warehouse copies: every lake table in MySQL (``crypto_*``) and in Snowflake (``MARKET_DATA.POLYGON``).

Twelve assets from one factory over :data:`COPIES` (table spec x {MySQL, Snowflake}). Each is daily
partitioned like its source and carries a blocking ``parity_with_lake`` check: row count and an
order-independent checksum against the lake (or the session ledger), naming the rows that differ.

How a run loads a day (the loading itself lives in :mod:`crypto_platform.warehouse.loads`):

- a stream-sensor run (tag ``crypto/segments``) upserts what is new since the day's load watermark,
  the highest landing segment already in the table, kept in ``crypto_load_watermarks`` and written
  in the same transaction as the rows; a load that failed (database down) moved nothing, so the next
  run picks its rows up, and no duplicate can appear (natural-key upserts);
- any other run (the UI, a backfill) replaces the whole day and resets the watermark.

The MySQL assets write to ``MYSQL_URL`` (the SQLite stand-in when unset); the Snowflake ones go
through dagster-snowflake's ``SnowflakeResource`` (the local fakesnow server when no account is set)
with one connection per run.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from dagster_snowflake import SnowflakeResource

from crypto_platform.assets.daily import daily_open_close
from crypto_platform.assets.landing_log import landing_log
from crypto_platform.assets.raw import raw_aggregates, raw_quotes, raw_trades
from crypto_platform.lake.schemas import SCHEMAS
from crypto_platform.lake.tables import is_false, newer_than
from crypto_platform.partitions import DAILY_PARTITIONS
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream_batches import BatchScope
from crypto_platform.warehouse.frames import segment_mask
from crypto_platform.warehouse.loads import DayLoad, SnowflakeTarget, SqlTarget, Target, load_changes, load_day
from crypto_platform.warehouse.snowflake import snowflake_connect_error
from crypto_platform.warehouse.sources import (
    daily_open_close_frame,
    lake_frame,
    sessions_of_day,
    sessions_reaching_into,
    stream_session_frame,
)
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.tables import (
    AGGREGATES,
    DAILY_OPEN_CLOSE,
    MINUTE_BARS,
    QUOTES,
    STREAM_SESSIONS,
    TRADES,
    Table,
)

PARITY = "parity_with_lake"
BACKENDS = ("mysql", "snowflake")
# The lake asset that builds minute bars (crypto_platform.assets.bars); referenced by key so this
# module does not depend on the bars module's import order.
MINUTE_BARS_KEY = dg.AssetKey("minute_bars")


@dataclass(frozen=True)
class Sources:
    """What a warehouse table's rows are read from: the lake, or the stream's session ledger."""

    lake: LakeResource
    stream: StreamResource


@dataclass(frozen=True)
class WarehouseCopy:
    """One warehouse table and where its rows come from."""

    table: Table
    upstream: dg.AssetKey
    read: Callable[[Sources, str], pd.DataFrame]  # (sources, day) -> the day's rows in table columns
    stream: bool  # loaded by the stream sensor's per-batch runs
    source: str = "lake"
    # The lake table the rows come from as they are (a stream run reads only its new rows)
    lake_table: str | None = None
    # rows of earlier days that a per-batch load refreshes too (sessions still open at midnight)
    carry_over: Callable[[Sources, str], pd.DataFrame] | None = None

    @property
    def short(self) -> str:
        return self.table.name.removeprefix("crypto_")

    def asset_name(self, backend: str) -> str:
        return f"{backend}_{self.short}"


def _from_lake(asset: str, t: Table) -> Callable[[Any, str], pd.DataFrame]:
    return lambda resources, day: lake_frame(resources.lake.read_partition(asset, day), t)


def _sessions(resources: Sources, day: str) -> pd.DataFrame:
    return sessions_of_day(stream_session_frame(resources.stream.sessions()), day)


def _sessions_carry_over(resources: Sources, day: str) -> pd.DataFrame:
    return sessions_reaching_into(stream_session_frame(resources.stream.sessions()), day)


def _lake_copy(asset: str, key: dg.AssetKey, t: Table) -> WarehouseCopy:
    return WarehouseCopy(t, key, _from_lake(asset, t), stream=True, lake_table=asset)


def lake_day_rows(lake: LakeResource, asset: str, t: Table, day: str, version: int | None = None) -> int:
    """Rows the warehouse should hold for a lake day, from the commit log (no data read).

    A copy that keeps current revisions only (aggregates) subtracts the superseded ones, read from
    the few files whose statistics say they hold any."""
    tables = lake.tables()
    schema = SCHEMAS.get(asset)
    rows = tables.count(asset, day, version)
    if schema is not None and "is_current" in schema.names and "is_current" not in t.names:
        old = tables.read(
            asset, day, where=is_false("is_current"), columns=["is_current"], ordered=False, version=version
        )
        rows -= 0 if old is None else old.num_rows
    return rows


def load_new_rows(
    target: Target, copy: WarehouseCopy, sources: Sources, day: str, recount: bool = False
) -> tuple[DayLoad, pd.DataFrame]:
    """A stream run's load of a lake copy: only what the lake holds beyond the day's watermark.

    Tables with landing segments read the rows above the watermark (file statistics on ``segment``
    skip the rest); others (minute bars) read the files added since the table version last loaded.
    ``recount``: parity counts the warehouse's whole day (the rounds with the lake checks) instead of
    taking the load's own count. Returns the load and the rows it read.
    """
    assert copy.lake_table is not None
    t, lake = copy.table, sources.lake
    mark = target.watermark(t, day)
    # The count and the rows come from one version of the table: the lake writer keeps appending.
    version = lake.tables().version(copy.lake_table)
    lake_rows = lake_day_rows(lake, copy.lake_table, t, day, version)

    def whole_day() -> pd.DataFrame:
        return copy.read(sources, day)

    if t.has_segments:
        new_rows = lake.tables().read(copy.lake_table, day, where=newer_than("segment", mark), version=version)
        frame = lake_frame(new_rows, t)
        load = load_day(
            target,
            t,
            day,
            frame,
            incremental=True,
            source=copy.source,
            lake_rows=lake_rows,
            whole_day=whole_day,
            recount=recount,
        )
        return load, frame
    changed, version = lake.tables().changed_since(copy.lake_table, day, mark)
    frame = lake_frame(changed, t)
    return load_changes(target, t, day, frame, version, lake_rows, whole_day, copy.source, recount), frame


COPIES: tuple[WarehouseCopy, ...] = (
    _lake_copy("raw_trades", raw_trades.key, TRADES),
    _lake_copy("raw_quotes", raw_quotes.key, QUOTES),
    _lake_copy("raw_aggregates", raw_aggregates.key, AGGREGATES),
    _lake_copy("minute_bars", MINUTE_BARS_KEY, MINUTE_BARS),
    WarehouseCopy(
        DAILY_OPEN_CLOSE,
        daily_open_close.key,
        lambda resources, day: daily_open_close_frame(resources.lake.read_partition("daily_open_close", day)),
        stream=False,
    ),
    WarehouseCopy(
        STREAM_SESSIONS,
        landing_log.key,
        _sessions,
        stream=True,
        source="ledger",
        carry_over=_sessions_carry_over,
    ),
)

# Warehouses already migrated by each run (a run id with the warehouse): one migration check per run,
# not one per asset. Keyed by run, not by process: tests execute many runs in one process, against
# servers that come and go on the same address.
_migrated: set[tuple[str, str]] = set()


@contextlib.contextmanager
def _target(resource: SqlTablesResource | SnowflakeResource, run_id: str) -> Iterator[Target]:
    """The warehouse behind a resource, migrated once per run (one check per run, not per asset)."""
    if isinstance(resource, SqlTablesResource):
        warehouse = SqlWarehouse(resource.url)
        target: Target = SqlTarget(warehouse)
        if (run_id, warehouse.masked_url) not in _migrated:
            target.migrate()
            _migrated.add((run_id, warehouse.masked_url))
        yield target
        return
    try:
        connection = resource.get_connection()
        conn = connection.__enter__()
    except Exception as exc:
        raise snowflake_connect_error(exc, resource) from None
    try:
        target = SnowflakeTarget(conn, resource.database or "MARKET_DATA", resource.schema_ or "POLYGON")
        memo = (run_id, f"snowflake:{resource.account}:{resource.database}:{resource.schema_}")
        if memo not in _migrated:
            target.migrate()
            _migrated.add(memo)
        yield target
    finally:
        connection.__exit__(None, None, None)


def _parity_result(asset: str, loads: list[DayLoad]) -> dg.AssetCheckResult:
    reports = [d.parity for d in loads]
    failed = [r for r in reports if not r.ok]
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=PARITY,
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "days": len(reports),
            "rows_compared": sum(r.right_fp.rows for r in reports),
            "scope": ", ".join(sorted({r.scope for r in reports})) or "none",
            "details": dg.MetadataValue.md("\n\n".join(r.message() for r in (failed or reports))[:4000]),
        },
    )


def freshness_metadata(frame: pd.DataFrame, before: int | None, after: int | None) -> dict[str, float]:
    """Seconds from landing (and from event time) to queryable, for the streamed rows one load added.

    Only the rows of the segments the load took in (``(before, after]``); REST repair rows have no
    receive time of the stream and are left out. Event time is a trade's or quote's ``event_ms`` and
    a bar's end, when Polygon can first send it.
    """
    if "received_ns" not in frame.columns or after is None or frame.empty:
        return {}
    rows = frame[segment_mask(frame, before, after) & frame["segment"].notna()]
    if rows.empty:
        return {}
    now_ns = time.time_ns()
    out: dict[str, float] = {}
    landed = (now_ns - rows["received_ns"].to_numpy(dtype="int64")) / 1e9
    out.update(_percentiles(landed, "landed_to_warehouse_s"))
    event = "event_ms" if "event_ms" in rows.columns else "end_ms" if "end_ms" in rows.columns else None
    if event is not None:
        out.update(
            _percentiles((now_ns // 1_000_000 - rows[event].to_numpy(dtype="int64")) / 1e3, "event_to_warehouse_s")
        )
    return out


def _percentiles(values: np.ndarray, prefix: str) -> dict[str, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        f"{prefix}_p50": round(float(p50), 3),
        f"{prefix}_p95": round(float(p95), 3),
        f"{prefix}_p99": round(float(p99), 3),
    }


def _materialized(
    asset: str, loads: list[DayLoad], incremental: bool, freshness: dict[str, float] | None = None
) -> dg.MaterializeResult:
    results = [d.result for d in loads]
    rows = sum(r.rows for r in results)
    day_rows = {r.day: r.day_rows for r in results if r.day is not None and r.day_rows is not None}
    metadata: dict[str, Any] = {
        # What this run wrote (a stream batch, or the days it replaced): not the partition's size.
        "batch_rows": rows,
        "mode": "per-batch upsert" if incremental else "day rebuild",
        "method": ", ".join(sorted({r.method for r in results})),
        "rows_per_s": round(rows / max(1e-9, sum(r.seconds for r in results))),
        "day_rows": dg.MetadataValue.json(day_rows),
    }
    if len(day_rows) == 1:
        # Dagster's meaning: the rows the partition holds. A run over several days attaches one set of
        # metadata to every partition, so no single figure is right there; day_rows has each.
        (metadata["dagster/row_count"],) = day_rows.values()
    marks = [r.watermark for r in results if r.watermark is not None]
    if marks:
        metadata["watermark_segment"] = max(marks)
    metadata.update(freshness or {})
    return dg.MaterializeResult(metadata=metadata, check_results=[_parity_result(asset, loads)])


def warehouse_asset(copy: WarehouseCopy, backend: str) -> dg.AssetsDefinition:
    """The asset that keeps ``copy.table`` in ``backend`` ("mysql" or "snowflake") equal to its source."""
    name = copy.asset_name(backend)
    where = (
        f"Table {copy.table.name} in MySQL (the SQLite stand-in without MYSQL_URL)"
        if backend == "mysql"
        else f"Table MARKET_DATA.POLYGON.{copy.table.snowflake} in Snowflake (the local fakesnow server by default)"
    )
    how = (
        "Stream-sensor runs upsert the rows above the day's load watermark; other runs replace the day."
        if copy.table.has_segments
        else "Stream-sensor runs upsert the day; other runs replace it."
        if copy.stream
        else "Each run replaces the day."
    )

    decorator = dg.asset(
        name=name,
        partitions_def=DAILY_PARTITIONS,
        deps=[copy.upstream],
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
        check_specs=[dg.AssetCheckSpec(PARITY, asset=name, blocking=True)],
        group_name="warehouse",
        kinds={backend},
        owners=["team:data-platform"],
        code_version="2",
        description=f"{where}: {copy.table.doc} From {copy.upstream.to_user_string()}. {how} "
        f"Blocking parity check against the {copy.source}.",
    )

    def run(context: dg.AssetExecutionContext, backend_resource: Any, resources: Sources) -> dg.MaterializeResult:
        scope = BatchScope.from_context(context)
        incremental = scope.incremental
        loads = []
        freshness: dict[str, float] = {}
        with _target(backend_resource, context.run_id) as target:
            for day in context.partition_keys:
                if incremental and copy.lake_table is not None:
                    load, rows = load_new_rows(target, copy, resources, day, recount=scope.checks_round)
                    loads.append(load)
                else:
                    rows = copy.read(resources, day)
                    loads.append(load_day(target, copy.table, day, rows, incremental=incremental, source=copy.source))
                if incremental:
                    result = loads[-1].result
                    freshness = freshness_metadata(rows, result.watermark_before, result.watermark)
                if incremental and copy.carry_over is not None:
                    earlier = copy.carry_over(resources, day)
                    if len(earlier):
                        target.upsert(copy.table, earlier)
        return _materialized(name, loads, incremental, freshness)

    # Typed resource parameters: Dagster hands a ConfigurableResource over as itself only this way
    # (context.resources.snowflake is dagster-snowflake's connection wrapper, not the resource).
    if backend == "mysql":

        @decorator
        def load(
            context: dg.AssetExecutionContext, sql_tables: SqlTablesResource, lake: LakeResource, stream: StreamResource
        ) -> Iterator[dg.MaterializeResult]:
            result = run(context, sql_tables, Sources(lake, stream))
            yield result
            raise_failed_parity(name, result)

    else:

        @decorator
        def load(
            context: dg.AssetExecutionContext, snowflake: SnowflakeResource, lake: LakeResource, stream: StreamResource
        ) -> Iterator[dg.MaterializeResult]:
            result = run(context, snowflake, Sources(lake, stream))
            yield result
            raise_failed_parity(name, result)

    return load


def raise_failed_parity(asset: str, result: dg.MaterializeResult) -> None:
    """Fail the run with the reasons of a failed parity check, once its evaluation is recorded.

    Dagster's own failure for a blocking check names only the check; the rows that differ
    ("… trade_id='777'): only in lake") belong in the message an operator reads first.
    """
    for check in result.check_results or ():
        if check.check_name == PARITY and not check.passed:
            details = check.metadata.get("details") if check.metadata else None
            reason = getattr(details, "value", details) or "no details"
            raise dg.Failure(description=f"{asset}: {PARITY} did not pass:\n{reason}")


# Every warehouse asset, defined here (a module-scope list is what Dagster's loader collects).
warehouse_assets: list[dg.AssetsDefinition] = [warehouse_asset(c, b) for c in COPIES for b in BACKENDS]
WAREHOUSE_ASSETS: dict[str, dg.AssetsDefinition] = {a.key.to_user_string(): a for a in warehouse_assets}
