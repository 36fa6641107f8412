"""The zero-setup local stack, on real processes: the persistent fakesnow server reached through the
real Snowflake connector and ``SnowflakeResource``, service start/stop/status, and the Dagster home."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster_snowflake import SnowflakeResource

from crypto_platform.local import cli as local_stack_cli
from crypto_platform.local import stack as ls
from crypto_platform.resources.snowflake import build_snowflake_resource
from crypto_platform.settings import Settings, child_environment, load_settings
from crypto_platform_tests.conftest import free_port, local_settings

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_fakesnow(tmp_path: Path) -> Iterator[tuple[Settings, ls.Service, ls.StackPaths]]:
    """A fakesnow server private to one test (it may be restarted), stopped afterwards."""
    settings = local_settings(tmp_path / "state", CRYPTO_FAKESNOW_PORT=str(free_port()))
    service = ls.fakesnow_service(settings)
    paths = ls.stack_paths(settings)
    ls.start_service(service, paths, child_environment(), ready_timeout=120)
    try:
        yield settings, service, paths
    finally:
        ls.stop_service(service, paths)


def _rows(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    with build_snowflake_resource(settings).get_connection() as conn:
        cur = conn.cursor()
        try:
            return list(cur.execute(sql).fetchall())
        finally:
            cur.close()


def test_fakesnow_persists_across_restart_and_shares_sessions(
    own_fakesnow: tuple[Settings, ls.Service, ls.StackPaths],
) -> None:
    settings, service, paths = own_fakesnow
    first_pid = ls.running_pid(service, paths)

    with build_snowflake_resource(settings).get_connection() as conn:
        cur = conn.cursor()
        cur.execute("CREATE DATABASE IF NOT EXISTS MARKET_DATA")
        cur.execute("CREATE SCHEMA IF NOT EXISTS MARKET_DATA.POLYGON")
        cur.execute("CREATE OR REPLACE TABLE MARKET_DATA.POLYGON.PROBE (PAIR TEXT, PRICE NUMBER(38,18))")
        cur.executemany(
            "INSERT INTO MARKET_DATA.POLYGON.PROBE (PAIR, PRICE) VALUES (%s, %s)",
            [("BTC-USD", "91234.123456789012345678"), ("ETH-USD", "3012.5")],
        )
        # A second, concurrent session sees the first one's writes (one shared instance).
        assert sorted(_rows(settings, "SELECT PAIR FROM MARKET_DATA.POLYGON.PROBE")) == [("BTC-USD",), ("ETH-USD",)]
        cur.close()

    assert ls.stop_service(service, paths) == first_pid
    assert not ls.port_open(service.host, service.port)
    assert (paths.fakesnow_dir / "db" / "MARKET_DATA.db").is_file()

    restarted = ls.start_service(service, paths, child_environment(), ready_timeout=120)
    assert restarted.started and restarted.pid != first_pid
    # The first session after the restart needs no CREATE DATABASE: the launcher re-attached it.
    rows = _rows(settings, "SELECT PAIR, PRICE FROM MARKET_DATA.POLYGON.PROBE ORDER BY PAIR")
    assert [(pair, str(price)) for pair, price in rows] == [
        ("BTC-USD", "91234.123456789012345678"),
        ("ETH-USD", "3012.500000000000000000"),
    ]


def test_snowflake_resource_inside_a_dagster_run(fakesnow_server: Settings) -> None:
    """The resource as assets will use it: bound in Definitions, used from a materialization."""

    @dg.asset
    def probe_table(snowflake: SnowflakeResource) -> dg.MaterializeResult:
        with snowflake.get_connection() as conn:
            cur = conn.cursor()
            cur.execute("CREATE SCHEMA IF NOT EXISTS MARKET_DATA.POLYGON")
            cur.execute("CREATE OR REPLACE TABLE MARKET_DATA.POLYGON.RUN_PROBE (N INTEGER)")
            cur.execute("INSERT INTO MARKET_DATA.POLYGON.RUN_PROBE VALUES (1), (2), (3)")
            (count,) = cur.execute("SELECT COUNT(*) FROM MARKET_DATA.POLYGON.RUN_PROBE").fetchone()
        return dg.MaterializeResult(metadata={"dagster/row_count": int(count)})

    result = dg.materialize([probe_table], resources={"snowflake": build_snowflake_resource(fakesnow_server)})
    assert result.success
    mat = result.asset_materializations_for_node("probe_table")[0]
    assert mat.metadata["dagster/row_count"].value == 3


def test_start_is_idempotent_and_status_reports(
    own_fakesnow: tuple[Settings, ls.Service, ls.StackPaths], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, service, paths = own_fakesnow
    pid = ls.running_pid(service, paths)
    again = ls.start_service(service, paths, child_environment())
    assert (again.started, again.pid) == (False, pid)

    local_stack_cli.services_status(settings)
    out = capsys.readouterr().out
    assert f"fakesnow   running, pid {pid}" in out
    assert f"127.0.0.1:{service.port} listening=True" in out


def test_port_taken_by_another_process_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = local_settings(tmp_path, CRYPTO_FAKESNOW_PORT=str(port))
        with pytest.raises(ls.PortInUseError) as exc:
            ls.start_service(ls.fakesnow_service(settings), ls.stack_paths(settings), child_environment())
    message = str(exc.value)
    assert f"port {port}" in message and "CRYPTO_FAKESNOW_PORT" in message
    assert not ls.stack_paths(settings).pid_file("fakesnow").exists()


def test_dagster_port_taken_fails_dev_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = local_settings(tmp_path, CRYPTO_DAGSTER_PORT=str(port), CRYPTO_FAKESNOW_PORT=str(free_port()))
        with pytest.raises(ls.PortInUseError, match="CRYPTO_DAGSTER_PORT"):
            local_stack_cli.run_dev(settings)
    assert ls.running_pid(ls.fakesnow_service(settings), ls.stack_paths(settings)) is None


def test_stale_pid_file_is_not_trusted(tmp_path: Path) -> None:
    """A pid file naming a live process that is not the service (a reused pid) counts as stale."""
    settings = local_settings(tmp_path, CRYPTO_FAKESNOW_PORT=str(free_port()))
    service, paths = ls.fakesnow_service(settings), ls.stack_paths(settings)
    paths.ensure()
    paths.pid_file("fakesnow").write_text(f'{{"pid": {os.getpid()}, "port": {service.port}}}\n')
    assert ls.running_pid(service, paths) is None
    assert not paths.pid_file("fakesnow").exists()
    assert ls.stop_service(service, paths) is None  # and stop does not kill the test process


def test_service_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    broken = ls.Service(
        name="broken",
        port=free_port(),
        port_setting="CRYPTO_BROKEN_PORT",
        argv=(sys.executable, "-c", "import sys; print('cannot start: boom'); sys.exit(3)"),
        identity=("cannot start",),
    )
    with pytest.raises(ls.LocalStackError, match="exited before listening") as exc:
        ls.start_service(broken, ls.stack_paths(settings), child_environment(), ready_timeout=60)
    assert "cannot start: boom" in str(exc.value)
    assert not ls.stack_paths(settings).pid_file("broken").exists()


def test_services_are_detached_and_loopback_only(own_fakesnow: tuple[Settings, ls.Service, ls.StackPaths]) -> None:
    _, service, paths = own_fakesnow
    pid = ls.running_pid(service, paths)
    assert pid is not None
    assert os.getsid(pid) == pid  # its own session: a terminal's Ctrl-C does not reach it
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=False).stdout
    lines = [line for line in listening.splitlines() if f"pid={pid}," in line]
    if lines:  # `ss` shows owners only with enough privilege
        assert all(f"127.0.0.1:{service.port}" in line for line in lines), lines


def test_required_services_follow_the_settings(tmp_path: Path) -> None:
    local = local_settings(tmp_path)
    assert [s.name for s in ls.required_services(local)] == ["simulator", "fakesnow", "dashboard"]
    prod = local_settings(
        tmp_path,
        POLYGON_API_KEY="k" * 20,
        SNOWFLAKE_ACCOUNT="acme-xy12345",
        SNOWFLAKE_USER="loader",
        SNOWFLAKE_PASSWORD="pw-not-logged",
    )
    assert [s.name for s in ls.required_services(prod)] == ["dashboard"]  # the market page runs under every setting
    for service in ls.all_services(local):
        assert "--host" in service.argv and service.argv[service.argv.index("--host") + 1] == "127.0.0.1"


def test_stack_environment_is_absolute_and_secret_free(tmp_path: Path) -> None:
    settings = local_settings(
        tmp_path, POLYGON_API_KEY="secret-polygon-key-123", MYSQL_URL="mysql+pymysql://u:pw9@h/db"
    )
    env = ls.stack_environment(settings)
    for key in ("CRYPTO_PROJECT_DIR", "CRYPTO_STATE_DIR", "CRYPTO_DATA_DIR"):
        assert Path(env[key]).is_absolute(), key
    assert "secret-polygon-key-123" not in repr(env) and "pw9" not in repr(env)


# ------------------------------------------------------------------------------------------------
# the Dagster instance


def _project_copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT_DIR / "dagster.yaml", project / "dagster.yaml")
    return project


def test_the_repo_instance_config_keeps_state_in_the_project_on_a_temporary_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `dagster dev` does without DAGSTER_HOME (a temporary home, ./dagster.yaml as config), twice:
    runs and cursors outlive the temporary home, in <project>/.dagster_home; DAGSTER_HOME=<project>
    (what `make env` writes to .env) opens the same state."""
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.storage.runs import SqliteRunStorage

    project = _project_copy(tmp_path)
    monkeypatch.chdir(project)  # every Dagster process runs from the project root
    monkeypatch.delenv("DAGSTER_HOME", raising=False)

    @dg.asset
    def probe() -> int:
        return 1

    def temporary_home_instance() -> dg.DagsterInstance:
        home = tmp_path / f"tmp_home_{len(list(tmp_path.iterdir()))}"
        home.mkdir()
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), config_dir=str(project)))

    with temporary_home_instance() as instance:
        assert isinstance(instance.run_storage, SqliteRunStorage)
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
        assert instance.get_settings("sensors")["use_threads"] is True
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
        assert instance.run_monitoring_enabled
        assert not instance.telemetry_enabled
        assert not instance.nux_enabled  # the UI opens on the graph
        run_id = dg.materialize([probe], instance=instance).run_id
        instance.run_storage.set_cursor_values({"crypto_test_cursor": "segment-42"})

    state = project / ".dagster_home"
    assert (state / "history" / "runs.db").is_file()
    assert (state / "schedules" / "schedules.db").is_file()
    assert list((state / "storage").rglob("*"))  # run logs and outputs, not in the temporary home

    with temporary_home_instance() as reopened:
        run = reopened.get_run_by_id(run_id)
        assert run is not None and run.is_success
        assert reopened.run_storage.get_cursor_values({"crypto_test_cursor"}) == {"crypto_test_cursor": "segment-42"}

    monkeypatch.setenv("DAGSTER_HOME", str(project))
    with dg.DagsterInstance.get() as home_instance:
        assert home_instance.get_run_by_id(run_id) is not None


