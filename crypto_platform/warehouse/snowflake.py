"""The Snowflake loader: Parquet ``PUT`` -> ``COPY INTO`` a staging table -> ``MERGE`` on the natural key.

Why this path: ``write_pandas`` fails against the fakesnow server, and
row inserts run at ~300 rows/s there; PUT/COPY/MERGE is valid SQL on real Snowflake and measured at
~115k rows/s on fakesnow. Details that matter:

- each batch is its own Parquet file under its own stage path (``@CRYPTO_LOAD/<uuid>/``): Snowflake
  skips a file name it already loaded, and fakesnow's COPY cannot take ``FILES=`` on an internal stage;
- the staging table is a per-load TRANSIENT table with no primary key (fakesnow enforces PKs, and
  COPY into a TEMPORARY table fails there), dropped afterwards;
- the MERGE is one statement: the target sees all of the partition or none of it (validation, PUT and
  COPY all happen before the target is touched); a rebuild follows it with a DELETE of the day's rows
  that are not in the new partition (not one transaction: fakesnow cannot MERGE inside BEGIN);
- human ``*_TIME`` columns are computed in the MERGE (``TO_TIMESTAMP_NTZ(ms, 3)``);
- the day's load watermark (``LOAD_WATERMARKS``: highest landing segment loaded) is written after the
  rows, by a MERGE of its own: a failure between the two leaves the old watermark, so the next load
  repeats the (idempotent) upsert rather than skipping rows.

Works through ``dagster_snowflake.SnowflakeResource.get_connection`` (pass the bound method: a
context-manager factory) or any open ``snowflake.connector`` connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from crypto_platform.days import day_bounds_ms
from crypto_platform.warehouse.errors import WarehouseAuthError, WarehouseConnectionError, WarehouseLoadError
from crypto_platform.warehouse.frames import Prepared, max_segment, prepare, segment_mask
from crypto_platform.warehouse.migrations import (
    SCHEMA_VERSION,
    VERSION_TABLE,
    Dialect,
    apply_migrations,
    human_expression,
)
from crypto_platform.warehouse.sql import (
    LoadResult,
    check_day,
    day_text,
    highest_segment,
    max_segment_of,
)
from crypto_platform.warehouse.tables import LOAD_WATERMARKS, Table
from crypto_platform.warehouse.views import view_sql

DATABASE = "MARKET_DATA"
SCHEMA = "POLYGON"
STAGE = "CRYPTO_LOAD"

Connection = Any
ConnectionSource = Connection | Callable[[], AbstractContextManager[Connection]]


@contextlib.contextmanager
def _connection(source: ConnectionSource) -> Iterator[Connection]:
    """An open connection (used as is, left open) or a factory such as ``SnowflakeResource.get_connection``."""
    if hasattr(source, "cursor"):
        yield source
        return
    with source() as conn:
        yield conn


def _execute(conn: Connection, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    try:
        cur.execute(sql, params) if params is not None else cur.execute(sql)
        try:
            return [tuple(r) for r in cur.fetchall()]
        except Exception:
            return []
    finally:
        cur.close()


class _SnowflakeSchema:
    """:class:`~crypto_platform.warehouse.migrations.SchemaTarget` for MARKET_DATA.POLYGON."""

    dialect: Dialect = "snowflake"

    def __init__(self, conn: Connection, database: str, schema: str) -> None:
        self.conn = conn
        self.database = database
        self.schema = schema

    def execute_ddl(self, sql: str) -> None:
        _execute(self.conn, sql)

    def existing_tables(self) -> set[str]:
        rows = _execute(
            self.conn,
            f"SELECT TABLE_NAME FROM {self.database}.INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = %s",
            (self.schema,),
        )
        return {str(r[0]).lower() for r in rows}

    def existing_columns(self, table_name: str) -> set[str]:
        rows = _execute(
            self.conn,
            f"SELECT COLUMN_NAME FROM {self.database}.INFORMATION_SCHEMA.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (self.schema, table_name.upper()),
        )
        return {str(r[0]).lower() for r in rows}

    def existing_indexes(self, table_name: str) -> set[str]:
        return set()  # Snowflake has no secondary indexes

    def applied_versions(self) -> set[int]:
        return {int(r[0]) for r in _execute(self.conn, f"SELECT VERSION FROM {VERSION_TABLE.upper()}")}

    def record_version(self, version: int, description: str) -> None:
        _execute(
            self.conn,
            f"INSERT INTO {VERSION_TABLE.upper()} (VERSION, DESCRIPTION, APPLIED_AT) "
            "SELECT %s, %s, CURRENT_TIMESTAMP()::TIMESTAMP_NTZ",
            (version, description),
        )


# Snowflake error numbers for refused credentials (password, key pair, locked or unknown user).
_AUTH_ERRNOS = {390100, 390101, 390102, 390144, 390186, 251005, 250002}


def snowflake_connect_error(exc: BaseException, resource: Any) -> WarehouseConnectionError:
    """A failed login through ``SnowflakeResource`` as a message naming where and which setting to change.

    ``resource`` is the ``SnowflakeResource``: the local fakesnow server is reached through
    ``additional_snowflake_connection_args`` host/port, a real account at ``<account>.snowflakecomputing.com``.
    The connector's own text never carries the password; it is included for the cause.
    """
    extra = getattr(resource, "additional_snowflake_connection_args", None) or {}
    errno = getattr(exc, "errno", None)
    said = str(getattr(exc, "msg", None) or exc).strip()
    if "host" in extra:
        where = f"the local Snowflake stand-in (fakesnow) at {extra['host']}:{extra.get('port', 443)}"
        fix = (
            "start it with `crypto-platform services start` (or `make dev`), or point CRYPTO_FAKESNOW_HOST / "
            "CRYPTO_FAKESNOW_PORT at the running one; set SNOWFLAKE_ACCOUNT to use a real account"
        )
    else:
        where = f"Snowflake account {resource.account!r} at {resource.account}.snowflakecomputing.com:443"
        fix = "check SNOWFLAKE_ACCOUNT and the network path to it"
    if errno in _AUTH_ERRNOS:
        return WarehouseAuthError(
            f"{where} refused user {getattr(resource, 'user', '')!r}: wrong credentials ({said}). Fix SNOWFLAKE_USER "
            "and SNOWFLAKE_PASSWORD, or SNOWFLAKE_PRIVATE_KEY / SNOWFLAKE_PRIVATE_KEY_PATH (+ _PASSWORD)"
        )
    return WarehouseConnectionError(f"cannot reach {where} ({said}); {fix}")


@dataclass
class _SessionState:
    """What this process already did on one open connection, so each load does not repeat it.

    Every statement is a round trip (about 20 ms on the local fakesnow server, more to a real
    account), and a per-batch load used to spend half of its ~28 statements re-selecting the
    schema and re-reading column lists that cannot change outside a migration.
    """

    schema: tuple[str, str] | None = None
    columns: dict[str, set[str]] = field(default_factory=dict)  # table -> lower-case column names
    stage: bool = False  # made in ``schema`` (a temporary stage lives in the schema it was made in)


_sessions: weakref.WeakKeyDictionary[Any, _SessionState] = weakref.WeakKeyDictionary()


def _session(conn: Connection) -> _SessionState:
    try:
        return _sessions.setdefault(conn, _SessionState())
    except TypeError:  # an object that cannot be weakly referenced: remember nothing
        return _SessionState()


def use_schema(conn: Connection, database: str = DATABASE, schema: str = SCHEMA) -> None:
    """Create (if needed) and select the database and schema, once per connection. fakesnow makes no PUBLIC schema."""
    state = _session(conn)
    if state.schema == (database, schema):
        return
    _execute(conn, f"CREATE DATABASE IF NOT EXISTS {database}")
    _execute(conn, f"CREATE SCHEMA IF NOT EXISTS {database}.{schema}")
    _execute(conn, f"USE SCHEMA {database}.{schema}")
    state.schema, state.columns, state.stage = (database, schema), {}, False


def _table_columns(conn: Connection, database: str, schema: str, target: str) -> set[str]:
    """A table's columns, read once per connection (migrations, which change them, clear the memo)."""
    state = _session(conn)
    if target not in state.columns:
        state.columns[target] = _SnowflakeSchema(conn, database, schema).existing_columns(target)
    return state.columns[target]


