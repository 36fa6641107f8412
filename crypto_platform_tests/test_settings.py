"""Settings: defaults of the zero-setup stack, messages that name the culprit, secrets that never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto_platform.settings import (
    DEFAULT_DAGSTER_PORT,
    DEFAULT_FAKESNOW_PORT,
    DEFAULT_SIMULATOR_PORT,
    Secret,
    SettingsError,
    child_environment,
    load_settings,
)


def test_defaults_are_the_zero_setup_stack(tmp_path: Path) -> None:
    s = load_settings({}, cwd=tmp_path)
    root = tmp_path.resolve()
    assert s.project_dir == root
    assert s.state_dir == root / "var"
    assert s.data_dir == root / "var" / "data"
    assert s.dagster_home == root / ".dagster_home" and s.dagster_home.is_absolute()
    assert s.uses_simulator and s.ws_url == f"ws://127.0.0.1:{DEFAULT_SIMULATOR_PORT}/crypto"
    assert s.rest_url == f"http://127.0.0.1:{DEFAULT_SIMULATOR_PORT}"
    assert s.snowflake.local and (s.snowflake.host, s.snowflake.port) == ("127.0.0.1", DEFAULT_FAKESNOW_PORT)
    assert s.dagster_port == DEFAULT_DAGSTER_PORT
    assert s.bar_revision_window_s == 120.0 and s.repair_trades is False and s.ingester_autostart is True
    assert load_settings({"CRYPTO_REPAIR_TRADES": "TRUE"}, cwd=tmp_path).repair_trades is True
    assert not s.uses_mysql_server
    assert s.mysql_url.reveal() == f"sqlite:///{root / 'var' / 'data' / 'warehouse.sqlite'}"
    assert s.mlflow_tracking_uri == f"sqlite:///{root / 'var' / 'mlflow.db'}"


def test_relative_paths_are_made_absolute(tmp_path: Path) -> None:
    s = load_settings({"CRYPTO_STATE_DIR": "state", "DAGSTER_HOME": "dh"}, cwd=tmp_path)
    assert s.state_dir.is_absolute() and s.dagster_home.is_absolute()
    assert s.data_dir == s.state_dir / "data"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CRYPTO_FAKESNOW_PORT": "snow"}, "CRYPTO_FAKESNOW_PORT"),
        ({"CRYPTO_SIMULATOR_PORT": "0"}, "CRYPTO_SIMULATOR_PORT"),
        ({"CRYPTO_DAGSTER_PORT": "-1"}, "CRYPTO_DAGSTER_PORT"),
        ({"CRYPTO_DASHBOARD_PORT": "web"}, "CRYPTO_DASHBOARD_PORT"),
        ({"CRYPTO_PAIRS": "BTCUSD"}, "CRYPTO_PAIRS"),
        ({"CRYPTO_PAIRS": " , "}, "CRYPTO_PAIRS"),
        ({"CRYPTO_CHANNELS": "XT,ZZ"}, "CRYPTO_CHANNELS"),
        ({"CRYPTO_FSYNC": "always"}, "CRYPTO_FSYNC"),
        ({"CRYPTO_SEGMENT_MAX_BYTES": "10"}, "CRYPTO_SEGMENT_MAX_BYTES"),
        ({"CRYPTO_SEGMENT_MAX_AGE_S": "soon"}, "CRYPTO_SEGMENT_MAX_AGE_S"),
        ({"CRYPTO_RETENTION_DAYS": "1.5"}, "CRYPTO_RETENTION_DAYS"),
        ({"CRYPTO_RUN_RETENTION_DAYS": "-1"}, "CRYPTO_RUN_RETENTION_DAYS"),
        ({"CRYPTO_LAKE_URL": "ftp://host/lake"}, "CRYPTO_LAKE_URL"),
        ({"CRYPTO_LAKE_URL": "s3://"}, "CRYPTO_LAKE_URL"),
        ({"CRYPTO_START_DATE": "2025-13-01"}, "CRYPTO_START_DATE"),
        ({"CRYPTO_REPAIR_TRADES": "sometimes"}, "CRYPTO_REPAIR_TRADES"),
        ({"CRYPTO_BAR_REVISION_WINDOW_S": "-1"}, "CRYPTO_BAR_REVISION_WINDOW_S"),
        ({"MYSQL_URL": "postgresql://u:p@h/db"}, "MYSQL_URL"),
        ({"MLFLOW_TRACKING_URI": "file:///tmp/mlruns"}, "MLFLOW_TRACKING_URI"),
        ({"MLFLOW_TRACKING_URI": "./mlruns"}, "MLFLOW_TRACKING_URI"),
        ({"POLYGON_WS_URL": "wss://socket.polygon.io/crypto"}, "POLYGON_API_KEY"),
        ({"POLYGON_API_KEY": "k", "POLYGON_REST_URL": "ftp://x"}, "POLYGON_REST_URL"),
        ({"SNOWFLAKE_ACCOUNT": "acme"}, "SNOWFLAKE_USER"),
        ({"SNOWFLAKE_DATABASE": "MARKET DATA; DROP"}, "SNOWFLAKE_DATABASE"),
        ({"SNOWFLAKE_SCHEMA": "1POLYGON"}, "SNOWFLAKE_SCHEMA"),
        ({"SNOWFLAKE_ACCOUNT": "acme", "SNOWFLAKE_USER": "u"}, "SNOWFLAKE_PASSWORD"),
        (
            {
                "SNOWFLAKE_ACCOUNT": "acme",
                "SNOWFLAKE_USER": "u",
                "SNOWFLAKE_PASSWORD": "p",
                "SNOWFLAKE_PRIVATE_KEY": "k",
            },
            "exactly one credential",
        ),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(env, cwd=tmp_path)


SECRETS = {
    "POLYGON_API_KEY": "pk-live-0123456789abcdef",
    "MYSQL_URL": "mysql+pymysql://loader:my-sql-pw-42@db.internal:3306/market_data",
    "SNOWFLAKE_ACCOUNT": "acme-xy12345",
    "SNOWFLAKE_USER": "loader",
    "SNOWFLAKE_PASSWORD": "sf-pw-987654",
}


def test_production_values_switch_each_part(tmp_path: Path) -> None:
    s = load_settings(SECRETS, cwd=tmp_path)
    assert not s.uses_simulator and s.ws_url == "wss://socket.polygon.io/crypto"
    assert s.uses_mysql_server
    assert not s.snowflake.local and s.snowflake.account == "acme-xy12345"


def test_secrets_never_appear_in_repr_str_or_describe(tmp_path: Path) -> None:
    s = load_settings({**SECRETS, "CRYPTO_PAIRS": "BTC-USD"}, cwd=tmp_path)
    views = [repr(s), str(s), repr(s.describe()), str(s.snowflake), repr(s.api_key), f"{s.mysql_url}"]
    for view in views:
        for secret in ("pk-live-0123456789abcdef", "my-sql-pw-42", "sf-pw-987654"):
            assert secret not in view
    assert s.describe()["mysql_url"] == "mysql+pymysql://loader:***@db.internal:3306/market_data"
    assert s.api_key.reveal() == "pk-live-0123456789abcdef"


def test_secret_values_compare_without_showing() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert not Secret("") and "a" not in repr(Secret("a"))


def test_child_environment_applies_overrides() -> None:
    env = child_environment({"CRYPTO_STATE_DIR": "/abs/state"})
    assert env["CRYPTO_STATE_DIR"] == "/abs/state"
    assert "PATH" in env  # the inherited environment is carried over


def test_readme_settings_table_is_generated_from_the_model() -> None:
    """The README's Settings table is exactly what the settings model generates, one row per variable."""
    from crypto_platform.settings import Settings, settings_table

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    section = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    assert settings_table() in section, "README settings table is stale: paste `python -m crypto_platform.settings`"
    variables = [
        str(f.validation_alias) for f in Settings.model_fields.values() if not str(f.validation_alias).startswith("_")
    ]
    assert len(variables) > 25 and len(set(variables)) == len(variables)
    assert all(f"| `{v}` |" in section for v in variables)


