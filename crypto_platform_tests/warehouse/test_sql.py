"""The SQL loader against the SQLite stand-in and the machine's MariaDB: same tests, same code path."""

from __future__ import annotations

import socket
from decimal import Decimal

import pandas as pd
import pytest

from crypto_platform.days import day_bounds_ms
from crypto_platform.warehouse import samples
from crypto_platform.warehouse.errors import (
    RowRejectedError,
    WarehouseAuthError,
    WarehouseConnectionError,
    WarehouseLoadError,
)
from crypto_platform.warehouse.migrations import SCHEMA_VERSION
from crypto_platform.warehouse.parity import compare_sql
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.tables import ALL_TABLES, MINUTE_BARS, TRADES, Table

DAY = "2025-11-20"
EXACT = [
    Decimal("0.000000000123456789"),
    Decimal("97123.450000000000000000"),
    Decimal("12345678901234567890.123456789012345678"),
]


def _snapshot(wh: SqlWarehouse, t: Table = TRADES) -> list[tuple[object, ...]]:
    df = wh.read_partition(t, DAY)
    return sorted(tuple(str(v) for v in row) for row in df.itertuples(index=False))


def _exact_trades() -> pd.DataFrame:
    df = samples.trades(DAY, 3)
    df["price"] = pd.Series(EXACT, dtype=object)
    df["size"] = pd.Series(list(reversed(EXACT)), dtype=object)
    return df


def test_exact_decimals_round_trip(warehouse: SqlWarehouse) -> None:
    warehouse.migrate()
    warehouse.upsert(TRADES, _exact_trades())
    back = warehouse.read_partition(TRADES, DAY).sort_values("trade_id")
    assert [Decimal(str(v)) for v in back["price"]] == EXACT
    assert [Decimal(str(v)) for v in back["size"]] == list(reversed(EXACT))
    # the human time column is the UTC rendering of the ms column
    rows = warehouse.query("SELECT event_ms, event_time FROM crypto_trades ORDER BY trade_id")
    ms, human = rows[0]
    assert str(human).startswith("2025-11-20 00:00:00")
    assert ms - day_bounds_ms(DAY)[0] < 1000


def test_reruns_leave_tables_unchanged(warehouse: SqlWarehouse) -> None:
    warehouse.migrate()
    df = samples.trades(DAY, 12_000)
    first = warehouse.upsert(TRADES, df, batch_rows=5_000)
    snap = _snapshot(warehouse)
    assert first.rows == len(snap) == 12_000
    warehouse.upsert(TRADES, df, batch_rows=5_000)
    assert _snapshot(warehouse) == snap
    rebuilt = warehouse.rebuild_day(TRADES, DAY, df)
    assert rebuilt.deleted == 0  # every row of the day is still in the partition
    warehouse.rebuild_day(TRADES, DAY, df)
    assert _snapshot(warehouse) == snap
    warehouse.migrate()  # migrating an up-to-date database is a no-op
    assert _snapshot(warehouse) == snap


@pytest.mark.parametrize("method", ["auto", "insert"])
def test_rebuild_replaces_the_day_only(warehouse: SqlWarehouse, method: str) -> None:
    """Rows the new partition no longer has go, changed rows change, new rows come, other days stay."""
    warehouse.migrate()
    other = samples.trades("2025-11-21", 10, first_id=5_000)
    warehouse.upsert(TRADES, other)
    warehouse.upsert(TRADES, samples.trades(DAY, 100))
    new = samples.trades(DAY, 40, seed=99)  # other prices and sizes for trade ids 0-39
    new = pd.concat([new, samples.trades(DAY, 5, first_id=1_000)], ignore_index=True)  # and 5 new trades
    result = warehouse.rebuild_day(TRADES, DAY, new, method=method)
    assert result.deleted == 60 and result.rows == 45
    assert result.method == ("load_data" if warehouse.dialect == "mysql" and method == "auto" else "insert")
    assert compare_sql(warehouse, TRADES, DAY, new).ok
    assert compare_sql(warehouse, TRADES, "2025-11-21", other).ok
    assert warehouse.rebuild_day(TRADES, DAY, new, method=method).deleted == 0
    assert compare_sql(warehouse, TRADES, DAY, new).ok


