"""Environment -> typed settings: the one place that reads ``os.environ``.

Every other module receives a :class:`Settings` (or values taken from it). Defaults give the
zero-setup local stack (simulator, SQLite stand-in, fakesnow, MLflow on SQLite); setting the
production variables switches each part independently.

:class:`Settings` is a pydantic-settings model, the same pydantic Dagster's config uses: each
variable is one field whose alias is the variable's name, carrying its default, its constraints and
the two texts of the README's settings table (``python -m crypto_platform.settings`` prints the
table, and a test keeps the README in step). Defaults that depend on other variables (paths under
the project, the simulator's URLs when no key is set) are filled in before validation, so every
field is validated the same way. Any validation error becomes one :class:`SettingsError` that names
the variable, the value and the fix.

Secrets are :class:`Secret` (pydantic's ``SecretStr``), whose ``repr``/``str`` never show the value,
so a settings object can be logged, put in run metadata or raised in an exception without leaking a key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

CHANNELS = ("XT", "XQ", "XA", "XAS", "XL2")
DEFAULT_CHANNELS = ("XT", "XQ", "XA", "XAS")
DEFAULT_PAIRS = ("BTC-USD", "ETH-USD", "SOL-USD")

# Loopback ports of the zero-setup stack.
DEFAULT_SIMULATOR_PORT = 8765
DEFAULT_FAKESNOW_PORT = 8766
DEFAULT_SIMULATOR_S3_PORT = 8767
DEFAULT_DAGSTER_PORT = 3000
DEFAULT_DASHBOARD_PORT = 8501
# First daily partition of every date-partitioned asset: by default the last 30 days, each of which a
# backfill fills from history, so a fresh start shows a month that can be filled, not two years
# that look missing. A date (YYYY-MM-DD) fixes it; -N means N days before today (UTC).
DEFAULT_START_DATE = "-30"
# Where the lake's Delta tables may live: a local path, or an object store delta-rs writes to.
LAKE_URL_SCHEMES = ("file", "s3", "s3a", "gs", "az", "abfs", "abfss")
# The standard credential/endpoint variables of those stores, handed to delta-rs as storage options.
LAKE_STORAGE_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")

# The keys the simulator accepts by default (REST/WebSocket, and its Flat Files); they are not secrets.
SIMULATOR_API_KEY = "simulator-key"
SIMULATOR_S3_ACCESS_KEY_ID = "simulator-s3-key"
SIMULATOR_S3_SECRET_ACCESS_KEY = "simulator-s3-secret"

POLYGON_WS_URL = "wss://socket.polygon.io/crypto"
POLYGON_REST_URL = "https://api.polygon.io"
# Massive's Flat Files (formerly files.polygon.io): an S3-compatible endpoint and its bucket.
POLYGON_S3_ENDPOINT = "https://files.massive.com"
POLYGON_S3_BUCKET = "flatfiles"


# Where relative paths are taken from; handed to validation beside the variables (not a variable).
_CWD_KEY = "__cwd__"
_HOME_SET_KEY = "__dagster_home_set__"
_LAKE_STORAGE_KEY = "__lake_storage__"


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable and the fix."""


class Secret(SecretStr):
    """A string that never shows itself in ``repr``, ``str``, logs or exceptions."""

    def reveal(self) -> str:
        return self.get_secret_value()


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


def setting(variable: str, default: Any, local: str, production: str = "same", **constraints: Any) -> Any:
    """One variable: its name, default and the README's two texts (the local default, production use)."""
    return Field(
        default,
        validation_alias=variable,
        description=local,
        json_schema_extra={"production": production},
        **constraints,
    )


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))


def _pair_ok(pair: str) -> bool:
    base, dash, quote = pair.partition("-")
    return bool(dash) and base.isalnum() and quote.isalnum()