def test_an_ingester_run_as_a_service_is_not_started_by_the_sensor(tmp_path: Path) -> None:
    from crypto_platform.resources.stream import build_stream_resource

    assert build_stream_resource(load_settings({}, cwd=tmp_path)).autostart is True
    service = build_stream_resource(load_settings({"CRYPTO_INGESTER_AUTOSTART": "false"}, cwd=tmp_path))
    assert service.autostart is False
    assert service.ensure_running() == "not running (autostart is off)"


def test_alert_rules_are_parsed_and_bad_ones_name_the_variable(tmp_path: Path) -> None:
    from decimal import Decimal

    s = load_settings(
        {"CRYPTO_ALERT_PRICE_ABOVE": "btc-usd:100000, ETH-USD:5000.25", "CRYPTO_ALERT_WHALE_NOTIONAL": "250000.5"},
        cwd=tmp_path,
    )
    assert s.alert_price_above == {"BTC-USD": Decimal(100000), "ETH-USD": Decimal("5000.25")}
    assert s.alert_price_below == {} and s.alert_whale_notional == Decimal("250000.5")
    assert (s.alert_volume_spike_factor, s.alert_volume_window_min) == (5.0, 30)
    bad = [
        ("CRYPTO_ALERT_PRICE_ABOVE", "BTC-USD", "PAIR:PRICE"),
        ("CRYPTO_ALERT_PRICE_BELOW", "BTC-USD:-5", "positive number"),
        ("CRYPTO_ALERT_PRICE_BELOW", "BTCUSD:5", "FROM-TO"),
        ("CRYPTO_ALERT_PRICE_ABOVE", "DOGE-USD:1", "not in CRYPTO_PAIRS"),
        ("CRYPTO_ALERT_PRICE_ABOVE", "BTC-USD:1,BTC-USD:2", "twice"),
        ("CRYPTO_ALERT_VOLUME_SPIKE_FACTOR", "0.5", "above 1"),
        ("CRYPTO_ALERT_VOLUME_WINDOW_MIN", "2", "minimum 3"),
        ("CRYPTO_ALERT_WHALE_NOTIONAL", "lots", "not a number"),
    ]
    for variable, value, why in bad:
        with pytest.raises(SettingsError, match=f"{variable}.*{why}"):
            load_settings({variable: value}, cwd=tmp_path)


