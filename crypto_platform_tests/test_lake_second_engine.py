"""Every lake table read by a second engine gets exactly the rows the platform wrote.

The second engine is DuckDB over the Parquet files that an independent replay of the Delta log
lists: the JSON commits in ``_delta_log/`` applied in order (``add`` puts a file in, ``remove``
takes it out), without delta-rs. So a reader that knows only the Delta protocol (Spark, Trino,
Snowflake) sees the same table: appends, a predicate overwrite and a day's rebuild included.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import dagster as dg
import duckdb
import pyarrow as pa

from crypto_platform.assets.bars import minute_bars
from crypto_platform.assets.raw import raw_aggregates, raw_book, raw_quotes, raw_trades
from crypto_platform.lake.schemas import SCHEMAS
from crypto_platform.lake.tables import sort_rows
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.polygon import PolygonRestResource
from crypto_platform.stream_batches import SEGMENTS_TAG
from crypto_platform_tests.assets.test_raw_tables import DAY, MINUTE, bar, book_frame, quotes_frame
from crypto_platform_tests.conftest import free_port
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame


def replay(table_dir: Path) -> list[Path]:
    """The live data files of a Delta table, from its JSON commits alone."""
    live: dict[str, Path] = {}
    for commit in sorted((table_dir / "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = table_dir / unquote(action["add"]["path"])
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    return sorted(live.values())


def read_with_duckdb(table_dir: Path, name: str) -> pa.Table:
    files = replay(table_dir)
    schema = SCHEMAS[name]
    if not files:
        return schema.empty_table()
    listed = ", ".join(f"'{f}'" for f in files)
    columns = ", ".join(f'"{c}"' for c in schema.names)
    with duckdb.connect() as con:
        rows = con.sql(f"SELECT {columns} FROM read_parquet([{listed}], hive_partitioning=false)").to_arrow_table()
    return sort_rows(name, rows.cast(schema))


def test_duckdb_over_the_replayed_delta_log_reads_exactly_what_the_platform_wrote(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    lake = LakeResource(root=str(tmp_path / "lake"))
    rest = PolygonRestResource(base_url=f"http://127.0.0.1:{free_port()}", api_key="k", pairs=["BTC-USD"])
    resources = {"stream": landing.resource(), "lake": lake, "polygon_rest": rest}
    assets = [raw_trades, raw_quotes, raw_aggregates, raw_book, minute_bars]
    landing.segment(trades_frame(0, 20, DAY1_MS), quotes_frame(DAY1_MS, 6), bar("XA", MINUTE, "97010.5", "12"))
    landing.segment(trades_frame(10, 20, DAY1_MS), book_frame(DAY1_MS))  # trades 10-19 re-sent
    last = landing.segment(bar("XA", MINUTE, "97011.25", "12.5"), trades_frame(40, 5, DAY1_MS + 61_000))
    with dg.instance_for_test() as instance:
        for seq in range(1, last + 1):  # appends; the XA revision replaces its bar's rows
            tags = {SEGMENTS_TAG: f"{seq}-{seq}"}
            assert dg.materialize(assets, partition_key=DAY, tags=tags, resources=resources, instance=instance).success
        # and a day's rebuild of raw_trades (a predicate overwrite of the day)
        assert dg.materialize([raw_trades], partition_key=DAY, resources=resources, instance=instance).success
    for name in ("raw_trades", "raw_quotes", "raw_aggregates", "raw_book", "minute_bars"):
        platform = lake.read_partition(name, DAY)
        assert platform is not None and platform.num_rows, name
        assert read_with_duckdb(tmp_path / "lake" / name, name).equals(platform), name
    assert lake.read_partition("raw_trades", DAY).num_rows == 35  # 0-29 and 40-44, each once
