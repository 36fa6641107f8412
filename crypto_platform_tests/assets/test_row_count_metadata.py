"""``dagster/row_count`` means the rows a partition holds (Dagster's meaning) on the warehouse copies;
what one run wrote is ``batch_rows``."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest

from crypto_platform.assets.raw import raw_trades
from crypto_platform.assets.warehouse import WAREHOUSE_ASSETS
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.resources.snowflake import build_snowflake_resource
from crypto_platform.stream_batches import SEGMENTS_TAG
from crypto_platform_tests.conftest import local_settings
from crypto_platform_tests.test_stream_sensor import DAY1_MS, DAY2_MS, Landing, trades_frame

DAY1, DAY2 = "2025-11-24", "2025-11-25"

mysql_trades = WAREHOUSE_ASSETS["mysql_trades"]
snowflake_trades = WAREHOUSE_ASSETS["snowflake_trades"]


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> list[dict[str, object]]:
    return [
        {k: v.value for k, v in m.metadata.items()} | {"partition": m.partition}
        for m in result.asset_materializations_for_node(asset)
    ]


@pytest.mark.parametrize("backend", ["sqlite", "snowflake"])
def test_row_count_is_the_partitions_rows_and_batch_rows_what_the_run_wrote(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    landing = Landing(tmp_path)
    lake = LakeResource(root=str(tmp_path / "lake"))
    if backend == "snowflake":
        asset, name = snowflake_trades, "snowflake_trades"
        server = request.getfixturevalue("fakesnow_server")
        # A database of its own on the shared server: other tests load the same day.
        own = local_settings(
            server.state_dir,
            CRYPTO_FAKESNOW_PORT=str(server.fakesnow_port),
            SNOWFLAKE_DATABASE=f"ROWS_{uuid.uuid4().hex[:8].upper()}",
        )
        warehouse: dict[str, object] = {"snowflake": build_snowflake_resource(own)}
    else:
        asset, name = mysql_trades, "mysql_trades"
        warehouse = {"sql_tables": SqlTablesResource(url=f"sqlite:///{tmp_path / 'wh.sqlite'}")}
    resources = {"stream": landing.resource(), "lake": lake, **warehouse}

    def stream_batch(segments: str) -> dict[str, object]:
        tags = {SEGMENTS_TAG: segments}
        result = dg.materialize([raw_trades, asset], partition_key=DAY1, tags=tags, resources=resources)
        assert result.success
        (meta,) = metadata(result, name)
        return meta

    landing.segment(trades_frame(0, 30, DAY1_MS))
    first = stream_batch("1-1")
    assert (first["batch_rows"], first["dagster/row_count"]) == (30, 30)
    landing.segment(trades_frame(30, 12, DAY1_MS))
    second = stream_batch("2-2")
    assert (second["batch_rows"], second["dagster/row_count"]) == (12, 42)
    assert second["day_rows"] == {DAY1: 42}

    # A run over two days: one set of metadata lands on both partitions, so no single row count.
    landing.segment(trades_frame(100, 7, DAY2_MS))
    tags = {"dagster/asset_partition_range_start": DAY1, "dagster/asset_partition_range_end": DAY2}
    assert dg.materialize([raw_trades], tags=tags, resources=resources).success
    result = dg.materialize([asset], tags=tags, resources=resources)
    assert result.success
    metas = metadata(result, name)
    assert sorted(m["partition"] for m in metas) == [DAY1, DAY2]
    for meta in metas:
        assert "dagster/row_count" not in meta
        assert meta["day_rows"] == {DAY1: 42, DAY2: 7} and meta["batch_rows"] == 49
