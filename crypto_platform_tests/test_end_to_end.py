"""End to end: simulator -> ingester -> stream sensor -> raw -> minute bars -> MySQL, Snowflake, MLflow.

Everything is real: the simulator on a loopback socket, the ingester as the detached process the
sensor starts, sensor ticks evaluated against a real Dagster instance, the runs they request
executed with the platform's own Definitions (MariaDB, the fakesnow server through the Snowflake
connector, an MLflow sqlite store). The result is then queried as an analyst would and compared
with what the simulator says it sent: every trade exactly once, with exact values, and minute bars
equal to an independent computation from those trades.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from crypto_platform.definitions import build_definitions
from crypto_platform.lake import writer
from crypto_platform.resources.snowflake import build_snowflake_resource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.settings import Settings
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream import supervision
from crypto_platform.stream.manifest import iter_lines, iter_manifest
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform_tests.conftest import execute_request, local_settings

PAIRS = ("BTC-USD", "ETH-USD")
RUN_FOR_S = 70.0
# A bound against a hung loop, not a speed target: three runs take ~30 s on a quiet machine, minutes under load.
DEADLINE_S = 300.0
MINUTE_MS = 60_000


def landed_trades(settings: Settings) -> list[dict[str, Any]]:
    """Every XT event in the sealed segments, numbers parsed exactly from the wire text."""
    import json

    root = settings.landing_dir
    out = []
    for entry in iter_manifest(root):
        for _, _, frame in iter_lines(root / entry["file"]):
            out.extend(e for e in json.loads(frame, parse_float=Decimal) if e.get("ev") == "XT")
    return out


def independent_bars(trades: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """OHLCV, trade count and first/last time per (pair, minute), in plain Decimal arithmetic."""
    by_minute: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for t in trades:
        by_minute[(t["pair"], t["t"] // MINUTE_MS * MINUTE_MS)].append(t)
    bars = {}
    for key, group in by_minute.items():
        # open/close: the first/last trade in (event time, exchange, trade id) order, as documented
        group.sort(key=lambda t: (t["t"], int(t["x"]), str(t["i"])))
        prices = [Decimal(t["p"]) for t in group]
        sizes = [Decimal(t["s"]) for t in group]
        bars[key] = {
            "open": prices[0],
            "high": max(prices),
            "low": min(prices),
            "close": prices[-1],
            "volume": sum(sizes, Decimal(0)),
            "notional": sum((p * s for p, s in zip(prices, sizes, strict=True)), Decimal(0)),
            "trade_count": len(group),
            "first_trade_ms": group[0]["t"],
            "last_trade_ms": group[-1]["t"],
        }
    return bars


@pytest.fixture
def e2e_settings(
    tmp_path: Path,
    mysql_server: dict[str, object],
    mysql_database: str,
    fakesnow_server: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Settings, Simulator]]:
    # The market starts a few minutes back, 6 s before a minute boundary, and the run lasts longer than
    # a minute (RUN_FOR_S): the minute the first session began in (only partly observed) and the open
    # gap after the stop are repaired from REST, and the minute in between is completed by the stream.
    boundary = (time.time_ns() // 1_000_000 - 5 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    sim = Simulator(SimulatorConfig(rate=300, pairs=PAIRS, record_trades=True, start_ms=boundary - 6_000))
    with sim.running_in_thread():
        mysql_url = (
            f"mysql+pymysql://{mysql_server['user']}@{mysql_server['host']}:{mysql_server['port']}/{mysql_database}"
        )
        env = {
            "CRYPTO_SIMULATOR_PORT": str(sim.port),
            "CRYPTO_PAIRS": ",".join(PAIRS),
            "CRYPTO_SEGMENT_MAX_AGE_S": "0.5",
            "CRYPTO_BATCH_INTERVAL_S": "0",  # a run per tick: these tests drive micro-batches themselves
            "CRYPTO_BAR_REVISION_WINDOW_S": "0",
            "MYSQL_URL": mysql_url,
            "CRYPTO_FAKESNOW_PORT": str(fakesnow_server.snowflake.port),
            "SNOWFLAKE_DATABASE": f"E2E_{uuid.uuid4().hex[:8].upper()}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }
        # The detached ingester and production-style resources read these from the environment
        # they inherit, as under `dagster dev`.
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = local_settings(tmp_path, **env)
        try:
            yield settings, sim
        finally:
            supervision.stop_ingester(settings)
            writer.stop_writer(settings)  # the stream sensor started it beside the ingester


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_trade_reaches_mysql_and_snowflake_once_exactly_and_bars_match(
    e2e_settings: tuple[Settings, Simulator],
) -> None:
    settings, sim = e2e_settings
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("stream_sensor")
    job = defs.resolve_job_def(sensor.job_name)
    resources: dict[str, Any] = {"stream": defs.resources["stream"]}  # type: ignore[index]
    executed: list[str] = []

    with dg.instance_for_test() as instance:
        cursor: str | None = None

        def tick_and_run() -> int:
            nonlocal cursor
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
                result = sensor(ctx)
            assert isinstance(result, dg.SensorResult)
            cursor = result.cursor or cursor
            for request in result.run_requests or []:
                outcome = execute_request(job, instance, request)
                assert outcome.success, request.tags
                executed.append(outcome.run_id)
            return len(result.run_requests or [])

        # Micro-batches while the feed runs: for RUN_FOR_S and at least three runs (a loaded machine
        # runs fewer batches in the same time).
        started = time.monotonic()
        while time.monotonic() - started < RUN_FOR_S or len(executed) < 3:
            assert time.monotonic() - started < DEADLINE_S, f"only {len(executed)} micro-batch runs"
            tick_and_run()
        assert "stopped" in supervision.stop_ingester(settings)  # seals the active segment
        # Drain what was sealed; the sensor must not start the ingester again meanwhile.
        resources["stream"] = StreamResource(
            project_dir=str(settings.project_dir),
            state_dir=str(settings.state_dir),
            data_dir=str(settings.data_dir),
            autostart=False,
        )
        deadline = time.monotonic() + DEADLINE_S
        while tick_and_run():
            assert time.monotonic() < deadline, "the sensor kept finding new segments after the ingester stopped"

        sent = sim.counters()
        sent_keys = [k for conn in sent["connections"].values() for k in conn["trade_keys"]]
        landed = landed_trades(settings)
        assert sorted(f"{t['pair']}|{t['x']}|{t['i']}" for t in landed) == sorted(sent_keys)
        wire = {(t["pair"], int(t["x"]), str(t["i"])): (Decimal(t["p"]), Decimal(t["s"]), t["t"]) for t in landed}

        # MySQL, as an analyst queries it.
        warehouse = SqlWarehouse(settings.mysql_url)
        rows = warehouse.query("SELECT pair, exchange, trade_id, price, size, event_ms FROM crypto_trades")
        mysql = [((r[0], int(r[1]), str(r[2])), (Decimal(r[3]), Decimal(r[4]), int(r[5]))) for r in rows]
        assert len(mysql) == len(sent_keys) == len(dict(mysql))
        assert dict(mysql) == wire

        # Snowflake MARKET_DATA.POLYGON (database per test), through the real connector.
        sf = build_snowflake_resource(settings)
        with sf.get_connection() as conn:
            cur = conn.cursor()
            table = f"{settings.snowflake.database}.POLYGON.TRADES"
            cur.execute(f"SELECT pair, exchange, trade_id, price, size, event_ms FROM {table}")
            snow = [((r[0], int(r[1]), str(r[2])), (Decimal(r[3]), Decimal(r[4]), int(r[5]))) for r in cur.fetchall()]
        assert len(snow) == len(sent_keys) == len(dict(snow))
        assert dict(snow) == wire

        # Minute bars in MySQL against an independent computation from the same trades. Minutes the
        # stream could not finish (the one it began in, inside the open gap after the stop, or still
        # revisable then) are repaired from REST instead, and say so.
        expected = independent_bars(landed)
        bar_rows = warehouse.query(
            "SELECT pair, minute_ms, open, high, low, close, volume, vwap, trade_count, first_trade_ms, "
            "last_trade_ms, source, in_gap FROM crypto_minute_bars"
        )
        built = {(r[0], int(r[1])): r[2:11] for r in bar_rows if r[11] == "ws"}
        repaired = {(r[0], int(r[1])) for r in bar_rows if r[11] == "rest_repair" and r[12]}
        assert len(built) + len(repaired) == len(bar_rows), "every bar is either built from the stream or repaired"
        assert set(built) <= set(expected) and set(expected) <= set(built) | repaired
        assert built, "the minute before the boundary was completed by the stream"
        for key, (open_, high, low, close, volume, vwap, count, first_ms, last_ms) in built.items():
            want = expected[key]
            assert [Decimal(v) for v in (open_, high, low, close, volume)] == [
                want[k] for k in ("open", "high", "low", "close", "volume")
            ], key
            assert (int(count), int(first_ms), int(last_ms)) == (
                want["trade_count"],
                want["first_trade_ms"],
                want["last_trade_ms"],
            ), key
            # VWAP is stored with 18 decimals: within one unit of the last place of the exact quotient.
            assert abs(Decimal(vwap) - want["notional"] / want["volume"]) <= Decimal("1e-18"), key

        # Repaired minutes are the one the stream began in (6 s before its end: only partly observed)
        # and those in the open gap after the stop (the gap-repair tests compare their values with the
        # uninterrupted stream).
        first_minute = min(t["t"] for t in landed) // MINUTE_MS * MINUTE_MS
        last_minute = max(t["t"] for t in landed) // MINUTE_MS * MINUTE_MS
        assert {minute for _, minute in repaired} >= {first_minute, last_minute}
        assert all(minute <= first_minute or minute >= last_minute for _, minute in repaired)

        # MLflow: the mlflow sensor logs every finished run's loads and check evaluations.
        mlflow_sensor = defs.resolve_sensor_def("mlflow_sensor")
        mlflow_cursor = None
        for _ in range(len(executed) + 2):
            with dg.build_sensor_context(
                instance=instance, cursor=mlflow_cursor, resources={"mlflow": defs.resources["mlflow"]}
            ) as ctx:
                mlflow_sensor(ctx)
                logged_cursor = ctx.cursor
            if logged_cursor == mlflow_cursor:
                break
            mlflow_cursor = logged_cursor

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    runs = client.search_runs(list(experiments.values()), max_results=5000)
    assert {"crypto-ingestion", "crypto-quality"} <= set(experiments)
    assert runs and {r.info.status for r in runs} == {"FINISHED"}, "every MLflow run ended; no load failed"
    assert {r.data.tags["dagster.run_id"] for r in runs} == set(executed), "every Dagster run was logged"
    loads = [r for r in runs if r.info.experiment_id == experiments["crypto-ingestion"]]
    trade_rows = sum(r.data.metrics["rows_loaded"] for r in loads if r.data.tags["dagster.asset"] == "mysql_trades")
    assert trade_rows >= len(sent_keys), "each per-batch MySQL load logged the rows it upserted"
    # Latency by hop: event -> landed (lake checks), landed -> warehouse and event -> warehouse (loads).
    timed = [r.data.metrics for r in loads if "landed_to_warehouse_s_p95" in r.data.metrics]
    assert timed and all(0 < m["landed_to_warehouse_s_p50"] <= m["event_to_warehouse_s_p95"] for m in timed)
    checks = [r for r in runs if r.info.experiment_id == experiments["crypto-quality"]]
    assert {r.data.tags["dagster.check"] for r in checks} >= {"parity_with_lake", "unique_key"}
    assert any(
        "event_to_landed_s_p95" in r.data.metrics for r in checks if r.data.tags["dagster.check"] == "lake_freshness"
    )
    assert all(r.data.metrics["passed"] == 1.0 for r in checks if r.data.tags["dagster.check"] == "parity_with_lake")
    logged = orjson.dumps([[r.data.params, r.data.tags] for r in runs])
    assert b"simulator-key" not in logged, "the API key never reaches MLflow"
