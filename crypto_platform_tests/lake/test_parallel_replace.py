"""A large day's replace written as Parquet files side by side and one Delta commit.

The same table as delta-rs's own write gives: read back by the platform and by a second engine that
replays the Delta log without delta-rs, the day's older files replaced, other days untouched, the
watermark in the same commit, and the file statistics still pruning reads by event time.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from crypto_platform.lake import tables
from crypto_platform.lake.schemas import TRADES_SCHEMA
from crypto_platform.lake.tables import DeltaLake, between
from crypto_platform_tests.test_lake_second_engine import read_with_duckdb

DAY, OTHER = "2025-11-20", "2025-11-21"
LO = 1_763_596_800_000


def trades(n: int, lo: int, source: str = "flat_file") -> pa.Table:
    price = TRADES_SCHEMA.field("price").type
    return pa.table(
        {
            "pair": ["BTC-USD" if i % 3 else "ETH-USD" for i in range(n)],
            "exchange": pa.array([i % 5 for i in range(n)], pa.int32()),
            "trade_id": [str(1000 + i) for i in range(n)],
            "price": pa.array([Decimal(f"{90000 + i}.125") for i in range(n)], price),
            "size": pa.array([Decimal("0.000000015")] * n, price),
            "conditions": ["[1]"] * n,
            "event_ms": pa.array([lo + 1000 * i for i in range(n)], pa.int64()),
            "polygon_received_ms": pa.nulls(n, pa.int64()),
            "received_ns": pa.array([7] * n, pa.int64()),
            "session": pa.nulls(n, pa.int64()),
            "segment": pa.nulls(n, pa.int64()),
            "source": [source] * n,
        },
        schema=TRADES_SCHEMA,
    )


@pytest.fixture(autouse=True)
def small_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "PARALLEL_WRITE_ROWS", 1_000)  # so a test-sized day takes the parallel path
    monkeypatch.setattr(tables, "PARALLEL_WRITE_THREADS", 2)


def test_a_large_day_is_written_in_parts_in_one_commit(tmp_path: Path) -> None:
    lake = DeltaLake(str(tmp_path / "lake"))
    first = trades(3_000, LO)
    lake.replace("raw_trades", DAY, first, watermarks={"app": 3})  # creates the table
    assert lake.read("raw_trades", DAY).equals(first)
    assert len(lake.files("raw_trades", DAY)) == 2 and lake.watermark("raw_trades", "app") == 3

    lake.replace("raw_trades", OTHER, trades(50, LO + 86_400_000, source="ws"))  # small: delta-rs's write
    second = trades(2_500, LO + 5)
    lake.replace("raw_trades", DAY, second, watermarks={"app": 4})
    assert lake.read("raw_trades", DAY).equals(second), "the day's older files are gone"
    assert lake.count("raw_trades", DAY) == 2_500 and lake.watermark("raw_trades", "app") == 4
    assert lake.read("raw_trades", OTHER).num_rows == 50

    # Each part holds its own slice of the day's times: a read of the first minutes opens one file.
    early = between("event_ms", LO, LO + 60_000)
    assert len(lake.files("raw_trades", DAY, early)) == 1
    assert lake.read("raw_trades", DAY, early).num_rows == 60

    other_engine = read_with_duckdb(tmp_path / "lake" / "raw_trades", "raw_trades")
    assert other_engine.num_rows == 2_550
    mine = other_engine.filter(pa.compute.equal(other_engine["event_ms"], LO + 5))
    assert mine["price"].to_pylist() == [Decimal("90000.125")]
