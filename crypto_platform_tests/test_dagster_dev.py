"""System tests: plain ``dagster dev`` (and every other Dagster / dg command) from a fresh copy of the repository.

The copy holds the repository's files only (no venv, no state, no .env), and the commands run with
PATH and the project's venv as their whole environment, plus the simulator's and fakesnow's ports
(free ones, since other test runs share the machine): no DAGSTER_HOME, nothing prepared. The
``dagster dev`` test waits (with deadlines, polling conditions) for the webserver and the code
location, for the stream sensor's runs to bring trades into the SQL stand-in and the local
Snowflake, for MLflow to hold a FINISHED run, and for a backfill launched over GraphQL; then sends
SIGINT to the process group as a terminal's Ctrl-C would, checks that only the documented background
services are left (ingester, simulator, fakesnow), and that ``crypto-platform services stop`` (what
``make stop`` runs) ends them. Processes are found by their working directory, inside the copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from benchmarks.dev_platform import BACKFILL_STATUS, LAUNCH_BACKFILL
from crypto_platform import definitions
from crypto_platform.lake import writer
from crypto_platform.lake.tables import DeltaLake
from crypto_platform.local.stack import port_open
from crypto_platform.resources.snowflake import build_snowflake_resource
from crypto_platform.settings import DEFAULT_PAIRS, load_settings
from crypto_platform.stream import supervision
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform_tests.conftest import free_port

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Generous: on a loaded shared machine a step process alone can take a minute to start.
BOOT_DEADLINE_S = 480.0
STOP_DEADLINE_S = 120.0
VENV_BIN = Path(sys.executable).parent
# Left behind by design after Ctrl-C, until `make stop` (crypto-platform services stop).
BACKGROUND_SERVICES = ("simulator", "fakesnow")
# What a checkout accumulates locally and a clone does not have (as .gitignore says).
LOCAL_ONLY = (".git", ".venv", "var", ".dagster_home", ".tmp_dagster_home_*", ".env", "logs", ".logs_queue")
LOCAL_ONLY += ("__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", ".mypy_cache", "mlruns", "*.log")


def fresh_copy(dest: Path) -> Path:
    """The repository's files (tracked and new, not ignored) copied to ``dest``: what a clone holds."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_DIR,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked archive): the tree minus local state
        ignored = shutil.ignore_patterns(*LOCAL_ONLY)
        return Path(shutil.copytree(PROJECT_DIR, dest, ignore=ignored))
    for name in filter(None, (n.decode() for n in listed.stdout.split(b"\0"))):
        source = PROJECT_DIR / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def bare_environment(**ports: str) -> dict[str, str]:
    """PATH with the venv first and the venv itself; nothing else but the ports asked for."""
    return {"PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "VIRTUAL_ENV": str(VENV_BIN.parent), **ports}


def processes_in(root: Path) -> dict[int, str]:
    """Pid -> command line of every live process (other than ours) working inside ``root``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and (cwd == str(root) or cwd.startswith(f"{root}/")):
            found[int(entry.name)] = cmd
    return found


def children_of(pid: int) -> set[int]:
    """Pids whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "stat").read_text().rpartition(")")[2].split()[1] == str(pid):
                    found.add(int(entry.name))
    return found


