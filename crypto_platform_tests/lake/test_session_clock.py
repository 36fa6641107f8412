"""The session clock from file statistics equals the one computed from every row of the day."""

from __future__ import annotations

from pathlib import Path

from crypto_platform.lake import writer
from crypto_platform.lake.gap_repair import lake_session_clock, session_clock
from crypto_platform.lake.schemas import AGGREGATES_SCHEMA
from crypto_platform.resources.lake import build_lake_resource
from crypto_platform_tests.assets.test_raw_tables import bar
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

DAY = "2025-11-24"


def test_the_clock_from_file_statistics_equals_the_clock_of_every_row(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    lake = build_lake_resource(landing.settings)
    tables = lake.tables()

    def apply() -> None:
        writer.write_pass(tables, landing.settings.landing_dir, lake.locked)

    # One pass over two sessions (a file mixing them), then single-session files, then a session whose
    # first frame holds an XA bar only (its first event time comes from the aggregates table).
    landing.segment(trades_frame(0, 5, DAY1_MS), session=1)
    landing.segment(trades_frame(5, 5, DAY1_MS + 40_000), session=2)
    apply()
    for i in range(3):
        landing.segment(trades_frame(10 + 5 * i, 5, DAY1_MS + 60_000 * (i + 1)), session=2)
        apply()
    landing.segment(bar("XA", DAY1_MS + 240_000, "97010.5", "12"), session=3)
    landing.segment(trades_frame(40, 5, DAY1_MS + 250_000), session=3)
    apply()
    trades = lake.read_partition("raw_trades", DAY)
    aggregates = lake.read_partition("raw_aggregates", DAY)
    assert trades is not None
    expected = session_clock(trades, aggregates if aggregates is not None else AGGREGATES_SCHEMA.empty_table())
    assert set(expected) == {1, 2, 3}
    assert len(tables.files("raw_trades", DAY)) >= 4  # several files, one of them mixing sessions
    assert lake_session_clock(tables, DAY) == expected