def migrate_snowflake(
    source: ConnectionSource, target: int | None = None, *, database: str = DATABASE, schema: str = SCHEMA
) -> list[int]:
    """Create or upgrade MARKET_DATA.POLYGON to ``target`` (default: this release); return versions applied.

    At the current version the analyst views (:mod:`crypto_platform.warehouse.views`) are re-created too,
    as ``SqlWarehouse.migrate`` does for MySQL and SQLite.
    """
    with _connection(source) as conn:
        use_schema(conn, database, schema)
        _session(conn).columns.clear()
        done = apply_migrations(_SnowflakeSchema(conn, database, schema), target)
        if (target or SCHEMA_VERSION) == SCHEMA_VERSION:
            for sql in view_sql("snowflake", database=database, schema=schema):
                _execute(conn, sql)
        return done


def snowflake_schema_version(source: ConnectionSource, *, database: str = DATABASE, schema: str = SCHEMA) -> int:
    with _connection(source) as conn:
        use_schema(conn, database, schema)
        s = _SnowflakeSchema(conn, database, schema)
        if VERSION_TABLE not in s.existing_tables():
            return 0
        return max(s.applied_versions(), default=0)


def snowflake_columns(
    source: ConnectionSource, t: Table, *, database: str = DATABASE, schema: str = SCHEMA
) -> set[str]:
    with _connection(source) as conn:
        use_schema(conn, database, schema)
        return _SnowflakeSchema(conn, database, schema).existing_columns(_sf_name(t))


