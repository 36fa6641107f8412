"""Text keys compare exactly in every warehouse: trade ids ``777`` and ``777 `` are two trades.

MariaDB's ``utf8mb4_bin`` is PAD SPACE, so before schema version 4 the two ids were one key and one
row silently replaced the other. Also: the load watermark records what the table holds, and a failed
parity check's reasons are in the run's failure message.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from crypto_platform.assets.raw import raw_trades
from crypto_platform.assets.warehouse import PARITY, WAREHOUSE_ASSETS
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.warehouse import samples
from crypto_platform.warehouse.migrations import EXACT_KEYS_VERSION, SCHEMA_VERSION
from crypto_platform.warehouse.sql import SqlWarehouse, _SqlSchema
from crypto_platform.warehouse.tables import ALL_TABLES, LOAD_WATERMARKS, TRADES
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing

DAY = "2025-11-24"

mysql_trades = WAREHOUSE_ASSETS["mysql_trades"]


def trades_with_ids(*ids: str) -> pd.DataFrame:
    frame = samples.trades(DAY, len(ids), pairs=("BTC-USD",))
    frame["trade_id"] = list(ids)
    frame["exchange"] = 1
    return frame


def mysql_url(request: pytest.FixtureRequest) -> str:
    s = request.getfixturevalue("mysql_server")
    db = request.getfixturevalue("mysql_database")
    return f"mysql+pymysql://{s['user']}:{s['password']}@{s['host']}:{s['port']}/{db}"


def watermark_rows(warehouse: SqlWarehouse, name: str) -> int:
    ph = "?" if warehouse.dialect == "sqlite" else "%s"
    ((rows,),) = warehouse.query(
        f"SELECT rows_loaded FROM {LOAD_WATERMARKS.name} WHERE table_name = {ph} AND day = {ph}", (name, DAY)
    )
    return int(rows)


def test_trailing_spaces_are_part_of_the_key(warehouse: SqlWarehouse) -> None:
    warehouse.migrate()
    warehouse.upsert(TRADES, trades_with_ids("777", "777 ", "777  ", " 777"), day=DAY)
    ids = sorted(warehouse.read_partition(TRADES, DAY)["trade_id"])
    assert ids == sorted(["777", "777 ", "777  ", " 777"])
    assert watermark_rows(warehouse, "crypto_trades") == 4


@pytest.mark.mysql
def test_a_version_3_mariadb_collides_and_version_4_keeps_both_rows(request: pytest.FixtureRequest) -> None:
    warehouse = SqlWarehouse(mysql_url(request))
    assert warehouse.migrate(target=EXACT_KEYS_VERSION - 1) == list(range(1, EXACT_KEYS_VERSION))
    # The old collation pads: the second id replaces the first (what version 4 fixes).
    warehouse.upsert(TRADES, trades_with_ids("777", "777 "))
    assert len(warehouse.read_partition(TRADES, DAY)) == 1
    assert warehouse.migrate() == list(range(EXACT_KEYS_VERSION, SCHEMA_VERSION + 1))
    with warehouse.connect() as conn:
        schema = _SqlSchema(conn, "mysql", warehouse.database)
        collation = schema.text_collation()
        assert collation in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")
        assert {t.name: schema.table_collation(t.name) for t in ALL_TABLES} == {t.name: collation for t in ALL_TABLES}
    assert len(warehouse.read_partition(TRADES, DAY)) == 1  # the row kept across the migration
    warehouse.upsert(TRADES, trades_with_ids("777", "777 "), day=DAY)
    assert sorted(warehouse.read_partition(TRADES, DAY)["trade_id"]) == ["777", "777 "]
    assert watermark_rows(warehouse, "crypto_trades") == 2
    # A rebuild's stale-row delete compares keys the same way: dropping "777 " deletes just it.
    rebuilt = warehouse.rebuild_day(TRADES, DAY, trades_with_ids("777"))
    assert rebuilt.deleted == 1 and rebuilt.day_rows == 1
    assert list(warehouse.read_partition(TRADES, DAY)["trade_id"]) == ["777"]
    assert warehouse.migrate() == []


def test_rows_loaded_is_what_the_day_holds_after_the_load(warehouse: SqlWarehouse) -> None:
    warehouse.migrate()
    first = warehouse.upsert(TRADES, trades_with_ids(*map(str, range(10))), day=DAY)
    assert (first.rows, first.day_rows, watermark_rows(warehouse, "crypto_trades")) == (10, 10, 10)
    # Three rows, two of them already there: the batch is 3, the day holds 11.
    again = warehouse.upsert(TRADES, trades_with_ids("0", "1", "new"), day=DAY)
    assert (again.rows, again.day_rows, watermark_rows(warehouse, "crypto_trades")) == (3, 11, 11)
    rebuilt = warehouse.rebuild_day(TRADES, DAY, trades_with_ids("a", "b"))
    assert (rebuilt.day_rows, watermark_rows(warehouse, "crypto_trades")) == (2, 2)


def _trade(trade_id: str, i: int) -> bytes:
    t = DAY1_MS + i
    return (
        f'[{{"ev":"XT","pair":"BTC-USD","p":97000.5,"s":0.25,"t":{t},"c":[2],"i":"{trade_id}","x":1,"r":{t + 5}}}]'
    ).encode()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_ids_differing_by_a_trailing_space_land_as_two_rows(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    landing = Landing(tmp_path)
    landing.segment(_trade("777", 0), _trade("777 ", 1))
    lake = LakeResource(root=str(tmp_path / "lake"))
    assert dg.materialize(
        [raw_trades], partition_key=DAY, resources={"stream": landing.resource(), "lake": lake}
    ).success
    url = mysql_url(request) if backend == "mysql" else f"sqlite:///{tmp_path / 'wh.sqlite'}"
    warehouse = SqlWarehouse(url)
    resources = {"sql_tables": SqlTablesResource(url=url), "lake": lake, "stream": landing.resource()}
    result = dg.materialize([mysql_trades], partition_key=DAY, resources=resources)
    assert result.success
    (parity,) = result.get_asset_check_evaluations()
    assert parity.passed, parity.metadata["details"].value
    assert sorted(warehouse.read_partition(TRADES, DAY)["trade_id"]) == ["777", "777 "]
    assert watermark_rows(warehouse, "crypto_trades") == 2


def test_a_failed_parity_names_the_rows_in_the_run_failure(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    landing.segment(_trade("776", 0), _trade("777", 1))
    lake = LakeResource(root=str(tmp_path / "lake"))
    assert dg.materialize(
        [raw_trades], partition_key=DAY, resources={"stream": landing.resource(), "lake": lake}
    ).success
    url = f"sqlite:///{tmp_path / 'wh.sqlite'}"
    warehouse = SqlWarehouse(url)
    warehouse.migrate()
    # A database that loses a row behind the loader's back (a trigger standing in for any such fault).
    with warehouse.connect() as conn:
        conn.execute(
            "CREATE TRIGGER lose_777 AFTER INSERT ON crypto_trades WHEN NEW.trade_id = '777' "
            "BEGIN DELETE FROM crypto_trades WHERE trade_id = '777'; END"
        )
        conn.commit()
    resources = {"sql_tables": SqlTablesResource(url=url), "lake": lake, "stream": landing.resource()}
    result = dg.materialize([mysql_trades], partition_key=DAY, resources=resources, raise_on_error=False)
    assert not result.success
    (parity,) = [e for e in result.get_asset_check_evaluations() if e.check_name == PARITY]
    assert not parity.passed
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert f"mysql_trades: {PARITY} did not pass" in message
    assert "trade_id='777'): only in lake" in message and "776" not in message
