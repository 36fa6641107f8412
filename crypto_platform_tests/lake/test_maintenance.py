"""Lake maintenance on real Delta tables: closed days compacted while the writer appends to today."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from crypto_platform.lake.maintenance import MaintenancePolicy, closed_days, files_per_day, maintain_table

CLOSED, TODAY = "2026-12-01", "2026-12-07"
NOW_S = datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp()


def _rows(day: str, n: int, first: int) -> pa.Table:
    pairs = ["BTC-USD", "ETH-USD", "SOL-USD"]
    return pa.table(
        {
            "pair": pa.array([pairs[i % 3] for i in range(n)]),
            "event_ms": pa.array(range(first, first + n), pa.int64()),
            "date": pa.array([day] * n),
        }
    )


def _append(uri: str, table: pa.Table) -> None:
    write_deltalake(uri, table, partition_by=["date"], mode="append")


def test_closed_days_are_those_ended_long_enough_ago() -> None:
    days = ["2026-12-05", "2026-12-06", "2026-12-07"]
    # 12:00 on the 7th: the 6th ended 12 h ago, the 7th has not ended.
    assert closed_days(days, NOW_S, 2 * 3600) == ["2026-12-05", "2026-12-06"]
    assert closed_days(days, NOW_S, 13 * 3600) == ["2026-12-05"]


@pytest.mark.parametrize("table_name", ["raw_trades", "minute_bars"])
def test_compaction_of_a_closed_day_races_the_writer_on_today_and_loses_nothing(
    tmp_path: Path, table_name: str
) -> None:
    uri = str(tmp_path / table_name)
    for i in range(25):
        _append(uri, _rows(CLOSED, 40, i * 40))
    _append(uri, _rows(TODAY, 5, 0))
    before = DeltaTable(uri).to_pyarrow_table().sort_by([("date", "ascending"), ("event_ms", "ascending")])

    stop = threading.Event()
    appended: list[pa.Table] = []
    errors: list[BaseException] = []

    def writer() -> None:
        n = 0
        while not stop.is_set() or n < 3:  # at least three appends, racing the whole pass
            batch = _rows(TODAY, 7, 1_000 + n * 7)
            try:
                _append(uri, batch)
            except BaseException as exc:
                errors.append(exc)
                return
            appended.append(batch)
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    compacted: list[str] = []
    try:
        report = maintain_table(
            table_name, uri, None, MaintenancePolicy(target_mb=128, vacuum_retention_h=0), NOW_S, compacted.append
        )
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    assert report.days_compacted == [CLOSED] == compacted and report.days_skipped_busy == []
    assert report.files_removed == 25 and report.files_added == 1

    after = DeltaTable(uri)
    assert files_per_day(after)[CLOSED] == 1
    assert files_per_day(after)[TODAY] == 1 + len(appended)  # today untouched by maintenance
    expected = pa.concat_tables([before, *appended]).sort_by([("date", "ascending"), ("event_ms", "ascending")])
    got = after.to_pyarrow_table().select(expected.column_names)
    assert got.sort_by([("date", "ascending"), ("event_ms", "ascending")]).equals(expected)
    # The log has a checkpoint, and the files compaction replaced are gone from disk.
    assert any(p.name.endswith(".checkpoint.parquet") for p in (tmp_path / table_name / "_delta_log").iterdir())
    assert report.files_vacuumed == 25
    on_disk = [p for p in (tmp_path / table_name / f"date={CLOSED}").iterdir() if p.suffix == ".parquet"]
    assert len(on_disk) == 1


def test_a_second_pass_has_nothing_to_compact_and_a_missing_table_is_skipped(tmp_path: Path) -> None:
    uri = str(tmp_path / "raw_quotes")
    for i in range(3):
        _append(uri, _rows(CLOSED, 10, i * 10))
    first = maintain_table("raw_quotes", uri, None, MaintenancePolicy(), NOW_S)
    second = maintain_table("raw_quotes", uri, None, MaintenancePolicy(), NOW_S)
    assert first.days_compacted == [CLOSED] and second.days_compacted == []
    assert DeltaTable(uri).to_pyarrow_table().num_rows == 30
    missing = maintain_table("raw_book", str(tmp_path / "raw_book"), None, MaintenancePolicy(), NOW_S)
    assert missing.days_compacted == [] and missing.checkpoint_version is None
