"""A value that does not fit its column fails the warehouse asset's run, names the row and the column, and
leaves the day's rows in the table exactly as they were: per-batch and rebuild runs, SQLite, MariaDB, fakesnow.

The value comes the real way: a trade id of 81 characters (the column holds 80) arrives on the wire,
lands, and ``raw_trades`` keeps it (the lake has no width limits). A price with 21 integer digits
cannot get this far: the lake's decimal128(38,18) decoder refuses it when the segment is read, so
that case is tested at the loader (test_sql.py, test_snowflake.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from dagster_snowflake import SnowflakeResource

from crypto_platform.assets.raw import raw_trades
from crypto_platform.assets.warehouse import WAREHOUSE_ASSETS
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.resources.snowflake import LOCAL_LOGIN_TIMEOUT_S, LOCAL_NETWORK_TIMEOUT_S, local_connection_args
from crypto_platform.stream_batches import SEGMENTS_TAG
from crypto_platform.warehouse.snowflake import read_snowflake_partition, snowflake_watermark
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.tables import TRADES
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

DAY = "2025-11-24"
LONG_ID = "X" * 81

mysql_trades = WAREHOUSE_ASSETS["mysql_trades"]
snowflake_trades = WAREHOUSE_ASSETS["snowflake_trades"]


def _frame_with_a_long_trade_id() -> bytes:
    trades = [
        {"ev": "XT", "pair": "BTC-USD", "p": 97010.5, "s": 0.25, "t": DAY1_MS + 900 + i, "i": trade_id, "x": 1,
         "c": [2], "r": DAY1_MS + 905 + i}
        for i, trade_id in enumerate(["good-1", LONG_ID, "good-2"])
    ]  # fmt: skip
    return json.dumps(trades).encode()


def _snapshot(frame: pd.DataFrame) -> list[tuple[str, ...]]:
    return sorted(tuple(str(v) for v in row) for row in frame[list(TRADES.names)].itertuples(index=False))


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(e.step_failure_data.error.to_string() for e in result.get_step_failure_events())


Backend = tuple[dg.AssetsDefinition, dict[str, Any], Callable[[], list[tuple[str, ...]]], Callable[[], int | None]]


def _backend(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """(asset, its warehouse resource, the day's rows as a snapshot, the day's load watermark)."""
    if name == "snowflake":
        sf = request.getfixturevalue("fakesnow_server").snowflake
        db = request.getfixturevalue("sf_database")
        resource = SnowflakeResource(
            account=sf.account,
            user=sf.user,
            password="snow",
            database=db,
            schema="POLYGON",
            network_timeout=LOCAL_NETWORK_TIMEOUT_S,
            login_timeout=LOCAL_LOGIN_TIMEOUT_S,
            additional_snowflake_connection_args=local_connection_args(sf),
        )

        def sf_rows() -> list[tuple[str, ...]]:
            return _snapshot(read_snowflake_partition(resource.get_connection, TRADES, DAY, database=db))

        return (
            snowflake_trades,
            {"snowflake": resource},
            sf_rows,
            lambda: snowflake_watermark(resource.get_connection, TRADES, DAY, database=db),
        )
    if name == "mysql":
        s, db = request.getfixturevalue("mysql_server"), request.getfixturevalue("mysql_database")
        url = f"mysql+pymysql://{s['user']}:{s['password']}@{s['host']}:{s['port']}/{db}"
    else:
        url = f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    wh = SqlWarehouse(url)
    return (
        mysql_trades,
        {"sql_tables": SqlTablesResource(url=url)},
        lambda: _snapshot(wh.read_partition(TRADES, DAY)),
        lambda: wh.watermark(TRADES, DAY),
    )


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql), "snowflake"])
def test_a_too_long_value_fails_the_run_names_row_and_column_and_writes_nothing(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    asset, warehouse, rows, watermark = _backend(backend, request, tmp_path)
    landing = Landing(tmp_path)
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = {**warehouse, "lake": lake, "stream": landing.resource()}

    def run(assets: list[dg.AssetsDefinition], seq: int | None) -> dg.ExecuteInProcessResult:
        tags = {SEGMENTS_TAG: f"{seq}-{seq}"} if seq is not None else None
        return dg.materialize(assets, partition_key=DAY, resources=resources, tags=tags, raise_on_error=False)

    landing.segment(trades_frame(0, 40, DAY1_MS))
    assert run([raw_trades], None).success and run([asset], None).success
    before, mark = rows(), watermark()
    assert len(before) == 40

    seq = landing.segment(_frame_with_a_long_trade_id())
    assert run([raw_trades], seq).success
    assert LONG_ID in lake.read_partition("raw_trades", DAY).column("trade_id").to_pylist()

    for tag in (seq, None):  # the stream sensor's per-batch run, then a rebuild from the UI
        result = run([asset], tag)
        assert not result.success
        text = _failure_text(result)
        assert "RowRejectedError" in text, text
        assert f"(pair='BTC-USD', exchange=1, trade_id='{LONG_ID}')" in text, text  # the row, by natural key
        assert "trade_id is 81 characters long; the column holds 80" in text, text  # the column
        assert rows() == before and watermark() == mark  # nothing of the partition was written
