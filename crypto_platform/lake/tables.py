"""Delta Lake table I/O: one Delta table per lake asset under one root, partitioned by UTC day.

Layout: ``<root>/<asset>/`` is a Delta table (``_delta_log/`` plus Parquet files in
``date=<YYYY-MM-DD>/``); ``root`` is a local path or an object-store URL (``s3://``, ``gs://``,
``az://``, as delta-rs supports) with its storage options. Every write is one Delta commit, so a
reader (this code, DuckDB, polars, Spark, Trino, Snowflake) sees a commit whole or not at all, and a
crashed writer leaves the table as it was.

The writes the platform needs, each one commit:

- :meth:`DeltaLake.append` adds rows (a stream batch's new rows), optionally carrying application
  transactions: Delta's idempotent-writer ``txn`` action, ``(app id, version)``, committed in the
  same log entry as the rows. The landing-segment watermark lives there, so it can never claim rows
  that are not in the table nor miss rows that are;
- :meth:`DeltaLake.replace` replaces the rows of a day that match a predicate (a whole day for a
  rebuild, a few minutes of bars): Delta's predicate overwrite, which refuses rows outside it;
- :meth:`DeltaLake.insert_new` inserts the rows whose key is not in the table yet (a merge whose
  predicate carries a time bound, so only the files that can hold those keys are read).

Reads (:meth:`DeltaLake.read`) select files by the partition and then by the files' min/max
statistics, and filter rows exactly: a stream batch looks up the rows its keys can collide with by
their event-time range, never by reading the day.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

from crypto_platform.days import MINUTE_MS
from crypto_platform.lake.schemas import DATE_COLUMN, ORDER, SCHEMAS

Scalar = int | str | bool
# A whole-day replace of at least this many rows is written as Parquet files in parallel
# (:meth:`DeltaLake._replace_day_in_parts`); smaller days are not worth more than one file.
PARALLEL_WRITE_ROWS = 1_000_000
# Tables whose rows a stream round replaces in place, a few minutes at a time: their writes roll over
# to a new file at this size, so a large write (a rebuild of today, a catch-up round) leaves files of
# a short time range each. A predicate overwrite rewrites every file holding a replaced row: with the
# day in one file, each later round would rewrite the whole day, and the copies that read the files a
# round added would take in the whole day too.
FILE_BYTES: dict[str, int] = {"minute_bars": 256 * 1024}
PARALLEL_WRITE_THREADS = max(1, min(4, os.cpu_count() or 1))
ROW_GROUP_ROWS = 1 << 20  # few, large row groups (as delta-rs writes them)
STATS_TEXT_CHARS = 32


def _sql(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class Predicate:
    """A row filter in two spellings: SQL for Delta (file pruning, predicate overwrite) and Arrow (exact rows)."""

    sql: str
    arrow: ds.Expression

    def __and__(self, other: Predicate) -> Predicate:
        return Predicate(f"({self.sql}) AND ({other.sql})", self.arrow & other.arrow)

    def __or__(self, other: Predicate) -> Predicate:
        return Predicate(f"({self.sql}) OR ({other.sql})", self.arrow | other.arrow)


def equals(column: str, value: Scalar) -> Predicate:
    return Predicate(f"{column} = {_sql(value)}", ds.field(column) == value)


def between(column: str, lo: int, hi: int) -> Predicate:
    """``lo <= column <= hi``."""
    return Predicate(
        f"{column} >= {int(lo)} AND {column} <= {int(hi)}", (ds.field(column) >= lo) & (ds.field(column) <= hi)
    )


def greater(column: str, value: int) -> Predicate:
    return Predicate(f"{column} > {int(value)}", ds.field(column) > value)


def newer_than(column: str, value: int | None) -> Predicate | None:
    """Rows whose ``column`` is above ``value`` or NULL (a row a REST repair added has no segment); None: all."""
    if value is None:
        return None
    return Predicate(
        f"({column} > {int(value)} OR {column} IS NULL)", (ds.field(column) > value) | ds.field(column).is_null()
    )


def is_false(column: str) -> Predicate:
    return Predicate(f"{column} = false", ds.field(column) == False)  # noqa: E712 (an Arrow expression)


def any_of(predicates: Iterable[Predicate]) -> Predicate:
    items = list(predicates)
    if not items:
        raise ValueError("any_of() needs at least one predicate")
    out = items[0]
    for p in items[1:]:
        out = out | p
    return out


def on_day(day: str) -> Predicate:
    return equals(DATE_COLUMN, day)


def time_ranges(values: pa.ChunkedArray | pa.Array, gap: int = MINUTE_MS) -> list[tuple[int, int]]:
    """The distinct ``values`` as few ``[lo, hi]`` ranges: a new range wherever two differ by more than ``gap``.

    A batch's event times are mostly a few seconds wide, but a late re-sent trade can be hours old:
    one range per cluster keeps the lookup to the files of those times instead of everything between.
    """

    uniq = np.unique(pc.drop_null(values).to_numpy(zero_copy_only=False))
    if not len(uniq):
        return []
    breaks = np.nonzero(np.diff(uniq) > gap)[0]
    starts = np.concatenate([[uniq[0]], uniq[breaks + 1]])
    ends = np.concatenate([uniq[breaks], [uniq[-1]]])
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def in_ranges(column: str, ranges: Sequence[tuple[int, int]]) -> Predicate:
    return any_of(between(column, lo, hi) for lo, hi in ranges)


def with_date(table: pa.Table, day: str) -> pa.Table:
    """``table`` with the partition column set to ``day``."""
    if DATE_COLUMN in table.column_names:
        table = table.drop_columns([DATE_COLUMN])
    return table.append_column(DATE_COLUMN, pa.repeat(pa.scalar(day, pa.string()), table.num_rows))


def sort_rows(name: str, table: pa.Table) -> pa.Table:
    order = ORDER.get(name)
    if not order or table.num_rows < 2:
        return table
    return table.take(pc.sort_indices(table, [(c, "ascending") for c in order]))


def same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal types, list item names aside (Delta reads a list's item back as ``element``)."""
    if a.equals(b):
        return True
    if pa.types.is_list(a) and pa.types.is_list(b):
        return same_type(a.value_type, b.value_type)
    if pa.types.is_struct(a) and pa.types.is_struct(b) and a.num_fields == b.num_fields:
        return all(x.name == y.name and same_type(x.type, y.type) for x, y in zip(a, b, strict=True))
    return False


