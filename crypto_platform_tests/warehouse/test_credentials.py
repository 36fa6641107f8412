"""Wrong credentials say so, name the setting to fix, and never show the password.

MySQL: a real user on the machine's MariaDB, refused for a wrong password, at the loader and the asset.
Snowflake: the fakesnow server accepts any password (checked below, so we notice if that changes), so
the refusal is tested with the real connector against a small HTTP endpoint of our own that answers
the login the way Snowflake refuses a password (code 390100); the asset's message comes from there.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dagster as dg
import pytest
from dagster_snowflake import SnowflakeResource

from crypto_platform.assets.warehouse import WAREHOUSE_ASSETS
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.resources.snowflake import LOCAL_NETWORK_TIMEOUT_S, local_connection_args
from crypto_platform.settings import Settings
from crypto_platform.warehouse.errors import WarehouseAuthError
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform_tests.assets.test_warehouse_trades import DAY, lake_day
from crypto_platform_tests.conftest import free_port

# Characters that need URL quoting, so the masking is tested on the encoded and the plain form.
WRONG = "Wr0ng:p@ss/w%rd"
RIGHT = "R1ght-pass"

mysql_trades = WAREHOUSE_ASSETS["mysql_trades"]
snowflake_trades = WAREHOUSE_ASSETS["snowflake_trades"]


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(e.step_failure_data.error.to_string() for e in result.get_step_failure_events())


@pytest.fixture
def mysql_user(mysql_server: dict[str, Any], mysql_database: str) -> Iterator[str]:
    """A user with password RIGHT and every privilege on the test database; dropped afterwards."""
    import pymysql

    user = f"cp_u_{uuid.uuid4().hex[:8]}"
    conn = pymysql.connect(autocommit=True, **mysql_server)
    hosts = ("127.0.0.1", "localhost")  # a TCP client from 127.0.0.1 may be matched as either
    try:
        with conn.cursor() as cur:
            for host in hosts:
                cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{RIGHT}'")
                cur.execute(f"GRANT ALL PRIVILEGES ON `{mysql_database}`.* TO '{user}'@'{host}'")
        yield user
    finally:
        with conn.cursor() as cur:
            for host in hosts:
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        conn.close()


def _url(server: dict[str, Any], user: str, password: str, database: str) -> str:
    return f"mysql+pymysql://{user}:{quote(password, safe='')}@{server['host']}:{server['port']}/{database}"


def _assert_refusal(text: str, user: str, port: Any, *, setting: str) -> None:
    assert f"refused user '{user}'" in text and setting in text, text
    assert str(port) in text
    for secret in (WRONG, quote(WRONG, safe=""), RIGHT):
        assert secret not in text


@pytest.mark.mysql
def test_a_wrong_mysql_password_is_refused_by_name(
    mysql_server: dict[str, Any], mysql_database: str, mysql_user: str
) -> None:
    SqlWarehouse(_url(mysql_server, mysql_user, RIGHT, mysql_database), connect_timeout=3).migrate()  # the user works
    wrong = SqlWarehouse(_url(mysql_server, mysql_user, WRONG, mysql_database), connect_timeout=3)
    with pytest.raises(WarehouseAuthError) as err:
        wrong.migrate()
    _assert_refusal(str(err.value), mysql_user, mysql_server["port"], setting="MYSQL_URL")
    assert "wrong user name or password" in str(err.value)
    assert WRONG not in repr(wrong)


@pytest.mark.mysql
def test_the_mysql_asset_with_a_wrong_password_fails_saying_so(
    tmp_path: Path,
    mysql_server: dict[str, Any],
    mysql_database: str,
    mysql_user: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    landing, lake = lake_day(tmp_path)
    monkeypatch.setenv("MYSQL_URL", _url(mysql_server, mysql_user, WRONG, mysql_database))
    resources = {
        "sql_tables": SqlTablesResource(url=dg.EnvVar("MYSQL_URL")),
        "lake": lake,
        "stream": landing.resource(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [mysql_trades], partition_key=DAY, resources=resources, instance=instance, raise_on_error=False
        )
        assert not result.success
        _assert_refusal(_failure_text(result), mysql_user, mysql_server["port"], setting="MYSQL_URL")
        logs = "\n".join(repr(e) for e in instance.all_logs(result.run_id))
        assert WRONG not in logs and quote(WRONG, safe="") not in logs
    assert lake.read_partition("raw_trades", DAY).num_rows == 40  # nothing lost: the day waits in the lake


def test_fakesnow_accepts_any_password(fakesnow_server: Settings) -> None:
    """Why the Snowflake refusal below is not tested against fakesnow: it logs anyone in."""
    import snowflake.connector

    sf = fakesnow_server.snowflake
    args = {"account": sf.account, "user": sf.user, "network_timeout": LOCAL_NETWORK_TIMEOUT_S}
    conn = snowflake.connector.connect(password=WRONG, **args, **local_connection_args(sf))
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchall() == [(1,)]
    finally:
        conn.close()


class _RefusingLogin(BaseHTTPRequestHandler):
    """Answers every request as Snowflake answers a login with a wrong password."""

    requests: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).requests.append(self.path)
        body = json.dumps(
            {
                "data": None,
                "code": "390100",
                "message": "Incorrect username or password was specified.",
                "success": False,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_snowflake() -> Iterator[int]:
    """A loopback port where every Snowflake login is refused for wrong credentials."""
    _RefusingLogin.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingLogin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _snowflake_resource(fakesnow_server: Settings, port: int) -> SnowflakeResource:
    sf = fakesnow_server.snowflake
    return SnowflakeResource(
        account=sf.account,
        user=sf.user,
        password=WRONG,
        database="MARKET_DATA",
        schema="POLYGON",
        network_timeout=LOCAL_NETWORK_TIMEOUT_S,
        login_timeout=10,
        additional_snowflake_connection_args={**local_connection_args(sf), "port": port},
    )


def test_the_snowflake_asset_refused_login_says_so(
    tmp_path: Path, fakesnow_server: Settings, refusing_snowflake: int
) -> None:
    landing, lake = lake_day(tmp_path)
    resources = {
        "snowflake": _snowflake_resource(fakesnow_server, refusing_snowflake),
        "lake": lake,
        "stream": landing.resource(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [snowflake_trades], partition_key=DAY, resources=resources, instance=instance, raise_on_error=False
        )
        assert not result.success
        text = _failure_text(result)
        assert any(p.startswith("/session/v1/login-request") for p in _RefusingLogin.requests)
        assert "WarehouseAuthError" in text and "wrong credentials" in text, text
        _assert_refusal(text, fakesnow_server.snowflake.user, refusing_snowflake, setting="SNOWFLAKE_PASSWORD")
        assert WRONG not in "\n".join(repr(e) for e in instance.all_logs(result.run_id))


def test_an_unreachable_snowflake_names_host_port_and_settings(tmp_path: Path, fakesnow_server: Settings) -> None:
    landing, lake = lake_day(tmp_path)
    port = free_port()  # nothing listens there
    resources = {"snowflake": _snowflake_resource(fakesnow_server, port), "lake": lake, "stream": landing.resource()}
    result = dg.materialize([snowflake_trades], partition_key=DAY, resources=resources, raise_on_error=False)
    assert not result.success
    text = _failure_text(result)
    assert "WarehouseConnectionError" in text and f"127.0.0.1:{port}" in text and "CRYPTO_FAKESNOW_PORT" in text, text
    assert WRONG not in text
