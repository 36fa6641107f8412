"""Numbers in exponent form and trades without an id, from the wire through the lake into every warehouse.

Polygon sends JSON numbers; a serialiser may write small ones in exponent form (``1e-05``,
``1.5E-7``). They must arrive exactly, never through a float. A trade without ``i`` gets the id
``h:`` + the first 20 hex digits of sha1 of ``t|p|s|c`` (values as the wire text parsed exactly), so
the same trade sent twice is one row and two different trades are two.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from crypto_platform.assets.raw import raw_trades
from crypto_platform.assets.warehouse import WAREHOUSE_ASSETS
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.resources.snowflake import build_snowflake_resource
from crypto_platform.settings import Settings
from crypto_platform.warehouse.snowflake import read_snowflake_partition
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.tables import TRADES
from crypto_platform_tests.assets.test_warehouse_trades import DAY, parity, sql_url
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing

T = DAY1_MS + 1_000

mysql_trades = WAREHOUSE_ASSETS["mysql_trades"]
snowflake_trades = WAREHOUSE_ASSETS["snowflake_trades"]


def _trade(body: str) -> bytes:
    return f'[{{"ev":"XT","pair":"BTC-USD",{body},"x":1,"r":{T + 50}}}]'.encode()


FRAMES = [
    _trade(f'"p":1.5E-7,"s":1e-05,"t":{T},"c":[1],"i":"exp-1"'),
    _trade(f'"p":6.5E+4,"s":2.5e-3,"t":{T + 1},"c":[2],"i":"exp-2"'),
    _trade(f'"p":97000.5,"s":0.25,"t":{T + 2},"c":[2]'),  # no id
    _trade(f'"p":1E-8,"s":3E+2,"t":{T + 3},"c":[1]'),  # no id, exponent form
    _trade(f'"p":97000.5,"s":0.25,"t":{T + 2},"c":[2]'),  # the first id-less trade again
]


def h(basis: str) -> str:
    return "h:" + hashlib.sha1(basis.encode()).hexdigest()[:20]


# (trade_id, price, size): the exact values the wire text means.
EXPECTED = {
    ("exp-1", Decimal("0.00000015"), Decimal("0.00001")),
    ("exp-2", Decimal("65000"), Decimal("0.0025")),
    (h(f"{T + 2}|97000.5|0.25|[2]"), Decimal("97000.5"), Decimal("0.25")),
    (h(f"{T + 3}|1E-8|3E+2|[1]"), Decimal("0.00000001"), Decimal("300")),
}


def rows_of(records: list[dict[str, object]]) -> set[tuple[str, Decimal, Decimal]]:
    return {(str(r["trade_id"]), Decimal(str(r["price"])), Decimal(str(r["size"]))) for r in records}


def lake_day(tmp_path: Path) -> tuple[Landing, LakeResource]:
    landing = Landing(tmp_path)
    landing.segment(*FRAMES)
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = {"stream": landing.resource(), "lake": lake}
    assert dg.materialize([raw_trades], partition_key=DAY, resources=resources).success
    return landing, lake


def test_the_lake_keeps_exponent_numbers_exactly_and_ids_trades_without_one(tmp_path: Path) -> None:
    _, lake = lake_day(tmp_path)
    assert rows_of(lake.read_partition("raw_trades", DAY).to_pylist()) == EXPECTED


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_exponent_numbers_and_hash_ids_reach_the_sql_tables_exactly(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    landing, lake = lake_day(tmp_path)
    if backend == "mysql":
        url = sql_url(request.getfixturevalue("mysql_server"), request.getfixturevalue("mysql_database"))
    else:
        url = f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    resources = {"sql_tables": SqlTablesResource(url=url), "lake": lake, "stream": landing.resource()}
    result = dg.materialize([mysql_trades], partition_key=DAY, resources=resources)
    assert result.success and parity(result).passed
    assert rows_of(SqlWarehouse(url).read_partition(TRADES, DAY).to_dict("records")) == EXPECTED


def test_exponent_numbers_and_hash_ids_reach_snowflake_exactly(tmp_path: Path, fakesnow_server: Settings) -> None:
    landing, lake = lake_day(tmp_path)
    snowflake = build_snowflake_resource(fakesnow_server)
    resources = {"snowflake": snowflake, "lake": lake, "stream": landing.resource()}
    result = dg.materialize([snowflake_trades], partition_key=DAY, resources=resources)
    assert result.success and parity(result).passed
    with snowflake.get_connection() as conn:
        frame = read_snowflake_partition(conn, TRADES, DAY)
    assert rows_of(frame.to_dict("records")) == EXPECTED