@dataclass(frozen=True)
class DeltaLake:
    """The lake's Delta tables under ``root`` (a path or URL)."""

    root: str
    storage_options: Mapping[str, str] = field(default_factory=dict)

    def uri(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _filesystem(self, name: str) -> pafs.FileSystem | None:
        """Arrow's own filesystem for a local table: its reads stay in C++ threads (delta-rs's default
        handler is Python code called back from Arrow's I/O threads). Object stores keep that handler,
        which takes the storage options."""
        if "://" in self.root:
            return None
        return pafs.SubTreeFileSystem(self.uri(name), pafs.LocalFileSystem())

    def _options(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None

    def open(self, name: str, version: int | None = None) -> DeltaTable | None:
        """The table (at ``version``, default the latest), or None when nothing was ever written to it."""
        try:
            return DeltaTable(self.uri(name), version=version, storage_options=self._options())
        except TableNotFoundError:
            return None

    def watermark(self, name: str, app_id: str) -> int | None:
        """The version of application transaction ``app_id`` committed to the table (None: never)."""
        table = self.open(name)
        return None if table is None else table.transaction_version(app_id)

    def read(
        self,
        name: str,
        day: str | None,
        where: Predicate | None = None,
        columns: Sequence[str] | None = None,
        ordered: bool = True,
        version: int | None = None,
    ) -> pa.Table | None:
        """Rows of ``day`` (every day when None) matching ``where``; None when the table does not exist.

        ``version``: read the table as it was at that version (a count and a read that must agree).

        Files are chosen by the partition and by their min/max statistics; rows are then filtered
        exactly. The result has the table's schema (without the partition column) or ``columns``,
        in the table's row order (``ordered``, when the order columns are read).
        """
        table = self.open(name, version)
        if table is None:
            return None
        condition = on_day(day) if day is not None else None
        if where is not None:
            condition = where if condition is None else condition & where
        dataset = table.to_pyarrow_dataset(
            file_pruning_predicate=condition.sql if condition is not None else None, filesystem=self._filesystem(name)
        )
        schema = SCHEMAS.get(name)
        wanted = list(columns) if columns is not None else (schema.names if schema is not None else None)
        if wanted is None:
            wanted = [n for n in dataset.schema.names if n != DATE_COLUMN]
        rows = dataset.to_table(columns=wanted, filter=condition.arrow if condition is not None else None)
        if schema is not None:
            rows = rows.cast(pa.schema([schema.field(n) for n in wanted]))
        if ordered and set(ORDER.get(name, ())) <= set(wanted):
            rows = sort_rows(name, rows)
        return rows

    def version(self, name: str) -> int | None:
        """The table's current version (None: the table does not exist)."""
        table = self.open(name)
        return None if table is None else table.version()

    def changed_since(self, name: str, day: str, version: int | None) -> tuple[pa.Table | None, int | None]:
        """Rows of ``day`` in the data files added after table ``version``, and the version read.

        What a copy must take in since it last read the table at ``version``: a predicate overwrite or
        a merge rewrites only the files holding the rows it changed, so the new files hold every
        changed row (and a few unchanged neighbours, which an upsert leaves as they are), never the
        day. ``version`` None, or one the log no longer has, gives the whole day.
        """
        table = self.open(name)
        if table is None:
            return None, None
        now = table.version()
        condition = on_day(day)
        paths = None
        if version is not None:
            try:
                before = DeltaTable(self.uri(name), version=version, storage_options=self._options())
            except Exception:  # the log no longer reaches back that far: take the whole day
                before = None
            if before is not None:
                old = set(before.file_uris(file_pruning_predicate=condition.sql))
                paths = [u for u in table.file_uris(file_pruning_predicate=condition.sql) if u not in old]
        return self.read_files(name, day, paths, table=table), now

    def read_files(
        self,
        name: str,
        day: str,
        paths: Sequence[str] | None,
        columns: Sequence[str] | None = None,
        table: DeltaTable | None = None,
    ) -> pa.Table:
        """The rows of ``day`` in the data files ``paths`` (URIs or table-relative paths; None: every file)."""
        table = table or self.open(name)
        if table is None:
            raise ValueError(f"lake table {name} does not exist")
        condition = on_day(day)
        dataset = table.to_pyarrow_dataset(file_pruning_predicate=condition.sql, filesystem=self._filesystem(name))
        if paths is not None:
            fragments = [f for f in dataset.get_fragments() if any(p.endswith(f.path) for p in paths)]
            dataset = ds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)
        schema = SCHEMAS.get(name)
        wanted = list(columns) if columns is not None else (schema.names if schema is not None else None)
        if wanted is None:
            wanted = [n for n in dataset.schema.names if n != DATE_COLUMN]
        rows = dataset.to_table(columns=wanted, filter=condition.arrow)
        if schema is not None:
            rows = rows.cast(pa.schema([schema.field(n) for n in wanted]))
        return sort_rows(name, rows) if set(ORDER.get(name, ())) <= set(wanted) else rows

    def file_stats(self, name: str, day: str, version: int | None = None) -> pa.Table | None:
        """One row per data file of ``day``: path, row count and per-column min/max/null counts (the log's)."""
        table = self.open(name, version)
        if table is None:
            return None
        actions = pa.table(table.get_add_actions(flatten=True))
        if not actions.num_rows:
            return actions
        return actions.filter(pc.equal(actions[f"partition.{DATE_COLUMN}"], day))

    def files(self, name: str, day: str, where: Predicate | None = None) -> list[str]:
        """The data files a :meth:`read` of ``day`` and ``where`` opens (partition and statistics pruning)."""
        table = self.open(name)
        if table is None:
            return []
        condition = on_day(day) if where is None else on_day(day) & where
        return list(table.file_uris(file_pruning_predicate=condition.sql))

    def count(self, name: str, day: str, version: int | None = None) -> int:
        """Rows of ``day`` (at ``version``), from the commit log's file statistics: no data file is read."""
        mine = self.file_stats(name, day, version)
        if mine is None or not mine.num_rows:
            return 0
        return int(pc.sum(mine["num_records"]).as_py() or 0)

    def days(self, name: str) -> list[str]:
        """The days that have rows, oldest first."""
        table = self.open(name)
        if table is None:
            return []
        return sorted({p[DATE_COLUMN] for p in table.partitions()})

    def append(
        self,
        name: str,
        rows: pa.Table,
        watermarks: Mapping[str, int] | None = None,
        base: DeltaTable | None = None,
    ) -> None:
        """Add ``rows`` (with their ``date``) in one commit that also carries ``watermarks`` (app id -> version).

        ``base``: the table as it was read when the rows were decided (with the watermark). The commit
        is made against that version, so Delta's conflict check refuses it when another writer has
        committed the same application transaction since: two writers that both found a segment new
        cannot both append it. Without ``base`` the commit goes on top of whatever is there.
        """
        target: DeltaTable | str = base if base is not None else self.uri(name)
        write_deltalake(
            target,
            self._conform(name, rows),
            partition_by=[DATE_COLUMN],
            mode="append",
            storage_options=None if base is not None else self._options(),
            commit_properties=_commit(watermarks),
            target_file_size=FILE_BYTES.get(name),
        )

    def replace(
        self,
        name: str,
        day: str,
        rows: pa.Table,
        where: Predicate | None = None,
        watermarks: Mapping[str, int] | None = None,
    ) -> None:
        """Replace the rows of ``day`` matching ``where`` (the whole day when None) with ``rows``, in one commit.

        Every row of ``rows`` must match; Delta refuses the commit otherwise.
        """
        condition = on_day(day) if where is None else on_day(day) & where
        if where is None and rows.num_rows >= PARALLEL_WRITE_ROWS and "://" not in self.root:
            return self._replace_day_in_parts(name, day, rows, watermarks)
        if self.open(name) is None:  # a first write: nothing to replace
            return self.append(name, with_date(rows, day), watermarks)
        write_deltalake(
            self.uri(name),
            self._conform(name, with_date(rows, day)),
            partition_by=[DATE_COLUMN],
            mode="overwrite",
            predicate=condition.sql,
            storage_options=self._options(),
            commit_properties=_commit(watermarks),
            target_file_size=FILE_BYTES.get(name),
        )

    def _replace_day_in_parts(self, name: str, day: str, rows: pa.Table, watermarks: Mapping[str, int] | None) -> None:
        """:meth:`replace` of a whole, large day: Parquet files written side by side, then one commit.

        delta-rs encodes a day's Parquet on one thread (about 2 s for the 4M trades of a whole
        market's day, most of a history load), so a large day is cut into row ranges written by
        Arrow's Parquet writer on one thread each (both cores), and the files are committed in one
        Delta commit: an overwrite of the day's partition, carrying ``watermarks`` like any write.
        The rows stay in their order, so each file covers its own slice of the table's leading
        column and its statistics (min/max, per file and per row group) still prune reads. Files
        of a commit that fails are left unreferenced (vacuum removes them), as delta-rs leaves them.
        """
        full = self._conform(name, with_date(rows, day))
        data = full.drop_columns([DATE_COLUMN])
        parts = max(1, min(PARALLEL_WRITE_THREADS, rows.num_rows // (PARALLEL_WRITE_ROWS // 2)))
        step = -(-data.num_rows // parts)
        folder = f"{DATE_COLUMN}={day}"
        table_dir = Path(self.uri(name))
        (table_dir / folder).mkdir(parents=True, exist_ok=True)

        ranged = [f.name for f in data.schema if _ranged(f.type)]  # min/max worth keeping (not decimals)

        def write(i: int) -> AddAction:
            part = data.slice(i * step, step)
            relative = f"{folder}/part-{i:05d}-{uuid.uuid4()}-c000.snappy.parquet"
            written: list[pq.FileMetaData] = []
            pq.write_table(
                part,
                table_dir / relative,
                compression="snappy",
                row_group_size=ROW_GROUP_ROWS,
                write_statistics=ranged,
                metadata_collector=written,
            )
            return AddAction(
                path=relative,
                size=(table_dir / relative).stat().st_size,
                partition_values={DATE_COLUMN: day},
                modification_time=int(time.time() * 1000),
                data_change=True,
                stats=json.dumps(file_stats(part, written[0])),
            )

        with ThreadPoolExecutor(parts) as pool:
            actions = list(pool.map(write, range(parts)))
        existing = self.open(name)
        if existing is None:
            create_table_with_add_actions(
                self.uri(name),
                DeltaSchema.from_arrow(full.schema),
                actions,
                mode="error",
                partition_by=[DATE_COLUMN],
                commit_properties=_commit(watermarks),
            )
            return
        existing.create_write_transaction(
            actions,  # type: ignore[arg-type]
            mode="overwrite",
            schema=existing.schema(),
            partition_by=[DATE_COLUMN],
            partition_filters=[(DATE_COLUMN, "=", day)],
            commit_properties=_commit(watermarks),
        )

    def insert_new(
        self, name: str, day: str, rows: pa.Table, key: Sequence[str], column: str, ranges: Sequence[tuple[int, int]]
    ) -> int:
        """Insert the ``rows`` of ``day`` whose ``key`` is not in the table; returns how many were inserted.

        Every row that can share a key with ``rows`` has its ``column`` in ``ranges`` (e.g. a trade's
        event time is part of what identifies it): that bound is what lets Delta skip every other file.
        """
        return self._merge(name, day, rows, key, column, ranges, update=False)

    def upsert(
        self, name: str, day: str, rows: pa.Table, key: Sequence[str], column: str, ranges: Sequence[tuple[int, int]]
    ) -> int:
        """Replace the table's rows that share a ``key`` with ``rows`` and insert the others (bounded as above).

        Only the files whose statistics can hold ``ranges`` are read, and only those with a matched row
        are rewritten. Returns the rows updated plus inserted.
        """
        return self._merge(name, day, rows, key, column, ranges, update=True)

    def _merge(
        self,
        name: str,
        day: str,
        rows: pa.Table,
        key: Sequence[str],
        column: str,
        ranges: Sequence[tuple[int, int]],
        update: bool,
    ) -> int:
        if rows.num_rows == 0:
            return 0
        table = self.open(name)
        if table is None:
            self.append(name, with_date(rows, day))
            return rows.num_rows
        on = " AND ".join(f"t.{k} = s.{k}" for k in key)
        bound = " OR ".join(f"(t.{column} >= {int(lo)} AND t.{column} <= {int(hi)})" for lo, hi in ranges)
        predicate = f"t.{DATE_COLUMN} = {_sql(day)} AND s.{DATE_COLUMN} = t.{DATE_COLUMN} AND {on} AND ({bound})"
        merger = table.merge(self._conform(name, with_date(rows, day)), predicate, source_alias="s", target_alias="t")
        if update:
            merger = merger.when_matched_update_all()
        metrics = merger.when_not_matched_insert_all().execute()
        return int(metrics.get("num_target_rows_inserted", 0)) + int(metrics.get("num_target_rows_updated", 0))

    def _conform(self, name: str, rows: pa.Table) -> pa.Table:
        """``rows`` in the table's column order; a missing column or another type is refused, naming it."""
        schema = SCHEMAS.get(name)
        if schema is None:
            return rows
        full = schema.append(pa.field(DATE_COLUMN, pa.string()))
        missing = [n for n in full.names if n not in rows.column_names]
        wrong = [
            f"{f.name} is {rows.schema.field(f.name).type}, expected {f.type}"
            for f in full
            if f.name in rows.column_names and not same_type(rows.schema.field(f.name).type, f.type)
        ]
        if missing or wrong:
            raise ValueError(
                f"rows for lake table {name} do not have its schema "
                f"({'; '.join([*(f'{m} is missing' for m in missing), *wrong])}): "
                "build them with crypto_platform.lake.schemas"
            )
        return rows.select(full.names).cast(full)


def _ranged(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_string(kind)


def file_stats(rows: pa.Table, written: pq.FileMetaData) -> dict[str, object]:
    """Delta's per-file statistics of ``rows``: row count, null counts, and min/max of integers and short texts.

    Taken from the statistics the Parquet writer computed for each row group (``written``), not
    computed again. What pruning uses here (event times, pairs, exchanges). Decimals are left out
    rather than rounded into a JSON float that could lie outside the true range; a column without
    min/max is never pruned, which is always correct.
    """
    low: dict[str, object] = {}
    high: dict[str, object] = {}
    nulls = {f.name: rows[f.name].null_count for f in rows.schema}
    for i, field_ in enumerate(rows.schema):
        if not _ranged(field_.type) or rows[field_.name].null_count == rows.num_rows:
            continue
        found = [written.row_group(g).column(i).statistics for g in range(written.num_row_groups)]
        if not found or any(s is None or not s.has_min_max for s in found):
            continue
        lo, hi = min(s.min for s in found), max(s.max for s in found)
        if pa.types.is_string(field_.type) and max(len(lo), len(hi)) > STATS_TEXT_CHARS:
            continue  # delta-rs truncates long texts; leaving them out needs no care for upper bounds
        low[field_.name], high[field_.name] = lo, hi
    return {"numRecords": rows.num_rows, "minValues": low, "maxValues": high, "nullCount": nulls}


def _commit(watermarks: Mapping[str, int] | None) -> CommitProperties | None:
    if not watermarks:
        return None
    return CommitProperties(app_transactions=[Transaction(app_id, int(v)) for app_id, v in watermarks.items()])
