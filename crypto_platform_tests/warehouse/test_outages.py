"""A database outage under the running platform: a MariaDB of the test's own is stopped between two runs.

What must hold (the issue "Warehouse"): the per-batch run that meets the outage fails with a message
naming host, port and MYSQL_URL (never the password), the new rows stay in the lake, and once the
server is back the next per-batch run converges: the table is the lake day exactly, no duplicates,
parity passes. Everything is real: mariadbd, the Dagster assets, the landing log, the lake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from crypto_platform.assets.raw import raw_trades
from crypto_platform.assets.warehouse import PARITY, WAREHOUSE_ASSETS
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.stream_batches import SEGMENTS_TAG
from crypto_platform.warehouse.parity import compare
from crypto_platform.warehouse.sources import lake_frame
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.tables import TRADES
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

pytestmark = pytest.mark.mysql

DAY = "2025-11-24"
PASSWORD = "0utage-Pw-x7"

mysql_trades = WAREHOUSE_ASSETS["mysql_trades"]


def _run(
    assets: list[dg.AssetsDefinition], resources: dict[str, Any], instance: dg.DagsterInstance, seq: int | None
) -> dg.ExecuteInProcessResult:
    """One run for DAY; ``seq`` given: a stream-sensor run covering that segment (tag ``crypto/segments``)."""
    tags = {SEGMENTS_TAG: f"{seq}-{seq}"} if seq is not None else None
    return dg.materialize(
        assets, partition_key=DAY, resources=resources, instance=instance, tags=tags, raise_on_error=False
    )


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(e.step_failure_data.error.to_string() for e in result.get_step_failure_events())


def _parity_passed(result: dg.ExecuteInProcessResult) -> bool:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == PARITY]
    return evaluation.passed


def test_an_outage_fails_the_batch_keeps_the_lake_and_the_next_run_converges(
    tmp_path: Path, throwaway_mariadb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = throwaway_mariadb
    server.execute(
        "CREATE DATABASE market CHARACTER SET utf8mb4",
        f"CREATE USER 'loader'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'",
        "GRANT ALL PRIVILEGES ON market.* TO 'loader'@'127.0.0.1'",
    )
    # As in production: the resource holds the variable's name, the URL with its password is in the environment.
    monkeypatch.setenv("MYSQL_URL", server.url("loader", PASSWORD, "market"))
    landing = Landing(tmp_path)
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = {
        "sql_tables": SqlTablesResource(url=dg.EnvVar("MYSQL_URL")),
        "lake": lake,
        "stream": landing.resource(),
    }
    warehouse = SqlWarehouse(server.url("loader", PASSWORD, "market"))

    with dg.instance_for_test() as instance:
        # 1. a day in the lake and in MySQL (a rebuild run, as from the UI)
        landing.segment(trades_frame(0, 40, DAY1_MS))
        assert _run([raw_trades], resources, instance, None).success
        first = _run([mysql_trades], resources, instance, None)
        assert first.success and _parity_passed(first)
        assert warehouse.count_partition(TRADES, DAY) == 40
        mark = warehouse.watermark(TRADES, DAY)

        # 2. the database goes away; the stream goes on: new trades and a re-sent frame land
        server.stop()
        seq = landing.segment(trades_frame(40, 30, DAY1_MS), trades_frame(100, 5, DAY1_MS, dup_of=36))
        assert _run([raw_trades], resources, instance, seq).success
        failed = _run([mysql_trades], resources, instance, seq)
        assert not failed.success
        text = _failure_text(failed)
        assert f"127.0.0.1:{server.port}" in text and "MYSQL_URL" in text, text
        everything = "\n".join(repr(entry) for entry in instance.all_logs(failed.run_id))
        assert PASSWORD not in everything and PASSWORD not in text
        # the rows are still in the lake, nowhere lost
        in_lake = lake_frame(lake.read_partition("raw_trades", DAY), TRADES)
        assert len(in_lake) == 70 and in_lake["trade_id"].is_unique

        # 3. the server comes back on the same datadir and port; one more segment lands meanwhile
        server.start()
        assert warehouse.count_partition(TRADES, DAY) == 40 and warehouse.watermark(TRADES, DAY) == mark
        seq = landing.segment(trades_frame(70, 10, DAY1_MS))
        assert _run([raw_trades], resources, instance, seq).success
        again = _run([mysql_trades], resources, instance, seq)
        assert again.success and _parity_passed(again), _failure_text(again)

    lake_day = lake_frame(lake.read_partition("raw_trades", DAY), TRADES)
    table = warehouse.read_partition(TRADES, DAY)
    assert len(lake_day) == len(table) == 80
    assert not table.duplicated(subset=list(TRADES.key)).any()
    assert compare(TRADES, lake_day, table).ok  # every column of every row, exactly
    assert warehouse.watermark(TRADES, DAY) == seq