def test_temporary_home_notice_says_where_state_lives(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, CRYPTO_PROJECT_DIR=str(tmp_path))
    assert ls.temporary_home_notice(settings) is None  # local_settings sets DAGSTER_HOME
    bare = load_settings({"CRYPTO_PROJECT_DIR": str(tmp_path)})
    notice = ls.temporary_home_notice(bare)
    assert notice is not None
    assert str(tmp_path / ".dagster_home") in notice and f"DAGSTER_HOME={tmp_path}" in notice and "make env" in notice


def test_workspace_and_pyproject_point_dagster_at_the_same_definitions() -> None:
    """workspace.yaml (dagster dev -w, dagster-webserver, dagster-daemon) and [tool.dg] (dg, bare dagster dev) agree."""
    import tomllib

    import yaml

    workspace = yaml.safe_load((PROJECT_DIR / "workspace.yaml").read_text())
    assert workspace == {
        "load_from": [
            {
                "python_module": {
                    "module_name": "crypto_platform.definitions",
                    "working_directory": ".",
                    "location_name": "crypto_platform",
                }
            }
        ]
    }
    tool = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["tool"]
    assert "dagster" not in tool
    assert tool["dg"]["directory_type"] == "project"
    assert tool["dg"]["project"] == {
        "root_module": "crypto_platform",
        "code_location_target_module": "crypto_platform.definitions",
        "code_location_name": "crypto_platform",
    }