class Settings(BaseSettings):
    """Everything the platform reads from its environment, typed and validated."""

    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", frozen=True, str_strip_whitespace=True, validate_default=True
    )

    project_dir: Path = setting("CRYPTO_PROJECT_DIR", None, "the current directory", "the checkout")
    state_dir: Path = setting("CRYPTO_STATE_DIR", None, "`<project>/var`", "a persistent disk")
    data_dir: Path = setting("CRYPTO_DATA_DIR", None, "`<state>/data`", "a persistent disk")
    dagster_home: Path = setting(
        "DAGSTER_HOME",
        None,
        "unset (Dagster reads `./dagster.yaml`, whose stores live in `<project>/.dagster_home`; `make env` writes "
        "the project folder to `.env`)",
        "a directory holding `deploy/dagster.mysql.yaml` as `dagster.yaml`",
    )
    # Whether DAGSTER_HOME was given (else Dagster's CLI runs on a temporary home with ./dagster.yaml).
    dagster_home_set: bool = Field(False, validation_alias=_HOME_SET_KEY, exclude=True)
    dagster_port: int = setting(
        "CRYPTO_DAGSTER_PORT",
        DEFAULT_DAGSTER_PORT,
        "`3000` (the UI port of `make dev` / `crypto-platform dev`; plain `dagster dev` takes `-p`)",
        "as you like",
        ge=1,
    )
    dashboard_port: int = setting(
        "CRYPTO_DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT, "`8501` (the live market page)", "as you like", ge=1
    )
    simulator_host: str = setting("CRYPTO_SIMULATOR_HOST", "127.0.0.1", "`127.0.0.1`", "not used")
    simulator_port: int = setting("CRYPTO_SIMULATOR_PORT", DEFAULT_SIMULATOR_PORT, "`8765`", "not used", ge=1)
    simulator_s3_port: int = setting(
        "CRYPTO_SIMULATOR_S3_PORT", DEFAULT_SIMULATOR_S3_PORT, "`8767` (the simulator's Flat Files)", "not used", ge=1
    )
    api_key: Secret = setting(
        "POLYGON_API_KEY",
        SIMULATOR_API_KEY,
        "unset: the built-in simulator (key `simulator-key`)",
        "your Polygon/Massive key",
    )
    ws_url: str = setting(
        "POLYGON_WS_URL",
        None,
        "`ws://127.0.0.1:8765/crypto` (simulator)",
        "`wss://socket.polygon.io/crypto` (default once a key is set)",
    )
    rest_url: str = setting(
        "POLYGON_REST_URL",
        None,
        "`http://127.0.0.1:8765` (simulator)",
        "`https://api.polygon.io` (default once a key is set)",
    )
    # History (days the stream never saw): Flat Files over S3 with keys of their own, or REST.
    s3_access_key_id: Secret | None = setting(
        "POLYGON_S3_ACCESS_KEY_ID",
        None,
        "unset: the simulator's built-in key",
        "the Flat Files S3 key from the Massive dashboard (not the API key); with it, history comes from Flat Files",
    )
    s3_secret_access_key: Secret | None = setting(
        "POLYGON_S3_SECRET_ACCESS_KEY",
        None,
        "unset: the simulator's built-in secret",
        "its secret (set both or neither)",
    )
    s3_endpoint: str = setting(
        "POLYGON_S3_ENDPOINT",
        None,
        "`http://127.0.0.1:8767` (simulator)",
        "`https://files.massive.com` (default once a key is set)",
    )
    s3_bucket: str = setting("POLYGON_S3_BUCKET", POLYGON_S3_BUCKET, "`flatfiles`")
    history_source: Literal["auto", "flat_files", "rest", "off"] = setting(
        "CRYPTO_HISTORY_SOURCE",
        "auto",
        "`auto` (past days from Flat Files when S3 keys are set, else REST `/v3/trades`; or `flat_files` / `rest`; "
        "`off`: only what the stream landed)",
    )
    pairs: tuple[str, ...] = setting(
        "CRYPTO_PAIRS", ",".join(DEFAULT_PAIRS), "`BTC-USD,ETH-USD,SOL-USD` (`*` = every pair)", "your pairs"
    )
    channels: tuple[str, ...] = setting(
        "CRYPTO_CHANNELS", ",".join(DEFAULT_CHANNELS), "`XT,XQ,XA,XAS` (choose from `XT,XQ,XA,XAS,XL2`)"
    )
    start_date: str = setting(
        "CRYPTO_START_DATE",
        DEFAULT_START_DATE,
        "`-30` (first daily partition: 30 days before today, UTC, each fillable by a backfill from history; "
        "or a date YYYY-MM-DD)",
        "a fixed date: your history start (a relative start moves the partition window every day)",
    )
    fsync_policy: Literal["never", "seal", "frame"] = setting(
        "CRYPTO_FSYNC", "seal", "`seal` (`never` / `seal` / `frame`)", "`seal`"
    )
    segment_max_bytes: int = setting(
        "CRYPTO_SEGMENT_MAX_BYTES", 64 * 1024 * 1024, "`67108864` (64 MiB, minimum 4096)", ge=4096
    )
    segment_max_age_s: float = setting("CRYPTO_SEGMENT_MAX_AGE_S", 5.0, "`5` (minimum 0.05)", ge=0.05)
    retention_days: int = setting(
        "CRYPTO_RETENTION_DAYS",
        0,
        "`0` (keep every sealed landing segment)",
        "days of landing segments to keep",
        ge=0,
    )
    batch_interval_s: float = setting(
        "CRYPTO_BATCH_INTERVAL_S",
        30.0,
        "`30` (the stream sensor launches `stream_batch` runs at most this often, each taking every segment "
        "sealed since; the lake itself is appended within seconds by the lake writer)",
        "shorter for fresher warehouse tables, longer for fewer runs (README, Operations)",
        ge=0.0,
    )
    check_interval_s: float = setting(
        "CRYPTO_CHECK_INTERVAL_S",
        300.0,
        "`300` (while the lake writer runs, the raw tables', minute bars' and alerts' checks join a "
        "`stream_batch` round at most this often, evaluating every row appended since the last time)",
        "shorter for faster check status, longer for less Dagster storage (README, Operations)",
        ge=0.0,
    )
    snowflake_interval_s: float = setting(
        "CRYPTO_SNOWFLAKE_INTERVAL_S",
        300.0,
        "`300` (the Snowflake copies join a `stream_batch` round at most this often, each taking everything "
        "new since its last load; the MySQL copies load every round)",
        "shorter for fresher Snowflake tables; each load resumes the Snowflake warehouse (billed per second, "
        "60 s minimum)",
        ge=0.0,
    )
    run_retention_days: int = setting(
        "CRYPTO_RUN_RETENTION_DAYS",
        7,
        "`7` (`stream_run_retention` deletes older `stream_batch` runs daily, keeping what the UI needs; "
        "`0`: keep every run)",
        ge=0,
    )
    lake_url: str = setting(
        "CRYPTO_LAKE_URL",
        None,
        "`<data>/lake` (a directory of Delta tables)",
        "`s3://bucket/prefix` (or `gs://`, `az://`); credentials from `AWS_*` / `GOOGLE_*` / `AZURE_*`",
    )
    # The object store's standard variables (AWS_*, GOOGLE_*, AZURE_*), handed to delta-rs as storage options.
    lake_storage: tuple[tuple[str, Secret], ...] = Field((), validation_alias=_LAKE_STORAGE_KEY, exclude=True)
    lake_target_file_mb: int = setting(
        "CRYPTO_LAKE_TARGET_FILE_MB",
        256,
        "`256` (`lake_maintenance` compacts each closed day into files of about this size; 128-512)",
        ge=16,
    )
    lake_closed_after_s: float = setting(
        "CRYPTO_LAKE_CLOSED_AFTER_S",
        7200.0,
        "`7200` (a day is compacted once its end lies this far behind: it no longer receives appends)",
        ge=0.0,
    )
    lake_vacuum_retention_h: int = setting(
        "CRYPTO_LAKE_VACUUM_RETENTION_H",
        168,
        "`168` (files no table version of the last this-many hours references are deleted)",
        ge=0,
    )
    reconnect_initial_s: float = setting(
        "CRYPTO_RECONNECT_INITIAL_S", 0.5, "`0.5` (first reconnect backoff step; it doubles)", ge=0.01
    )
    reconnect_max_s: float = setting(
        "CRYPTO_RECONNECT_MAX_S", 30.0, "`30` (backoff cap; each wait is 50-100% of its step)", ge=0.01
    )
    reconnect_reset_s: float = setting(
        "CRYPTO_RECONNECT_RESET_S", 60.0, "`60` (a session streaming this long resets the backoff)", ge=0.0
    )
    handshake_timeout_s: float = setting(
        "CRYPTO_HANDSHAKE_TIMEOUT_S", 10.0, "`10` (greeting, auth reply, subscription acks)", ge=0.1
    )
    max_connections_cooldown_s: float = setting(
        "CRYPTO_MAX_CONNECTIONS_COOLDOWN_S", 60.0, "`60` (wait after `max_connections`)", ge=0.0
    )
    auth_retry_s: float = setting(
        "CRYPTO_AUTH_RETRY_S", 900.0, "`900` (wait after a refused key before trying again)", ge=1.0
    )
    disk_full_retry_s: float = setting(
        "CRYPTO_DISK_FULL_RETRY_S",
        10.0,
        "`10` (after a full disk, how often the ingester looks for room again; it reconnects once there is)",
        ge=0.05,
    )
    crash_at: str | None = setting(
        "CRYPTO_CRASH_AT",
        None,
        "unset (fault-injection tests only: a crash point `writer.step`, e.g. `seal.before_rename`, where a "
        "writer SIGKILLs itself)",
        "unset",
        pattern=r"^[a-z_]+\.[a-z_]+$",
    )
    bar_revision_window_s: float = setting(
        "CRYPTO_BAR_REVISION_WINDOW_S",
        120.0,
        "`120` (a minute bar is settled once its end plus this many seconds has passed)",
        ge=0.0,
    )
    repair_trades: bool = setting(
        "CRYPTO_REPAIR_TRADES",
        False,
        "`false` (gap repair fetches minute bars from REST; `true` also fetches the gap's trades from `/v3/trades`)",
    )
    ingester_autostart: bool = setting(
        "CRYPTO_INGESTER_AUTOSTART",
        True,
        "`true` (the stream sensor starts the ingester when none runs)",
        "`false` when the ingester runs as a service of its own (systemd, a container)",
    )
    # Alert rules (crypto_alerts): price crossings per pair, minute volume spikes, whale trades.
    alert_price_above: dict[str, Decimal] = setting(
        "CRYPTO_ALERT_PRICE_ABOVE",
        "",
        "unset (e.g. `BTC-USD:100000,ETH-USD:5000`: alert when a trade crosses above the price)",
        "your thresholds",
    )
    alert_price_below: dict[str, Decimal] = setting(
        "CRYPTO_ALERT_PRICE_BELOW",
        "",
        "unset (same form: alert when a trade crosses below the price)",
        "your thresholds",
    )
    alert_volume_spike_factor: float = setting(
        "CRYPTO_ALERT_VOLUME_SPIKE_FACTOR",
        5.0,
        "`5` (a minute's volume above 5x the median of the previous minutes; `0` = off)",
        ge=0.0,
    )
    alert_volume_window_min: int = setting(
        "CRYPTO_ALERT_VOLUME_WINDOW_MIN", 30, "`30` (minutes in the volume baseline, minimum 3)", ge=3
    )
    alert_whale_notional: Decimal = setting(
        "CRYPTO_ALERT_WHALE_NOTIONAL",
        Decimal(1_000_000),
        "`1000000` (a trade with price x size at or above this, in the pair's quote currency; `0` = off)",
        ge=0,
        allow_inf_nan=False,
    )
    mysql_url: Secret = setting(
        "MYSQL_URL",
        None,
        "unset: `sqlite:///<data>/warehouse.sqlite`",
        "`mysql+pymysql://USER:PASSWORD@HOST:3306/DATABASE`",
    )
    snowflake_account: str = setting(
        "SNOWFLAKE_ACCOUNT", "", "unset: the local fakesnow server", "your account identifier"
    )
    snowflake_user: str = setting(
        "SNOWFLAKE_USER", "", "not used (fakesnow logs in as `fake`)", "login name (required with an account)"
    )
    snowflake_password: Secret | None = setting(
        "SNOWFLAKE_PASSWORD",
        None,
        "not used (fakesnow's password is `snow`)",
        "password; give exactly one of this, `SNOWFLAKE_PRIVATE_KEY`, `SNOWFLAKE_PRIVATE_KEY_PATH`",
    )
    snowflake_private_key: Secret | None = setting(
        "SNOWFLAKE_PRIVATE_KEY", None, "unset", "PEM text of the key-pair key"
    )
    snowflake_private_key_path: str | None = setting(
        "SNOWFLAKE_PRIVATE_KEY_PATH", None, "unset", "path to the PEM file"
    )
    snowflake_private_key_password: Secret | None = setting(
        "SNOWFLAKE_PRIVATE_KEY_PASSWORD", None, "unset", "passphrase of an encrypted key"
    )
    snowflake_role: str | None = setting("SNOWFLAKE_ROLE", None, "unset", "role to use")
    snowflake_warehouse: str | None = setting("SNOWFLAKE_WAREHOUSE", None, "unset", "warehouse to use")
    snowflake_database: str = setting(
        "SNOWFLAKE_DATABASE", "MARKET_DATA", "`MARKET_DATA` (on the local fakesnow server too)"
    )
    snowflake_schema: str = setting("SNOWFLAKE_SCHEMA", "POLYGON", "`POLYGON` (on the local fakesnow server too)")
    fakesnow_host: str = setting("CRYPTO_FAKESNOW_HOST", "127.0.0.1", "`127.0.0.1`", "not used")
    fakesnow_port: int = setting("CRYPTO_FAKESNOW_PORT", DEFAULT_FAKESNOW_PORT, "`8766`", "not used", ge=1)
    mlflow_tracking_uri: str = setting(
        "MLFLOW_TRACKING_URI",
        None,
        "`sqlite:///<state>/mlflow.db` (`file:` stores are refused)",
        "`http(s)://` tracking server",
    )

    _uses_simulator: bool = PrivateAttr(default=True)
    _snowflake: SnowflakeSettings = PrivateAttr()

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *_: Any, **__: Any) -> Any:
        # Values come in as a mapping: load_settings reads the environment (with pydantic-settings'
        # own environment source) and tests pass theirs; no dotenv or secrets directory by surprise.
        return (init_settings,)

    @model_validator(mode="before")
    @classmethod
    def _fill_dependent_defaults(cls, data: Any) -> Any:
        """Blank values count as unset; paths and URLs whose default depends on other variables are filled in."""
        env = {k: v for k, v in dict(data).items() if not (isinstance(v, str) and not v.strip())}
        cwd = Path(env.pop(_CWD_KEY, None) or Path.cwd())
        project = (cwd / env.get("CRYPTO_PROJECT_DIR", cwd)).resolve()
        state = (project / env.get("CRYPTO_STATE_DIR", project / "var")).resolve()
        data_dir = (project / env.get("CRYPTO_DATA_DIR", state / "data")).resolve()
        env.update(CRYPTO_PROJECT_DIR=project, CRYPTO_STATE_DIR=state, CRYPTO_DATA_DIR=data_dir)
        env[_HOME_SET_KEY] = "DAGSTER_HOME" in env
        env["DAGSTER_HOME"] = (project / env.get("DAGSTER_HOME", project / ".dagster_home")).resolve()
        env.setdefault("MYSQL_URL", f"sqlite:///{data_dir / 'warehouse.sqlite'}")
        lake = str(env.get("CRYPTO_LAKE_URL", data_dir / "lake"))
        if "://" not in lake or lake.startswith("file://"):
            lake = str((project / Path(lake.removeprefix("file://")).expanduser()).resolve())
        env["CRYPTO_LAKE_URL"] = lake
        env[_LAKE_STORAGE_KEY] = tuple(sorted((k, v) for k, v in env.items() if k.startswith(LAKE_STORAGE_PREFIXES)))
        env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{state / 'mlflow.db'}")
        key = str(env.get("POLYGON_API_KEY", "")).strip()
        if key == SIMULATOR_API_KEY:
            key = ""
        host = str(env.get("CRYPTO_SIMULATOR_HOST", "127.0.0.1")).strip()
        sim = f"{host}:{env.get('CRYPTO_SIMULATOR_PORT', DEFAULT_SIMULATOR_PORT)}"
        env.setdefault("POLYGON_WS_URL", POLYGON_WS_URL if key else f"ws://{sim}/crypto")
        env.setdefault("POLYGON_REST_URL", POLYGON_REST_URL if key else f"http://{sim}")
        s3_given = bool(env.get("POLYGON_S3_ACCESS_KEY_ID") or env.get("POLYGON_S3_SECRET_ACCESS_KEY"))
        if not key and not s3_given:
            # The simulator's Flat Files and their built-in keys (not secrets).
            env["POLYGON_S3_ACCESS_KEY_ID"] = SIMULATOR_S3_ACCESS_KEY_ID
            env["POLYGON_S3_SECRET_ACCESS_KEY"] = SIMULATOR_S3_SECRET_ACCESS_KEY
            env.setdefault("POLYGON_S3_ENDPOINT", f"http://{host}:{env.get('CRYPTO_SIMULATOR_S3_PORT', 8767)}")
        env.setdefault("POLYGON_S3_ENDPOINT", POLYGON_S3_ENDPOINT)
        return env

    @field_validator("pairs", mode="before")
    @classmethod
    def _parse_pairs(cls, raw: Any) -> tuple[str, ...]:
        pairs = _split_list(str(raw).upper()) if isinstance(raw, str) else tuple(raw)
        if not pairs:
            raise SettingsError("CRYPTO_PAIRS is empty: give a comma list such as BTC-USD,ETH-USD, or * for all pairs")
        for pair in pairs:
            if pair != "*" and not _pair_ok(pair.removeprefix("X:")):
                raise SettingsError(
                    f"CRYPTO_PAIRS has {pair!r}: each pair is FROM-TO, e.g. BTC-USD (or * for all pairs)"
                )
        return tuple(p.removeprefix("X:") for p in pairs)

    @field_validator("channels", mode="before")
    @classmethod
    def _parse_channels(cls, raw: Any) -> tuple[str, ...]:
        channels = _split_list(str(raw).upper()) if isinstance(raw, str) else tuple(raw)
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown or not channels:
            raise SettingsError(
                f"CRYPTO_CHANNELS has {unknown or 'nothing'}: choose from {','.join(CHANNELS)} "
                f"(default {','.join(DEFAULT_CHANNELS)})"
            )
        return channels

    @field_validator("s3_endpoint")
    @classmethod
    def _check_s3_endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(
                f"POLYGON_S3_ENDPOINT={value!r} is not an http/https URL (default {POLYGON_S3_ENDPOINT})"
            )
        return value.rstrip("/")

    @field_validator("fsync_policy", "history_source", mode="before")
    @classmethod
    def _lower(cls, raw: Any) -> Any:
        return raw.strip().lower() if isinstance(raw, str) else raw

    @field_validator("start_date")
    @classmethod
    def _check_date(cls, value: str) -> str:
        if re.fullmatch(r"-\d+", value):
            return (datetime.now(UTC).date() - timedelta(days=int(value[1:]))).isoformat()
        try:
            date.fromisoformat(value)
        except ValueError:
            raise SettingsError(
                f"CRYPTO_START_DATE={value!r} is not a date YYYY-MM-DD or -N (days before today; "
                f"default {DEFAULT_START_DATE})"
            ) from None
        return value

    @field_validator("ws_url", "rest_url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        variable, schemes = {
            "ws_url": ("POLYGON_WS_URL", ("ws", "wss")),
            "rest_url": ("POLYGON_REST_URL", ("http", "https")),
        }[str(info.field_name)]
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise SettingsError(f"{variable}={value!r} is not a {'/'.join(schemes)} URL")
        return value.rstrip("/")

    @field_validator("lake_url")
    @classmethod
    def _check_lake_url(cls, value: str) -> str:
        if "://" not in value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in LAKE_URL_SCHEMES or not parts.netloc:
            raise SettingsError(
                f"CRYPTO_LAKE_URL={value!r} is not a lake location: give a directory, or a "
                f"{'/'.join(s + '://' for s in LAKE_URL_SCHEMES)} URL with a bucket (e.g. s3://bucket/prefix)"
            )
        return value.rstrip("/")

    @field_validator("alert_price_above", "alert_price_below", mode="before")
    @classmethod
    def _parse_thresholds(cls, raw: Any, info: ValidationInfo) -> dict[str, Decimal]:
        """``BTC-USD:100000,ETH-USD:5000`` -> {pair: price}; each pair once, each one of CRYPTO_PAIRS."""
        if isinstance(raw, Mapping):
            return dict(raw)
        name = "CRYPTO_ALERT_PRICE_ABOVE" if info.field_name == "alert_price_above" else "CRYPTO_ALERT_PRICE_BELOW"
        pairs = info.data.get("pairs", ())
        example = "BTC-USD:100000,ETH-USD:5000"
        out: dict[str, Decimal] = {}
        for item in _split_list(str(raw)):
            pair, sep, price = (p.strip() for p in item.partition(":"))
            pair = pair.upper().removeprefix("X:")
            if not sep or not price:
                raise SettingsError(f"{name} has {item!r}: give PAIR:PRICE items separated by commas, e.g. {example}")
            if not _pair_ok(pair):
                raise SettingsError(f"{name} has {item!r}: the pair is FROM-TO, e.g. {example}")
            try:
                value = Decimal(price)
            except InvalidOperation:
                value = Decimal(-1)
            if not value.is_finite() or value <= 0:
                raise SettingsError(f"{name} has {item!r}: the price must be a positive number, e.g. {example}")
            if pair in out:
                raise SettingsError(f"{name} names {pair} twice: keep one threshold per pair")
            if pairs and "*" not in pairs and pair not in pairs:
                raise SettingsError(
                    f"{name} names {pair}, which is not in CRYPTO_PAIRS ({','.join(pairs)}): its alert could never fire"
                )
            out[pair] = value
        return out

    @field_validator("alert_volume_spike_factor")
    @classmethod
    def _check_spike_factor(cls, value: float) -> float:
        if 0 < value <= 1:
            raise SettingsError(
                f"CRYPTO_ALERT_VOLUME_SPIKE_FACTOR={value} would flag ordinary minutes: use a factor above 1 "
                "(default 5.0; 0 turns the rule off)"
            )
        return value

    @field_validator("mysql_url")
    @classmethod
    def _check_mysql_url(cls, value: Secret) -> Secret:
        scheme = urlsplit(value.reveal()).scheme
        if not scheme.startswith(("mysql", "mariadb", "sqlite")):
            raise SettingsError(
                f"MYSQL_URL has scheme {scheme!r}: use mysql+pymysql://USER:PASSWORD@HOST:3306/DATABASE "
                "(or leave it unset for the embedded SQLite stand-in)"
            )
        return value

    @field_validator("snowflake_database", "snowflake_schema")
    @classmethod
    def _check_identifier(cls, value: str, info: ValidationInfo) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", value):
            raise SettingsError(
                f"{str(info.field_name).upper()}={value!r} is not a plain Snowflake identifier (letters, digits, _ "
                "or $, not starting with a digit)"
            )
        return value

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _check_mlflow_uri(cls, value: str) -> str:
        if value.startswith("file:") or "://" not in value:
            raise SettingsError(
                f"MLFLOW_TRACKING_URI={value!r}: MLflow 3.17 refuses file stores; use sqlite:////abs/path/mlflow.db "
                "or an http(s):// tracking server"
            )
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        """The simulator-or-Polygon decision and the Snowflake target, from the validated fields."""
        key_given = self.api_key.reveal() != SIMULATOR_API_KEY
        sim_ws = f"ws://{self.simulator_host}:{self.simulator_port}/crypto"
        if not key_given and self.ws_url != sim_ws:
            raise SettingsError(
                "POLYGON_WS_URL points away from the built-in simulator but POLYGON_API_KEY is not set: "
                "set POLYGON_API_KEY to your Polygon/Massive key, or unset POLYGON_WS_URL to use the simulator"
            )
        self._uses_simulator = not key_given
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise SettingsError(
                "Flat Files need both POLYGON_S3_ACCESS_KEY_ID and POLYGON_S3_SECRET_ACCESS_KEY (the S3 keys from the "
                "Massive dashboard, not the API key): set both, or neither to read history from REST"
            )
        if self.history_source == "flat_files" and self.s3_access_key_id is None:
            raise SettingsError(
                "CRYPTO_HISTORY_SOURCE=flat_files but POLYGON_S3_ACCESS_KEY_ID/POLYGON_S3_SECRET_ACCESS_KEY are not "
                "set: set the S3 keys from the Massive dashboard, or use auto/rest"
            )
        where: dict[str, Any] = {"database": self.snowflake_database, "schema": self.snowflake_schema}
        if self.snowflake_account:
            if not self.snowflake_user:
                raise SettingsError("SNOWFLAKE_ACCOUNT is set but SNOWFLAKE_USER is not: set the Snowflake login name")
            credentials = (self.snowflake_password, self.snowflake_private_key, self.snowflake_private_key_path)
            if sum(bool(x) for x in credentials) != 1:
                raise SettingsError(
                    "Snowflake needs exactly one credential: SNOWFLAKE_PASSWORD, SNOWFLAKE_PRIVATE_KEY "
                    "(PEM text) or SNOWFLAKE_PRIVATE_KEY_PATH"
                )
            self._snowflake = SnowflakeSettings(
                local=False,
                account=self.snowflake_account,
                user=self.snowflake_user,
                password=self.snowflake_password,
                private_key_path=self.snowflake_private_key_path,
                private_key=self.snowflake_private_key,
                private_key_password=self.snowflake_private_key_password,
                role=self.snowflake_role,
                warehouse=self.snowflake_warehouse,
                **where,
            )
        else:
            self._snowflake = SnowflakeSettings(
                local=True,
                account="fakesnow",
                user="fake",
                password=Secret("snow"),
                private_key_path=None,
                private_key=None,
                private_key_password=None,
                role=None,
                warehouse=None,
                host=self.fakesnow_host,
                port=self.fakesnow_port,
                **where,
            )
        return self

    @property
    def uses_simulator(self) -> bool:
        return self._uses_simulator

    @property
    def snowflake(self) -> SnowflakeSettings:
        return self._snowflake

    @property
    def uses_mysql_server(self) -> bool:
        return not self.mysql_url.reveal().startswith("sqlite")

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def lake_is_local(self) -> bool:
        return "://" not in self.lake_url

    @property
    def lake_dir(self) -> Path:
        """The lake's directory when it is local (else where a local lake would be)."""
        return Path(self.lake_url) if self.lake_is_local else self.data_dir / "lake"

    def lake_storage_options(self) -> dict[str, str]:
        """delta-rs storage options for an object-store lake: the store's standard variables."""
        return {name: value.reveal() for name, value in self.lake_storage}

    @property
    def history_enabled(self) -> bool:
        """Whether runs of past days read history at all (``CRYPTO_HISTORY_SOURCE`` not ``off``)."""
        return self.history_source != "off"

    @property
    def history_from_flat_files(self) -> bool:
        """Whether past days come from Flat Files (else from REST ``/v3/trades``)."""
        if self.history_source == "auto":
            return self.s3_access_key_id is not None
        return self.history_source == "flat_files"

    def describe(self) -> dict[str, Any]:
        """A secret-free view for logs, run metadata and MLflow params."""
        out: dict[str, Any] = {}
        for name, value in self:
            if name == "lake_storage":
                out[name] = ",".join(k for k, _ in value)  # names only: these hold credentials
                continue
            if isinstance(value, SecretStr) or name == "snowflake_private_key_path":
                if name == "mysql_url":
                    out[name] = mask_url_password(value.reveal())
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = ",".join(value)
            out[name] = value
        return out


