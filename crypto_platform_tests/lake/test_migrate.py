"""``crypto-platform lake migrate`` on a real lake of the old layout, through the CLI's entry point.

The old lake is written as the platform wrote it before Delta Lake (``write_old_partition`` is the
old ``LakeResource.write_partition``: one ``part.parquet`` per table and day, its landing-segment
watermark in the footer), from rows the real decode path builds from a real landing log, days
built at different segments as the old per-day runs left them. Then: the Delta tables hold exactly
the files' rows, a second run changes nothing, the lake writer continues with exactly the segments
the migrated rows lack (the tables equal a rebuild: nothing twice, nothing skipped), ``--rebuild``
equals a Dagster rebuild, days the writer appended before the migration get the rows only the
files had, and a running writer (a real process) or a damaged or unconvertible file stop it with
nothing lost.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crypto_platform import cli
from crypto_platform.assets.bars import bars_app_id
from crypto_platform.lake import writer
from crypto_platform.lake.raw import LANDING_APP_ID, RAW_TABLES, rebuild_day, segments_to_read
from crypto_platform.lake.schemas import SCHEMAS
from crypto_platform.lake.tables import DeltaLake, sort_rows, with_date
from crypto_platform.local.stack import stop_lake_writer
from crypto_platform.settings import child_environment
from crypto_platform_tests.assets.test_raw_tables import MINUTE, bar, quotes_frame
from crypto_platform_tests.test_lake_writer import wait_for
from crypto_platform_tests.test_stream_sensor import DAY1_MS, DAY2_MS, Landing, trades_frame

DAY1, DAY2 = "2025-11-24", "2025-11-25"
RAW = ("raw_trades", "raw_quotes", "raw_aggregates")


def write_old_partition(root: Path, asset: str, day: str, table: pa.Table, through: int | None) -> Path:
    """The lake's write before Delta Lake (``LakeResource.write_partition``): the day's file replaced whole."""
    path = root / asset / f"date={day}" / "part.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(table.schema.metadata or {})
    meta[b"crypto.write_id"] = uuid.uuid4().hex.encode()
    if through is not None:
        meta[b"crypto.segments_through"] = str(int(through)).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table.replace_schema_metadata(meta), tmp)
    os.replace(tmp, path)
    return path


def repaired_trade() -> pa.Table:
    """A trade gap repair fetched from REST: the landing log cannot give it back."""
    row = dict.fromkeys(SCHEMAS["raw_trades"].names)
    row.update(
        pair="BTC-USD",
        exchange=1,
        trade_id="rest-1",
        price=Decimal("97000.5"),
        size=Decimal("0.25"),
        conditions="[]",
        event_ms=DAY1_MS + 5_000,
        source="rest_repair",
    )
    return pa.Table.from_pylist([row], schema=SCHEMAS["raw_trades"])


def old_raw_day(landing: Landing, name: str, day: str, upto: int, kept: pa.Table | None = None) -> pa.Table:
    """A raw day as the old asset's rebuild made it: every segment through ``upto``, de-duplicated."""
    spec = RAW_TABLES[name]
    entries, _ = segments_to_read(landing.settings.landing_dir, day, spec.channels, 0, upto)
    table, _, _ = spec.build(landing.settings.landing_dir, entries, day, kept, incremental=False)
    return table


class OldLake:
    """A landing log and the old lake the per-day runs left: DAY1 built through segment 4, DAY2 through 2."""

    def __init__(self, tmp_path: Path) -> None:
        self.landing = Landing(tmp_path)
        self.settings = self.landing.settings
        self.root = self.settings.data_dir / "lake"
        seg = self.landing.segment
        seg(trades_frame(0, 20, DAY1_MS), quotes_frame(DAY1_MS, 6), bar("XA", MINUTE, "97001", "0.5"))  # 1
        seg(trades_frame(20, 10, DAY1_MS + 100), trades_frame(0, 5, DAY2_MS))  # 2: both days
        seg(trades_frame(5, 10, DAY2_MS + 50), quotes_frame(DAY2_MS, 4))  # 3: DAY2 only
        seg(trades_frame(10, 5, DAY1_MS, dup_of=10), bar("XA", MINUTE, "97002", "0.7"))  # 4: a re-send, a revision
        self.files: dict[tuple[str, str], pa.Table] = {}
        self.write("raw_trades", DAY1, old_raw_day(self.landing, "raw_trades", DAY1, 4, repaired_trade()), 4)
        self.write("raw_trades", DAY2, old_raw_day(self.landing, "raw_trades", DAY2, 2), 2)
        self.write("raw_quotes", DAY1, old_raw_day(self.landing, "raw_quotes", DAY1, 4), 4)
        self.write("raw_aggregates", DAY1, old_raw_day(self.landing, "raw_aggregates", DAY1, 4), 4)
        bars = {name: None for name in SCHEMAS["minute_bars"].names}
        bars.update(pair="BTC-USD", minute_ms=MINUTE, open=Decimal("97000.1"), trade_count=3, source="ws")
        self.write("minute_bars", DAY1, pa.Table.from_pylist([bars], schema=SCHEMAS["minute_bars"]), 4)
        daily = {name: None for name in SCHEMAS["daily_open_close"].names}
        daily.update(pair="BTC-USD", day=pa.scalar(19320, pa.date32()).as_py(), status="no_data", fetched_ms=1)
        self.write("daily_open_close", DAY1, pa.Table.from_pylist([daily], schema=SCHEMAS["daily_open_close"]), None)

    def write(self, name: str, day: str, table: pa.Table, through: int | None) -> None:
        self.files[name, day] = table
        write_old_partition(self.root, name, day, table, through)

    def path(self, name: str, day: str) -> Path:
        return self.root / name / f"date={day}" / "part.parquet"

    def backup(self, name: str, day: str) -> Path:
        return self.settings.data_dir / "lake-parquet-backup" / name / f"date={day}" / "part.parquet"

    @property
    def lake(self) -> DeltaLake:
        return writer.lake_of(self.settings)


