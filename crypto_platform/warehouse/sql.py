"""The SQL loader: MySQL 8 / MariaDB through pymysql, or the embedded SQLite stand-in, one code path.

Why raw DB-API instead of SQLAlchemy Core: pymysql's ``executemany`` folds ``INSERT … VALUES (%s,…)
ON DUPLICATE KEY UPDATE col=VALUES(col)`` into one multi-row statement, ~40 % faster than the same
upsert through SQLAlchemy. ``col=VALUES(col)`` is kept rather than
MySQL 8's ``AS new`` alias because MariaDB rejects the alias. SQLite gets ``ON CONFLICT DO UPDATE``.

Two ways to write a partition (a DataFrame in the lake contract):

- :meth:`SqlWarehouse.upsert`: micro-batches. Statements of ``batch_rows`` (default 5,000) rows.
- :meth:`SqlWarehouse.rebuild_day`: backfills. ``LOAD DATA LOCAL INFILE … REPLACE`` of a
  tab-separated file (about twice as fast as inserts) over the day, then delete the day's rows the
  partition no longer has; when either side refuses local infile, the same transaction falls back
  to batched upserts and the reason is logged and returned.
- :meth:`SqlWarehouse.upsert_new_segments`: the stream sensor's per-batch loads. The day's load
  watermark (highest landing segment loaded, table ``crypto_load_watermarks``) is read under a row
  lock; every lake row of the day above it is upserted and the watermark raised, in one transaction.
  A failed load leaves the watermark where it was, so the next load picks its rows up: an outage
  costs a retry, never data. ``rebuild_day`` sets the watermark too.

All-or-nothing (decided): **one transaction per call**. A partition is either written completely or
not at all; the 1-5k figure bounds the size of each statement (what made executemany fast), not the
transaction. InnoDB handles a whole day (1M+ rows) in one transaction; readers keep seeing the old
rows until the commit (MVCC). Before any write, every value is validated in Python
(:mod:`crypto_platform.warehouse.frames`) so a value that does not fit names its row by natural key;
the server runs in strict mode as a second line of defence and its errors are mapped back to a row
when they say "at row N". Re-running any partition leaves the tables unchanged.

Concurrent loads (a backfill's runs, each rebuilding its days) can meet in InnoDB's gap locks and
be chosen as a deadlock's victim (error 1213) or time out on a lock (1205). Each load is one
transaction that reads what it needs inside it, so it is simply run again (a few times, with a
jittered backoff) before the error reaches the run.

Connection failures name host, port and ``MYSQL_URL`` and never the password.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pymysql
import tenacity

from crypto_platform.days import day_bounds_ms
from crypto_platform.settings import Secret, mask_url_password
from crypto_platform.warehouse.errors import (
    LockConflictError,
    RowRejectedError,
    WarehouseAuthError,
    WarehouseConnectionError,
    WarehouseLoadError,
    WarehouseSchemaError,
)
from crypto_platform.warehouse.frames import (
    Prepared,
    decimal_text_array,
    describe_row,
    max_segment,
    prepare,
    segment_mask,
)
from crypto_platform.warehouse.migrations import (
    SCHEMA_VERSION,
    VERSION_TABLE,
    Dialect,
    apply_migrations,
    column_type,
)
from crypto_platform.warehouse.tables import LOAD_WATERMARKS, Table
from crypto_platform.warehouse.views import view_sql

log = logging.getLogger(__name__)

# ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT: the transaction was rolled back (or its statement was) by
# the server to let a concurrent one through; running the load again is the documented remedy.
_LOCK_CONFLICTS = frozenset({1213, 1205})

# A load that lost a lock conflict runs again from the start: each attempt is its own transaction.
_retry_lock_conflicts = tenacity.retry(
    retry=tenacity.retry_if_exception_type(LockConflictError),
    stop=tenacity.stop_after_attempt(5),
    wait=tenacity.wait_random_exponential(multiplier=0.2, max=5),
    before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
    reraise=True,
)

DEFAULT_BATCH_ROWS = 5_000
# Strict: a value that does not fit is an error, never a silent truncation.
_MYSQL_SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
# pymysql splits executemany statements above this size; keep one statement per batch so that
# "at row N" in a server error points at batch row N.
_MAX_STMT_BYTES = 12 * 1024 * 1024
_LOCAL_INFILE_REFUSED = {1148, 2068, 3948, 3950, 4166}
_CONNECT_ERRORS = {2002, 2003, 2005, 2006, 2013}
_AT_ROW = re.compile(r"at row (\d+)")
_FOR_COLUMN = re.compile(r"column '([^']+)'")
# A rebuild's temporary table of the partition's keys (per connection, so no two loads share one).
_KEEP = "crypto_rebuild_keys"
_STALE = "crypto_rebuild_stale"  # MySQL: the day's keys the partition no longer has


@dataclass(frozen=True)
class LoadResult:
    """What one load did (for run metadata: no secrets in here)."""

    table: str
    rows: int
    method: str  # "upsert" | "load_data" | "insert"
    seconds: float
    day: str | None = None
    deleted: int = 0  # a rebuild: rows of the day that the new partition no longer has
    dropped_duplicates: int = 0
    fallback_reason: str | None = None
    # load watermark (highest landing segment loaded) of the (table, day) before and after the load
    watermark_before: int | None = None
    watermark: int | None = None
    # rows of the day the table holds after the load, counted in the load's transaction (a load of a
    # day only): what the partition is, whatever the batch was (``rows``)
    day_rows: int | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    @classmethod
    def of(
        cls,
        prepared: Prepared,
        method: str,
        started: float,
        day: date | str | None,
        *,
        deleted: int = 0,
        fallback_reason: str | None = None,
        watermark_before: int | None = None,
        watermark: int | None = None,
        day_rows: int | None = None,
    ) -> LoadResult:
        """What loading ``prepared`` did, timed from ``started`` (``time.perf_counter()``).

        Every loader (SQL and Snowflake) builds its result here, so the fields mean the same everywhere.
        """
        return cls(
            prepared.table.name,
            prepared.num_rows,
            method,
            time.perf_counter() - started,
            day=day_text(day) if day is not None else None,
            deleted=deleted,
            dropped_duplicates=prepared.dropped_duplicates,
            fallback_reason=fallback_reason,
            watermark_before=watermark_before,
            watermark=watermark,
            day_rows=day_rows,
        )


def day_text(day: date | str) -> str:
    return day if isinstance(day, str) else day.isoformat()


class SqlWarehouse:
    """The platform's SQL tables on MySQL/MariaDB (``mysql+pymysql://…``) or SQLite (``sqlite:///…``).

    Cheap to build; a connection is opened per operation. Pass the URL as a :class:`Secret` (as
    ``settings.mysql_url``) or a plain string (as ``SqlTablesResource.url``).
    """

    def __init__(self, url: str | Secret, *, connect_timeout: float = 10.0, local_infile: bool = True) -> None:
        raw = url.reveal() if isinstance(url, Secret) else url
        self._url = Secret(raw)
        self.masked_url = mask_url_password(raw)
        self.connect_timeout = connect_timeout
        self.local_infile = local_infile
        scheme = raw.split(":", 1)[0].lower()
        if scheme.startswith("sqlite"):
            self.dialect: Dialect = "sqlite"
            path = raw.split(":///", 1)[-1] if ":///" in raw else ""
            if not path:
                raise WarehouseConnectionError(
                    f"{self.masked_url}: give a file path, sqlite:////abs/path/warehouse.sqlite"
                )
            self.sqlite_path = path
        elif scheme.startswith(("mysql", "mariadb")):
            from sqlalchemy.engine import make_url

            self.dialect = "mysql"
            parts = make_url(raw)
            self.host = parts.host or "127.0.0.1"
            self.port = parts.port or 3306
            self.user = parts.username or ""
            self.database = parts.database or ""
            self._password = Secret(parts.password or "")
            if not self.database:
                raise WarehouseConnectionError(
                    f"MYSQL_URL={self.masked_url} names no database: use mysql+pymysql://USER:PASSWORD@HOST:3306/DATABASE"
                )
        else:
            raise WarehouseConnectionError(
                f"{self.masked_url}: unsupported scheme {scheme!r}; set MYSQL_URL to mysql+pymysql://… or leave it "
                "unset for the embedded SQLite stand-in"
            )

    def __repr__(self) -> str:
        return f"SqlWarehouse({self.masked_url!r})"

    # -- connections ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A DB-API connection in manual-commit mode (closed on exit)."""
        conn = self._open()
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _open(self) -> Any:
        if self.dialect == "sqlite":
            Path(self.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.sqlite_path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        import pymysql

        try:
            conn = pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self._password.reveal(),
                database=self.database,
                charset="utf8mb4",
                connect_timeout=self.connect_timeout,
                local_infile=self.local_infile,
                autocommit=False,
            )
        except pymysql.err.OperationalError as exc:
            raise self._connect_error(exc) from None
        with conn.cursor() as cur:
            cur.execute(f"SET SESSION sql_mode='{_MYSQL_SQL_MODE}', time_zone='+00:00'")
        return conn

    def _connect_error(self, exc: Exception) -> WarehouseConnectionError:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        said = str(exc.args[-1]) if exc.args else str(exc)
        secret = self._password.reveal()
        if secret:
            said = said.replace(secret, "***")
        where = f"MySQL at {self.host}:{self.port}"
        fix = f"MYSQL_URL (now {self.masked_url})"
        if code == 1045:
            return WarehouseAuthError(
                f"{where} refused user {self.user!r}: wrong user name or password ({said}). "
                f"Fix the credentials in {fix}"
            )
        if code in (1044, 1049):
            return WarehouseAuthError(
                f"{where}: database {self.database!r} is missing or not granted to {self.user!r} ({said}). "
                f"Create it (CREATE DATABASE {self.database} CHARACTER SET utf8mb4) and grant it, or change {fix}"
            )
        if code in _CONNECT_ERRORS or code is None:
            return WarehouseConnectionError(
                f"cannot reach {where} ({said}). Start the server or point {fix} at a reachable one; "
                "unset MYSQL_URL to use the embedded SQLite stand-in"
            )
        return WarehouseConnectionError(f"{where} refused the connection ({said}); check {fix}")

    # -- schema ---------------------------------------------------------------------------------

    def migrate(self, target: int | None = None) -> list[int]:
        """Create or upgrade the tables to ``target`` (default: current) and (re)create the views."""
        with self.connect() as conn:
            schema = _SqlSchema(conn, self.dialect, self.database if self.dialect == "mysql" else "")
            with self._schema_lock(conn):
                if self.dialect == "sqlite":
                    conn.execute("BEGIN IMMEDIATE")  # SQLite DDL is transactional: all or nothing
                try:
                    done = apply_migrations(schema, target)
                    if (target or SCHEMA_VERSION) == SCHEMA_VERSION:
                        for sql in view_sql(self.dialect):
                            schema.execute_ddl(sql)
                    conn.commit()
                except BaseException:
                    _rollback(conn)
                    raise
            return done

    @contextlib.contextmanager
    def _schema_lock(self, conn: Any) -> Iterator[None]:
        """Serialise concurrent migrations (two code servers starting at once)."""
        if self.dialect == "sqlite":
            yield  # SQLite serialises DDL itself (one writer at a time)
            return
        with conn.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 60)", (f"crypto_schema_{self.database}",))
            got = cur.fetchone()[0]
        if got != 1:
            raise WarehouseLoadError(f"another process holds the schema lock of {self.database} for over 60 s")
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT RELEASE_LOCK(%s)", (f"crypto_schema_{self.database}",))

    def schema_version(self) -> int:
        """The highest applied schema version (0 for an empty database)."""
        with self.connect() as conn:
            schema = _SqlSchema(conn, self.dialect, self.database if self.dialect == "mysql" else "")
            if VERSION_TABLE not in schema.existing_tables():
                return 0
            return max(schema.applied_versions(), default=0)

    def columns(self, table_name: str) -> set[str]:
        with self.connect() as conn:
            return _SqlSchema(conn, self.dialect, getattr(self, "database", "")).existing_columns(table_name)

    # -- loading --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _load_transaction(self, conn: Any, prepared: Any) -> Iterator[None]:
        """One partition load: begin, commit at the end, or roll back and raise an error naming the row."""
        try:
            self._begin(conn)
            yield
            conn.commit()
        except BaseException as exc:
            _rollback(conn)
            raise self._load_error(exc, prepared) from None

    @_retry_lock_conflicts
    def upsert(
        self,
        t: Table,
        frame: pd.DataFrame,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        validate: bool = True,
        day: date | str | None = None,
        watermark_floor: int | None = None,
    ) -> LoadResult:
        """Insert or update every row of ``frame`` (one transaction; statements of ``batch_rows`` rows).

        With ``day``, every row must belong to that UTC day and the day's load watermark is raised to
        the highest segment in ``frame`` (at least ``watermark_floor``: for a table without segments,
        the lake version the rows were read at) in the same transaction.
        """
        started = time.perf_counter()
        prepared = self._prepare(t, frame, validate)
        before = after = None
        if day is not None:
            check_day(prepared, day)
        with self.connect() as conn, self._load_transaction(conn, prepared):
            if day is not None:
                before, recorded = self._watermark_row(conn, t, day, lock=True)
                counter = _DayRows(self, conn, t, day, recorded, prepared)
            self._insert_batches(conn, prepared, batch_rows, upsert=True)
            day_rows = None
            if day is not None:
                after = highest_segment(highest_segment(before, watermark_floor), max_segment_of(prepared))
                day_rows = self._write_watermark(conn, t, day, after, "upsert", counter.now())
        return LoadResult.of(
            prepared, "upsert", started, day, watermark_before=before, watermark=after, day_rows=day_rows
        )

    @_retry_lock_conflicts
    def upsert_new_segments(
        self,
        t: Table,
        day: date | str,
        frame: pd.DataFrame,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        validate: bool = True,
    ) -> LoadResult:
        """Upsert the rows of the lake day ``frame`` above the day's load watermark, and raise it.

        One transaction: the watermark row is locked (``SELECT … FOR UPDATE``; SQLite's write lock),
        the rows with ``segment`` > watermark (and rows without a segment, REST repair) are upserted,
        and the watermark becomes the highest segment in ``frame``. If anything fails, neither rows
        nor watermark change, and the next call loads them. Concurrent calls for the same day queue
        on the lock, so the watermark never passes rows that are not in the table.
        """
        if not t.has_segments:
            raise ValueError(f"{t.name} rows carry no landing segment; use upsert(..., day=) instead")
        started = time.perf_counter()
        guess = self.watermark(t, day)
        # Validate outside the lock; re-done only if another load moved the watermark meanwhile.
        prepared = self._prepare(t, frame[segment_mask(frame, guess)], validate)
        check_day(prepared, day)
        top = max_segment(frame)
        with self.connect() as conn, self._load_transaction(conn, prepared):
            before, recorded = self._watermark_row(conn, t, day, lock=True)
            if before != guess and (guess is None or before is None or before < guess):
                prepared = self._prepare(t, frame[segment_mask(frame, before)], validate)
            counter = _DayRows(self, conn, t, day, recorded, prepared)
            self._insert_batches(conn, prepared, batch_rows, upsert=True)
            after = highest_segment(before, top)
            day_rows = self._write_watermark(conn, t, day, after, "upsert", counter.now())
        return LoadResult.of(
            prepared, "upsert", started, day, watermark_before=before, watermark=after, day_rows=day_rows
        )

    @_retry_lock_conflicts
    def replace_range(
        self,
        t: Table,
        day: date | str,
        within: tuple[int, int],
        frame: pd.DataFrame,
        watermark: int,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> LoadResult:
        """Replace the day's rows whose partition column is in ``[lo, hi)`` with ``frame`` and set the
        day's watermark to ``watermark``, in one transaction (a stream run's recomputed window)."""
        started = time.perf_counter()
        prepared = self._prepare(t, frame, True)
        check_day(prepared, day)
        with self.connect() as conn, self._load_transaction(conn, prepared):
            before, recorded = self._watermark_row(conn, t, day, lock=True)
            counter = _DayRows(self, conn, t, day, recorded, prepared, within)
            where, params = self._day_where(t, day, within=within)
            cur = conn.cursor()
            try:
                cur.execute(f"DELETE FROM {t.name} WHERE {where}", params)
                deleted = int(cur.rowcount or 0)
            finally:
                cur.close()
            self._insert_batches(conn, prepared, batch_rows, upsert=True)
            day_rows = self._write_watermark(conn, t, day, watermark, "upsert", counter.now())
        return LoadResult.of(
            prepared,
            "replace range",
            started,
            day,
            deleted=deleted,
            watermark_before=before,
            watermark=watermark,
            day_rows=day_rows,
        )

    def watermark(self, t: Table, day: date | str) -> int | None:
        """The highest landing segment whose rows of ``day`` are in the table (None: none recorded)."""
        with self.connect() as conn:
            return self._read_watermark(conn, t, day, lock=False)

    def count_partition(self, t: Table, day: date | str) -> int:
        """Rows of one UTC day (served by the partition column's index)."""
        where, params = self._day_where(t, day)
        return int(self.query(f"SELECT COUNT(*) FROM {t.name} WHERE {where}", params)[0][0])

    @_retry_lock_conflicts
    def rebuild_day(
        self,
        t: Table,
        day: date | str,
        frame: pd.DataFrame,
        *,
        method: str = "auto",
        batch_rows: int = DEFAULT_BATCH_ROWS,
        validate: bool = True,
        watermark: int | None = None,
    ) -> LoadResult:
        """Replace the UTC ``day`` of a table with ``frame`` (backfills), in one transaction.

        The day's watermark becomes the highest segment in ``frame``, or ``watermark`` when given (for a
        table without segments: the version of the lake table it was computed from).

        ``method``: ``auto`` (MySQL: LOAD DATA LOCAL INFILE, falling back to inserts if refused),
        ``load_data`` (no fallback) or ``insert``. Every row must belong to ``day``.

        How (decided, measured with benchmarks/warehouse_load.py): the partition is upserted over the day
        (``LOAD DATA … REPLACE`` or batched upserts), then only the day's rows whose key is not in the
        partition are deleted. A rebuild mostly re-loads rows that are already there, unchanged; deleting
        the whole day first made InnoDB delete-mark and re-insert every row in four indexes, which was
        half the time of a 1M-row rebuild. Whether anything is stale is one indexed count (the day's rows
        vs the partition's); only then are the partition's keys put in a temporary table to find them.
        """
        started = time.perf_counter()
        prepared = self._prepare(t, frame, validate)
        check_day(prepared, day)
        use_load_data = self.dialect == "mysql" and method in ("auto", "load_data")
        fallback: str | None = None
        with self.connect() as conn, self._load_transaction(conn, prepared):
            # The watermark row first: the same lock order as upsert_new_segments (no deadlock).
            before = self._read_watermark(conn, t, day, lock=True)
            existing = self._count_day(conn, t, day)
            used = "insert"
            if use_load_data:
                try:
                    self._load_data(conn, prepared)
                    used = "load_data"
                except _LocalInfileRefused as refused:
                    if method == "load_data":
                        raise WarehouseLoadError(str(refused)) from None
                    fallback = str(refused)
                    log.warning("%s: %s; falling back to batched inserts", t.name, fallback)
                    _rollback(conn)
                    self._begin(conn)
                    before = self._read_watermark(conn, t, day, lock=True)
                    existing = self._count_day(conn, t, day)
            if used == "insert":
                self._insert_batches(conn, prepared, batch_rows, upsert=True)
            deleted = self._delete_stale(conn, prepared, day, load_data=used == "load_data") if existing else 0
            after = max_segment_of(prepared) if watermark is None else watermark
            day_rows = self._write_watermark(conn, t, day, after, "rebuild", self._count_day(conn, t, day))
        return LoadResult.of(
            prepared,
            used,
            started,
            day,
            deleted=deleted,
            fallback_reason=fallback,
            watermark_before=before,
            watermark=after,
            day_rows=day_rows,
        )

    def read_partition(
        self,
        t: Table,
        day: date | str,
        columns: list[str] | None = None,
        *,
        segments: tuple[int | None, int | None] | None = None,
        within: tuple[int, int] | None = None,
    ) -> pd.DataFrame:
        """The rows of one UTC day (loader columns, in the table's order), as Python values.

        ``segments=(after, upto)`` keeps rows with ``after < segment <= upto`` (either bound may be
        None) plus rows without a segment: what one per-batch load wrote. ``within=(lo, hi)`` keeps
        rows whose partition column (a time) is in ``[lo, hi)``, served by the same index as the day.
        """
        cols = columns or [c for c in t.names if c in self.columns(t.name)]
        where, params = self._day_where(t, day, within=within)
        sql = f"SELECT {', '.join(cols)} FROM {t.name} WHERE {where}"
        if segments is not None and t.has_segments:
            ph = self._placeholder()
            after, upto = segments
            bounds = [f"segment > {ph}"] * (after is not None) + [f"segment <= {ph}"] * (upto is not None)
            if bounds:
                # Two selects, not "segment IS NULL OR (...)": each one can use the segment index, so
                # a batch's rows are found without scanning the whole day.
                batch = (*params, *(b for b in (after, upto) if b is not None))
                sql = f"{sql} AND {' AND '.join(bounds)} UNION ALL {sql} AND segment IS NULL"
                params = (*batch, *params)
        with self.connect() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql, params)
                rows = cur.fetchall()
            finally:
                cur.close()
        return pd.DataFrame.from_records(list(rows), columns=cols)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement and return its rows (for checks and tests)."""
        with self.connect() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql, params)
                return [tuple(r) for r in cur.fetchall()]
            finally:
                cur.close()

    # -- internals ------------------------------------------------------------------------------

    def _read_watermark(self, conn: Any, t: Table, day: date | str, *, lock: bool) -> int | None:
        return self._watermark_row(conn, t, day, lock=lock)[0]

    def _watermark_row(self, conn: Any, t: Table, day: date | str, *, lock: bool) -> tuple[int | None, int | None]:
        """The day's load watermark and the rows the last load recorded (None, None: no load yet)."""
        ph = self._placeholder()
        # FOR UPDATE: concurrent loads of the same (table, day) queue here (SQLite's BEGIN IMMEDIATE
        # already serialises writers). A missing row locks the gap, which serves the same purpose.
        suffix = " FOR UPDATE" if lock and self.dialect == "mysql" else ""
        cur = conn.cursor()
        try:
            cur.execute(
                f"SELECT segment, rows_loaded FROM {LOAD_WATERMARKS.name} "
                f"WHERE table_name = {ph} AND day = {ph}{suffix}",
                (t.name, day_text(day)),
            )
            row = cur.fetchone()
        finally:
            cur.close()
        if row is None:
            return None, None
        return (None if row[0] is None else int(row[0])), int(row[1])

    def _write_watermark(
        self, conn: Any, t: Table, day: date | str, segment: int | None, mode: str, day_rows: int
    ) -> int:
        """Record the day's load watermark with the rows the day holds now (``day_rows``); return that count."""
        row = {
            "table_name": t.name,
            "day": day_text(day),
            "segment": segment,
            "mode": mode,
            "rows_loaded": day_rows,
            "loaded_ms": int(time.time() * 1000),
        }
        frame = pd.DataFrame([row]).astype({"segment": "Int64"})
        self._insert_batches(conn, prepare(LOAD_WATERMARKS, frame), 1, upsert=True)
        return day_rows

    def _prepare(self, t: Table, frame: pd.DataFrame, validate: bool) -> Prepared:
        return prepare(t, frame, check=validate)

    def _begin(self, conn: Any) -> None:
        if self.dialect == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
        else:
            conn.begin()

    def _placeholder(self) -> str:
        return "?" if self.dialect == "sqlite" else "%s"

    def _upsert_sql(self, prepared: Prepared, into: str | None = None, *, upsert: bool = True) -> str:
        t = prepared.table
        cols = prepared.columns
        ph = ", ".join([self._placeholder()] * len(cols))
        if not upsert:
            return f"INSERT INTO {into or t.name} ({', '.join(cols)}) VALUES ({ph})"
        values = [c for c in cols if c not in t.key]
        if self.dialect == "sqlite":
            update = ", ".join(f"{c} = excluded.{c}" for c in values) if values else None
            tail = f"DO UPDATE SET {update}" if update else "DO NOTHING"
            return f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES ({ph}) ON CONFLICT ({', '.join(t.key)}) {tail}"
        update = ", ".join(f"{c} = VALUES({c})" for c in (values or list(t.key[:1])))
        return f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES ({ph}) ON DUPLICATE KEY UPDATE {update}"

    def _insert_batches(
        self, conn: Any, prepared: Prepared, batch_rows: int, *, upsert: bool, into: str | None = None
    ) -> None:
        """Batched INSERTs of ``prepared`` (upserts on the natural key with ``upsert``) into its table or ``into``."""
        if not prepared.num_rows:
            return
        sql = self._upsert_sql(prepared, into, upsert=upsert)
        columns = prepared.text_columns()
        n = prepared.num_rows
        cur = conn.cursor()
        if self.dialect == "mysql":
            cur.max_stmt_length = _MAX_STMT_BYTES
        try:
            for start in range(0, n, batch_rows):
                stop = min(n, start + batch_rows)
                rows = list(zip(*(c[start:stop] for c in columns), strict=True))
                try:
                    cur.executemany(sql, rows)
                except Exception as exc:
                    raise _BatchFailed(exc, start) from exc
        finally:
            cur.close()

    def _load_data(self, conn: Any, prepared: Prepared, into: str | None = None) -> None:
        """``LOAD DATA LOCAL INFILE … REPLACE`` of a tab-separated file built with Arrow kernels (into its table)."""
        if not prepared.num_rows:
            return
        t = prepared.table
        fd, path = tempfile.mkstemp(prefix=f"{t.name}_", suffix=".tsv")
        try:
            with os.fdopen(fd, "wb") as fh:
                _write_tsv(fh, prepared)
            sql = (
                f"LOAD DATA LOCAL INFILE %s REPLACE INTO TABLE {into or t.name} CHARACTER SET utf8mb4 "
                "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
                f"({', '.join(prepared.columns)})"
            )
            with conn.cursor() as cur:
                try:
                    cur.execute(sql, (path,))
                except Exception as exc:
                    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
                    if code in _LOCAL_INFILE_REFUSED:
                        raise _LocalInfileRefused(
                            f"LOAD DATA LOCAL INFILE refused by the {'server' if code != 2068 else 'client'} "
                            f"({exc.args[-1]}); enable local_infile on the server (SET GLOBAL local_infile=1) "
                            "for faster backfills"
                        ) from None
                    raise _BatchFailed(exc, 0) from exc
                # LOCAL turns data errors into warnings (the server cannot stop the upload): treat any
                # warning as a failure so nothing truncated is committed.
                cur.execute("SHOW WARNINGS LIMIT 1")
                warning = cur.fetchone()
                if warning:
                    raise _BatchFailed(RuntimeError(f"{warning[1]}: {warning[2]}"), 0)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _day_where(
        self, t: Table, day: date | str, alias: str = "", within: tuple[int, int] | None = None
    ) -> tuple[str, tuple[Any, ...]]:
        ph = self._placeholder()
        col = f"{alias}.{t.partition}" if alias else t.partition
        if t.column(t.partition).kind == "date":
            return f"{col} = {ph}", (day_text(day),)
        lo, hi = day_bounds_ms(day)
        if t.column(t.partition).unit == "ns":
            lo, hi = lo * 1_000_000, hi * 1_000_000
        if within is not None:
            lo, hi = max(lo, within[0]), min(hi, within[1])
        return f"{col} >= {ph} AND {col} < {ph}", (lo, hi)

    def _count_day(self, conn: Any, t: Table, day: date | str, within: tuple[int, int] | None = None) -> int:
        where, params = self._day_where(t, day, within=within)
        cur = conn.cursor()
        try:
            cur.execute(f"SELECT COUNT(*) FROM {t.name} WHERE {where}", params)
            return int(cur.fetchone()[0])
        finally:
            cur.close()

    def _delete_stale(self, conn: Any, prepared: Prepared, day: date | str, *, load_data: bool) -> int:
        """After the partition was upserted over ``day``: delete the day's rows whose key it does not have.

        Every partition row is in the day (``check_day``) with a distinct key, so the day holding exactly
        as many rows as the partition means nothing is stale: one indexed count, the common case.
        """
        t = prepared.table
        if self._count_day(conn, t, day) == prepared.num_rows:
            return 0
        keys = Prepared(t, prepared.data.select(list(t.key)))
        cols = ", ".join(f"{k} {column_type(t.column(k), self.dialect)} NOT NULL" for k in t.key)
        if self.dialect == "mysql":
            # The table's own collation, so keys compare as they do there.
            collation = _table_collation(conn, self.database, t.name) or "utf8mb4_bin"
            ddl = f"CREATE TEMPORARY TABLE {_KEEP} ({cols}, PRIMARY KEY ({', '.join(t.key)})) ENGINE=InnoDB "
            ddl += f"DEFAULT CHARSET=utf8mb4 COLLATE={collation}"
            drop = f"DROP TEMPORARY TABLE IF EXISTS {_KEEP}"
        else:
            ddl = f"CREATE TEMP TABLE {_KEEP} ({cols}, PRIMARY KEY ({', '.join(t.key)}))"
            drop = f"DROP TABLE IF EXISTS temp.{_KEEP}"
        cur = conn.cursor()
        try:
            cur.execute(ddl)
            if load_data:
                self._load_data(conn, keys, into=_KEEP)
            else:
                self._insert_batches(conn, keys, DEFAULT_BATCH_ROWS, upsert=False, into=_KEEP)
            where, params = self._day_where(t, day, alias="t")
            match = " AND ".join(f"k.{c} = t.{c}" for c in t.key)
            stale = f"{where} AND NOT EXISTS (SELECT 1 FROM {_KEEP} k WHERE {match})"
            if self.dialect == "sqlite":
                cur.execute(f"DELETE FROM {t.name} AS t WHERE {stale}", params)
                return int(cur.rowcount or 0)
            # InnoDB: find the stale keys with a plain (non-locking) read first, then delete them by primary
            # key. One DELETE with the anti-join in its WHERE took twice as long (a locking scan of the day).
            keys_of = ", ".join(f"t.{c}" for c in t.key)
            cur.execute(
                f"CREATE TEMPORARY TABLE {_STALE} ENGINE=InnoDB AS SELECT {keys_of} FROM {t.name} t WHERE {stale}",
                params,
            )
            on = " AND ".join(f"s.{c} = t.{c}" for c in t.key)
            cur.execute(f"DELETE t FROM {t.name} AS t JOIN {_STALE} s ON {on}")
            return int(cur.rowcount or 0)
        finally:
            with contextlib.suppress(Exception):  # the connection's end drops them anyway
                cur.execute(drop)
                if self.dialect == "mysql":
                    cur.execute(f"DROP TEMPORARY TABLE IF EXISTS {_STALE}")
            cur.close()

    def _load_error(self, exc: BaseException, prepared: Prepared) -> BaseException:
        if isinstance(exc, (WarehouseLoadError, WarehouseConnectionError)):
            return exc
        inner = exc.cause if isinstance(exc, _BatchFailed) else exc
        if isinstance(inner, pymysql.err.OperationalError) and inner.args and inner.args[0] in _LOCK_CONFLICTS:
            return LockConflictError(f"{prepared.table.name}: {inner.args[-1]}; rolled back, nothing written")
        if not isinstance(exc, _BatchFailed):
            if isinstance(exc, Exception) and type(exc).__module__.startswith(("pymysql", "sqlite3")):
                return WarehouseLoadError(
                    f"{prepared.table.name}: load failed and was rolled back, nothing written ({exc})"
                )
            return exc
        inner = exc.cause
        said = str(inner.args[-1]) if inner.args else str(inner)
        match = _AT_ROW.search(said)
        t = prepared.table
        # "Data too long for column 'pair' at row 3", "Out of range value for column 'price' at row 1"
        named = _FOR_COLUMN.search(said)
        column = named.group(1) if named and named.group(1) in t.names else None
        if match:
            index = exc.offset + int(match.group(1)) - 1
            if 0 <= index < prepared.num_rows:
                key = prepared.key_of(index)
                where = f" in column {column}" if column else ""
                return RowRejectedError(
                    f"{describe_row(t, key, index)}: rejected by the database{where} ({said}); the partition was "
                    "rolled back, nothing written",
                    table=t.name,
                    row=key,
                    column=column,
                )
        return WarehouseLoadError(f"{t.name}: rejected by the database ({said}); rolled back, nothing written")