def test_too_wide_value_names_the_row_and_writes_nothing(warehouse: SqlWarehouse) -> None:
    warehouse.migrate()
    warehouse.upsert(TRADES, samples.trades(DAY, 10))
    before = _snapshot(warehouse)
    bad = samples.trades(DAY, 12_000)
    bad.loc[9_000, "price"] = Decimal("123456789012345678901.5")  # 21 digits before the point
    for load in (lambda: warehouse.upsert(TRADES, bad), lambda: warehouse.rebuild_day(TRADES, DAY, bad)):
        with pytest.raises(RowRejectedError) as err:
            load()
        assert err.value.row == {"pair": bad.loc[9_000, "pair"], "exchange": 1, "trade_id": "9000"}
        assert "trade_id='9000'" in str(err.value) and "price" in str(err.value)
        assert _snapshot(warehouse) == before


def test_database_error_mid_partition_rolls_back_everything(warehouse: SqlWarehouse) -> None:
    """With the Python checks off, the database's own error in the 2nd batch undoes the 1st batch too."""
    warehouse.migrate()
    warehouse.upsert(TRADES, samples.trades(DAY, 10))
    before = _snapshot(warehouse)
    bad = samples.trades(DAY, 12_000, first_id=100_000)
    if warehouse.dialect == "mysql":
        bad.loc[7_000, "pair"] = "X" * 40  # VARCHAR(32) in strict mode
    else:
        bad.loc[7_000, "size"] = None  # NOT NULL
    with pytest.raises(WarehouseLoadError) as err:
        warehouse.upsert(TRADES, bad, batch_rows=5_000, validate=False)
    assert "nothing written" in str(err.value)
    if warehouse.dialect == "mysql":
        assert isinstance(err.value, RowRejectedError) and err.value.row["trade_id"] == "107000"
        assert err.value.column == "pair" and "in column pair" in str(err.value)
    assert _snapshot(warehouse) == before


def test_row_outside_the_day_is_refused(warehouse: SqlWarehouse) -> None:
    warehouse.migrate()
    df = pd.concat([samples.trades(DAY, 5), samples.trades("2025-11-21", 1, first_id=99)], ignore_index=True)
    with pytest.raises(RowRejectedError, match=r"trade_id=.99.*outside the partition day"):
        warehouse.rebuild_day(TRADES, DAY, df)


@pytest.mark.parametrize("start", range(1, SCHEMA_VERSION))
def test_migration_upgrades_in_place(warehouse: SqlWarehouse, start: int) -> None:
    """A database created by an older release gains every later column, index and table, keeping its rows."""
    assert warehouse.migrate(target=start) == list(range(1, start + 1))
    assert warehouse.schema_version() == start
    later = [c.name for c in MINUTE_BARS.columns if c.added_in > start]
    assert not set(later) & warehouse.columns("crypto_minute_bars")
    ph = "?" if warehouse.dialect == "sqlite" else "%s"
    lo, _ = day_bounds_ms(DAY)
    with warehouse.connect() as conn:
        cur = conn.cursor()
        if warehouse.dialect == "sqlite":
            cur.execute("BEGIN")
        cur.execute(
            f"INSERT INTO crypto_minute_bars (pair, minute_ms, close, in_gap) VALUES ({ph}, {ph}, {ph}, {ph})",
            ("BTC-USD", lo, "97123.450000000000000000", 1),
        )
        conn.commit()
    assert warehouse.migrate() == list(range(start + 1, SCHEMA_VERSION + 1))
    assert warehouse.schema_version() == SCHEMA_VERSION
    for t in ALL_TABLES:
        assert {c.name for c in t.columns} | {c.human for c in t.columns if c.human} <= warehouse.columns(t.name)
    with warehouse.connect() as conn:
        from crypto_platform.warehouse.sql import _SqlSchema

        schema = _SqlSchema(conn, warehouse.dialect, getattr(warehouse, "database", ""))
        assert any("segment" in ix for ix in schema.existing_indexes("crypto_trades"))
    back = warehouse.read_partition(MINUTE_BARS, DAY)
    assert len(back) == 1 and Decimal(str(back.loc[0, "close"])) == Decimal("97123.45")
    assert back.loc[0, "repaired"] is None or pd.isna(back.loc[0, "repaired"])
    assert warehouse.migrate() == []


