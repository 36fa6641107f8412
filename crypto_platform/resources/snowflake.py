"""The Snowflake resource: the local fakesnow server by default, a real account in production.

``dagster_snowflake.SnowflakeResource`` has no host/port/protocol fields and silently drops them
when given, so the local server is reached through
``additional_snowflake_connection_args``, which is merged last into ``snowflake.connector.connect``.

Secrets are never put into the resource as plain strings: Dagster shows a resource's configured
values in the UI and over GraphQL, so production credentials are bound as ``dg.EnvVar`` references
(the UI shows only the variable name) and read by Dagster when the resource is built for a run or a
sensor tick. ``settings`` has already checked that exactly one credential is set. The fakesnow
login (fake/snow) is not a secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_snowflake import SnowflakeResource

from crypto_platform.settings import Settings, SnowflakeSettings

# Never phone home from a local or CI run; harmless on a real account.
_SESSION_PARAMETERS = {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False}
# fakesnow answers unsupported SQL with HTTP 500, which the connector would retry for minutes; with a
# small network timeout it gives up after a few seconds (a running query is not cut short by it).
LOCAL_NETWORK_TIMEOUT_S = 5
LOCAL_LOGIN_TIMEOUT_S = 10


def local_connection_args(sf: SnowflakeSettings) -> dict[str, Any]:
    """Connector arguments that point the real Snowflake connector at the local fakesnow server."""
    return {
        "host": sf.host,
        "port": sf.port,
        "protocol": "http",
        "session_parameters": dict(_SESSION_PARAMETERS),
    }


class LocalSnowflakeResource(SnowflakeResource):
    """``SnowflakeResource`` on the local fakesnow server, which it starts (detached, once) before connecting.

    An asset, check or sensor that connects needs no server started beforehand: when nothing serves
    the port, the server starts with its databases under ``<local_state_dir>/fakesnow``, its pid file
    and log under ``<local_state_dir>/run`` and ``/log``, and keeps running until ``make stop``.
    """

    local_state_dir: str

    @contextmanager
    def get_connection(self, raw_conn: bool = True) -> Iterator[Any]:
        from crypto_platform.local.stack import ensure_service, fakesnow_service_at

        port = int((self.additional_snowflake_connection_args or {})["port"])
        said = ensure_service(fakesnow_service_at(Path(self.local_state_dir), port), Path(self.local_state_dir))
        if said:
            dg.get_dagster_logger().info(said)
        with super().get_connection(raw_conn=raw_conn) as conn:
            yield conn


def build_snowflake_resource(settings: Settings) -> SnowflakeResource:
    """A ``SnowflakeResource`` for the settings: fakesnow on loopback, or the configured account."""
    sf = settings.snowflake
    if sf.local:
        return LocalSnowflakeResource(
            local_state_dir=str(settings.state_dir),
            account=sf.account,
            user=sf.user,
            password=sf.password.reveal() if sf.password else "snow",
            database=sf.database,
            schema=sf.schema,
            network_timeout=LOCAL_NETWORK_TIMEOUT_S,
            login_timeout=LOCAL_LOGIN_TIMEOUT_S,
            additional_snowflake_connection_args=local_connection_args(sf),
        )
    credentials: dict[str, Any] = {}
    if sf.password:
        credentials["password"] = dg.EnvVar("SNOWFLAKE_PASSWORD")
    elif sf.private_key:
        credentials["private_key"] = dg.EnvVar("SNOWFLAKE_PRIVATE_KEY")
    else:
        credentials["private_key_path"] = sf.private_key_path
    if sf.private_key_password and "password" not in credentials:
        credentials["private_key_password"] = dg.EnvVar("SNOWFLAKE_PRIVATE_KEY_PASSWORD")
    return SnowflakeResource(
        account=sf.account,
        user=sf.user,
        database=sf.database,
        schema=sf.schema,
        role=sf.role,
        warehouse=sf.warehouse,
        login_timeout=60,
        additional_snowflake_connection_args={"session_parameters": dict(_SESSION_PARAMETERS)},
        **credentials,
    )