def _sf_name(t: Table) -> str:
    if t.snowflake is None:
        raise WarehouseLoadError(f"{t.name} is not loaded into Snowflake")
    return t.snowflake


def _stage_ddl(prepared: Prepared, name: str) -> str:
    from crypto_platform.warehouse.migrations import column_type

    cols = ", ".join(f"{c.upper()} {column_type(prepared.table.column(c), 'snowflake')}" for c in prepared.columns)
    return f"CREATE TRANSIENT TABLE {name} ({cols})"


def _merge_sql(prepared: Prepared, target: str, stage: str, version_columns: set[str]) -> str:
    t = prepared.table
    cols = [c.upper() for c in prepared.columns]
    humans = [
        (c.human.upper(), human_expression(c))
        for c in t.columns
        if c.human and c.name in prepared.columns and c.human in version_columns
    ]
    on = " AND ".join(f"t.{k.upper()} = s.{k.upper()}" for k in t.key)
    sets = [f"{c} = s.{c}" for c in cols if c.lower() not in t.key] + [f"{h} = {e}" for h, e in humans]
    ins_cols = cols + [h for h, _ in humans]
    ins_vals = [f"s.{c}" for c in cols] + [e for _, e in humans]
    matched = f" WHEN MATCHED THEN UPDATE SET {', '.join(sets)}" if sets else ""
    return (
        f"MERGE INTO {target} t USING {stage} s ON {on}{matched} "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(ins_cols)}) VALUES ({', '.join(ins_vals)})"
    )


