"""The analyst views on SQLite, MariaDB and fakesnow: the right, exact numbers on a small known day.

The day is chosen so that a float anywhere would show: highs and lows that differ only in the 18th
decimal of a 20-digit number, and volumes whose sum needs every one of the 38 digits.
"""

from __future__ import annotations

import random
import sqlite3
from datetime import date
from decimal import Decimal, localcontext
from typing import Any

import pandas as pd
import pytest

from crypto_platform.days import day_bounds_ms
from crypto_platform.warehouse import tables
from crypto_platform.warehouse.snowflake import load_snowflake, migrate_snowflake, use_schema
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.views import VIEWS, sqlite_exact_max, sqlite_exact_sum

DAY = "2025-11-20"
LO = day_bounds_ms(DAY)[0]
D = Decimal


def _trade(pair: str, exchange: int, trade_id: str, price: str, at_ms: int) -> dict[str, Any]:
    return {
        "pair": pair,
        "exchange": exchange,
        "trade_id": trade_id,
        "price": D(price),
        "size": D("0.5"),
        "conditions": "[1]",
        "event_ms": LO + at_ms,
        "polygon_received_ms": LO + at_ms + 3,
        "received_ns": (LO + at_ms) * 1_000_000,
        "session": 1,
        "segment": 1,
        "source": "ws",
    }


TRADES = pd.DataFrame(
    [
        _trade("BTC-USD", 1, "1", "97000.1", 1_000),
        _trade("BTC-USD", 1, "2", "97001.000000000000000001", 5_000),
        _trade("BTC-USD", 1, "3", "97002.5", 5_000),  # same ms as "2": the higher trade id wins ...
        _trade("BTC-USD", 2, "3", "97003.25", 5_000),  # ... and between exchanges the higher exchange
        _trade("ETH-USD", 1, "9", "3500.123456789012345678", 2_000),
        _trade("ETH-USD", 1, "10", "3499", 1_500),
    ]
)
LATEST = {"BTC-USD": (D("97003.25"), 2, "3"), "ETH-USD": (D("3500.123456789012345678"), 1, "9")}


def _bar(pair: str, minute: int, o: str, h: str, lo: str, c: str, v: str, n: int, **flags: Any) -> dict[str, Any]:
    xa = None if flags.get("xa_missing") else D(c)
    return {
        "pair": pair,
        "minute_ms": LO + minute * 60_000,
        "open": D(o),
        "high": D(h),
        "low": D(lo),
        "close": D(c),
        "volume": D(v),
        "vwap": D(o),
        "trade_count": n,
        "first_trade_ms": LO + minute * 60_000 + 1,
        "last_trade_ms": LO + minute * 60_000 + 59_000,
        "xa_open": xa,
        "xa_high": xa,
        "xa_low": xa,
        "xa_close": xa,
        "xa_volume": xa,
        "xa_vwap": xa,
        "settled": True,
        "source": "rest_repair" if flags.get("repaired") else "ws",
        "in_gap": bool(flags.get("in_gap")),
        "repaired": bool(flags.get("repaired")),
    }


BARS = pd.DataFrame(
    [
        _bar("BTC-USD", 0, "100.000000000000000001", "100.5", "99.999999999999999999", "100.25", "0.1", 3),
        _bar("BTC-USD", 1, "100.25", "12345678901234567890.000000000000000001", "100", "100.3", "0.2", 4, xa_missing=1),
        # minute 2 has no bar: minute 3 follows a hole
        _bar(
            "BTC-USD",
            3,
            "100.3",
            "12345678901234567890",
            "99.999999999999999998",
            "100.35",
            "12345678901234567.000000000000000009",
            5,
        ),
        _bar("BTC-USD", 4, "100.35", "100.45", "100.1", "100.4", "0.000000000000000001", 1, in_gap=1, repaired=1),
        _bar("ETH-USD", 0, "3500", "3501", "3499", "3500.5", "0.999999999999999999", 7),
        _bar("ETH-USD", 1, "3500.5", "3502", "3500", "3501", "0.000000000000000001", 2),
    ]
)
DAILY_OPEN_CLOSE = pd.DataFrame(
    [{"pair": "BTC-USD", "day": date(2025, 11, 20), "open": D("97000.5"), "close": D("97100.000000000000000007")}]
)
# pair -> (open, high, low, close, volume, trade_count, bars, gap_bars, repaired_bars, xa_missing_bars,
#          rest_open, rest_close), worked out by hand from the rows above
SUMMARY = {
    "BTC-USD": (
        D("100.000000000000000001"),
        D("12345678901234567890.000000000000000001"),
        D("99.999999999999999998"),
        D("100.4"),
        D("12345678901234567.300000000000000010"),
        13,
        4,
        1,
        1,
        1,
        D("97000.5"),
        D("97100.000000000000000007"),
    ),
    "ETH-USD": (D("3500"), D("3502"), D("3499"), D("3501"), D("1"), 9, 2, 0, 0, 0, None, None),
}
FLAGS = {  # (pair, minute) -> (xa_missing, follows_hole, gap_flag)
    ("BTC-USD", 0): (0, 0, 0),
    ("BTC-USD", 1): (1, 0, 0),
    ("BTC-USD", 3): (0, 1, 0),
    ("BTC-USD", 4): (0, 0, 1),
    ("ETH-USD", 0): (0, 0, 0),
    ("ETH-USD", 1): (0, 0, 0),
}


