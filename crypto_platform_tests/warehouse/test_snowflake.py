"""The Snowflake loader through the real connector against a fakesnow server of our own."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

from crypto_platform.resources.snowflake import build_snowflake_resource
from crypto_platform.settings import Settings
from crypto_platform.warehouse import samples
from crypto_platform.warehouse.errors import RowRejectedError
from crypto_platform.warehouse.migrations import SCHEMA_VERSION
from crypto_platform.warehouse.parity import compare_snowflake
from crypto_platform.warehouse.snowflake import (
    load_snowflake,
    migrate_snowflake,
    read_snowflake_partition,
    snowflake_columns,
    snowflake_schema_version,
)
from crypto_platform.warehouse.tables import ALL_TABLES, MINUTE_BARS, TRADES

DAY = "2025-11-20"
EXACT = [Decimal("0.000000000123456789"), Decimal("97123.450000000000000000"), Decimal("12345678901234567890.5")]


def _rows(conn: Any, db: str) -> list[tuple[str, ...]]:
    df = read_snowflake_partition(conn, TRADES, DAY, database=db)
    return sorted(tuple(str(v) for v in r) for r in df.itertuples(index=False))


@pytest.mark.parametrize("start", range(1, SCHEMA_VERSION))
def test_migration_upgrades_in_place(snowflake_conn: Any, sf_database: str, start: int) -> None:
    db = sf_database
    assert migrate_snowflake(snowflake_conn, target=start, database=db) == list(range(1, start + 1))
    later = {c.name for c in MINUTE_BARS.columns if c.added_in > start}
    assert not later & snowflake_columns(snowflake_conn, MINUTE_BARS, database=db)
    cur = snowflake_conn.cursor()
    cur.execute(f"INSERT INTO {db}.POLYGON.MINUTE_BARS (PAIR, MINUTE_MS, CLOSE) VALUES ('BTC-USD', 1, 97123.45)")
    assert migrate_snowflake(snowflake_conn, database=db) == list(range(start + 1, SCHEMA_VERSION + 1))
    assert snowflake_schema_version(snowflake_conn, database=db) == SCHEMA_VERSION
    for t in ALL_TABLES:
        if t.snowflake:
            assert {c.name for c in t.columns} <= snowflake_columns(snowflake_conn, t, database=db)
    assert {"repaired", "minute_time"} <= snowflake_columns(snowflake_conn, MINUTE_BARS, database=db)
    cur.execute(f"SELECT CLOSE, REPAIRED FROM {db}.POLYGON.MINUTE_BARS")
    assert cur.fetchall() == [(Decimal("97123.45"), None)]
    assert migrate_snowflake(snowflake_conn, database=db) == []


def test_exact_idempotent_loads_and_parity(snowflake_conn: Any, sf_database: str) -> None:
    db = sf_database
    migrate_snowflake(snowflake_conn, database=db)
    lake = samples.trades(DAY, 2_000, arrow_decimals=True)
    exact = samples.trades(DAY, 3, first_id=10_000)
    exact["price"] = pd.Series(EXACT, dtype=object)
    lake_all = pd.concat([lake, exact], ignore_index=True)

    load_snowflake(snowflake_conn, TRADES, lake, day=DAY, database=db)
    load_snowflake(snowflake_conn, TRADES, exact, day=DAY, database=db)
    snap = _rows(snowflake_conn, db)
    assert len(snap) == 2_003
    load_snowflake(snowflake_conn, TRADES, lake, day=DAY, database=db)  # re-run: unchanged
    assert _rows(snowflake_conn, db) == snap
    result = load_snowflake(snowflake_conn, TRADES, lake_all, day=DAY, rebuild=True, database=db)
    assert result.rows == 2_003 and _rows(snowflake_conn, db) == snap

    back = read_snowflake_partition(snowflake_conn, TRADES, DAY, database=db)
    prices = back[back["trade_id"].isin(["10000", "10001", "10002"])].sort_values("trade_id")["price"]
    assert [Decimal(v) for v in prices] == EXACT
    cur = snowflake_conn.cursor()
    cur.execute(f"SELECT MIN(EVENT_TIME) FROM {db}.POLYGON.TRADES")
    assert str(cur.fetchone()[0]).startswith("2025-11-20 00:00:00")

    assert compare_snowflake(snowflake_conn, TRADES, DAY, lake_all, database=db).ok
    cur.execute(f"UPDATE {db}.POLYGON.TRADES SET SIZE = 5 WHERE TRADE_ID = '7'")
    report = compare_snowflake(snowflake_conn, TRADES, DAY, lake_all, database=db)
    assert not report.ok and any("trade_id='7'" in d and "size" in d for d in report.differences)


def test_rebuild_drops_rows_the_day_no_longer_has(snowflake_conn: Any, sf_database: str) -> None:
    db = sf_database
    migrate_snowflake(snowflake_conn, database=db)
    load_snowflake(snowflake_conn, TRADES, samples.trades(DAY, 100), day=DAY, database=db)
    result = load_snowflake(snowflake_conn, TRADES, samples.trades(DAY, 40), day=DAY, rebuild=True, database=db)
    assert result.deleted == 60
    assert len(read_snowflake_partition(snowflake_conn, TRADES, DAY, database=db)) == 40


def test_too_wide_value_names_the_row_and_writes_nothing(snowflake_conn: Any, sf_database: str) -> None:
    db = sf_database
    migrate_snowflake(snowflake_conn, database=db)
    bad = samples.trades(DAY, 500)
    bad.loc[321, "size"] = Decimal("0.0000000000000000001")  # 19 decimal places
    with pytest.raises(RowRejectedError, match=r"trade_id='321'.*more than 18 decimal places"):
        load_snowflake(snowflake_conn, TRADES, bad, day=DAY, database=db)
    assert _rows(snowflake_conn, db) == []


def test_through_dagster_snowflake_resource(fakesnow_server: Settings, sf_database: str) -> None:
    """The asset path: pass ``SnowflakeResource.get_connection`` (a context-manager factory)."""
    resource = build_snowflake_resource(fakesnow_server)
    migrate_snowflake(resource.get_connection, database=sf_database)
    bars = samples.minute_bars(DAY, minutes=20)
    result = load_snowflake(resource.get_connection, MINUTE_BARS, bars, day=DAY, database=sf_database)
    assert result.rows == len(bars)
    back = read_snowflake_partition(resource.get_connection, MINUTE_BARS, DAY, database=sf_database)
    assert len(back) == len(bars) and set(back["repaired"].dropna()) == {True, False}


def test_one_connection_loads_into_two_databases_in_turn(snowflake_conn: Any, sf_database: str) -> None:
    # The connection remembers its schema, columns and stage; a temporary stage lives in the schema
    # it was made in, so a load into another database needs one there too.
    other = f"{sf_database}_B"
    lake = samples.trades(DAY, 50, arrow_decimals=True)
    for db in (sf_database, other, sf_database):
        migrate_snowflake(snowflake_conn, database=db)
        load_snowflake(snowflake_conn, TRADES, lake, day=DAY, database=db)
    assert len(_rows(snowflake_conn, sf_database)) == len(_rows(snowflake_conn, other)) == 50
