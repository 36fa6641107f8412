"""System test: ``crypto-platform dev`` on the local defaults, in a throwaway project state.

Boots the real command (services + ``dagster dev``) on free loopback ports with CRYPTO_STATE_DIR,
CRYPTO_DATA_DIR and DAGSTER_HOME under a temp dir, waits (with deadlines, polling conditions) for
the webserver and the code location, reads the asset graph and sensors over GraphQL, then sends
SIGINT to the process group as a terminal's Ctrl-C would and checks that every process it started
is gone: found by the unique state path that each of them carries in its environment.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from crypto_platform import definitions
from crypto_platform.local.stack import SIMULATOR_CLI_MODULE, port_open
from crypto_platform.resources.snowflake import build_snowflake_resource
from crypto_platform.settings import DEFAULT_PAIRS, child_environment, load_settings
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform_tests.conftest import free_port

PROJECT_DIR = Path(__file__).resolve().parent.parent
BOOT_DEADLINE_S = 240.0
STOP_DEADLINE_S = 120.0
# Variables that would switch a part of the stack to production; the test wants the local defaults.
PRODUCTION_VARIABLES = (
    "POLYGON_API_KEY",
    "POLYGON_WS_URL",
    "POLYGON_REST_URL",
    "MYSQL_URL",
    "SNOWFLAKE_ACCOUNT",
    "MLFLOW_TRACKING_URI",
    "CRYPTO_PROJECT_DIR",
)


def processes_with_env_value(marker: str) -> list[int]:
    """Pids (other than ours) whose environment mentions ``marker``: everything the stack started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def poll(condition: Callable[[], Any], deadline_s: float, what: str, alive: Callable[[], str | None]) -> Any:
    """Return ``condition()``'s first truthy value; fail naming ``what`` at the deadline or on death."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        problem = alive()
        if problem:
            pytest.fail(f"while waiting for {what}: {problem}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {deadline_s:.0f} s")
        time.sleep(0.25)


def http_json(url: str, payload: dict[str, Any] | None = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def graphql(base: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = http_json(f"{base}/graphql", {"query": query, "variables": variables or {}})
    assert not answer.get("errors"), answer
    return answer["data"]


LAUNCH_BACKFILL = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs: runs(limit: 50) { runId status tags { key value } } } } }"""
LAUNCH_RUN = """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } } } }"""
RUN_STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def launch_backfill(base: str, asset: str, days: list[str]) -> str:
    """What the UI's "Materialize selected" over a partition range sends: an asset backfill."""
    params = {"assetSelection": [{"path": [asset]}], "partitionNames": days, "title": f"test backfill {asset}"}
    answer = graphql(base, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    return str(answer["backfillId"])


def launch_partition_run(base: str, asset: str, day: str) -> str:
    """What the UI's "Materialize" of one partition sends: a run of the implicit asset job."""
    params = {
        "selector": {
            "repositoryLocationName": "crypto_platform",
            "repositoryName": "__repository__",
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": [asset]}],
        },
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]},
    }
    answer = graphql(base, LAUNCH_RUN, {"params": params})["launchPipelineExecution"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return str(answer["run"]["runId"])


@pytest.fixture
def dev_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    state = tmp_path / "state"
    env = {k: v for k, v in child_environment().items() if k not in PRODUCTION_VARIABLES}
    env.update(
        {
            "CRYPTO_STATE_DIR": str(state),
            "CRYPTO_DATA_DIR": str(state / "data"),
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "CRYPTO_DAGSTER_PORT": str(free_port()),
            "CRYPTO_FAKESNOW_PORT": str(free_port()),
            "CRYPTO_SIMULATOR_PORT": str(free_port()),
            "CRYPTO_SIMULATOR_S3_PORT": str(free_port()),
            "CRYPTO_SEGMENT_MAX_AGE_S": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    yield env
    # Whatever happened, nothing started with this state dir may outlive the test.
    for pid in processes_with_env_value(str(state)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def check_ui_backfill_and_rebuild(base: str, state: Path, today: str, alive: Callable[[], str | None]) -> None:
    """A daily_open_close backfill and a raw_trades day rebuild, launched over GraphQL as the UI does."""
    first = date.fromisoformat(today) - timedelta(days=3)
    days = [(first + timedelta(days=i)).isoformat() for i in range(3)]
    backfill_id = launch_backfill(base, "daily_open_close", days)
    rebuild_id = launch_partition_run(base, "raw_trades", today)

    def backfill_done() -> dict[str, Any] | None:
        answer = graphql(base, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        return answer if answer["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None

    backfill = poll(backfill_done, BOOT_DEADLINE_S, "the daily_open_close backfill to finish", alive)
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), backfill
    # multi_run(31): the three days go in one run, tagged with the range it covers.
    assert [r["status"] for r in backfill["runs"]] == ["SUCCESS"], backfill
    range_tags = {t["key"]: t["value"] for t in backfill["runs"][0]["tags"]}
    assert (range_tags["dagster/asset_partition_range_start"], range_tags["dagster/asset_partition_range_end"]) == (
        days[0],
        days[-1],
    )
    lake = state / "data" / "lake"
    for day in days:
        rows = pq.read_table(lake / "daily_open_close" / f"date={day}" / "part.parquet").to_pylist()
        assert sorted(r["pair"] for r in rows) == sorted(DEFAULT_PAIRS) and all(r["status"] == "ok" for r in rows)

    def rebuild_done() -> str | None:
        status = graphql(base, RUN_STATUS, {"id": rebuild_id})["runOrError"]["status"]
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert poll(rebuild_done, BOOT_DEADLINE_S, "the raw_trades rebuild run", alive) == "SUCCESS"
    rebuilt = pq.read_table(lake / "raw_trades" / f"date={today}" / "part.parquet")
    assert rebuilt.num_rows > 0
    keys = rebuilt.select(["pair", "exchange", "trade_id"]).to_pylist()
    assert len({tuple(k.values()) for k in keys}) == rebuilt.num_rows


def check_tables_as_an_analyst(env: dict[str, str], state: Path, day: str, alive: Callable[[], str | None]) -> None:
    """The stream's runs reached the SQL stand-in, the local Snowflake and MLflow, and agree with the lake."""
    settings = load_settings(env)
    warehouse = SqlWarehouse(settings.mysql_url)

    def loaded_trades() -> int:
        try:
            return int(warehouse.query("SELECT COUNT(*) FROM crypto_trades")[0][0])
        except Exception:  # the table appears with the first load
            return 0

    poll(loaded_trades, BOOT_DEADLINE_S, "trades in the SQL tables (crypto_trades)", alive)
    lake_keys = {
        (r["pair"], r["exchange"], r["trade_id"])
        for r in pq.read_table(settings.lake_dir / "raw_trades" / f"date={day}" / "part.parquet").to_pylist()
    }
    sql_keys = {
        (p, int(x), str(i)) for p, x, i in warehouse.query("SELECT pair, exchange, trade_id FROM crypto_trades")
    }
    assert sql_keys and sql_keys <= lake_keys  # the lake runs ahead of the warehouse, never behind
    bars = warehouse.query("SELECT COUNT(*), SUM(in_gap) FROM crypto_minute_bars")[0]
    assert int(bars[0]) > 0
    sessions = warehouse.query("SELECT session, connect_ms FROM crypto_stream_sessions")
    assert sessions and all(int(ms) > 0 for _, ms in sessions)

    with build_snowflake_resource(settings).get_connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT pair, exchange, trade_id FROM MARKET_DATA.POLYGON.TRADES")
        snow_keys = {(p, int(x), str(i)) for p, x, i in cur.fetchall()}
    assert snow_keys and snow_keys <= lake_keys

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)

    def logged_loads() -> list[Any]:
        found = [e.experiment_id for e in client.search_experiments() if e.name == "crypto-ingestion"]
        return client.search_runs(found, filter_string="tags.`dagster.asset` = 'mysql_trades'") if found else []

    loads = poll(logged_loads, BOOT_DEADLINE_S, "mlflow_sensor to log a mysql_trades load", alive)
    assert {r.info.status for r in loads} == {"FINISHED"}


@pytest.mark.slow
@pytest.mark.timeout(900)  # boots the whole stack and waits on several runs: bounded by the polls' deadlines
def test_dev_boots_dagster_with_services_and_stops_everything(tmp_path: Path, dev_env: dict[str, str]) -> None:
    marker = dev_env["CRYPTO_STATE_DIR"]
    port = int(dev_env["CRYPTO_DAGSTER_PORT"])
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "dev.log"
    simulator_expected = importlib.util.find_spec(SIMULATOR_CLI_MODULE) is not None

    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "crypto_platform.cli", "dev"],
            cwd=PROJECT_DIR,  # as `make dev` runs it; the state goes where the env says
            env=dev_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A non-interactive parent may have SIGINT ignored; give the child the default back.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def dev_alive() -> str | None:
        if dev.poll() is None:
            return None
        return f"`crypto-platform dev` exited with {dev.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}"

    try:

        def server_info() -> dict[str, Any] | None:
            try:
                return http_json(f"{base}/server_info")
            except (urllib.error.URLError, OSError, ValueError):
                return None

        info = poll(server_info, BOOT_DEADLINE_S, "the webserver's /server_info", dev_alive)
        assert info["dagster_version"] == "1.13.27"

        def location_loaded() -> bool:
            query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
            entries = http_json(f"{base}/graphql", {"query": query})["data"]["workspaceOrError"]["locationEntries"]
            statuses = {e["name"]: e["loadStatus"] for e in entries}
            return statuses.get("crypto_platform") == "LOADED"

        poll(location_loaded, BOOT_DEADLINE_S, "the crypto_platform code location to load", dev_alive)

        query = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
            name location { name }
            sensors { name sensorState { status } }
            assetNodes { assetKey { path } groupName isPartitioned dependencyKeys { path } kinds isMaterializable }
        } } ... on PythonError { message } } }"""
        answer = http_json(f"{base}/graphql", {"query": query})
        nodes = answer["data"]["repositoriesOrError"]["nodes"]
        assert [n["location"]["name"] for n in nodes] == ["crypto_platform"], answer
        repo = nodes[0]
        served_assets = {"/".join(a["assetKey"]["path"]): a for a in repo["assetNodes"]}
        graph = definitions.defs.resolve_asset_graph()
        assert set(served_assets) == {k.to_user_string() for k in graph.get_all_asset_keys()}
        assert served_assets["landing_log"]["groupName"] == "ingest"
        assert served_assets["landing_log"]["kinds"] == ["python"]
        assert served_assets["landing_log"]["isMaterializable"] is False
        assert sorted(s["name"] for s in repo["sensors"]) == sorted(s.name for s in definitions.defs.sensors or [])

        # The services the defaults need are up, on their ports, under this state dir.
        state = Path(marker)
        assert port_open("127.0.0.1", int(dev_env["CRYPTO_FAKESNOW_PORT"]))
        assert (state / "run" / "fakesnow.pid").is_file()
        assert port_open("127.0.0.1", int(dev_env["CRYPTO_SIMULATOR_PORT"])) is simulator_expected
        # The instance is the project-local one: config installed, SQLite storage inside DAGSTER_HOME.
        home = Path(dev_env["DAGSTER_HOME"])
        assert (home / "dagster.yaml").read_text() == (PROJECT_DIR / "dagster.yaml").read_text()
        assert (home / "history" / "runs.db").is_file()
        started = processes_with_env_value(marker)
        assert len(started) >= 5, started  # dev, dagster dev, webserver, daemon, code server, services

        # The stream sensor (on by default) starts the ingester, and its runs land sealed segments in raw_trades.
        if simulator_expected:
            runs_query = """{ runsOrError(filter: {statuses: [SUCCESS]}) { ... on Runs { results {
                runId tags { key value } assetSelection { path } } } } }"""

            def sensor_run_succeeded() -> list[dict[str, Any]]:
                runs = http_json(f"{base}/graphql", {"query": runs_query})["data"]["runsOrError"]["results"]
                return [r for r in runs if any(t["key"] == "crypto/segments" for t in r["tags"])]

            runs = poll(sensor_run_succeeded, BOOT_DEADLINE_S, "a successful stream_sensor run", dev_alive)
            tags = {t["key"]: t["value"] for t in runs[0]["tags"]}
            assert tags["dagster/sensor_name"] == "stream_sensor" and tags["dagster/run_key"].startswith("landing:")
            partition = state / "data" / "lake" / "raw_trades" / f"date={tags['dagster/partition']}" / "part.parquet"
            assert partition.is_file()
            assert (state / "data" / "ingester" / "heartbeat.json").is_file()
            check_ui_backfill_and_rebuild(base, state, tags["dagster/partition"], dev_alive)
            check_tables_as_an_analyst(dev_env, state, tags["dagster/partition"], dev_alive)

        # Ctrl-C, as a terminal delivers it: SIGINT to the foreground process group.
        os.killpg(dev.pid, signal.SIGINT)
        try:
            rc = dev.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`crypto-platform dev` did not stop within {STOP_DEADLINE_S:.0f} s after SIGINT")
        assert rc in (0, 130), log_path.read_text(errors="replace")[-4000:]

        poll(
            lambda: not processes_with_env_value(marker),
            STOP_DEADLINE_S,
            "every started process to exit",
            lambda: None,
        )
        for key in ("CRYPTO_DAGSTER_PORT", "CRYPTO_FAKESNOW_PORT", "CRYPTO_SIMULATOR_PORT"):
            assert not port_open("127.0.0.1", int(dev_env[key])), key
        assert not list((state / "run").glob("*.pid"))
        # Runs, cursors and sensor state stay for the next start.
        assert (home / "history" / "runs.db").is_file()
        assert (home / "schedules" / "schedules.db").is_file()
    finally:
        if dev.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(30)
