"""System test: a 30-day backfill of raw_trades + minute_bars from history, launched over GraphQL as the UI does.

A real ``dagster dev`` (webserver + daemon, the repo's instance config in a temp DAGSTER_HOME) on
free ports, pointed at an in-process simulator that publishes Flat Files for the 30 days (one pair,
low density, so the run time stays moderate). The backfill is sent as the UI's "Materialize
selected" over a partition range sends it; the test waits for it (deadline, polling), then checks
every day's trades against the published file and that the bars were built from them.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.dev_platform import BACKFILL_STATUS, LAUNCH_BACKFILL
from crypto_platform.local.stack import install_instance_config
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.snowflake import build_snowflake_resource
from crypto_platform.settings import Settings, child_environment, load_settings
from crypto_platform.simulator.flat_files import object_key
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform_tests.conftest import free_port
from crypto_platform_tests.test_dagster_dev import graphql, http_json, poll

PROJECT_DIR = Path(__file__).resolve().parent.parent
# The lake's trades and bars and their warehouse copies, as an analyst selects them in the UI.
ASSETS = ("raw_trades", "minute_bars", "mysql_trades", "snowflake_trades", "mysql_minute_bars", "snowflake_minute_bars")
DAYS = 30
DEADLINE_S = 1500.0
# Variables that would switch a part of the stack to production; the test wants the local defaults.
PRODUCTION_VARIABLES = ("POLYGON_API_KEY", "POLYGON_WS_URL", "POLYGON_REST_URL", "MYSQL_URL", "SNOWFLAKE_ACCOUNT")


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 600)
def test_a_30_day_history_backfill_launched_like_the_ui(
    tmp_path: Path, mysql_server: dict[str, object], mysql_database: str, fakesnow_server: Settings
) -> None:
    today = datetime.now(UTC).date()
    first = today - timedelta(days=DAYS + 1)
    days = [(first + timedelta(days=i)).isoformat() for i in range(DAYS)]
    # ~0.02 trades/s: about 1,700 trades a day, every second of each day still generated.
    cfg = SimulatorConfig(rate=1.04, pairs=("BTC-USD",), s3_port=0, history_start=first)
    state = tmp_path / "state"
    with Simulator(cfg).running_in_thread() as sim:
        assert sim.s3 is not None and sim.flat_files is not None
        port = free_port()
        env = {k: v for k, v in child_environment().items() if k not in PRODUCTION_VARIABLES}
        env.update(
            {
                "CRYPTO_PROJECT_DIR": str(PROJECT_DIR),
                "CRYPTO_STATE_DIR": str(state),
                "CRYPTO_DATA_DIR": str(state / "data"),
                "DAGSTER_HOME": str(tmp_path / "dagster_home"),
                "CRYPTO_DAGSTER_PORT": str(port),
                "CRYPTO_SIMULATOR_PORT": str(sim.port),
                "CRYPTO_SIMULATOR_S3_PORT": str(sim.s3.port),
                "CRYPTO_PAIRS": "BTC-USD",
                "CRYPTO_START_DATE": first.isoformat(),
                "CRYPTO_INGESTER_AUTOSTART": "false",
                "CRYPTO_HISTORY_SOURCE": "auto",
                "PYTHONUNBUFFERED": "1",
                # The warehouse copies go to the machine's MariaDB and the shared fakesnow server.
                "MYSQL_URL": f"mysql+pymysql://{mysql_server['user']}@{mysql_server['host']}:{mysql_server['port']}/"
                f"{mysql_database}",
                "CRYPTO_FAKESNOW_PORT": str(fakesnow_server.snowflake.port),
                "SNOWFLAKE_DATABASE": f"HISTORY_{uuid.uuid4().hex[:8].upper()}",
            }
        )
        install_instance_config(load_settings(env), tmp_path / "dagster_home")
        log = (tmp_path / "dagster.log").open("wb")
        argv = [sys.executable, "-m", "dagster", "dev"]  # the code location from pyproject.toml's [tool.dg]
        proc = subprocess.Popen(
            [*argv, "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"

        def alive() -> str | None:
            if proc.poll() is not None:
                return f"dagster dev exited with {proc.returncode}: {(tmp_path / 'dagster.log').read_text()[-3000:]}"
            return None

        try:

            def location_loaded() -> bool:
                query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
                with contextlib.suppress(OSError, ValueError):
                    entries = http_json(f"{base}/graphql", {"query": query})["data"]["workspaceOrError"]
                    return [e["loadStatus"] for e in entries["locationEntries"]] == ["LOADED"]
                return False

            poll(location_loaded, 300, "the code location to load", alive)
            params = {
                "assetSelection": [{"path": [name]} for name in ASSETS],
                "partitionNames": days,
                "title": "history backfill (test)",
            }
            answer = graphql(base, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
            assert answer["__typename"] == "LaunchBackfillSuccess", answer

            def finished() -> dict | None:
                try:
                    status = graphql(base, BACKFILL_STATUS, {"id": answer["backfillId"]})
                except OSError:  # the webserver is busy on a loaded machine: ask again
                    return None
                backfill = status["partitionBackfillOrError"]
                return backfill if backfill["status"] not in ("REQUESTED",) else None

            backfill = poll(finished, DEADLINE_S, "the 30-day backfill to finish", alive)
            said = (tmp_path / "dagster.log").read_text(errors="replace").splitlines()
            failures = "\n".join(line for line in said if "STEP_FAILURE" in line or line.startswith("crypto_platform."))
            assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), f"{backfill}\n{failures}"
            assert {r["status"] for r in backfill["runs"]} == {"SUCCESS"}, backfill
            # Runs of up to 7 days each (the BackfillPolicy), not one run per day.
            assert -(-DAYS // 7) <= len(backfill["runs"]) <= 2 * -(-DAYS // 7), backfill
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
            log.close()

        lake = LakeResource(root=str(state / "data" / "lake"))
        for day in days:
            trades = lake.read_partition("raw_trades", day)
            assert trades is not None, day
            stored = sim.flat_files.get(object_key("trades_v1", date.fromisoformat(day)))
            assert stored is not None
            published = list(csv.DictReader(io.StringIO(gzip.decompress(stored.path.read_bytes()).decode())))
            assert trades.num_rows == len(published) > 500, day
            assert set(trades["source"].to_pylist()) == {"flat_file"}, day
            assert sorted(trades["trade_id"].to_pylist()) == sorted(r["id"] for r in published), day
            bars = lake.read_partition("minute_bars", day)
            assert bars is not None, day
            assert sum(bars["trade_count"].to_pylist()) == trades.num_rows, day
            assert set(bars["source"].to_pylist()) == {"flat_file"}, day
        # The warehouse copies: every day's trades and bars, once, in MySQL and in Snowflake.
        settings = load_settings(env)
        lake_trades = sum(lake.tables().count("raw_trades", d) for d in days)
        lake_bars = sum(lake.tables().count("minute_bars", d) for d in days)
        mysql = SqlWarehouse(settings.mysql_url)
        per_day = mysql.query("SELECT FLOOR(event_ms / 86400000), COUNT(*) FROM crypto_trades GROUP BY 1")
        day_of = {int(datetime.fromisoformat(d).replace(tzinfo=UTC).timestamp()) // 86_400: d for d in days}
        assert {day_of[int(k)]: int(n) for k, n in per_day} == {d: lake.tables().count("raw_trades", d) for d in days}
        assert mysql.query("SELECT COUNT(*) FROM crypto_minute_bars")[0][0] == lake_bars
        with build_snowflake_resource(settings).get_connection() as conn:
            cur = conn.cursor()
            for table, expected in (("TRADES", lake_trades), ("MINUTE_BARS", lake_bars)):
                cur.execute(f"SELECT COUNT(*) FROM {settings.snowflake.database}.POLYGON.{table}")
                row = cur.fetchone()
                assert row is not None and row[0] == expected, table
        assert not (state / "data" / "history").exists() or not any((state / "data" / "history").iterdir()), (
            "every day's work in progress is cleared once the day is in the lake"
        )
