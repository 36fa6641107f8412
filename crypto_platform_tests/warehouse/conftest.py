"""Warehouse fixtures: the SQL targets (real MariaDB, SQLite in tmp_path) and a private fakesnow server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crypto_platform.warehouse.sql import SqlWarehouse


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["sqlite", "mysql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> SqlWarehouse:
    """The same tests against the SQLite stand-in and the machine's MariaDB (throwaway database)."""
    if request.param == "sqlite":
        return SqlWarehouse(f"sqlite:///{tmp_path / 'warehouse.sqlite'}")
    db = request.getfixturevalue("mysql_database")
    server = request.getfixturevalue("mysql_server")
    return SqlWarehouse(f"mysql+pymysql://{server['user']}:{server['password']}@{server['host']}:{server['port']}/{db}")


@pytest.fixture(scope="session")
def fakesnow_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A fakesnow server of our own, started with the local stack's launcher (own state dir, free port)."""
    from crypto_platform.local_stack import fakesnow_service, stack_paths, start_service, stop_service
    from crypto_platform.settings import child_environment, load_settings

    state = tmp_path_factory.mktemp("fakesnow_state")
    port = _free_port()
    env = {"CRYPTO_STATE_DIR": str(state), "CRYPTO_PROJECT_DIR": str(state), "CRYPTO_FAKESNOW_PORT": str(port)}
    settings = load_settings(env)
    service = fakesnow_service(settings)
    paths = stack_paths(settings)
    start_service(service, paths, child_environment(env), ready_timeout=60)
    try:
        yield port
    finally:
        stop_service(service, paths)


@pytest.fixture
def snowflake_conn(fakesnow_port: int, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A real snowflake.connector connection to the fakesnow server, in a database of its own."""
    import snowflake.connector

    conn = snowflake.connector.connect(
        host="127.0.0.1",
        port=fakesnow_port,
        protocol="http",
        account="fakesnow",
        user="fake",
        password="snow",
        network_timeout=5,
        session_parameters={"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
    )
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def sf_database(request: pytest.FixtureRequest) -> str:
    """A database name unique to the test, so tests sharing the server do not see each other's rows."""
    import uuid

    return f"MD_{uuid.uuid4().hex[:8].upper()}"