def kill_all_in(root: Path) -> None:
    for pid in processes_in(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def start(argv: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A non-interactive parent may have SIGINT ignored; give the child the default back.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def alive_check(proc: subprocess.Popen[bytes], what: str, log_path: Path) -> Callable[[], str | None]:
    def alive() -> str | None:
        if proc.poll() is None:
            return None
        return f"`{what}` exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}"

    return alive


def ctrl_c(proc: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    """SIGINT to the process group, as a terminal delivers Ctrl-C; it must exit cleanly."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rc = proc.wait(STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{what}` did not stop within {STOP_DEADLINE_S:.0f} s after SIGINT")
    assert rc in (0, 130, -signal.SIGINT), log_path.read_text(errors="replace")[-4000:]


def wait_for_webserver(base: str, alive: Callable[[], str | None]) -> None:
    """The webserver answers and the crypto_platform code location is loaded."""

    def server_info() -> dict[str, Any] | None:
        try:
            return http_json(f"{base}/server_info")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    info = poll(server_info, BOOT_DEADLINE_S, "the webserver's /server_info", alive)
    assert info["dagster_version"] == "1.13.27"

    def location_loaded() -> bool:
        query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
        entries = http_json(f"{base}/graphql", {"query": query})["data"]["workspaceOrError"]["locationEntries"]
        return {e["name"]: e["loadStatus"] for e in entries} == {"crypto_platform": "LOADED"}

    poll(location_loaded, BOOT_DEADLINE_S, "the crypto_platform code location (and only it) to load", alive)


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
        rows = lake_rows(lake, "daily_open_close", day).to_pylist()
        assert sorted(r["pair"] for r in rows) == sorted(DEFAULT_PAIRS) and all(r["status"] == "ok" for r in rows)

    def rebuild_done() -> str | None:
        status = graphql(base, RUN_STATUS, {"id": rebuild_id})["runOrError"]["status"]
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert poll(rebuild_done, BOOT_DEADLINE_S, "the raw_trades rebuild run", alive) == "SUCCESS"
    rebuilt = lake_rows(lake, "raw_trades", today)
    assert rebuilt.num_rows > 0
    keys = rebuilt.select(["pair", "exchange", "trade_id"]).to_pylist()
    assert len({tuple(k.values()) for k in keys}) == rebuilt.num_rows


def lake_rows(lake: Path, asset: str, day: str) -> pa.Table:
    rows = DeltaLake(str(lake)).read(asset, day)
    assert rows is not None, f"no {asset} Delta table in {lake}"
    return rows


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
        (r["pair"], r["exchange"], r["trade_id"]) for r in lake_rows(settings.lake_dir, "raw_trades", day).to_pylist()
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
@pytest.mark.timeout(1500)  # boots the whole stack and waits on several runs: bounded by the polls' deadlines
def test_plain_dagster_dev_in_a_fresh_clone_runs_the_platform(tmp_path: Path) -> None:
    project = fresh_copy(tmp_path / "clone")
    ports = {
        "CRYPTO_SIMULATOR_PORT": str(free_port()),
        "CRYPTO_SIMULATOR_S3_PORT": str(free_port()),
        "CRYPTO_FAKESNOW_PORT": str(free_port()),
    }
    env = bare_environment(**ports)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "dagster_dev.log"
    state = project / "var"
    dev = start([str(VENV_BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)], project, env, log_path)
    alive = alive_check(dev, "dagster dev", log_path)
    try:
        wait_for_webserver(base, alive)
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
        assert served_assets["landing_log"]["isMaterializable"] is False
        assert sorted(s["name"] for s in repo["sensors"]) == sorted(s.name for s in definitions.defs.sensors or [])

        # Dagster runs on a temporary home here; the platform says where the state really goes.
        said = log_path.read_text(errors="replace")
        assert "Using temporary directory" in said
        assert f"persist in {project / '.dagster_home'}" in said

        # Nothing was started around Dagster: the stream sensor starts the simulator, then the ingester.
        runs_query = """{ runsOrError(filter: {statuses: [SUCCESS]}) { ... on Runs { results {
            runId tags { key value } assetSelection { path } } } } }"""

        def sensor_run_succeeded() -> list[dict[str, Any]]:
            runs = http_json(f"{base}/graphql", {"query": runs_query})["data"]["runsOrError"]["results"]
            return [r for r in runs if any(t["key"] == "crypto/segments" for t in r["tags"])]

        runs = poll(sensor_run_succeeded, BOOT_DEADLINE_S, "a successful stream_sensor run", alive)
        tags = {t["key"]: t["value"] for t in runs[0]["tags"]}
        assert tags["dagster/sensor_name"] == "stream_sensor" and tags["dagster/run_key"].startswith("landing:")
        assert lake_rows(state / "data" / "lake", "raw_trades", tags["dagster/partition"]).num_rows
        assert (state / "run" / "simulator.pid").is_file() and (state / "log" / "simulator.log").is_file()
        check_ui_backfill_and_rebuild(base, state, tags["dagster/partition"], alive)
        analyst = {**env, "CRYPTO_PROJECT_DIR": str(project)}
        check_tables_as_an_analyst(analyst, state, tags["dagster/partition"], alive)
        # The Snowflake resource started the local server before its first connection.
        assert port_open("127.0.0.1", int(ports["CRYPTO_FAKESNOW_PORT"]))
        assert (state / "run" / "fakesnow.pid").is_file()
        # The instance's state is the project-local one.
        assert (project / ".dagster_home" / "history" / "runs.db").is_file()

        ctrl_c(dev, "dagster dev", log_path)
        settings = load_settings(analyst)
        services = {
            name: int(json.loads((state / "run" / f"{name}.pid").read_text())["pid"]) for name in BACKGROUND_SERVICES
        }
        ingester = supervision.holder_pid(settings)
        lake_writer = writer.running_pid(settings)
        assert ingester is not None and lake_writer
        background = {*services.values(), ingester, lake_writer}

        def not_background() -> dict[int, str]:
            # The ingester's segment sealer is a child process of its own.
            allowed = background | children_of(ingester)
            return {pid: cmd for pid, cmd in processes_in(project).items() if pid not in allowed}

        # What is left is the documented background services: Dagster's processes all ended.
        poll(lambda: not not_background(), STOP_DEADLINE_S, "dagster dev's processes to exit", lambda: None)
        assert background <= set(processes_in(project))  # the services stay up until `make stop`
        assert not list(project.glob(".tmp_dagster_home_*"))

        stop = subprocess.run(
            [str(VENV_BIN / "crypto-platform"), "services", "stop"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert stop.returncode == 0, stop.stderr
        assert "ingester: stopped" in stop.stdout and "simulator: stopped" in stop.stdout, stop.stdout
        assert "fakesnow: stopped" in stop.stdout, stop.stdout
        poll(lambda: not processes_in(project), STOP_DEADLINE_S, "every started process to exit", lambda: None)
        for key in ("CRYPTO_FAKESNOW_PORT", "CRYPTO_SIMULATOR_PORT"):
            assert not port_open("127.0.0.1", int(ports[key])), key
        assert not port_open("127.0.0.1", port)
        # Runs, cursors and sensor state stay for the next start.
        assert (project / ".dagster_home" / "history" / "runs.db").is_file()
        assert (project / ".dagster_home" / "schedules" / "schedules.db").is_file()
    finally:
        print(log_path.read_text(errors="replace")[-8000:])  # shown when the test fails
        if dev.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(30)
        kill_all_in(project)


def run_command(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a one-shot command to completion; it must succeed. Returns stdout and stderr together."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BOOT_DEADLINE_S)
    said = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} exited with {done.returncode}:\n{said[-4000:]}"
    return said


def serve_and_stop(argv: list[str], cwd: Path, env: dict[str, str], port: int, log_path: Path) -> None:
    """Start a long-running Dagster command, wait until its UI serves the code location, Ctrl-C it."""
    proc = start(argv, cwd, env, log_path)
    try:
        wait_for_webserver(f"http://127.0.0.1:{port}", alive_check(proc, " ".join(argv[:2]), log_path))
        ctrl_c(proc, " ".join(argv[:2]), log_path)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


RUNS = "{ runsOrError { ... on Runs { results { runId status } } } }"
DAEMONS = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }"


@pytest.mark.slow
@pytest.mark.timeout(1500)  # several Dagster processes boot one after the other; each wait has its deadline
def test_every_dagster_and_dg_command_works_from_the_root_of_a_fresh_clone(tmp_path: Path) -> None:
    project = fresh_copy(tmp_path / "clone")
    env = bare_environment(
        CRYPTO_SIMULATOR_PORT=str(free_port()),
        CRYPTO_SIMULATOR_S3_PORT=str(free_port()),
        CRYPTO_FAKESNOW_PORT=str(free_port()),
    )
    bin_ = VENV_BIN
    graph = definitions.defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    materializable = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_materializable}
    try:
        said = run_command([str(bin_ / "dagster"), "definitions", "validate"], project, env)
        assert "All code locations passed validation." in said
        assert f"persist in {project / '.dagster_home'}" in said  # the line beside Dagster's temporary home

        said = run_command([str(bin_ / "dagster"), "asset", "list", "-m", "crypto_platform.definitions"], project, env)
        assert materializable <= set(said.split())  # (the external landing_log is not listed)

        said = run_command([str(bin_ / "dg"), "check", "defs"], project, env)
        assert "All definitions loaded successfully." in said

        listing = subprocess.run(
            [str(bin_ / "dg"), "list", "defs", "--json"], cwd=project, env=env, capture_output=True, text=True
        )
        assert listing.returncode == 0, listing.stderr[-4000:]
        listed = json.loads(listing.stdout)
        assert {a["asset_key"] for a in listed["assets"]} == keys
        assert "stream_sensor" in {s["name"] for s in listed["sensors"]}

        # One partition in the foreground: the REST resource starts the simulator it needs.
        day = (date.today() - timedelta(days=2)).isoformat()
        materialize = ["asset", "materialize", "-m", "crypto_platform.definitions", "--select", "daily_open_close"]
        said = run_command([str(bin_ / "dagster"), *materialize, "--partition", day], project, env)
        assert "RUN_SUCCESS" in said
        assert lake_rows(project / "var" / "data" / "lake", "daily_open_close", day).num_rows
        assert (project / "var" / "run" / "simulator.pid").is_file()
        assert (project / ".dagster_home" / "history" / "runs.db").is_file()

        port = free_port()
        dev_w = [str(bin_ / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
        serve_and_stop(dev_w, project, env, port, tmp_path / "dagster_dev_w.log")
        port = free_port()
        dg_dev = [str(bin_ / "dg"), "dev", "-h", "127.0.0.1", "-p", str(port)]
        serve_and_stop(dg_dev, project, env, port, tmp_path / "dg_dev.log")

        # The webserver and the daemon as two processes, on the same instance as everything above.
        # The daemon refuses to run without a home: `make env` writes DAGSTER_HOME to .env.
        run_command(["make", "env"], project, env)
        assert f"DAGSTER_HOME=${{DAGSTER_HOME:-{project}}}" in (project / ".env").read_text()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        web_log, daemon_log = tmp_path / "webserver.log", tmp_path / "daemon.log"
        webserver = start([str(bin_ / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port)], project, env, web_log)
        daemon = start([str(bin_ / "dagster-daemon"), "run"], project, env, daemon_log)
        try:
            wait_for_webserver(base, alive_check(webserver, "dagster-webserver", web_log))
            # The foreground materialization is in this instance's history: one persistent state.
            runs = graphql(base, RUNS)["runsOrError"]["results"]
            assert "SUCCESS" in {r["status"] for r in runs}

            def sensor_daemon_healthy() -> bool:
                statuses = graphql(base, DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
                return any(s["daemonType"] == "SENSOR" and s["healthy"] for s in statuses)

            poll(
                sensor_daemon_healthy,
                BOOT_DEADLINE_S,
                "dagster-daemon's sensor daemon",
                alive_check(daemon, "dagster-daemon run", daemon_log),
            )
            assert not list(project.glob(".tmp_dagster_home_*"))  # with .env there is no temporary home
            ctrl_c(daemon, "dagster-daemon run", daemon_log)
            ctrl_c(webserver, "dagster-webserver", web_log)
        finally:
            for proc in (daemon, webserver):
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)
    finally:
        subprocess.run([str(bin_ / "crypto-platform"), "services", "stop"], cwd=project, env=env, capture_output=True)
        kill_all_in(project)
    # A killed process stays listed for a moment while the kernel tears it down: wait for the last to go.
    poll(lambda: not processes_in(project), STOP_DEADLINE_S, "every process in the clone to exit", lambda: None)