def test_analyst_views(warehouse: SqlWarehouse) -> None:
    warehouse.migrate()
    trades = samples.trades(DAY, 300)
    warehouse.upsert(TRADES, trades)
    warehouse.upsert(MINUTE_BARS, samples.minute_bars(DAY, minutes=20))
    latest = {r[0]: r for r in warehouse.query("SELECT pair, price, event_ms FROM crypto_latest_price")}
    assert set(latest) == set(samples.DEFAULT_PAIRS)
    btc = trades[trades["pair"] == "BTC-USD"].sort_values("event_ms").iloc[-1]
    assert Decimal(str(latest["BTC-USD"][1])) == btc["price"]
    holes = warehouse.query(
        "SELECT minute_ms FROM crypto_minute_bars_flagged WHERE follows_hole = 1 AND pair = 'BTC-USD'"
    )
    assert [r[0] for r in holes] == [day_bounds_ms(DAY)[0] + 8 * 60_000]
    summary = warehouse.query("SELECT pair, bars, gap_bars, xa_missing_bars FROM crypto_daily_summary ORDER BY pair")
    first = next(tuple(int(x) if not isinstance(x, str) else x for x in r) for r in summary)
    assert first == ("BTC-USD", 19, 1, 1)


def test_parity_matches_and_names_a_differing_row(warehouse: SqlWarehouse) -> None:
    warehouse.migrate()
    lake = samples.trades(DAY, 500, arrow_decimals=True)
    warehouse.upsert(TRADES, lake)
    assert compare_sql(warehouse, TRADES, DAY, lake).ok
    ph = "?" if warehouse.dialect == "sqlite" else "%s"
    with warehouse.connect() as conn:
        cur = conn.cursor()
        if warehouse.dialect == "sqlite":
            cur.execute("BEGIN")
        cur.execute(f"UPDATE crypto_trades SET price = {ph} WHERE trade_id = '42'", ("1.000000000000000000",))
        conn.commit()
    report = compare_sql(warehouse, TRADES, DAY, lake)
    assert not report.ok
    assert any("trade_id='42'" in d and "price lake=" in d for d in report.differences), report.message()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket closes


def test_unreachable_database_names_host_port_and_setting_not_password() -> None:
    port = _closed_port()
    wh = SqlWarehouse(f"mysql+pymysql://loader:Sup3rS3cret@127.0.0.1:{port}/market_data", connect_timeout=3)
    with pytest.raises(WarehouseConnectionError) as err:
        wh.migrate()
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text and "MYSQL_URL" in text
    assert "Sup3rS3cret" not in text and "Sup3rS3cret" not in repr(wh)


def test_wrong_credentials_say_so(mysql_server: dict[str, object], mysql_database: str) -> None:
    url = f"mysql+pymysql://cp_nobody:Wr0ngPassw0rd@{mysql_server['host']}:{mysql_server['port']}/{mysql_database}"
    with pytest.raises(WarehouseAuthError) as err:
        SqlWarehouse(url, connect_timeout=3).migrate()
    text = str(err.value)
    assert "wrong user name or password" in text and "MYSQL_URL" in text
    assert "Wr0ngPassw0rd" not in text


def test_load_data_refused_falls_back_to_inserts(mysql_server: dict[str, object], mysql_database: str) -> None:
    s = mysql_server
    url = f"mysql+pymysql://{s['user']}:{s['password']}@{s['host']}:{s['port']}/{mysql_database}"
    wh = SqlWarehouse(url, local_infile=False)
    wh.migrate()
    df = samples.trades(DAY, 2_000)
    result = wh.rebuild_day(TRADES, DAY, df)
    assert result.method == "insert" and result.fallback_reason and "local_infile" in result.fallback_reason
    fast = SqlWarehouse(url).rebuild_day(TRADES, DAY, df.iloc[500:])
    assert fast.method == "load_data" and fast.deleted == 500
    assert len(wh.read_partition(TRADES, DAY)) == 1_500
    # without local infile, the rows the partition no longer has are found all the same
    slow = wh.rebuild_day(TRADES, DAY, df.iloc[:1_000])
    assert slow.method == "insert" and slow.deleted == 1_000
    assert compare_sql(wh, TRADES, DAY, df.iloc[:1_000]).ok


