"""mysql_trades and snowflake_trades: a lake day into MariaDB, the SQLite stand-in and fakesnow, exactly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from crypto_platform.assets.raw import raw_trades
from crypto_platform.assets.warehouse import PARITY, WAREHOUSE_ASSETS
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.resources.snowflake import build_snowflake_resource
from crypto_platform.settings import Settings
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.tables import TRADES
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

DAY = "2025-11-24"

mysql_trades = WAREHOUSE_ASSETS["mysql_trades"]
snowflake_trades = WAREHOUSE_ASSETS["snowflake_trades"]


def lake_day(tmp_path: Path) -> tuple[Landing, LakeResource]:
    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 40, DAY1_MS), trades_frame(100, 5, DAY1_MS, dup_of=0))
    lake = LakeResource(root=str(tmp_path / "lake"))
    assert dg.materialize(
        [raw_trades], partition_key=DAY, resources={"stream": landing.resource(), "lake": lake}
    ).success
    return landing, lake


def parity(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == PARITY]
    return evaluation


def sql_url(mysql_server: dict[str, object], database: str) -> str:
    s = mysql_server
    return f"mysql+pymysql://{s['user']}:{s['password']}@{s['host']}:{s['port']}/{database}"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_a_lake_day_lands_in_the_sql_tables_exactly_and_reruns_are_harmless(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    landing, lake = lake_day(tmp_path)
    if backend == "mysql":
        url = sql_url(request.getfixturevalue("mysql_server"), request.getfixturevalue("mysql_database"))
    else:
        url = f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    resources = {"sql_tables": SqlTablesResource(url=url), "lake": lake, "stream": landing.resource()}
    for _ in range(2):
        result = dg.materialize([mysql_trades], partition_key=DAY, resources=resources)
        assert result.success and parity(result).passed
    rows = SqlWarehouse(url).read_partition(TRADES, DAY)
    assert len(rows) == 40  # the re-sent frame was de-duplicated in the lake
    lake_rows = lake.read_partition("raw_trades", DAY).to_pylist()
    by_key = {(r["pair"], r["exchange"], r["trade_id"]): r for r in lake_rows}
    for row in rows.to_dict("records"):
        expected = by_key[(row["pair"], int(row["exchange"]), row["trade_id"])]
        assert Decimal(str(row["price"])) == expected["price"] and Decimal(str(row["size"])) == expected["size"]


def test_a_lake_day_lands_in_snowflake_exactly(tmp_path: Path, fakesnow_server: Settings) -> None:
    landing, lake = lake_day(tmp_path)
    resources = {"snowflake": build_snowflake_resource(fakesnow_server), "lake": lake, "stream": landing.resource()}
    for _ in range(2):
        result = dg.materialize([snowflake_trades], partition_key=DAY, resources=resources)
        assert result.success and parity(result).passed
    assert parity(result).metadata["rows_compared"].value == 40


def test_an_unreachable_mysql_fails_the_run_naming_the_setting(tmp_path: Path) -> None:
    from crypto_platform_tests.conftest import free_port

    landing, lake = lake_day(tmp_path)
    url = f"mysql+pymysql://loader:secret-pw-9@127.0.0.1:{free_port()}/market"
    with pytest.raises(Exception, match="MYSQL_URL") as info:
        dg.materialize(
            [mysql_trades],
            partition_key=DAY,
            resources={"sql_tables": SqlTablesResource(url=url), "lake": lake, "stream": landing.resource()},
        )
    assert "secret-pw-9" not in str(info.value)
    assert lake.read_partition("raw_trades", DAY) is not None  # the data stays in the lake