def _error_message(exc: ValidationError) -> str:
    """The first validation error as one sentence naming the variable, the value and the fix."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, SettingsError):
        return str(cause)
    variable = str(err["loc"][0]) if err["loc"] else "a setting"
    field = next((f for f in Settings.model_fields.values() if f.validation_alias == variable), None)
    default = f" (default {field.default})" if field is not None and field.default not in (None, "") else ""
    value = err.get("input")
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind in ("greater_than_equal", "greater_than"):
        return f"{variable}={value} is below the minimum {ctx.get('ge', ctx.get('gt'))}{default}"
    if kind in ("int_parsing", "int_from_float"):
        return f"{variable}={value!r} is not a whole number{default}"
    if kind in ("float_parsing", "decimal_parsing", "finite_number"):
        return f"{variable}={value!r} is not a number{default}"
    if kind == "bool_parsing":
        return f"{variable}={value!r} is not a yes/no value: use true or false"
    if kind == "literal_error":
        return f"{variable}={value!r}: choose one of {ctx.get('expected')}{default}"
    return f"{variable}={value!r}: {err['msg']}{default}"


def load_settings(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Read and validate the environment (or ``environ``); raise :class:`SettingsError` naming the culprit.

    Without ``environ``, pydantic-settings reads the process environment; with it (tests, tools),
    exactly that mapping and nothing else. Relative paths are taken from ``cwd`` (default: the
    working directory).
    """
    values = _environment_source() if environ is None else dict(environ)
    try:
        return Settings.model_validate({**values, _CWD_KEY: cwd or Path.cwd()})
    except ValidationError as exc:
        raise SettingsError(_error_message(exc)) from None