def _num(v: Any) -> Decimal | None:
    return None if v is None else D(str(v))


def _query(run: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = run.cursor()
    try:
        cur.execute(sql)
        return [d[0].lower() for d in cur.description], [tuple(r) for r in cur.fetchall()]
    finally:
        cur.close()


def _check_views(conn: Any, names: dict[str, str]) -> None:
    """Every view's columns are the documented ones and its numbers are the hand-worked ones, exactly."""
    for view in VIEWS:
        cols, _ = _query(conn, f"SELECT * FROM {names[view.name]} WHERE 1 = 0")
        assert cols == view.column_names(), view.name

    _, rows = _query(conn, f"SELECT pair, price, exchange, trade_id FROM {names['crypto_latest_price']} ORDER BY pair")
    assert {r[0]: (_num(r[1]), int(r[2]), r[3]) for r in rows} == LATEST and len(rows) == 2

    _, rows = _query(
        conn,
        f"SELECT pair, minute_ms, xa_missing, follows_hole, gap_flag FROM {names['crypto_minute_bars_flagged']}",
    )
    assert {(r[0], (int(r[1]) - LO) // 60_000): tuple(int(x) for x in r[2:]) for r in rows} == FLAGS

    cols, rows = _query(conn, f"SELECT * FROM {names['crypto_daily_summary']} ORDER BY pair")
    assert [r[0] for r in rows] == ["BTC-USD", "ETH-USD"]
    for row in rows:
        got = dict(zip(cols, row, strict=True))
        assert str(got["day"])[:10] == DAY
        numbers = tuple(_num(got[c]) for c in ("open", "high", "low", "close", "volume"))
        counts = tuple(int(got[c]) for c in ("trade_count", "bars", "gap_bars", "repaired_bars", "xa_missing_bars"))
        rest = (_num(got["rest_open"]), _num(got["rest_close"]))
        assert numbers + counts + rest == SUMMARY[got["pair"]], got["pair"]


def test_views_on_the_sql_warehouses(warehouse: SqlWarehouse) -> None:
    warehouse.migrate()
    warehouse.upsert(tables.TRADES, TRADES)
    warehouse.upsert(tables.MINUTE_BARS, BARS)
    warehouse.upsert(tables.DAILY_OPEN_CLOSE, DAILY_OPEN_CLOSE)
    with warehouse.connect() as conn:
        _check_views(conn, {v.name: v.name for v in VIEWS})


def test_views_on_snowflake(snowflake_conn: Any, sf_database: str) -> None:
    db = sf_database
    migrate_snowflake(snowflake_conn, database=db)
    load_snowflake(snowflake_conn, tables.TRADES, TRADES, day=DAY, database=db)
    load_snowflake(snowflake_conn, tables.MINUTE_BARS, BARS, day=DAY, database=db)
    load_snowflake(snowflake_conn, tables.DAILY_OPEN_CLOSE, DAILY_OPEN_CLOSE, day=DAY, database=db)
    # The views name their tables in full: queried from another current schema, they still read this one.
    use_schema(snowflake_conn, f"{db}_OTHER")
    _check_views(snowflake_conn, {v.name: f"{db}.POLYGON.{v.snowflake}" for v in VIEWS})


def _canonical(d: Decimal) -> str:
    """The loaders' text for a decimal: fixed point, exactly 18 decimals."""
    return format(d.quantize(D(1).scaleb(-18)), "f")


@pytest.mark.parametrize("seed", range(5))
def test_sqlite_exact_sum_and_max_match_python_decimals(seed: int) -> None:
    """The limb arithmetic behind the SQLite summary, on signed values of every magnitude DECIMAL(38,18) holds."""
    rng = random.Random(seed)
    groups: dict[str, list[Decimal]] = {}
    with localcontext() as ctx:
        ctx.prec = 100  # sums of 38-digit values are exact only with the room for them
        for g in ("a", "b", "c"):
            values = []
            for _ in range(rng.randint(1, 60)):
                digits = rng.randint(1, 38)
                unscaled = rng.randrange(10 ** (digits - 1), 10**digits)
                sign = -1 if g != "a" and rng.random() < 0.5 else 1  # group a: non-negative only
                values.append(D(sign * unscaled).scaleb(-18))
            groups[g] = values
        groups["c"].append(-sum(groups["c"]))  # a group summing to exactly zero
        expected = {g: (max(vs), min(vs), _canonical(sum(vs, D(0)))) for g, vs in groups.items()}
        texts = [(g, _canonical(v)) for g, vs in groups.items() for v in vs]
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (g TEXT, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", texts)
    conn.execute("INSERT INTO t VALUES ('n', NULL)")  # all NULL: SUM/MAX/MIN are NULL
    extra = {"hi": sqlite_exact_max("v"), "lo": sqlite_exact_max("v", largest=False)}
    rows = conn.execute(sqlite_exact_sum("SELECT g, v FROM t", "v", ["g"], extra)).fetchall()
    got = {g: (hi, lo, total) for g, hi, lo, total in rows}
    assert got.pop("n") == (None, None, None)
    assert {g: (D(hi), D(lo), total) for g, (hi, lo, total) in got.items()} == expected
