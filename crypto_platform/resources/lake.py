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
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from crypto_platform.settings import Settings

_THROUGH = b"crypto.segments_through"


def segments_through(table: pa.Table | None) -> int | None:
    """The landing-segment watermark stored with a partition (None: not recorded, or no partition)."""
    meta = table.schema.metadata if table is not None else None
    if not meta or _THROUGH not in meta:
        return None
    return int(meta[_THROUGH])


class LakeResource(dg.ConfigurableResource):
    """Where partitions live, and the one way they are written."""

    root: str

    def partition_path(self, asset: str, day: str) -> Path:
        return Path(self.root) / asset / f"date={day}" / "part.parquet"

    def write_partition(self, asset: str, day: str, table: pa.Table, through: int | None = None) -> Path:
        """Replace the partition with ``table``; ``through`` records its landing-segment watermark."""
        path = self.partition_path(asset, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != _THROUGH}
        if through is not None:
            meta[_THROUGH] = str(int(through)).encode()
        table = table.replace_schema_metadata(meta or None)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    def read_partition(self, asset: str, day: str) -> pa.Table | None:
        path = self.partition_path(asset, day)
        return pq.read_table(path) if path.exists() else None

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
    return LakeResource(root=str(settings.lake_dir))
