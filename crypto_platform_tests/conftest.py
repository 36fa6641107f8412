"""Fixtures shared by the whole suite: real local services, never mocks.

Tests that need the MySQL/MariaDB server skip when none answers, except when
``CRYPTO_REQUIRE_MYSQL=1`` (CI sets it): then a missing server fails the test instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from crypto_platform.settings import Settings, load_settings

# Runs of past days read no history unless a test asks for it (history tests set their own
# CRYPTO_HISTORY_SOURCE); otherwise a rebuild of a test day would go looking for Flat Files.
os.environ.setdefault("CRYPTO_HISTORY_SOURCE", "off")
# The suite's fixed days (2025-11 and later) must be partitions; the default start is relative.
os.environ.setdefault("CRYPTO_START_DATE", "2025-01-01")

MYSQL_HOST = os.environ.get("CRYPTO_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("CRYPTO_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("CRYPTO_TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("CRYPTO_TEST_MYSQL_PASSWORD", "")


def _mysql_unavailable_reason() -> str | None:
    import pymysql

    try:
        conn = pymysql.connect(
            host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, connect_timeout=3
        )
    except pymysql.err.OperationalError as exc:
        return f"no MySQL/MariaDB at {MYSQL_HOST}:{MYSQL_PORT} ({exc.args[-1]})"
    conn.close()
    return None


@pytest.fixture(scope="session")
def mysql_server() -> dict[str, object]:
    """Connection parameters of the machine's MySQL/MariaDB server (skip or fail when absent)."""
    reason = _mysql_unavailable_reason()
    if reason:
        if os.environ.get("CRYPTO_REQUIRE_MYSQL") == "1":
            pytest.fail(f"CRYPTO_REQUIRE_MYSQL=1 but {reason}")
        pytest.skip(reason)
    return {"host": MYSQL_HOST, "port": MYSQL_PORT, "user": MYSQL_USER, "password": MYSQL_PASSWORD}


@pytest.fixture
def mysql_database(mysql_server: dict[str, object]) -> Iterator[str]:
    """A throwaway database on the server, dropped afterwards; yields its name."""
    import pymysql

    name = f"cp_test_{uuid.uuid4().hex[:10]}"
    conn = pymysql.connect(autocommit=True, **mysql_server)  # type: ignore[arg-type]
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_settings(state_dir: Path, **env: str) -> Settings:
    """Settings for the zero-setup defaults with all state under ``state_dir`` (no real environment)."""
    project = Path(__file__).resolve().parent.parent
    base = {"CRYPTO_PROJECT_DIR": str(project), "CRYPTO_STATE_DIR": str(state_dir)}
    return load_settings({**base, "DAGSTER_HOME": str(state_dir / "dagster_home"), **env})


@pytest.fixture(scope="session")
def fakesnow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The local stack's persistent fakesnow server on a free loopback port, for the whole session.

    Yields :class:`~crypto_platform.settings.Settings` whose ``snowflake`` points at it, so
    ``build_snowflake_resource(settings)`` talks to it through the real Snowflake connector.
    """
    from crypto_platform.local import stack as local_stack
    from crypto_platform.settings import child_environment

    settings = local_settings(tmp_path_factory.mktemp("fakesnow_state"), CRYPTO_FAKESNOW_PORT=str(free_port()))
    service = local_stack.fakesnow_service(settings)
    paths = local_stack.stack_paths(settings)
    local_stack.start_service(service, paths, child_environment(), ready_timeout=120)
    try:
        yield settings
    finally:
        local_stack.stop_service(service, paths)


def execute_request(
    job: dg.JobDefinition, instance: dg.DagsterInstance, request: dg.RunRequest
) -> dg.ExecuteInProcessResult:
    """Execute a sensor's run request in process as the daemon launches it: the job subset to the
    request's assets and, when it names them, its asset checks (a round without the lake checks)."""
    assets = set(request.asset_selection or [])
    if request.asset_check_keys is not None:
        job = job.get_subset(asset_selection=assets, asset_check_selection=set(request.asset_check_keys))
        assets = set()
    return job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        asset_selection=sorted(assets, key=str) or None,
    )


def run_failures(result: dg.ExecuteInProcessResult) -> str:
    """Why a run failed, step by step (its failure events' messages and errors), for an assertion message."""
    lines = []
    for event in result.all_events:
        if event.is_failure:
            data = event.event_specific_data
            error = getattr(data, "error", None)
            lines.append(f"{event.step_key or 'run'}: {event.message}\n{error.to_string() if error else ''}")
    return "\n".join(lines) or "no failure event"
