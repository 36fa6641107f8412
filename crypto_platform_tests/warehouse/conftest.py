"""Warehouse fixtures: the SQL targets (MariaDB, SQLite in tmp_path) and a connection to the suite's fakesnow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crypto_platform.resources.snowflake import LOCAL_NETWORK_TIMEOUT_S, local_connection_args
from crypto_platform.settings import Settings
from crypto_platform.warehouse.sql import SqlWarehouse


@pytest.fixture(params=["sqlite", "mysql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> SqlWarehouse:
    """The same tests against the SQLite stand-in and the machine's MariaDB (throwaway database)."""
    if request.param == "sqlite":
        return SqlWarehouse(f"sqlite:///{tmp_path / 'warehouse.sqlite'}")
    db = request.getfixturevalue("mysql_database")
    server = request.getfixturevalue("mysql_server")
    return SqlWarehouse(f"mysql+pymysql://{server['user']}:{server['password']}@{server['host']}:{server['port']}/{db}")


@pytest.fixture
def snowflake_conn(fakesnow_server: Settings) -> Iterator[Any]:
    """A real snowflake.connector connection to the suite's fakesnow server (the top-level fixture)."""
    import snowflake.connector

    sf = fakesnow_server.snowflake
    conn = snowflake.connector.connect(
        account=sf.account,
        user=sf.user,
        password="snow",
        network_timeout=LOCAL_NETWORK_TIMEOUT_S,
        **local_connection_args(sf),
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
