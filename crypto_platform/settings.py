"""Environment -> typed settings: the one place that reads ``os.environ``.

Every other module receives a :class:`Settings` (or values taken from it). Defaults give the
zero-setup local stack (simulator, SQLite stand-in, fakesnow, MLflow on SQLite); setting the
production variables switches each part independently (DESIGN §4).

Secrets are held in :class:`Secret`, whose ``repr``/``str`` never show the value, so a settings
object can be logged, put in run metadata or raised in an exception without leaking a key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHANNELS = ("XT", "XQ", "XA", "XAS", "XL2")
DEFAULT_CHANNELS = ("XT", "XQ", "XA", "XAS")
DEFAULT_PAIRS = ("BTC-USD", "ETH-USD", "SOL-USD")

# Loopback ports of the zero-setup stack.
DEFAULT_SIMULATOR_PORT = 8765
DEFAULT_FAKESNOW_PORT = 8766
DEFAULT_SIMULATOR_S3_PORT = 8767
DEFAULT_DAGSTER_PORT = 3000
# First daily partition of every date-partitioned asset (REST history reaches further back).
DEFAULT_START_DATE = "2025-01-01"
# Partitions a run keeps in memory between its steps: about three of 2M rows (a stream
# run reads the day's trades, quotes and bars, and the day before's for the alerts).
DEFAULT_LAKE_CACHE_MB = 768

# The keys the simulator accepts by default (REST/WebSocket, and its Flat Files); they are not secrets.
SIMULATOR_API_KEY = "simulator-key"
SIMULATOR_S3_ACCESS_KEY_ID = "simulator-s3-key"
SIMULATOR_S3_SECRET_ACCESS_KEY = "simulator-s3-secret"

POLYGON_WS_URL = "wss://socket.polygon.io/crypto"
POLYGON_REST_URL = "https://api.polygon.io"
# Massive's Flat Files (formerly files.polygon.io): an S3-compatible endpoint and its bucket.
POLYGON_S3_ENDPOINT = "https://files.massive.com"
POLYGON_S3_BUCKET = "flatfiles"
HISTORY_SOURCES = ("auto", "flat_files", "rest")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable and the fix."""


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))


def _parse_pairs(raw: str) -> tuple[str, ...]:
    pairs = _split_list(raw.upper())
    if not pairs:
        raise SettingsError("CRYPTO_PAIRS is empty: give a comma list such as BTC-USD,ETH-USD, or * for all pairs")
    for pair in pairs:
        if pair == "*":
            continue
        base, sep, quote = pair.removeprefix("X:").partition("-")
        if not sep or not base.isalnum() or not quote.isalnum():
            raise SettingsError(f"CRYPTO_PAIRS has {pair!r}: each pair is FROM-TO, e.g. BTC-USD (or * for all pairs)")
    return tuple(p.removeprefix("X:") for p in pairs)


def _parse_decimal(env: Mapping[str, str], name: str, default: str) -> Decimal:
    raw = env.get(name, "").strip() or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SettingsError(f"{name}={raw!r} is not a number (default {default}; 0 turns it off)") from None
    if not value.is_finite() or value < 0:
        raise SettingsError(f"{name}={raw!r} must be a number >= 0 (default {default}; 0 turns it off)")
    return value


def _parse_spike_factor(env: Mapping[str, str]) -> float:
    value = _parse_float(env, "CRYPTO_ALERT_VOLUME_SPIKE_FACTOR", 5.0)
    if 0 < value <= 1:
        raise SettingsError(
            f"CRYPTO_ALERT_VOLUME_SPIKE_FACTOR={value} would flag ordinary minutes: use a factor above 1 "
            "(default 5.0; 0 turns the rule off)"
        )
    return value


