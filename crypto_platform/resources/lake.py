"""The lake: Parquet partitions under ``CRYPTO_DATA_DIR/lake`` that analysts can also read directly.

Layout ``lake/<asset>/date=<YYYY-MM-DD>/part.parquet`` (hive style, so DuckDB and pandas see a
``date`` column). A partition is replaced atomically: written to a temporary file beside it and
renamed over the old one, so a reader never sees half a file and a crashed run leaves the old one.

Two things make incremental builds safe across runs:

- **the segment watermark**: a partition built from the landing log records, in its own Parquet
  metadata, the highest landing segment it has taken in (``segments_through``). It is written in
  the same atomic rename as the rows, so it can never claim rows that are not there. A stream-sensor
  run builds the segments after the watermark up to its own last segment, so a run that failed (or
  never ran) is caught up by the next one instead of leaving its segments out;
- **the partition lock**: read-modify-write of a partition happens under an exclusive ``flock`` on
  ``<asset>/date=<day>/.lock``, so a manual rebuild and a sensor run of the same day cannot
  interleave and drop each other's rows.

Partitions read or written are remembered per process (:class:`RecentPartitions`): a
``stream_batch`` run reads the same day of ``raw_trades`` in six steps (its merge, its checks,
``minute_bars``, the alerts, two warehouse copies), all in one process, and late in a busy day
each read costs as much as a small batch's whole work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from crypto_platform.settings import DEFAULT_LAKE_CACHE_MB, Settings

_THROUGH = b"crypto.segments_through"
_WRITE_ID = b"crypto.write_id"


class RecentPartitions:
    """Tables this process read or wrote, kept while their file is unchanged, the least recently used dropped first.

    A partition file is only ever replaced by a rename, never rewritten in place, and every write
    stamps a new id into the file's metadata: a file is taken to be the one read when its (device,
    inode, size, mtime) are unchanged and its footer still carries the same id (a freed inode can
    be reused within one mtime tick; the id cannot). Files without an id are read every time.
    Arrow tables are immutable, so one table can be handed to every reader. A table written is kept
    as written when the file's schema is exactly its own (it may differ from a read in chunks only).
    """

    def __init__(self) -> None:
        self._tables: OrderedDict[Path, tuple[tuple[int, ...], pa.Table]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def read(self, path: Path, budget_bytes: int) -> pa.Table | None:
        """The partition at ``path`` (None if there is none), from memory when the file is unchanged.

        ``budget_bytes``: what the tables kept may hold in all (0: keep nothing).
        """
        try:
            signature = _signature(path)
        except FileNotFoundError:
            return None
        with self._lock:
            known = self._tables.get(path)
        if known is not None and known[0] == signature and _same_write(path, known[1]):
            with self._lock:
                if path in self._tables:
                    self._tables.move_to_end(path)
            return known[1]
        table = pq.read_table(path)
        self._keep(path, signature, table, budget_bytes)
        return table

    def remember(self, path: Path, table: pa.Table, budget_bytes: int) -> None:
        """Keep ``table``, just written to ``path``: the next step reads it from memory, not from disk.

        Only when the file reads back with exactly this schema (types and metadata), as every type
        the lake uses does (tested); should one not round-trip, its table is read from disk instead.
        """
        signature = _signature(path)
        if not pq.read_schema(path).equals(table.schema, check_metadata=True):
            return
        self._keep(path, signature, table, budget_bytes)

    def _keep(self, path: Path, signature: tuple[int, ...], table: pa.Table, budget_bytes: int) -> None:
        with self._lock:
            self._forget(path)
            if _write_id(table.schema) is not None and table.nbytes <= budget_bytes:
                self._tables[path] = (signature, table)
                self._bytes += table.nbytes
            while self._bytes > budget_bytes:
                self._forget(next(iter(self._tables)))

    def _forget(self, path: Path) -> None:
        known = self._tables.pop(path, None)
        if known is not None:
            self._bytes -= known[1].nbytes


def _signature(path: Path) -> tuple[int, ...]:
    """What tells one file at ``path`` from its replacement, short of the write id."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _write_id(schema: pa.Schema) -> bytes | None:
    return (schema.metadata or {}).get(_WRITE_ID)


def _same_write(path: Path, table: pa.Table) -> bool:
    """Whether the file at ``path`` is still the write ``table`` was read from (its footer's id)."""
    try:
        return _write_id(pq.read_schema(path)) == _write_id(table.schema)
    except (FileNotFoundError, pa.ArrowInvalid):  # replaced meanwhile
        return False


RECENT = RecentPartitions()


def segments_through(table: pa.Table | None) -> int | None:
    """The landing-segment watermark stored with a partition (None: not recorded, or no partition)."""
    meta = table.schema.metadata if table is not None else None
    if not meta or _THROUGH not in meta:
        return None
    return int(meta[_THROUGH])


class LakeResource(dg.ConfigurableResource):
    """Where partitions live, and the one way they are written."""

    root: str
    # CRYPTO_LAKE_CACHE_MB: partitions kept in memory between the steps of a run (0: none)
    cache_mb: int = DEFAULT_LAKE_CACHE_MB

    def partition_path(self, asset: str, day: str) -> Path:
        return Path(self.root) / asset / f"date={day}" / "part.parquet"

    def write_partition(self, asset: str, day: str, table: pa.Table, through: int | None = None) -> Path:
        """Replace the partition with ``table``; ``through`` records its landing-segment watermark."""
        path = self.partition_path(asset, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in (table.schema.metadata or {}).items() if k not in (_THROUGH, _WRITE_ID)}
        meta[_WRITE_ID] = uuid.uuid4().hex.encode()
        if through is not None:
            meta[_THROUGH] = str(int(through)).encode()
        table = table.replace_schema_metadata(meta)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        RECENT.remember(path, table, self.cache_mb * 1024 * 1024)
        return path

    def read_partition(self, asset: str, day: str) -> pa.Table | None:
        return RECENT.read(self.partition_path(asset, day), self.cache_mb * 1024 * 1024)

    @contextlib.contextmanager
    def locked(self, asset: str, day: str) -> Iterator[None]:
        """Hold the partition's exclusive lock (blocking) for a read-modify-write."""
        lock = self.partition_path(asset, day).with_name(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def build_lake_resource(settings: Settings) -> LakeResource:
    return LakeResource(root=str(settings.lake_dir), cache_mb=settings.lake_cache_mb)
