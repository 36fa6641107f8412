"""daily_open_close materialized by Dagster against the simulator's REST API."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from crypto_platform.assets.daily import daily_open_close
from crypto_platform.polygon.rest_client import PolygonRest
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.polygon import PolygonRestResource
from crypto_platform.settings import SIMULATOR_API_KEY
from crypto_platform.simulator.server import Simulator, SimulatorConfig

PAIRS = ["BTC-USD", "SHIB-USD"]


@pytest.fixture(scope="module")
def rest_simulator() -> Simulator:
    sim = Simulator(SimulatorConfig(rate=4, pairs=tuple(PAIRS)))
    with sim.running_in_thread():
        yield sim


def resources(sim: Simulator, root: Path) -> dict[str, object]:
    return {
        "polygon_rest": PolygonRestResource(base_url=sim.rest_url, api_key=SIMULATOR_API_KEY, pairs=PAIRS),
        "lake": LakeResource(root=str(root)),
    }


def read(root: Path, day: str) -> pa.Table:
    table = LakeResource(root=str(root)).read_partition("daily_open_close", day)
    assert table is not None
    return table


def test_a_day_is_materialized_with_exact_values(rest_simulator: Simulator, tmp_path: Path) -> None:
    day = "2025-06-02"
    result = dg.materialize([daily_open_close], partition_key=day, resources=resources(rest_simulator, tmp_path))
    assert result.success
    table = read(tmp_path, day).to_pylist()
    assert [r["pair"] for r in table] == PAIRS and all(r["status"] == "ok" for r in table)
    direct = PolygonRest(rest_simulator.rest_url, SIMULATOR_API_KEY)
    for row in table:
        expected = direct.daily_open_close(row["pair"], date.fromisoformat(day))
        assert expected is not None
        assert row["open"] == Decimal(expected["open"]) and row["close"] == Decimal(expected["close"])
        assert row["open_trade_id"] == expected["openTrades"][0]["i"]
        assert row["open_trade_ms"] <= row["close_trade_ms"]
    shib = next(r for r in table if r["pair"] == "SHIB-USD")
    assert shib["open"] < 1 and shib["open"].as_tuple().exponent < -8  # tiny prices survive exactly
    mat = result.asset_materializations_for_node("daily_open_close")[0]
    assert mat.metadata["dagster/row_count"].value == 2
    assert mat.metadata["days_without_data"].value == "none"


def test_a_day_without_data_is_recorded_not_skipped(rest_simulator: Simulator, tmp_path: Path) -> None:
    # The simulator has no market for ZZZ-USD, like a pair Polygon has no data for on a day.
    res = {
        "polygon_rest": PolygonRestResource(
            base_url=rest_simulator.rest_url, api_key=SIMULATOR_API_KEY, pairs=["BTC-USD", "ZZZ-USD"]
        ),
        "lake": LakeResource(root=str(tmp_path)),
    }
    day = "2025-06-02"
    result = dg.materialize([daily_open_close], partition_key=day, resources=res)
    rows = read(tmp_path, day).to_pylist()
    assert [(r["pair"], r["status"]) for r in rows] == [("BTC-USD", "ok"), ("ZZZ-USD", "no_data")]
    assert rows[1]["open"] is None and rows[1]["close"] is None
    text = result.asset_materializations_for_node("daily_open_close")[0].metadata["days_without_data"].value
    assert text == f"ZZZ-USD {day}"


def test_rematerializing_gives_identical_rows(rest_simulator: Simulator, tmp_path: Path) -> None:
    day = "2025-06-03"
    res = resources(rest_simulator, tmp_path)
    dg.materialize([daily_open_close], partition_key=day, resources=res)
    first = read(tmp_path, day).drop(["fetched_ms"])
    dg.materialize([daily_open_close], partition_key=day, resources=res)
    assert read(tmp_path, day).drop(["fetched_ms"]).equals(first)


def test_a_backfill_range_runs_as_one_multi_partition_run(rest_simulator: Simulator, tmp_path: Path) -> None:
    tags = {"dagster/asset_partition_range_start": "2025-06-04", "dagster/asset_partition_range_end": "2025-06-06"}
    result = dg.materialize([daily_open_close], tags=tags, resources=resources(rest_simulator, tmp_path))
    assert result.success
    mats = result.asset_materializations_for_node("daily_open_close")
    keys = sorted(m.partition for m in mats)
    assert keys == ["2025-06-04", "2025-06-05", "2025-06-06"]
    assert LakeResource(root=str(tmp_path)).days("daily_open_close") == keys
    assert all(read(tmp_path, key).num_rows == 2 for key in keys)
    for mat in mats:
        # dagster/row_count is each partition's row count (one row per pair), not the range's.
        held = read(tmp_path, str(mat.partition)).num_rows
        assert mat.metadata["dagster/row_count"].value == held == 2
        assert mat.metadata["rows_written"].value == 3 * held


def test_a_refused_key_fails_the_run_naming_the_setting(rest_simulator: Simulator, tmp_path: Path) -> None:
    bad = {
        "polygon_rest": PolygonRestResource(base_url=rest_simulator.rest_url, api_key="not-the-key", pairs=PAIRS),
        "lake": LakeResource(root=str(tmp_path)),
    }
    with pytest.raises(Exception, match="POLYGON_API_KEY") as info:
        dg.materialize([daily_open_close], partition_key="2025-06-02", resources=bad)
    assert "not-the-key" not in str(info.value)
