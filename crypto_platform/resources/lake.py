"""The lake as a Dagster resource: Delta tables under ``CRYPTO_LAKE_URL`` (default ``CRYPTO_DATA_DIR/lake``).

The table I/O is :class:`crypto_platform.lake.tables.DeltaLake`; this resource names where it lives
and the per-table write lock. Object-store credentials are not resource config (the UI shows
config): they are read from the standard environment variables by the settings when a table is
opened.

Locks: a Delta commit is atomic, but a read-decide-commit (de-duplicating a batch against the rows
it can collide with, rebuilding a day) must not interleave with another one on the same table, or
both could decide a row is new. Writers of one table on this host take ``flock`` on
``<lock_dir>/<table>.lock`` for that span.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg
import pyarrow as pa

from crypto_platform.lake.tables import DeltaLake, Predicate
from crypto_platform.settings import Settings, load_settings


class LakeResource(dg.ConfigurableResource):
    """Where the lake's Delta tables live, and the one way they are read and written."""

    root: str  # a local path or an object-store URL (s3://, gs://, az://)
    lock_dir: str = ""  # where writers' lock files go (default: lake_locks beside a local root)

    def tables(self) -> DeltaLake:
        return DeltaLake(self.root, lake_storage_options(self.root))

    def read_partition(
        self, asset: str, day: str, where: Predicate | None = None, columns: Sequence[str] | None = None
    ) -> pa.Table | None:
        """The rows of ``day`` (matching ``where``), in the table's order; None when the table was never written.

        Files are chosen by the partition and their statistics, so a narrow ``where`` reads little.
        """
        return self.tables().read(asset, day, where, columns)

    def write_partition(self, asset: str, day: str, table: pa.Table) -> None:
        """Replace the day's rows with ``table`` (one commit)."""
        self.tables().replace(asset, day, table)

    def days(self, asset: str) -> list[str]:
        return self.tables().days(asset)

    @contextlib.contextmanager
    def locked(self, table: str) -> Iterator[None]:
        """Hold the table's exclusive write lock (blocking) for a read-decide-commit."""
        if self.lock_dir:
            lock_dir = Path(self.lock_dir)
        elif "://" in self.root:
            lock_dir = Path(tempfile.gettempdir()) / "crypto_platform_lake_locks"
        else:
            lock_dir = Path(self.root).parent / "lake_locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{table}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def lake_storage_options(root: str) -> dict[str, str]:
    """delta-rs storage options for an object-store root (empty for a local path)."""
    if "://" not in root:
        return {}
    return load_settings().lake_storage_options()


def build_lake_resource(settings: Settings) -> LakeResource:
    return LakeResource(root=settings.lake_url, lock_dir=str(settings.data_dir / "lake_locks"))
