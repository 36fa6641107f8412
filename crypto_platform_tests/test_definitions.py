"""The assembled Definitions: they load, their asset graph changes only deliberately (a syrupy
snapshot; run ``pytest --snapshot-update`` and review the diff when you change the graph on
purpose), resources follow the settings, and loading has no side effects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from syrupy.assertion import SnapshotAssertion

from crypto_platform import definitions
from crypto_platform.resources import build_resources
from crypto_platform.resources.mlflow import MlflowTrackingResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.settings import child_environment
from crypto_platform_tests.conftest import local_settings

PROJECT_DIR = Path(__file__).resolve().parent.parent


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(definitions.defs)


def asset_graph_summary(defs: dg.Definitions) -> dict[str, Any]:
    """Everything about the graph that a change should be deliberate for, in a stable order."""
    graph = defs.resolve_asset_graph()
    assets: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "materializable": node.is_materializable,
            "partitions": str(partitions) if partitions is not None else None,
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
            "checks": sorted(c.name for c in node.check_keys),
        }
    return {
        "assets": assets,
        "sensors": sorted(s.name for s in defs.sensors or []),
        "schedules": sorted(s.name for s in defs.schedules or []),
        "resources": sorted((defs.resources or {}).keys()),
    }


def test_asset_graph_snapshot(snapshot: SnapshotAssertion) -> None:
    assert asset_graph_summary(definitions.defs) == snapshot


def test_landing_log_is_an_external_ingest_asset() -> None:
    node = definitions.defs.resolve_asset_graph().get(dg.AssetKey("landing_log"))
    assert node.group_name == "ingest" and node.kinds == {"python"}
    assert not node.is_materializable  # the ingester writes it, not a Dagster run
    assert "ingester" in (node.description or "")


def test_every_asset_has_checks_a_group_an_owner_and_a_description() -> None:
    graph = definitions.defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert node.check_keys, f"{name} has no asset check"
        assert node.group_name in {"ingest", "lake", "warehouse", "quality"}, name
        assert node.owners and node.description and node.kinds, name


def test_every_module_is_listed_once() -> None:
    names = [m.__name__ for m in definitions.DEFINITION_MODULES]
    assert len(names) == len(set(names))


def test_resources_follow_the_settings_and_hold_no_plain_secrets(tmp_path: Path) -> None:
    local = build_resources(local_settings(tmp_path))
    assert set(local) == {"snowflake", "sql_tables", "mlflow", "polygon_rest", "lake", "stream", "dagster_storage"}
    assert local["dagster_storage"].run_retention_days == 7
    assert (
        build_resources(local_settings(tmp_path, CRYPTO_RUN_RETENTION_DAYS="3"))["dagster_storage"].run_retention_days
        == 3
    )
    sf_args = local["snowflake"].additional_snowflake_connection_args
    assert sf_args["host"] == "127.0.0.1" and sf_args["protocol"] == "http"
    assert sf_args["session_parameters"]["CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED"] is False
    assert local["snowflake"].network_timeout is not None and local["snowflake"].network_timeout <= 10
    assert local["sql_tables"].url.startswith("sqlite:///") and local["sql_tables"].url.endswith("warehouse.sqlite")
    assert local["mlflow"].tracking_uri.startswith("sqlite:///")

    prod_env = {
        "POLYGON_API_KEY": "pk-live-abcdef123456",
        "MYSQL_URL": "mysql+pymysql://loader:mysql-pw-77@db:3306/market",
        "SNOWFLAKE_ACCOUNT": "acme-xy12345",
        "SNOWFLAKE_USER": "loader",
        "SNOWFLAKE_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----secretkeymaterial",
        "SNOWFLAKE_PRIVATE_KEY_PASSWORD": "key-pass-55",
        "SNOWFLAKE_ROLE": "LOADER",
        "SNOWFLAKE_WAREHOUSE": "LOAD_WH",
    }
    prod = build_resources(local_settings(tmp_path, **prod_env))
    sf = prod["snowflake"]
    assert (sf.account, sf.user, sf.role, sf.warehouse) == ("acme-xy12345", "loader", "LOADER", "LOAD_WH")
    assert "host" not in (sf.additional_snowflake_connection_args or {})
    # Secrets are bound as environment references: the UI shows the variable name, not the value.
    assert isinstance(sf.private_key, dg.EnvVar) and sf.private_key == "SNOWFLAKE_PRIVATE_KEY"
    assert isinstance(sf.private_key_password, dg.EnvVar) and sf.password is None
    assert isinstance(prod["sql_tables"].url, dg.EnvVar) and prod["sql_tables"].url == "MYSQL_URL"
    assert isinstance(prod["polygon_rest"].api_key, dg.EnvVar) and prod["polygon_rest"].api_key == "POLYGON_API_KEY"
    assert prod["polygon_rest"].base_url == "https://api.polygon.io"
    dump = repr(prod)
    for secret in ("mysql-pw-77", "secretkeymaterial", "key-pass-55", "pk-live-abcdef123456"):
        assert secret not in dump


def test_sql_tables_resource_on_the_sqlite_stand_in(tmp_path: Path) -> None:
    import sqlalchemy

    resource = build_resources(local_settings(tmp_path))["sql_tables"]
    assert isinstance(resource, SqlTablesResource) and resource.is_sqlite
    with resource.engine().begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE probe (n INTEGER)"))
        conn.execute(sqlalchemy.text("INSERT INTO probe VALUES (1)"))
    assert (tmp_path / "data" / "warehouse.sqlite").is_file()


@pytest.mark.mysql
def test_sql_tables_resource_on_mysql(mysql_server: dict[str, object], mysql_database: str) -> None:
    import sqlalchemy

    url = f"mysql+pymysql://{mysql_server['user']}:{mysql_server['password']}@{mysql_server['host']}:{mysql_server['port']}/{mysql_database}"
    resource = SqlTablesResource(url=url)
    assert not resource.is_sqlite
    with resource.engine().begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE probe (price DECIMAL(38,18))"))
        conn.execute(sqlalchemy.text("INSERT INTO probe VALUES ('1.000000000000000001')"))
        assert str(conn.execute(sqlalchemy.text("SELECT price FROM probe")).scalar()) == "1.000000000000000001"


def test_mlflow_resource_logs_to_the_sqlite_store(tmp_path: Path) -> None:
    resource = build_resources(local_settings(tmp_path))["mlflow"]
    assert isinstance(resource, MlflowTrackingResource)
    client = resource.client()
    exp_id = resource.experiment_id(client)
    assert resource.experiment_id(client) == exp_id  # found, not created twice
    run = client.create_run(exp_id, run_name="probe")
    client.log_metric(run.info.run_id, "rows", 3.0)
    client.set_terminated(run.info.run_id, "FINISHED")
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert (tmp_path / "mlflow.db").is_file()
    assert client.get_experiment(exp_id).artifact_location.startswith((tmp_path / "mlflow-artifacts").as_uri())


def test_loading_definitions_has_no_side_effects(tmp_path: Path) -> None:
    """Import in a fresh process with fresh state paths: nothing may be created there."""
    state = tmp_path / "state"
    env = child_environment(
        {
            "CRYPTO_PROJECT_DIR": str(PROJECT_DIR),
            "CRYPTO_STATE_DIR": str(state),
            "DAGSTER_HOME": str(tmp_path / "home"),
            # Nothing listens here; a connection attempt at import would fail the load.
            "CRYPTO_FAKESNOW_PORT": "9",
            "CRYPTO_SIMULATOR_PORT": "9",
        }
    )
    code = "import dagster as dg, crypto_platform.definitions as d; dg.Definitions.validate_loadable(d.defs)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not state.exists() and not (tmp_path / "home").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_settings_fail_the_load_naming_the_variable(tmp_path: Path) -> None:
    env = child_environment({"CRYPTO_PROJECT_DIR": str(PROJECT_DIR), "CRYPTO_FAKESNOW_PORT": "snow"})
    done = subprocess.run(
        [sys.executable, "-c", "import crypto_platform.definitions"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "CRYPTO_FAKESNOW_PORT" in done.stderr
