"""The production instance config (deploy/dagster.mysql.yaml) on a real MySQL/MariaDB server.

Boots a ``DagsterInstance`` from the file exactly as a deployment would (``$DAGSTER_HOME/dagster.yaml``
with ``{env: DAGSTER_MYSQL_*}`` values) in a throwaway database, executes a run in it, and reads the
run back from the server, from a second instance and with plain SQL.
"""

import shutil
from pathlib import Path

import dagster as dg
import pymysql
import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.mysql


@pytest.fixture
def mysql_home(
    tmp_path: Path, mysql_server: dict[str, object], mysql_database: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_DIR / "deploy" / "dagster.mysql.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_MYSQL_HOST", str(mysql_server["host"]))
    monkeypatch.setenv("DAGSTER_MYSQL_PORT", str(mysql_server["port"]))
    monkeypatch.setenv("DAGSTER_MYSQL_USER", str(mysql_server["user"]))
    monkeypatch.setenv("DAGSTER_MYSQL_PASSWORD", str(mysql_server["password"]))
    monkeypatch.setenv("DAGSTER_MYSQL_DB", mysql_database)
    return home


@dg.asset(partitions_def=dg.DailyPartitionsDefinition(start_date="2025-01-01"))
def probe_partition(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"day": context.partition_key})


def test_mysql_instance_stores_and_executes_a_run(
    mysql_home: Path, mysql_server: dict[str, object], mysql_database: str
) -> None:
    from dagster_mysql import MySQLEventLogStorage, MySQLRunStorage, MySQLScheduleStorage

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, MySQLRunStorage)
        assert isinstance(instance.event_log_storage, MySQLEventLogStorage)
        assert isinstance(instance.schedule_storage, MySQLScheduleStorage)
        assert instance.get_settings("sensors")["use_threads"] is True
        # Tick history is purged by status (stream_sensor's skipped ticks after a day).
        assert instance.get_settings("retention")["sensor"]["purge_after_days"]["skipped"] == 1
        result = dg.materialize([probe_partition], instance=instance, partition_key="2025-01-02")
        assert result.success
        run_id = result.run_id
        instance.run_storage.set_cursor_values({"crypto_test_cursor": "7"})

    # A fresh instance (a restarted daemon) sees the run, its materialization and the cursor.
    with dg.DagsterInstance.get() as again:
        run = again.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        event = again.get_latest_materialization_event(dg.AssetKey("probe_partition"))
        assert event is not None and event.asset_materialization is not None
        assert event.asset_materialization.partition == "2025-01-02"
        assert again.run_storage.get_cursor_values({"crypto_test_cursor"}) == {"crypto_test_cursor": "7"}

    # And the rows really are in the throwaway MySQL database, not in some local file.
    conn = pymysql.connect(database=mysql_database, **mysql_server)  # type: ignore[arg-type]
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
            assert cur.fetchall() == (("SUCCESS",),)
    finally:
        conn.close()
    assert not (mysql_home / "history").exists()


def test_mysql_instance_config_keeps_the_password_out_of_the_file() -> None:
    text = (PROJECT_DIR / "deploy" / "dagster.mysql.yaml").read_text()
    assert "env: DAGSTER_MYSQL_PASSWORD" in text
    assert "mysql_url" not in text.split("storage:", 1)[1].split("sensors:", 1)[0]