def test_the_lake_url_defaults_to_the_data_dir_and_object_store_credentials_stay_secret(tmp_path: Path) -> None:
    local = load_settings({"CRYPTO_STATE_DIR": str(tmp_path)})
    assert local.lake_url == str(local.data_dir / "lake") and local.lake_storage_options() == {}
    env = {
        "CRYPTO_STATE_DIR": str(tmp_path),
        "CRYPTO_LAKE_URL": "s3://bucket/prefix/",
        "AWS_SECRET_ACCESS_KEY": "very-secret",
        "AWS_REGION": "eu-west-1",
    }
    remote = load_settings(env)
    assert remote.lake_url == "s3://bucket/prefix"
    assert remote.lake_storage_options() == {"AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "very-secret"}
    assert "very-secret" not in repr(remote) and "very-secret" not in str(remote.describe())
    assert load_settings({"CRYPTO_STATE_DIR": str(tmp_path), "CRYPTO_LAKE_URL": "rel/lake"}).lake_url.startswith("/")


def test_flat_files_settings_keep_their_keys_secret() -> None:
    sim = load_settings({"CRYPTO_SIMULATOR_S3_PORT": "9123"}, cwd=Path("/tmp"))
    assert sim.history_from_flat_files and sim.s3_endpoint == "http://127.0.0.1:9123" and sim.s3_bucket == "flatfiles"
    real = load_settings(
        {
            "POLYGON_API_KEY": "k",
            "POLYGON_S3_ACCESS_KEY_ID": "AKIA-ID-123",
            "POLYGON_S3_SECRET_ACCESS_KEY": "s3-secret-456",
        },
        cwd=Path("/tmp"),
    )
    assert real.s3_endpoint == "https://files.massive.com" and real.history_from_flat_files
    shown = f"{real!r} {real.describe()}"
    assert "AKIA-ID-123" not in shown and "s3-secret-456" not in shown
    assert not load_settings({"POLYGON_API_KEY": "k"}, cwd=Path("/tmp")).history_from_flat_files
    with pytest.raises(SettingsError, match="POLYGON_S3_SECRET_ACCESS_KEY"):
        load_settings({"POLYGON_API_KEY": "k", "POLYGON_S3_ACCESS_KEY_ID": "AKIA"}, cwd=Path("/tmp"))
    with pytest.raises(SettingsError, match="CRYPTO_HISTORY_SOURCE"):
        load_settings({"POLYGON_API_KEY": "k", "CRYPTO_HISTORY_SOURCE": "flat_files"}, cwd=Path("/tmp"))
    with pytest.raises(SettingsError, match="CRYPTO_HISTORY_SOURCE"):
        load_settings({"CRYPTO_HISTORY_SOURCE": "ftp"}, cwd=Path("/tmp"))
    assert not load_settings({"CRYPTO_HISTORY_SOURCE": "rest"}, cwd=Path("/tmp")).history_from_flat_files