class _BatchFailed(Exception):
    def __init__(self, cause: BaseException, offset: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.offset = offset


class _LocalInfileRefused(Exception):
    pass


def _rollback(conn: Any) -> None:
    with contextlib.suppress(Exception):
        if isinstance(conn, sqlite3.Connection):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        else:
            conn.rollback()


def highest_segment(a: int | None, b: int | None) -> int | None:
    """The higher of two watermarks, None counting as "nothing loaded"."""
    return b if a is None else a if b is None else max(a, b)


class _DayRows:
    """The day's row count after a load that writes only a span of it, without counting the whole day.

    A stream round adds seconds of rows to a day of millions: counting the day on every load (one
    index range scan, ~1 s per few million rows in InnoDB) would make late rounds slower than early
    ones. So the count is the one the last load recorded, minus the rows in the span the load touches
    (the partition column's range of its rows, and a replaced range) counted before it writes, plus
    the same span counted after. Exact as long as only loads change the table and a key keeps its
    time; parity recounts the whole day before it reports counts that disagree. Without a recorded
    count, or for a table partitioned by a date, the whole day is counted.
    """

    def __init__(
        self,
        warehouse: SqlWarehouse,
        conn: Any,
        t: Table,
        day: date | str,
        recorded: int | None,
        prepared: Prepared,
        within: tuple[int, int] | None = None,
    ) -> None:
        self._count = lambda span: warehouse._count_day(conn, t, day, within=span)
        self.span = _touched_span(t, prepared, within)
        self.untouched = None if recorded is None or self.span is None else recorded - self._in_span()

    def _in_span(self) -> int:
        assert self.span is not None
        return self._count(self.span) if self.span[0] < self.span[1] else 0

    def now(self) -> int:
        return self._count(None) if self.untouched is None else self.untouched + self._in_span()


def _touched_span(t: Table, prepared: Prepared, within: tuple[int, int] | None) -> tuple[int, int] | None:
    """``[lo, hi)`` of the partition column holding ``prepared``'s rows and ``within`` (None: a date column)."""
    if t.column(t.partition).kind == "date":
        return None
    lo, hi = within if within is not None else (0, 0)
    if prepared.num_rows:
        bounds = pc.min_max(prepared.data.column(t.partition).cast(pa.int64()))
        first, last = int(bounds["min"].as_py()), int(bounds["max"].as_py()) + 1
        lo, hi = (first, last) if within is None else (min(lo, first), max(hi, last))
    return lo, hi


def max_segment_of(prepared: Prepared) -> int | None:
    """The highest landing segment in a prepared batch (None for tables without segments)."""
    if "segment" not in prepared.columns or not prepared.num_rows:
        return None
    top = pc.max(prepared.data.column("segment")).as_py()
    return None if top is None else int(top)


def check_day(prepared: Prepared, day: date | str) -> None:
    """Every row of a day rebuild must belong to that day, or a re-run would not converge."""
    t = prepared.table
    col = prepared.data.column(t.partition)
    if not prepared.num_rows:
        return
    if t.column(t.partition).kind == "date":
        outside = pc.not_equal(pc.cast(col, pa.string()), day_text(day))
    else:
        lo, hi = day_bounds_ms(day)
        if t.column(t.partition).unit == "ns":
            lo, hi = lo * 1_000_000, hi * 1_000_000
        outside = pc.or_(pc.less(col, lo), pc.greater_equal(col, hi))
    if pc.any(outside).as_py():
        i = pc.index(outside, True).as_py()
        key = prepared.key_of(i)
        raise RowRejectedError(
            f"{describe_row(t, key, i)}: {t.partition}={col[i].as_py()} is outside the partition day "
            f"{day_text(day)}; nothing written",
            table=t.name,
            row=key,
            column=t.partition,
        )


_TSV_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\x00", "\\0"))
_NEEDS_ESCAPE = r"[\\\t\n\r\x00]"  # RE2 syntax


def _tsv_column(prepared: Prepared, name: str) -> pa.Array:
    col = prepared.table.column(name)
    arr = prepared.data.column(name).combine_chunks()
    if col.kind == "dec":
        return decimal_text_array(arr)
    if col.kind == "bool":
        return pc.cast(pc.cast(arr, pa.int8()), pa.string())
    if col.kind in ("str", "text"):
        # Escaping is five passes over the column; ids, pairs and JSON lists almost never need it.
        if pc.any(pc.fill_null(pc.match_substring_regex(arr, _NEEDS_ESCAPE), False)).as_py():
            for old, new in _TSV_ESCAPES:
                arr = pc.replace_substring(arr, old, new)
        return arr
    return pc.cast(arr, pa.string())


def _write_tsv(fh: Any, prepared: Prepared, chunk_rows: int = 200_000) -> None:
    """MySQL's default LOAD DATA format: tab-separated, backslash escapes, ``\\N`` for NULL.

    Lines are joined by Arrow kernels and their bytes written straight from the string buffer, so no
    Python object is made per row (it was ~4 s of a 1M-row day rebuild as ``to_pylist`` + join).
    """
    cols = [_tsv_column(prepared, n) for n in prepared.columns]
    # The line end rides on the last field (a join of all the lines with "\n" would copy them again).
    cols[-1] = pc.binary_join_element_wise(pc.fill_null(cols[-1], "\\N"), "", "\n")  # value + "\n" + ""
    for start in range(0, prepared.num_rows, chunk_rows):
        part = [c.slice(start, chunk_rows) for c in cols]
        lines = pc.binary_join_element_wise(*part, "\t", null_handling="replace", null_replacement="\\N")
        fh.write(_string_bytes(lines))


def _string_bytes(arr: pa.Array) -> memoryview:
    """The concatenated values of a (possibly sliced) string array, without copying."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    return memoryview(arr.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


# No-pad binary collations, by server: MariaDB 10.2+, then MySQL 8.0.17+ (whose utf8mb4_bin pads).
_NO_PAD_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")


def no_pad_collation(conn: Any) -> str:
    """The server's utf8mb4 collation that compares bytes without padding (``'777' <> '777 '``)."""
    cur = conn.cursor()
    try:
        cur.execute("SELECT VERSION()")
        version = str(cur.fetchone()[0])
        cur.execute(
            "SELECT collation_name FROM information_schema.collations WHERE collation_name IN (%s, %s)",
            _NO_PAD_COLLATIONS,
        )
        found = {str(r[0]).lower() for r in cur.fetchall()}
    finally:
        cur.close()
    for name in _NO_PAD_COLLATIONS:
        if name in found:
            return name
    raise WarehouseSchemaError(
        f"the MySQL server ({version}) has no no-pad binary collation ({' or '.join(_NO_PAD_COLLATIONS)}), so "
        "trade ids '777' and '777 ' would be one key: use MariaDB 10.2+ or MySQL 8.0.17+"
    )


def _table_collation(conn: Any, database: str, table_name: str) -> str | None:
    cur = conn.cursor()
    try:
        cur.execute(
            "SELECT table_collation FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (database, table_name),
        )
        row = cur.fetchone()
    finally:
        cur.close()
    return None if row is None or row[0] is None else str(row[0]).lower()


class _SqlSchema:
    """:class:`~crypto_platform.warehouse.migrations.SchemaTarget` over one DB-API connection."""

    def __init__(self, conn: Any, dialect: Dialect, database: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self.database = database

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            cur.close()

    def execute_ddl(self, sql: str) -> None:
        cur = self.conn.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()
        if self.dialect == "mysql":
            self.conn.commit()

    def existing_tables(self) -> set[str]:
        if self.dialect == "sqlite":
            rows = self._rows("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = self._rows(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (self.database,)
            )
        return {str(r[0]).lower() for r in rows}

    def existing_columns(self, table_name: str) -> set[str]:
        if self.dialect == "sqlite":
            rows = self._rows(f"SELECT name FROM pragma_table_xinfo('{table_name}')")
        else:
            rows = self._rows(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (self.database, table_name),
            )
        return {str(r[0]).lower() for r in rows}

    def text_collation(self) -> str:
        return no_pad_collation(self.conn)

    def table_collation(self, table_name: str) -> str | None:
        return _table_collation(self.conn, self.database, table_name)

    def existing_indexes(self, table_name: str) -> set[str]:
        if self.dialect == "sqlite":
            rows = self._rows(f"SELECT name FROM pragma_index_list('{table_name}')")
        else:
            rows = self._rows(
                "SELECT DISTINCT index_name FROM information_schema.statistics WHERE table_schema = %s "
                "AND table_name = %s",
                (self.database, table_name),
            )
        return {str(r[0]).lower() for r in rows}

    def applied_versions(self) -> set[int]:
        return {int(r[0]) for r in self._rows(f"SELECT version FROM {VERSION_TABLE}")}

    def record_version(self, version: int, description: str) -> None:
        ph = "?" if self.dialect == "sqlite" else "%s"
        cur = self.conn.cursor()
        try:
            cur.execute(
                f"INSERT INTO {VERSION_TABLE} (version, description) VALUES ({ph}, {ph})", (version, description)
            )
        finally:
            cur.close()
        if self.dialect == "mysql":
            self.conn.commit()


def sql_warehouse(url: str | Secret, **kwargs: Any) -> SqlWarehouse:
    """The SQL warehouse for a ``MYSQL_URL`` (``settings.mysql_url``) or ``SqlTablesResource.url``."""
    return SqlWarehouse(url, **kwargs)


__all__ = ["DEFAULT_BATCH_ROWS", "LoadResult", "SqlWarehouse", "sql_warehouse"]