def _environment_source() -> dict[str, Any]:
    """The process environment as pydantic-settings reads it for :class:`Settings` (by alias)."""
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(Settings, case_sensitive=True)
    # The object store's own variables are not fields of their own: they go to delta-rs whole.
    found: dict[str, Any] = {k: v for k, v in os.environ.items() if k.startswith(LAKE_STORAGE_PREFIXES)}
    for name, info in Settings.model_fields.items():
        value, key, _ = source.get_field_value(info, name)
        if value is not None and key:
            found[key] = value
    return found


def child_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: this process's environment with ``overrides`` applied.

    Lives here because this is the only module that reads ``os.environ``; everything that starts a
    process (the local stack, tests) passes the returned dict explicitly as ``env=``. Secrets reach
    children this way, never on their command line.
    """
    return {**os.environ, **(overrides or {})}


def settings_table() -> str:
    """The README's settings table, generated from :class:`Settings` (one row per variable)."""
    rows = ["| variable | default (local) | production |", "|---|---|---|"]
    for info in Settings.model_fields.values():
        if str(info.validation_alias).startswith("_"):
            continue  # derived, not a variable
        rows.append(f"| `{info.validation_alias}` | {info.description} | {_production(info)} |")
    return "\n".join(rows)


def _production(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    return str(extra.get("production", "same")) if isinstance(extra, dict) else "same"


if __name__ == "__main__":
    print(settings_table())
