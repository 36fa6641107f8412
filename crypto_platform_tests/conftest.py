"""Fixtures shared by the whole suite: real local services, never mocks.

Tests that need the MySQL/MariaDB server skip when none answers, except when
``CRYPTO_REQUIRE_MYSQL=1`` (CI sets it): then a missing server fails the test instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

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
