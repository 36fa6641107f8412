"""Warehouse fixtures: the SQL targets (MariaDB, SQLite in tmp_path), a throwaway MariaDB of a test's own,
and a connection to the suite's fakesnow."""

from __future__ import annotations

import os
import shutil
import tempfile
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


@pytest.fixture
def throwaway_mariadb() -> Iterator[Any]:
    """A MariaDB server of this test's own on a free port (``mariadb_server.ThrowawayMariaDB``), running.

    The test may stop and start it; it is stopped and its datadir removed afterwards whatever happens.
    Without the MariaDB binaries the test skips, or fails when ``CRYPTO_REQUIRE_MYSQL=1`` (CI); a
    server that is installed but does not start always fails.
    """
    from crypto_platform_tests.conftest import free_port
    from crypto_platform_tests.warehouse.mariadb_server import ThrowawayMariaDB, unavailable_reason

    reason = unavailable_reason()
    if reason:
        if os.environ.get("CRYPTO_REQUIRE_MYSQL") == "1":
            pytest.fail(f"CRYPTO_REQUIRE_MYSQL=1 but no throwaway MariaDB: {reason}")
        pytest.skip(f"no throwaway MariaDB: {reason}")
    # Not tmp_path: the socket path must stay under the 107-byte limit of a Unix socket name.
    base = Path(tempfile.mkdtemp(prefix="cp_mariadb_"))
    server = ThrowawayMariaDB(base, free_port())
    try:
        server.install()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