def load_snowflake(
    source: ConnectionSource,
    t: Table,
    frame: pd.DataFrame,
    *,
    day: date | str | None = None,
    rebuild: bool = False,
    database: str = DATABASE,
    schema: str = SCHEMA,
    _watermark_floor: int | None = None,
) -> LoadResult:
    """Upsert ``frame`` into ``<database>.<schema>.<TABLE>``; ``rebuild=True`` replaces the whole ``day``.

    Idempotent: re-running the same partition leaves the table unchanged. Nothing of the partition
    reaches the target unless the MERGE (and, for a rebuild, the DELETE with it) commits. With
    ``day``, the day's load watermark is set afterwards (a rebuild sets it to the highest segment in
    ``frame``; an upsert raises it to that).
    """
    target = _sf_name(t)
    if rebuild and day is None:
        raise ValueError("rebuild=True needs the partition day")
    started = time.perf_counter()
    prepared = prepare(t, frame)
    if day is not None:
        check_day(prepared, day)
    batch = uuid.uuid4().hex
    stage_table = f"{target}__STAGE_{batch[:12].upper()}"
    workdir = tempfile.mkdtemp(prefix="crypto_sf_")
    deleted = 0
    before = after = day_rows = None
    with _connection(source) as conn:
        use_schema(conn, database, schema)
        version_columns = _table_columns(conn, database, schema, target)
        try:
            if prepared.num_rows:
                data = prepared.data.rename_columns([c.upper() for c in prepared.columns])
                path = os.path.join(workdir, f"{target.lower()}_{batch}.parquet")
                pq.write_table(data, path)
                if not _session(conn).stage:
                    _execute(conn, f"CREATE TEMPORARY STAGE IF NOT EXISTS {STAGE}")
                    _session(conn).stage = True
                _execute(conn, f"PUT 'file://{path}' @{STAGE}/{batch} AUTO_COMPRESS=FALSE OVERWRITE=TRUE")
                _execute(conn, _stage_ddl(prepared, stage_table))
                _execute(
                    conn,
                    f"COPY INTO {stage_table} FROM @{STAGE}/{batch}/ FILE_FORMAT=(TYPE=PARQUET) "
                    "MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE PURGE=TRUE",
                )
            # No explicit transaction: fakesnow cannot MERGE inside BEGIN ("a single transaction can
            # only write to a single attached database"). The MERGE is one atomic statement; a rebuild
            # then deletes the day's rows that the new partition no longer has, so a failure between
            # the two leaves every new row written and at most stale extras that a re-run removes.
            if prepared.num_rows:
                _execute(conn, _merge_sql(prepared, target, stage_table, version_columns))
            if rebuild:
                assert day is not None
                deleted = _delete_day(conn, t, target, day, stage_table if prepared.num_rows else None)
            if day is not None:
                before = _read_watermark(conn, t, day)
                top = max_segment_of(prepared)
                after = top if rebuild else highest_segment(highest_segment(before, _watermark_floor), top)
                where, params = _day_where(t, day)
                day_rows = int(_execute(conn, f"SELECT COUNT(*) FROM {target} WHERE {where}", params)[0][0])
                _write_watermark(conn, t, day, after, "rebuild" if rebuild else "upsert", day_rows)
        except WarehouseLoadError:
            raise
        except Exception as exc:
            raise WarehouseLoadError(
                f"{database}.{schema}.{target}: load failed, the target was not changed ({exc})"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                _execute(conn, f"DROP TABLE IF EXISTS {stage_table}")
            shutil.rmtree(workdir, ignore_errors=True)
    return LoadResult.of(
        prepared,
        "rebuild" if rebuild else "merge",
        started,
        day,
        deleted=deleted,
        watermark_before=before,
        watermark=after,
        day_rows=day_rows,
    )


def load_snowflake_new_segments(
    source: ConnectionSource,
    t: Table,
    day: date | str,
    frame: pd.DataFrame,
    *,
    database: str = DATABASE,
    schema: str = SCHEMA,
) -> LoadResult:
    """Upsert the rows of the lake day ``frame`` above the day's load watermark, then raise it.

    Snowflake's MERGE cannot share a transaction with a second statement on fakesnow, so the order
    carries the guarantee: rows first, watermark after. A failure in between repeats the upsert.
    """
    if not t.has_segments:
        raise ValueError(f"{t.name} rows carry no landing segment; use load_snowflake(..., day=) instead")
    with _connection(source) as conn:
        use_schema(conn, database, schema)
        before = _read_watermark(conn, t, day)
        result = load_snowflake(
            conn,
            t,
            frame[segment_mask(frame, before)],
            day=day,
            database=database,
            schema=schema,
            _watermark_floor=max_segment(frame),
        )
    return dataclasses.replace(result, watermark_before=before)


def snowflake_watermark(
    source: ConnectionSource, t: Table, day: date | str, *, database: str = DATABASE, schema: str = SCHEMA
) -> int | None:
    """The highest landing segment whose rows of ``day`` are in the Snowflake table (None: none)."""
    with _connection(source) as conn:
        use_schema(conn, database, schema)
        return _read_watermark(conn, t, day)


def _read_watermark(conn: Connection, t: Table, day: date | str) -> int | None:
    rows = _execute(
        conn,
        f"SELECT SEGMENT FROM {LOAD_WATERMARKS.snowflake} WHERE TABLE_NAME = %s AND DAY = TO_DATE(%s)",
        (t.name, day_text(day)),
    )
    return None if not rows or rows[0][0] is None else int(rows[0][0])


def _write_watermark(conn: Connection, t: Table, day: date | str, segment: int | None, mode: str, rows: int) -> None:
    loaded_ms = int(time.time() * 1000)
    _execute(
        conn,
        f"MERGE INTO {LOAD_WATERMARKS.snowflake} t USING (SELECT %s AS TABLE_NAME, TO_DATE(%s) AS DAY, "
        "%s::NUMBER(38,0) AS SEGMENT, %s AS MODE, %s::NUMBER(38,0) AS ROWS_LOADED, "
        "%s::NUMBER(38,0) AS LOADED_MS) s ON t.TABLE_NAME = s.TABLE_NAME AND t.DAY = s.DAY "
        "WHEN MATCHED THEN UPDATE SET SEGMENT = s.SEGMENT, MODE = s.MODE, ROWS_LOADED = s.ROWS_LOADED, "
        "LOADED_MS = s.LOADED_MS, LOADED_TIME = TO_TIMESTAMP_NTZ(s.LOADED_MS, 3) "
        "WHEN NOT MATCHED THEN INSERT (TABLE_NAME, DAY, SEGMENT, MODE, ROWS_LOADED, LOADED_MS, LOADED_TIME) "
        "VALUES (s.TABLE_NAME, s.DAY, s.SEGMENT, s.MODE, s.ROWS_LOADED, s.LOADED_MS, TO_TIMESTAMP_NTZ(s.LOADED_MS, 3))",
        (t.name, day_text(day), segment, mode, rows, loaded_ms),
    )


def _day_where(t: Table, day: date | str, within: tuple[int, int] | None = None) -> tuple[str, tuple[Any, ...]]:
    col = t.column(t.partition)
    if col.kind == "date":
        return f"{t.partition.upper()} = %s", (day_text(day),)
    lo, hi = day_bounds_ms(day)
    if col.unit == "ns":
        lo, hi = lo * 1_000_000, hi * 1_000_000
    if within is not None:
        lo, hi = max(lo, within[0]), min(hi, within[1])
    return f"{t.partition.upper()} >= %s AND {t.partition.upper()} < %s", (lo, hi)


def _delete_day(conn: Connection, t: Table, target: str, day: date | str, keep: str | None) -> int:
    """Delete the day's rows of ``target`` whose key is not in the staging table ``keep``."""
    where, params = _day_where(t, day)
    if keep:
        match = " AND ".join(f"s.{k.upper()} = {target}.{k.upper()}" for k in t.key)
        where += f" AND NOT EXISTS (SELECT 1 FROM {keep} s WHERE {match})"
    rows = _execute(conn, f"DELETE FROM {target} WHERE {where}", params)
    return int(rows[0][0]) if rows and rows[0] and isinstance(rows[0][0], int) else 0


def count_snowflake_partition(
    source: ConnectionSource, t: Table, day: date | str, *, database: str = DATABASE, schema: str = SCHEMA
) -> int:
    """Rows of one UTC day in the Snowflake table."""
    with _connection(source) as conn:
        use_schema(conn, database, schema)
        where, params = _day_where(t, day)
        return int(_execute(conn, f"SELECT COUNT(*) FROM {_sf_name(t)} WHERE {where}", params)[0][0])


def read_snowflake_partition(
    source: ConnectionSource,
    t: Table,
    day: date | str,
    *,
    database: str = DATABASE,
    schema: str = SCHEMA,
    segments: tuple[int | None, int | None] | None = None,
    within: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """The rows of one UTC day (loader columns, lower-case names), as Python values.

    ``segments=(after, upto)`` keeps what one per-batch load wrote, ``within=(lo, hi)`` the rows whose
    partition column is in ``[lo, hi)`` (see ``SqlWarehouse.read_partition``).
    """
    target = _sf_name(t)
    with _connection(source) as conn:
        use_schema(conn, database, schema)
        present = _table_columns(conn, database, schema, target)
        cols = [c for c in t.names if c in present]
        if not cols:
            raise WarehouseLoadError(f"{database}.{schema}.{target} does not exist: run migrate_snowflake first")
        where, params = _day_where(t, day, within)
        if segments is not None and t.has_segments:
            after, upto = segments
            bounds = ["SEGMENT > %s"] * (after is not None) + ["SEGMENT <= %s"] * (upto is not None)
            if bounds:
                where += f" AND (SEGMENT IS NULL OR ({' AND '.join(bounds)}))"
                params = (*params, *(b for b in (after, upto) if b is not None))
        rows = _execute(conn, f"SELECT {', '.join(c.upper() for c in cols)} FROM {target} WHERE {where}", params)
    return pd.DataFrame.from_records(rows, columns=cols)


__all__ = [
    "DATABASE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "count_snowflake_partition",
    "load_snowflake",
    "load_snowflake_new_segments",
    "migrate_snowflake",
    "read_snowflake_partition",
    "snowflake_columns",
    "snowflake_connect_error",
    "snowflake_schema_version",
    "snowflake_watermark",
    "use_schema",
]
