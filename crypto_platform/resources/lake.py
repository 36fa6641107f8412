"""The lake: Parquet partitions under ``CRYPTO_DATA_DIR/lake`` that analysts can also read directly.

Layout ``lake/<asset>/date=<YYYY-MM-DD>/part.parquet`` (hive style, so DuckDB and pandas see a
``date`` column). A partition is replaced atomically: written to a temporary file beside it and
renamed over the old one, so a reader never sees half a file and a crashed run leaves the old one.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from crypto_platform.settings import Settings


class LakeResource(dg.ConfigurableResource):
    """Where partitions live, and the one way they are written."""

    root: str

    def partition_path(self, asset: str, day: str) -> Path:
        return Path(self.root) / asset / f"date={day}" / "part.parquet"

    def write_partition(self, asset: str, day: str, table: pa.Table) -> Path:
        path = self.partition_path(asset, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    def read_partition(self, asset: str, day: str) -> pa.Table | None:
        path = self.partition_path(asset, day)
        return pq.read_table(path) if path.exists() else None


def build_lake_resource(settings: Settings) -> LakeResource:
    return LakeResource(root=str(settings.lake_dir))