@pytest.fixture
def old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OldLake:
    for var in ("CRYPTO_DATA_DIR", "CRYPTO_LAKE_URL", "CRYPTO_LANDING_DIR"):
        monkeypatch.delenv(var, raising=False)
    lake = OldLake(tmp_path)
    monkeypatch.setenv("CRYPTO_PROJECT_DIR", str(lake.settings.project_dir))
    monkeypatch.setenv("CRYPTO_STATE_DIR", str(tmp_path))
    return lake


def migrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["lake", "migrate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def versions(lake: DeltaLake) -> dict[str, int | None]:
    return {n: (t.version() if (t := lake.open(n)) is not None else None) for n in SCHEMAS}


def test_migrate_moves_every_row_into_delta_once_and_the_writer_continues_from_the_right_segment(
    old: OldLake, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = migrate(capsys, "--dry-run")
    assert code == 0, err
    assert "raw_trades 2025-11-24: convert, 31 rows, watermark 4" in out and "dry run" in out
    assert versions(old.lake) == dict.fromkeys(SCHEMAS) and old.path("raw_trades", DAY1).exists()

    code, out, err = migrate(capsys)
    assert code == 0, err
    lake = old.lake
    for (name, day), rows in old.files.items():
        assert lake.read(name, day).equals(sort_rows(name, rows)), (name, day)  # exactly the same rows
        assert not old.path(name, day).exists() and old.backup(name, day).exists()  # kept, out of the lake
    trades_in = sum(old.files["raw_trades", d].num_rows for d in (DAY1, DAY2))
    done = "2 written, 0 merged into Delta's, 0 already in Delta"
    assert f"raw_trades: 2 days ({done}), {trades_in} rows in, {trades_in} rows out" in out
    # Segment 3 holds DAY2's trades and quotes, which DAY2's files lacked (built through 2).
    assert {n: lake.watermark(n, LANDING_APP_ID) for n in RAW} == {
        "raw_trades": 2,
        "raw_quotes": 2,
        "raw_aggregates": 4,
    }
    assert lake.watermark("raw_book", LANDING_APP_ID) == 4  # no XL2 in the log: every segment is in
    assert lake.watermark("minute_bars", bars_app_id(DAY1)) == 4

    before = versions(lake)
    code, out, err = migrate(capsys)  # a second run: verified, nothing written, nothing moved
    assert code == 0, err
    assert versions(lake) == before
    assert "raw_trades: 2 days (0 written, 0 merged into Delta's, 2 already in Delta)" in out

    last = old.landing.segment(trades_frame(100, 5, DAY2_MS + 500), quotes_frame(DAY2_MS + 500, 2))
    applied = writer.write_pass(lake, old.settings.landing_dir, lambda _: contextlib.nullcontext())
    assert applied["raw_trades"].segments == 3 and applied["raw_aggregates"].segments == 0  # 3, 4, 5; none
    expected = DeltaLake(str(old.settings.data_dir / "rebuilt"))
    expected.append("raw_trades", with_date(repaired_trade(), DAY1))
    for name in RAW:
        for day in (DAY1, DAY2):
            rebuild_day(expected, RAW_TABLES[name], old.settings.landing_dir, day, last)
            assert lake.read(name, day).equals(expected.read(name, day)), (name, day)  # nothing twice or skipped
    assert migrate(capsys)[0] == 0 and versions(lake) != before  # after the writer's appends: still verified


def test_rebuild_mode_rebuilds_each_day_from_the_landing_log_like_dagster(
    old: OldLake, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = migrate(capsys, "--rebuild")
    assert code == 0, err
    assert "raw_trades: 2 days (2 written, 0 merged into Delta's, 0 already in Delta)" in out
    lake = old.lake
    expected = DeltaLake(str(old.settings.data_dir / "rebuilt"))
    expected.append("raw_trades", with_date(repaired_trade(), DAY1))  # the rows the landing log cannot give
    for name, day in [k for k in old.files if k[0] in RAW]:
        rebuild_day(expected, RAW_TABLES[name], old.settings.landing_dir, day, 4)
        assert lake.read(name, day).equals(expected.read(name, day)), (name, day)
    assert lake.read("raw_trades", DAY2).num_rows > old.files["raw_trades", DAY2].num_rows  # segment 3's trades
    assert lake.read("minute_bars", DAY1).equals(old.files["minute_bars", DAY1])  # converted: not from the log
    # Every raw day found was rebuilt through 4; raw_quotes has no file of DAY2, whose quotes segment 3 holds.
    assert {n: lake.watermark(n, LANDING_APP_ID) for n in RAW} == {
        "raw_trades": 4,
        "raw_quotes": 2,
        "raw_aggregates": 4,
    }
    before = versions(lake)
    assert migrate(capsys, "--rebuild")[0] == 0 and versions(lake) == before


def test_a_running_lake_writer_stops_the_migration_and_after_make_stop_it_runs(old: OldLake) -> None:
    env = child_environment()  # the fixture's CRYPTO_PROJECT_DIR / CRYPTO_STATE_DIR
    lake_writer = subprocess.Popen(
        [sys.executable, "-m", "crypto_platform.cli", "lake-writer"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: writer.running_pid(old.settings) == lake_writer.pid, 60, "the lake writer's lock")
        command = [sys.executable, "-m", "crypto_platform.cli", "lake", "migrate"]
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 3, refused.stderr
        assert f"lake writer is running (pid {lake_writer.pid})" in refused.stderr and "make stop" in refused.stderr
        assert all(old.path(*k).exists() for k in old.files)  # nothing moved
    finally:
        said = stop_lake_writer(old.settings)  # what `make stop` does to it
    assert said == f"lake writer: stopped (pid {lake_writer.pid})", said
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not any(old.path(*k).exists() for k in old.files) and "done: every row of the 6 old files" in done.stdout


def test_a_damaged_file_stops_the_migration_naming_it_with_nothing_written_or_moved(
    old: OldLake, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = old.path("raw_trades", DAY2)
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])  # a torn copy
    code, _, err = migrate(capsys)
    assert code == 1 and str(damaged) in err and "not a readable Parquet file" in err
    assert versions(old.lake) == dict.fromkeys(SCHEMAS)
    assert all(old.path(*k).exists() for k in old.files) and damaged.read_bytes() == data[: len(data) // 2]

    damaged.write_bytes(data)  # repaired: the run completes
    assert migrate(capsys)[0] == 0 and old.lake.read("raw_trades", DAY2).equals(old.files["raw_trades", DAY2])


def test_a_column_that_does_not_convert_is_refused_by_name_and_a_missing_one_is_filled(
    old: OldLake, capsys: pytest.CaptureFixture[str]
) -> None:
    quotes = old.files["raw_quotes", DAY1]
    bad = quotes.set_column(quotes.schema.get_field_index("seq"), "seq", pa.array(["x"] * quotes.num_rows))
    write_old_partition(old.root, "raw_quotes", DAY1, bad, 4)
    code, _, err = migrate(capsys)
    assert code == 1 and str(old.path("raw_quotes", DAY1)) in err and "column 'seq' is string" in err
    assert versions(old.lake) == dict.fromkeys(SCHEMAS)

    write_old_partition(old.root, "raw_quotes", DAY1, quotes, 4)
    trades = old.files["raw_trades", DAY2]
    write_old_partition(old.root, "raw_trades", DAY2, trades.drop_columns(["source", "session"]), 2)
    assert migrate(capsys)[0] == 0
    migrated = old.lake.read("raw_trades", DAY2)
    assert migrated.column("source").to_pylist() == ["ws"] * trades.num_rows  # its documented default
    assert migrated.column("session").null_count == trades.num_rows
    assert migrated.drop_columns(["session"]).equals(sort_rows("raw_trades", trades).drop_columns(["session"]))


def test_days_the_writer_appended_before_the_migration_get_the_rows_only_the_files_had(
    old: OldLake, capsys: pytest.CaptureFixture[str]
) -> None:
    # Upgraded and started before migrating: the writer applied the whole landing log (old files untouched).
    lake = old.lake
    writer.write_pass(lake, old.settings.landing_dir, lambda _: contextlib.nullcontext())
    assert lake.read("raw_trades", DAY1).num_rows == old.files["raw_trades", DAY1].num_rows - 1  # no REST trade
    code, out, err = migrate(capsys)
    assert code == 0, err
    assert "raw_trades: 2 days (0 written, 1 merged into Delta's, 1 already in Delta)" in out
    expected = DeltaLake(str(old.settings.data_dir / "rebuilt"))
    expected.append("raw_trades", with_date(repaired_trade(), DAY1))
    for name in RAW:
        for day in (DAY1, DAY2):
            rebuild_day(expected, RAW_TABLES[name], old.settings.landing_dir, day, 4)
            assert lake.read(name, day).equals(expected.read(name, day)), (name, day)
        assert lake.watermark(name, LANDING_APP_ID) == 4  # the writer's, never lowered
    assert lake.read("minute_bars", DAY1).equals(old.files["minute_bars", DAY1])
    before = versions(lake)
    assert migrate(capsys)[0] == 0 and versions(lake) == before