def _parse_thresholds(env: Mapping[str, str], name: str, pairs: tuple[str, ...]) -> dict[str, Decimal]:
    """``BTC-USD:100000,ETH-USD:5000`` -> {pair: price}; each pair once, each one of CRYPTO_PAIRS."""
    out: dict[str, Decimal] = {}
    for item in _split_list(env.get(name, "")):
        pair, sep, price = (p.strip() for p in item.partition(":"))
        pair = pair.upper().removeprefix("X:")
        example = "BTC-USD:100000,ETH-USD:5000"
        if not sep or not price:
            raise SettingsError(f"{name} has {item!r}: give PAIR:PRICE items separated by commas, e.g. {example}")
        base, dash, quote = pair.partition("-")
        if not dash or not base.isalnum() or not quote.isalnum():
            raise SettingsError(f"{name} has {item!r}: the pair is FROM-TO, e.g. {example}")
        try:
            value = Decimal(price)
        except InvalidOperation:
            value = Decimal(-1)
        if not value.is_finite() or value <= 0:
            raise SettingsError(f"{name} has {item!r}: the price must be a positive number, e.g. {example}")
        if pair in out:
            raise SettingsError(f"{name} names {pair} twice: keep one threshold per pair")
        if "*" not in pairs and pair not in pairs:
            raise SettingsError(
                f"{name} names {pair}, which is not in CRYPTO_PAIRS ({','.join(pairs)}): its alert could never fire"
            )
        out[pair] = value
    return out


def _parse_channels(raw: str) -> tuple[str, ...]:
    channels = _split_list(raw.upper())
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels:
        raise SettingsError(
            f"CRYPTO_CHANNELS has {unknown or 'nothing'}: choose from {','.join(CHANNELS)} "
            f"(default {','.join(DEFAULT_CHANNELS)})"
        )
    return channels


def _parse_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number (default {default})") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum} (default {default})")
    return value


def _parse_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number (default {default})") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum} (default {default})")
    return value


def _parse_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name}={value!r}: choose one of {', '.join(choices)} (default {default})")
    return value


def _parse_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a yes/no value: use true or false")


