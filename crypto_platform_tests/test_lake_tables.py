"""The Delta table I/O (crypto_platform.lake.tables) and the raw tables' appends on a real Delta log.

What the stream relies on: a lookup opens only the files whose statistics can hold the rows asked
for (a late re-sent trade hours after its time included), the segment watermark is committed with
the rows, a predicate overwrite refuses rows outside its predicate, and the lake refuses rows of
the wrong shape instead of converting them.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from crypto_platform.lake.raw import LANDING_APP_ID, TRADES, apply_segments, rebuild_day
from crypto_platform.lake.schemas import TRADES_SCHEMA
from crypto_platform.lake.tables import DeltaLake, between, equals, in_ranges, time_ranges, with_date
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

DAY = "2025-11-24"
HOUR = 3_600_000


def trades(start: int, n: int, t: int, segment: int = 1) -> pa.Table:
    rows = [
        {
            "pair": "BTC-USD",
            "exchange": 1,
            "trade_id": str(i),
            "price": Decimal("65012.123456789012345678"),
            "size": Decimal("0.000000000000000001"),
            "conditions": "[]",
            "event_ms": t + i,
            "polygon_received_ms": None,
            "received_ns": i,
            "session": 1,
            "segment": segment,
            "source": "ws",
        }
        for i in range(start, start + n)
    ]
    return pa.Table.from_pylist(rows, schema=TRADES_SCHEMA)


def test_time_ranges_split_where_times_are_far_apart() -> None:
    assert time_ranges(pa.array([5, 1, 3, 70_000, 70_010, 1, None], pa.int64())) == [(1, 5), (70_000, 70_010)]
    assert time_ranges(pa.array([], pa.int64())) == []


def test_a_lookup_opens_only_the_files_its_ranges_can_hit_and_reads_rows_exactly(tmp_path: Path) -> None:
    lake = DeltaLake(str(tmp_path / "lake"))
    for hour in range(10):  # one file per append, each an hour of the day
        lake.append("raw_trades", with_date(trades(hour * 100, 100, DAY1_MS + hour * HOUR, segment=hour), DAY))
    assert len(lake.files("raw_trades", DAY)) == 10
    hour2, hour7 = DAY1_MS + 2 * HOUR, DAY1_MS + 7 * HOUR
    where = in_ranges("event_ms", [(hour2 + 250, hour2 + 260), (hour7 + 700, hour7 + 700)])
    assert len(lake.files("raw_trades", DAY, where)) == 2
    rows = lake.read("raw_trades", DAY, where)
    assert rows is not None and rows["trade_id"].to_pylist() == [str(i) for i in range(250, 261)] + ["700"]
    assert rows["price"][0].as_py() == Decimal("65012.123456789012345678")  # exact through Delta
    assert lake.read("raw_trades", "2025-11-25") is not None and lake.read("raw_trades", "2025-11-25").num_rows == 0
    assert lake.read("raw_quotes", DAY) is None  # never written
    assert lake.count("raw_trades", DAY) == 1000 and lake.days("raw_trades") == [DAY]


def test_the_watermark_is_committed_with_the_rows(tmp_path: Path) -> None:
    lake = DeltaLake(str(tmp_path / "lake"))
    assert lake.watermark("raw_trades", LANDING_APP_ID) is None
    lake.append("raw_trades", with_date(trades(0, 5, DAY1_MS), DAY), {LANDING_APP_ID: 7})
    assert lake.watermark("raw_trades", LANDING_APP_ID) == 7
    # A commit that fails (rows of the wrong shape) moves neither rows nor watermark.
    bad = with_date(trades(5, 5, DAY1_MS), DAY).drop_columns(["source"])
    with pytest.raises(ValueError, match="source is missing"):
        lake.append("raw_trades", bad, {LANDING_APP_ID: 8})
    assert lake.watermark("raw_trades", LANDING_APP_ID) == 7 and lake.count("raw_trades", DAY) == 5


def test_replace_swaps_exactly_the_rows_of_its_predicate_and_refuses_others(tmp_path: Path) -> None:
    lake = DeltaLake(str(tmp_path / "lake"))
    lake.append("raw_trades", with_date(trades(0, 10, DAY1_MS), DAY))
    window = between("event_ms", DAY1_MS + 3, DAY1_MS + 5)
    lake.replace("raw_trades", DAY, trades(3, 2, DAY1_MS, segment=9), where=window)
    rows = lake.read("raw_trades", DAY)
    assert rows is not None
    assert rows["trade_id"].to_pylist() == ["0", "1", "2", "3", "4", "6", "7", "8", "9"]
    assert rows.filter(pa.compute.equal(rows["segment"], 9))["trade_id"].to_pylist() == ["3", "4"]
    with pytest.raises(Exception, match=r"(?i)invalid|predicate|validation"):
        lake.replace("raw_trades", DAY, trades(8, 1, DAY1_MS), where=window)  # row outside the window
    assert lake.count("raw_trades", DAY) == 9


def test_insert_new_adds_only_keys_the_table_does_not_hold(tmp_path: Path) -> None:
    lake = DeltaLake(str(tmp_path / "lake"))
    lake.append("raw_trades", with_date(trades(0, 10, DAY1_MS), DAY))
    fetched = trades(5, 10, DAY1_MS)  # 5..9 are there already
    added = lake.insert_new("raw_trades", DAY, fetched, TRADES.key, "event_ms", time_ranges(fetched["event_ms"]))
    assert added == 5 and lake.count("raw_trades", DAY) == 15


def test_a_late_resent_trade_is_caught_by_its_event_time_without_reading_the_day(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    lake = DeltaLake(str(tmp_path / "lake"))
    for hour in range(6):
        seq = landing.segment(trades_frame(hour * 100, 50, DAY1_MS + hour * HOUR))
        apply_segments(lake, TRADES, landing.settings.landing_dir, seq)
    # Hours later, trades 10-14 (first seen at hour 0) come again next to new ones.
    late = landing.segment(trades_frame(10, 5, DAY1_MS), trades_frame(600, 5, DAY1_MS + 6 * HOUR))
    where = in_ranges("event_ms", [(DAY1_MS + 10, DAY1_MS + 14), (DAY1_MS + 6 * HOUR + 600, DAY1_MS + 6 * HOUR + 604)])
    assert len(lake.files("raw_trades", DAY, where)) == 1  # hour 0's file only, of six
    applied = apply_segments(lake, TRADES, landing.settings.landing_dir, late)
    assert (applied.rows_read, applied.rows_added, applied.duplicates) == (10, 5, 5)
    assert lake.watermark("raw_trades", LANDING_APP_ID) == late
    rows = lake.read("raw_trades", DAY, equals("trade_id", "12"))
    assert rows is not None and rows["segment"].to_pylist() == [1]  # the earliest receipt stays
    # Applying again (a writer that died after its commit) is a no-op; a rebuild gives the same table.
    assert apply_segments(lake, TRADES, landing.settings.landing_dir, late).segments == 0
    rebuilt = DeltaLake(str(tmp_path / "rebuilt"))
    rebuild_day(rebuilt, TRADES, landing.settings.landing_dir, DAY, late)
    assert rebuilt.read("raw_trades", DAY).equals(lake.read("raw_trades", DAY))