# ------------------------------------------------------------------------------------------------
# services started on demand


def test_snowflake_resource_starts_the_local_server_on_demand_once(tmp_path: Path) -> None:
    """Nothing started beforehand: the resource starts fakesnow before it connects, once, detached."""
    settings = local_settings(tmp_path / "state", CRYPTO_FAKESNOW_PORT=str(free_port()))
    service, paths = ls.fakesnow_service(settings), ls.stack_paths(settings)
    assert not ls.port_open(service.host, service.port)
    try:
        assert _rows(settings, "SELECT 1") == [(1,)]
        pid = ls.running_pid(service, paths)
        assert pid is not None and os.getsid(pid) == pid
        assert "--- starting fakesnow" in paths.log_file("fakesnow").read_text()
        assert _rows(settings, "SELECT 2") == [(2,)]
        assert ls.running_pid(service, paths) == pid  # the second connection reused it
        assert ls.ensure_service(service, settings.state_dir) is None
    finally:
        assert local_stack_cli.services_stop(settings) == 0
    assert not ls.port_open(service.host, service.port) and not paths.pid_file("fakesnow").exists()


def test_cli_routes_dev_and_services_here() -> None:
    from crypto_platform.cli import _COMMANDS

    assert _COMMANDS["dev"][0] == _COMMANDS["services"][0] == "crypto_platform.local.cli"
    with contextlib.suppress(SystemExit):
        local_stack_cli.main(["services", "--help"])