def _parse_date(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    try:
        date.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a date YYYY-MM-DD (default {default})") from None
    return value


def _parse_url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise SettingsError(f"{name}={value!r} is not a {'/'.join(schemes)} URL (default {default})")
    return value.rstrip("/")


def mask_url_password(url: str) -> str:
    """``mysql+pymysql://u:pw@h/db`` -> ``mysql+pymysql://u:***@h/db`` for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class SnowflakeSettings:
    """Where the Snowflake tables go: a real account, or the local fakesnow server."""

    local: bool
    account: str
    user: str
    password: Secret | None
    private_key_path: str | None
    private_key: Secret | None
    private_key_password: Secret | None
    role: str | None
    warehouse: str | None
    database: str = "MARKET_DATA"
    schema: str = "POLYGON"
    host: str = "127.0.0.1"
    port: int = DEFAULT_FAKESNOW_PORT


@dataclass(frozen=True)
class Settings:
    """Everything the platform reads from its environment, typed and validated."""

    project_dir: Path
    data_dir: Path
    state_dir: Path
    dagster_home: Path
    api_key: Secret
    uses_simulator: bool
    ws_url: str
    rest_url: str
    simulator_host: str
    simulator_port: int
    pairs: tuple[str, ...]
    channels: tuple[str, ...]
    mysql_url: Secret
    snowflake: SnowflakeSettings
    mlflow_tracking_uri: str
    fsync_policy: str
    segment_max_bytes: int
    segment_max_age_s: float
    retention_days: int
    lake_cache_mb: int
    dagster_port: int
    start_date: str
    reconnect_initial_s: float
    reconnect_max_s: float
    reconnect_reset_s: float
    handshake_timeout_s: float
    max_connections_cooldown_s: float
    auth_retry_s: float
    bar_revision_window_s: float
    repair_trades: bool
    ingester_autostart: bool
    # History (days the stream never saw): Flat Files over S3 with their own keys, or REST.
    s3_endpoint: str = POLYGON_S3_ENDPOINT
    s3_bucket: str = POLYGON_S3_BUCKET
    s3_access_key_id: Secret | None = None
    s3_secret_access_key: Secret | None = None
    history_source: str = "auto"
    simulator_s3_port: int = DEFAULT_SIMULATOR_S3_PORT
    extra: Mapping[str, str] = field(default_factory=dict)
    # Alert rules (crypto_alerts): price crossings per pair, minute volume spikes, whale trades.
    alert_price_above: Mapping[str, Decimal] = field(default_factory=dict)
    alert_price_below: Mapping[str, Decimal] = field(default_factory=dict)
    alert_volume_spike_factor: float = 5.0
    alert_volume_window_min: int = 30
    alert_whale_notional: Decimal = Decimal(1_000_000)

    @property
    def uses_mysql_server(self) -> bool:
        return not self.mysql_url.reveal().startswith("sqlite")

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def lake_dir(self) -> Path:
        return self.data_dir / "lake"

    @property
    def history_from_flat_files(self) -> bool:
        """Whether past days come from Flat Files (else from REST ``/v3/trades``)."""
        if self.history_source == "auto":
            return self.s3_access_key_id is not None
        return self.history_source == "flat_files"

    def describe(self) -> dict[str, Any]:
        """A secret-free view for logs, run metadata and MLflow params."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "mysql_url":
                value = mask_url_password(value.reveal())
            elif (
                f.name == "api_key"
                or isinstance(value, Secret)
                or f.name.startswith("s3_access")
                or f.name.startswith("s3_secret")
            ):
                continue
            elif f.name == "snowflake":
                value = {
                    k.name: getattr(value, k.name)
                    for k in fields(value)
                    if not isinstance(getattr(value, k.name), Secret) and k.name != "private_key_path"
                }
            elif f.name == "extra":
                continue
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = ",".join(value)
            out[f.name] = value
        return out


def load_settings(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Read and validate the environment; raise :class:`SettingsError` naming the culprit."""
    env = os.environ if environ is None else environ
    project_dir = Path(env.get("CRYPTO_PROJECT_DIR") or (cwd or Path.cwd())).resolve()
    state_dir = Path(env.get("CRYPTO_STATE_DIR") or project_dir / "var").resolve()
    data_dir = Path(env.get("CRYPTO_DATA_DIR") or state_dir / "data").resolve()
    dagster_home = Path(env.get("DAGSTER_HOME") or project_dir / ".dagster_home").resolve()

    raw_key = env.get("POLYGON_API_KEY", "").strip()
    sim_host = env.get("CRYPTO_SIMULATOR_HOST", "").strip() or "127.0.0.1"
    sim_port = _parse_int(env, "CRYPTO_SIMULATOR_PORT", DEFAULT_SIMULATOR_PORT, minimum=1)
    sim_ws = f"ws://{sim_host}:{sim_port}/crypto"
    sim_rest = f"http://{sim_host}:{sim_port}"
    ws_url = _parse_url(env, "POLYGON_WS_URL", POLYGON_WS_URL if raw_key else sim_ws, ("ws", "wss"))
    rest_url = _parse_url(env, "POLYGON_REST_URL", POLYGON_REST_URL if raw_key else sim_rest, ("http", "https"))
    uses_simulator = not raw_key and ws_url == sim_ws
    if not raw_key and not uses_simulator:
        raise SettingsError(
            "POLYGON_WS_URL points away from the built-in simulator but POLYGON_API_KEY is not set: "
            "set POLYGON_API_KEY to your Polygon/Massive key, or unset POLYGON_WS_URL to use the simulator"
        )
    api_key = Secret(raw_key or SIMULATOR_API_KEY)

    mysql_raw = env.get("MYSQL_URL", "").strip()
    if mysql_raw:
        scheme = urlsplit(mysql_raw).scheme
        if not scheme.startswith(("mysql", "mariadb", "sqlite")):
            raise SettingsError(
                f"MYSQL_URL has scheme {scheme!r}: use mysql+pymysql://USER:PASSWORD@HOST:3306/DATABASE "
                "(or leave it unset for the embedded SQLite stand-in)"
            )
    mysql_url = Secret(mysql_raw or f"sqlite:///{data_dir / 'warehouse.sqlite'}")

    sf_account = env.get("SNOWFLAKE_ACCOUNT", "").strip()
    sf_password = env.get("SNOWFLAKE_PASSWORD", "")
    sf_key = env.get("SNOWFLAKE_PRIVATE_KEY", "")
    sf_key_path = env.get("SNOWFLAKE_PRIVATE_KEY_PATH", "").strip() or None
    # Where the tables go, on an account and on the local fakesnow server alike.
    sf_where: dict[str, Any] = {
        "database": env.get("SNOWFLAKE_DATABASE", "").strip() or "MARKET_DATA",
        "schema": env.get("SNOWFLAKE_SCHEMA", "").strip() or "POLYGON",
    }
    for name, value in sf_where.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", value):
            raise SettingsError(
                f"SNOWFLAKE_{name.upper()}={value!r} is not a plain Snowflake identifier (letters, digits, _ or $, "
                "not starting with a digit)"
            )
    if sf_account:
        user = env.get("SNOWFLAKE_USER", "").strip()
        if not user:
            raise SettingsError("SNOWFLAKE_ACCOUNT is set but SNOWFLAKE_USER is not: set the Snowflake login name")
        if sum(bool(x) for x in (sf_password, sf_key, sf_key_path)) != 1:
            raise SettingsError(
                "Snowflake needs exactly one credential: SNOWFLAKE_PASSWORD, SNOWFLAKE_PRIVATE_KEY "
                "(PEM text) or SNOWFLAKE_PRIVATE_KEY_PATH"
            )
        snowflake = SnowflakeSettings(
            local=False,
            account=sf_account,
            user=user,
            password=Secret(sf_password) if sf_password else None,
            private_key_path=sf_key_path,
            private_key=Secret(sf_key) if sf_key else None,
            private_key_password=Secret(env["SNOWFLAKE_PRIVATE_KEY_PASSWORD"])
            if env.get("SNOWFLAKE_PRIVATE_KEY_PASSWORD")
            else None,
            role=env.get("SNOWFLAKE_ROLE") or None,
            warehouse=env.get("SNOWFLAKE_WAREHOUSE") or None,
            **sf_where,
        )
    else:
        snowflake = SnowflakeSettings(
            local=True,
            account="fakesnow",
            user="fake",
            password=Secret("snow"),
            private_key_path=None,
            private_key=None,
            private_key_password=None,
            role=None,
            warehouse=None,
            host=env.get("CRYPTO_FAKESNOW_HOST", "").strip() or "127.0.0.1",
            port=_parse_int(env, "CRYPTO_FAKESNOW_PORT", DEFAULT_FAKESNOW_PORT, minimum=1),
            **sf_where,
        )

    mlflow_uri = env.get("MLFLOW_TRACKING_URI", "").strip() or f"sqlite:///{state_dir / 'mlflow.db'}"
    if mlflow_uri.startswith("file:") or "://" not in mlflow_uri:
        raise SettingsError(
            f"MLFLOW_TRACKING_URI={mlflow_uri!r}: MLflow 3.17 refuses file stores; use sqlite:////abs/path/mlflow.db "
            "or an http(s):// tracking server"
        )

    s3_key_id = env.get("POLYGON_S3_ACCESS_KEY_ID", "").strip()
    s3_secret = env.get("POLYGON_S3_SECRET_ACCESS_KEY", "").strip()
    if bool(s3_key_id) != bool(s3_secret):
        raise SettingsError(
            "Flat Files need both POLYGON_S3_ACCESS_KEY_ID and POLYGON_S3_SECRET_ACCESS_KEY (the S3 keys from the "
            "Massive dashboard, not the API key): set both, or neither to read history from REST"
        )
    sim_s3_port = _parse_int(env, "CRYPTO_SIMULATOR_S3_PORT", DEFAULT_SIMULATOR_S3_PORT, minimum=1)
    if uses_simulator and not s3_key_id:
        # The simulator's Flat Files and their built-in keys (not secrets).
        s3_key_id, s3_secret = SIMULATOR_S3_ACCESS_KEY_ID, SIMULATOR_S3_SECRET_ACCESS_KEY
        s3_default = f"http://{sim_host}:{sim_s3_port}"
    else:
        s3_default = POLYGON_S3_ENDPOINT
    history_source = _parse_choice(env, "CRYPTO_HISTORY_SOURCE", "auto", HISTORY_SOURCES)
    if history_source == "flat_files" and not s3_key_id:
        raise SettingsError(
            "CRYPTO_HISTORY_SOURCE=flat_files but POLYGON_S3_ACCESS_KEY_ID/POLYGON_S3_SECRET_ACCESS_KEY are not set: "
            "set the S3 keys from the Massive dashboard, or use auto/rest"
        )

    pairs = _parse_pairs(env.get("CRYPTO_PAIRS", "") or ",".join(DEFAULT_PAIRS))
    return Settings(
        project_dir=project_dir,
        data_dir=data_dir,
        state_dir=state_dir,
        dagster_home=dagster_home,
        api_key=api_key,
        uses_simulator=uses_simulator,
        ws_url=ws_url,
        rest_url=rest_url,
        simulator_host=sim_host,
        simulator_port=sim_port,
        pairs=pairs,
        channels=_parse_channels(env.get("CRYPTO_CHANNELS", "") or ",".join(DEFAULT_CHANNELS)),
        mysql_url=mysql_url,
        snowflake=snowflake,
        mlflow_tracking_uri=mlflow_uri,
        fsync_policy=_parse_choice(env, "CRYPTO_FSYNC", "seal", ("never", "seal", "frame")),
        segment_max_bytes=_parse_int(env, "CRYPTO_SEGMENT_MAX_BYTES", 64 * 1024 * 1024, minimum=4096),
        segment_max_age_s=_parse_float(env, "CRYPTO_SEGMENT_MAX_AGE_S", 5.0, minimum=0.05),
        retention_days=_parse_int(env, "CRYPTO_RETENTION_DAYS", 0),
        lake_cache_mb=_parse_int(env, "CRYPTO_LAKE_CACHE_MB", DEFAULT_LAKE_CACHE_MB),
        dagster_port=_parse_int(env, "CRYPTO_DAGSTER_PORT", DEFAULT_DAGSTER_PORT, minimum=1),
        start_date=_parse_date(env, "CRYPTO_START_DATE", DEFAULT_START_DATE),
        reconnect_initial_s=_parse_float(env, "CRYPTO_RECONNECT_INITIAL_S", 0.5, minimum=0.01),
        reconnect_max_s=_parse_float(env, "CRYPTO_RECONNECT_MAX_S", 30.0, minimum=0.01),
        reconnect_reset_s=_parse_float(env, "CRYPTO_RECONNECT_RESET_S", 60.0, minimum=0.0),
        handshake_timeout_s=_parse_float(env, "CRYPTO_HANDSHAKE_TIMEOUT_S", 10.0, minimum=0.1),
        max_connections_cooldown_s=_parse_float(env, "CRYPTO_MAX_CONNECTIONS_COOLDOWN_S", 60.0, minimum=0.0),
        auth_retry_s=_parse_float(env, "CRYPTO_AUTH_RETRY_S", 900.0, minimum=1.0),
        bar_revision_window_s=_parse_float(env, "CRYPTO_BAR_REVISION_WINDOW_S", 120.0),
        repair_trades=_parse_bool(env, "CRYPTO_REPAIR_TRADES", False),
        ingester_autostart=_parse_bool(env, "CRYPTO_INGESTER_AUTOSTART", True),
        s3_endpoint=_parse_url(env, "POLYGON_S3_ENDPOINT", s3_default, ("http", "https")),
        s3_bucket=env.get("POLYGON_S3_BUCKET", "").strip() or POLYGON_S3_BUCKET,
        s3_access_key_id=Secret(s3_key_id) if s3_key_id else None,
        s3_secret_access_key=Secret(s3_secret) if s3_secret else None,
        history_source=history_source,
        simulator_s3_port=sim_s3_port,
        extra={k: v for k, v in env.items() if k.startswith("CRYPTO_") and "KEY" not in k and "PASS" not in k},
        alert_price_above=_parse_thresholds(env, "CRYPTO_ALERT_PRICE_ABOVE", pairs),
        alert_price_below=_parse_thresholds(env, "CRYPTO_ALERT_PRICE_BELOW", pairs),
        alert_volume_spike_factor=_parse_spike_factor(env),
        alert_volume_window_min=_parse_int(env, "CRYPTO_ALERT_VOLUME_WINDOW_MIN", 30, minimum=3),
        alert_whale_notional=_parse_decimal(env, "CRYPTO_ALERT_WHALE_NOTIONAL", "1000000"),
    )


def child_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: this process's environment with ``overrides`` applied.

    Lives here because this is the only module that reads ``os.environ``; everything that starts a
    process (the local stack, tests) passes the returned dict explicitly as ``env=``. Secrets reach
    children this way, never on their command line.
    """
    return {**os.environ, **(overrides or {})}