def test_a_load_counts_the_span_it_wrote_and_a_recount_finds_a_row_written_behind_its_back(
    warehouse: SqlWarehouse,
) -> None:
    """Segment loads record the day's rows as the last count plus their own span, so a row written
    behind the loads' back (outside their spans) is not in their count; a round's recount (the rounds
    with the lake checks), or a load count that disagrees with the lake, counts the whole day and
    reports the extra row."""
    from crypto_platform.warehouse.loads import SqlTarget, batch_parity

    warehouse.migrate()
    day = samples.trades(DAY, 30_000)  # segments 0, 1, 2: one per 10,000 rows, in event-time order
    counts = [warehouse.upsert_new_segments(TRADES, DAY, day[day["segment"] <= seg]).day_rows for seg in (0, 1)]
    assert counts == [10_000, 20_000] and warehouse.count_partition(TRADES, DAY) == 20_000

    stray = samples.trades(DAY, 1, first_id=900_000)  # segment 0, at the day's first millisecond
    warehouse.upsert(TRADES, stray)
    third = warehouse.upsert_new_segments(TRADES, DAY, day)
    assert third.day_rows == 30_000, "the load counted its own span only, not the stray row before it"
    assert warehouse.count_partition(TRADES, DAY) == 30_001

    def parity(day_rows: int | None) -> tuple[tuple[int, int] | None, bool, str]:
        segments = (third.watermark_before, third.watermark)
        report = batch_parity(SqlTarget(warehouse), TRADES, DAY, day, segments, ("lake", "sql"), day_rows)
        return report.day_rows, report.ok, str(report.differences)

    assert parity(third.day_rows)[:2] == ((30_000, 30_000), True)  # the load's count, as a plain round takes it
    for day_rows in (None, 29_999):  # a recount, and a load count that disagrees with the lake
        counts_, ok, differences = parity(day_rows)
        assert counts_ == (30_000, 30_001) and not ok and "900000" in differences


def test_a_load_chosen_as_a_deadlock_victim_runs_again_and_lands_once(
    mysql_server: dict[str, object], mysql_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two loads of new days meet in the watermark table's gap locks (as a backfill's concurrent runs
    did): each locks the gap of its missing watermark row, then each inserts its row into it. InnoDB
    ends the smaller transaction; here the load is the smaller one, so it loses, is run again, and
    its rows land exactly once."""
    import threading
    import time

    import pymysql

    s = mysql_server
    url = f"mysql+pymysql://{s['user']}:{s['password']}@{s['host']}:{s['port']}/{mysql_database}"
    wh = SqlWarehouse(url)
    wh.migrate()
    other = pymysql.connect(database=mysql_database, autocommit=False, **s)  # type: ignore[arg-type]
    watch = pymysql.connect(database=mysql_database, autocommit=True, **s)  # type: ignore[arg-type]

    def waiting_for_a_lock() -> bool:
        # The load's one-row watermark insert, still running after a second: it waits on the other's lock.
        with watch.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.processlist "
                "WHERE info LIKE 'INSERT INTO crypto_load_watermarks%%' AND time >= 1"
            )
            return int(cur.fetchone()[0]) == 1

    def wait_until(condition: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    try:
        with other.cursor() as cur:
            # The other transaction is the larger one (rows of its own), and holds the gap of its day's row.
            cur.execute("CREATE TABLE scratch (n INT PRIMARY KEY)")
            cur.execute("BEGIN")
            cur.executemany("INSERT INTO scratch VALUES (%s)", [(n,) for n in range(30_000)])
            cur.execute(
                "SELECT segment FROM crypto_load_watermarks WHERE table_name = 'crypto_trades' AND day = '2025-11-21' "
                "FOR UPDATE"
            )
        rows = samples.trades(DAY, 2_000)
        outcome: list[object] = []

        def load_rows() -> None:
            try:
                outcome.append(wh.upsert_new_segments(TRADES, DAY, rows))
            except Exception as exc:  # reported by the assertions below
                outcome.append(exc)

        load = threading.Thread(target=load_rows)
        with caplog.at_level("WARNING", logger="crypto_platform.warehouse.sql"):
            load.start()
            wait_until(lambda: waiting_for_a_lock() or outcome, "the load to wait on the other's gap lock")
            assert not outcome, outcome
            with other.cursor() as cur:  # into the gap the load holds: a deadlock, and the load is the victim
                cur.execute(
                    "INSERT INTO crypto_load_watermarks (table_name, day, segment, mode, rows_loaded, loaded_ms) "
                    "VALUES ('crypto_trades', '2025-11-21', 1, 'upsert', 0, 0)"
                )
            other.commit()
            load.join(60)
        assert not load.is_alive() and len(outcome) == 1, outcome
        assert outcome[0].day_rows == 2_000  # type: ignore[attr-defined]
        assert any("Deadlock" in r.getMessage() for r in caplog.records), "the first attempt lost a deadlock"
        assert wh.count_partition(TRADES, DAY) == 2_000 and wh.watermark(TRADES, DAY) == 0
        assert wh.watermark(TRADES, "2025-11-21") == 1
    finally:
        other.close()
        watch.close()