def test_concurrent_starts_make_one_server(tmp_path: Path) -> None:
    """Two terminals running `services start` at once: one starts it, the other finds it running."""
    from concurrent.futures import ThreadPoolExecutor

    settings = local_settings(tmp_path, CRYPTO_FAKESNOW_PORT=str(free_port()))
    service, paths = ls.fakesnow_service(settings), ls.stack_paths(settings)
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(lambda _: ls.start_service(service, paths, child_environment(), ready_timeout=120), range(2))
            )
        assert sorted(r.started for r in results) == [False, True]
        assert results[0].pid == results[1].pid
    finally:
        ls.stop_service(service, paths)
    assert ls.running_pid(service, paths) is None and not ls.port_open(service.host, service.port)


def test_services_stop_with_no_ingester_running_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = local_settings(tmp_path, CRYPTO_FAKESNOW_PORT=str(free_port()))
    assert local_stack_cli.services_stop(settings) == 0
    out = capsys.readouterr().out
    assert "ingester: not running" in out and "fakesnow: was not running" in out
    assert "lake writer: not running" in out


def test_a_throwaway_home_gets_the_repo_config_with_its_stores_inside(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    home = tmp_path / "home"
    ls.install_instance_config(settings, home)

    @dg.asset
    def probe() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert not instance.nux_enabled and not instance.telemetry_enabled
        assert dg.materialize([probe], instance=instance).success
    assert (home / "history" / "runs.db").is_file() and (home / "storage").is_dir()
    assert not (PROJECT_DIR / ".dagster_home" / "storage" / "probe").exists()


def test_the_polygon_resource_starts_the_simulator_with_its_flat_files(tmp_path: Path) -> None:
    """Zero setup: no key, no S3 keys. The simulator started on demand also publishes Flat Files, on the
    endpoint and with the keys the settings default to, so a backfill of past days has history."""
    from crypto_platform.lake.history import history_access
    from crypto_platform.polygon.flat_files import TRADES, FlatFilesAuthError, FlatFilesClient, object_key
    from crypto_platform.resources.polygon import build_polygon_rest_resource
    from crypto_platform.settings import Secret

    settings = local_settings(
        tmp_path / "state", CRYPTO_SIMULATOR_PORT=str(free_port()), CRYPTO_SIMULATOR_S3_PORT=str(free_port())
    )
    assert settings.history_from_flat_files and settings.s3_access_key_id is not None
    resource = build_polygon_rest_resource(settings)
    assert resource.local_simulator_s3_port == settings.simulator_s3_port
    service = ls.simulator_service(settings)
    assert not ls.port_open(service.host, service.port)
    try:
        client = resource.client()  # starts the simulator, detached, once
        access = history_access(settings, client)
        assert access.flat_files is not None
        # Authenticated S3 answers without rendering a day (a day at the default rate takes a while):
        # a day not published yet is a 404 (None), a wrong secret S3's refusal.
        tomorrow = datetime.now(UTC).date() + timedelta(days=1)
        assert access.flat_files.head(object_key(TRADES, tomorrow)) is None
        wrong = FlatFilesClient(settings.s3_endpoint, settings.s3_bucket, settings.s3_access_key_id, Secret("nope"))
        with pytest.raises(FlatFilesAuthError):
            wrong.head(object_key(TRADES, tomorrow))
        assert f"--s3-port\x00{settings.simulator_s3_port}" in "\x00".join(service.argv)
        log = ls.stack_paths(settings).log_file("simulator").read_text()
        assert settings.s3_secret_access_key is not None
        assert settings.s3_secret_access_key.reveal() not in log, "the S3 secret is not logged"
    finally:
        assert local_stack_cli.services_stop(settings) == 0
    assert not ls.port_open(service.host, service.port)
