"""Run retention on a real Dagster instance: the repo's dagster.yaml (SQLite storage) in a temporary
DAGSTER_HOME, with real runs of a small partitioned job named like the stream's and launched with the
tags the stream sensor sets. After retention, what the UI shows (each asset's latest
materialization, per-partition status, the latest check results) is unchanged, old micro-batch runs
are gone with everything they left behind, and backfill and manual runs are kept."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
from sqlalchemy import select

from crypto_platform.local.stack import install_instance_config
from crypto_platform.resources.dagster_storage import DagsterStorageResource
from crypto_platform.run_retention import STREAM_JOB, STREAM_SENSOR, prune_stream_runs
from crypto_platform.settings import load_settings
from crypto_platform.stream_batches import LANDING_LOG_TAG, SEGMENTS_TAG
from crypto_platform_tests.test_dagster_instance import mysql_home as mysql_home  # the fixture

PROJECT_DIR = Path(__file__).resolve().parent.parent
DAYS = dg.DailyPartitionsDefinition(start_date="2025-11-01")
DAY1, DAY2, DAY3 = "2025-11-24", "2025-11-25", "2025-11-26"
SENSOR_TAGS = {"dagster/sensor_name": "stream_sensor", LANDING_LOG_TAG: "log-1"}
FAIL_TAG = "test/fail"


@dg.asset(partitions_def=DAYS)
def probe_trades(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    if context.run.tags.get(FAIL_TAG):
        raise RuntimeError("the batch failed")
    return dg.MaterializeResult(metadata={"segments": context.run.tags.get(SEGMENTS_TAG, "all")})


@dg.asset(partitions_def=DAYS, deps=[probe_trades])
def probe_bars() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"bars": 1})


@dg.asset_check(asset=probe_trades)
def probe_unique(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True, metadata={"run": context.run.run_id})


PROBES: list[Any] = [probe_trades, probe_bars, probe_unique]
STREAM = dg.Definitions(assets=PROBES[:2], asset_checks=[probe_unique], jobs=[dg.define_asset_job("stream_batch")])
CHECK_KEY = probe_unique.check_key


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    # The repo's instance config with its stores inside this home (the file itself keeps them in the
    # project's .dagster_home/, relative to where Dagster runs).
    install_instance_config(load_settings({}, cwd=PROJECT_DIR), home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield instance


def run(instance: dg.DagsterInstance, day: str, tags: dict[str, str], ok: bool = True, check_only: bool = False) -> str:
    job = STREAM.resolve_job_def("stream_batch")
    if check_only:  # its latest check result then lives in a run without materializations
        job = job.get_subset(asset_selection=set(), asset_check_selection={CHECK_KEY})
    result = job.execute_in_process(instance=instance, partition_key=day, tags=tags, raise_on_error=False)
    assert result.success is ok
    return result.run_id


def ui_state(instance: dg.DagsterInstance) -> dict[str, Any]:
    """What the asset pages show: latest materialization, per-partition status and latest check result."""
    state: dict[str, Any] = {}
    for asset in (probe_trades, probe_bars):
        key = asset.key
        latest = instance.get_latest_materialization_event(key)
        per_day = {
            day: [
                (r.storage_id, r.run_id)
                for r in instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1
                ).records
            ]
            for day in (DAY1, DAY2)
        }
        state[key.to_user_string()] = {
            "latest": (latest.run_id, latest.timestamp) if latest else None,
            "materialized": sorted(instance.get_materialized_partitions(key)),
            "status": instance.get_status_by_partition(key, [DAY1, DAY2], DAYS),
            "per_day": per_day,
        }
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key([CHECK_KEY])[CHECK_KEY]
    state["check"] = (check.id, check.run_id, check.status)
    return state


PARTITION_STATUS_QUERY = """
{
  assetNodes(assetKeys: [{path: ["probe_trades"]}, {path: ["probe_bars"]}]) {
    assetKey { path }
    assetPartitionStatuses { ... on TimePartitionStatuses { ranges { startKey endKey status } } }
    assetMaterializations(limit: 1) { runId timestamp partition }
    assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization { runId status } } } }
  }
}
"""


def ui_graphql(instance: dg.DagsterInstance) -> Any:
    """The asset nodes as the UI asks for them: partition status ranges, latest materialization, checks."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    with define_out_of_process_context(__file__, "STREAM", instance) as context:
        result = execute_dagster_graphql(context, PARTITION_STATUS_QUERY)
    assert not result.errors, result.errors
    return sorted(result.data["assetNodes"], key=lambda node: node["assetKey"]["path"])


def check_rows(instance: dg.DagsterInstance) -> set[str]:
    table = AssetCheckExecutionsTable
    with instance.event_log_storage.index_connection() as conn:  # type: ignore[attr-defined]
        return {r[0] for r in conn.execute(select(table.c.run_id)).fetchall()}


def indexed_event_runs(instance: dg.DagsterInstance) -> set[str]:
    """Runs with events in the instance-wide index (asset events are copied there from each run's file)."""
    table = SqlEventLogStorageTable
    with instance.event_log_storage.index_connection() as conn:  # type: ignore[attr-defined]
        return {r[0] for r in conn.execute(select(table.c.run_id).distinct()).fetchall()}


def run_files(instance: dg.DagsterInstance, run_id: str) -> list[Path]:
    """The run's own SQLite event-log file and its folder of captured logs, where they exist."""
    shard = Path(instance.event_log_storage.path_for_shard(run_id))  # type: ignore[attr-defined]
    return [p for p in (shard, Path(instance.root_directory) / run_id) if p.exists()]


def test_old_micro_batches_go_and_everything_the_ui_shows_stays(instance: dg.DagsterInstance) -> None:
    def batch(day: str, n: int, **extra: str) -> str:
        return run(instance, day, {**SENSOR_TAGS, SEGMENTS_TAG: f"{n}-{n}", **extra}, ok=FAIL_TAG not in extra)

    day1_batches = [batch(DAY1, n) for n in range(1, 5)]
    backfill = run(instance, DAY1, {"dagster/backfill": "abcdefgh"})
    manual = run(instance, DAY1, {})
    rerun_by_hand = run(instance, DAY1, {**SENSOR_TAGS, "dagster/parent_run_id": day1_batches[0]})
    auto_retry = batch(DAY1, 5, **{"dagster/parent_run_id": day1_batches[1], "dagster/retry_number": "1"})
    day1_last = batch(DAY1, 6)
    check_only = run(instance, DAY1, {**SENSOR_TAGS, SEGMENTS_TAG: "7-7"}, check_only=True)
    day2_batches = [batch(DAY2, n) for n in range(8, 11)]
    day2_failed = batch(DAY2, 11, **{FAIL_TAG: "1"})  # the day's latest attempt: the UI shows it failed
    cutoff = datetime.now(UTC)
    newer = batch(DAY3, 12)  # after the cutoff: kept, whatever it holds

    before = ui_state(instance)
    assert before["probe_trades"]["status"][DAY2] == dg.AssetPartitionStatus.FAILED
    graphql_before = ui_graphql(instance)
    assert {"startKey": DAY2, "endKey": DAY2, "status": "FAILED"} in graphql_before[1]["assetPartitionStatuses"][
        "ranges"
    ]
    doomed = [*day1_batches, auto_retry, *day2_batches[:-1]]  # day2_batches[-1]: the day's latest materialization
    assert all(run_files(instance, r) for r in doomed) and set(doomed) <= check_rows(instance)
    assert set(doomed) <= indexed_event_runs(instance)

    report = prune_stream_runs(instance, cutoff, batch_size=2)

    assert ui_state(instance) == before
    assert ui_graphql(instance) == graphql_before
    assert sorted(report.deleted_run_ids) == sorted(doomed)
    assert report.deleted == len(doomed) and report.complete
    # Examined: every stream sensor run before the cutoff. Kept: the re-execution by hand, and the runs
    # holding day 1's latest materialization, its latest check result, day 2's latest materialization
    # and its latest (failed) attempt.
    assert report.examined == len(doomed) + 5
    assert report.kept_not_micro_batch == 1 and report.kept_for_ui == 4
    for run_id in doomed:
        assert instance.get_run_by_id(run_id) is None
        assert not run_files(instance, run_id)  # its event-log file and compute logs
    assert not set(doomed) & check_rows(instance)
    assert not set(doomed) & indexed_event_runs(instance)
    kept = [backfill, manual, rerun_by_hand, day1_last, check_only, day2_batches[-1], day2_failed, newer]
    assert all(instance.get_run_by_id(r) is not None for r in kept)
    assert all(instance.all_logs(r) for r in kept) and all(run_files(instance, r) for r in kept)
    assert report.event_log_bytes > 0 and report.file_bytes > 0 and report.bytes_removed == report.file_bytes

    again = prune_stream_runs(instance, cutoff)
    assert again.deleted == 0 and again.examined == report.examined - report.deleted
    assert ui_state(instance) == before

    # A later batch takes over as the latest of day 1: the previous latest is then deleted too.
    later = batch(DAY1, 13)
    after_later = ui_state(instance)
    assert after_later["probe_trades"]["per_day"][DAY1][0][1] == later
    third = prune_stream_runs(instance, datetime.now(UTC))
    assert set(third.deleted_run_ids) == {day1_last, check_only}
    assert ui_state(instance) == after_later


def test_work_per_pass_is_bounded_and_the_rest_waits_for_the_next(instance: dg.DagsterInstance) -> None:
    batches = [run(instance, DAY1, {**SENSOR_TAGS, SEGMENTS_TAG: f"{n}-{n}"}) for n in range(1, 6)]
    cutoff = datetime.now(UTC)
    first = prune_stream_runs(instance, cutoff, batch_size=2, max_runs=3)
    assert first.examined == 3 and first.deleted == 3 and not first.complete
    assert first.deleted_run_ids == batches[:3]  # oldest first
    second = prune_stream_runs(instance, cutoff, batch_size=2, max_runs=3)
    assert second.deleted_run_ids == batches[3:4] and second.complete  # the last is the latest: kept
    assert [r.dagster_run.run_id for r in instance.get_run_records()] == [batches[-1]]


def test_the_scheduled_job_prunes_with_the_setting_and_reports_counts(instance: dg.DagsterInstance) -> None:
    from crypto_platform.definitions import defs

    batches = [run(instance, DAY1, {**SENSOR_TAGS, SEGMENTS_TAG: f"{n}-{n}"}) for n in range(1, 4)]
    job = defs.resolve_job_def("stream_run_retention")
    resources = {"dagster_storage": DagsterStorageResource(run_retention_days=7)}

    def outcome(run_config: dict[str, Any] | None = None) -> dict[str, Any]:
        result = job.execute_in_process(instance=instance, run_config=run_config, resources=resources)
        assert result.success
        (output,) = [e for e in result.all_events if e.is_successful_output]
        return {k: v.value for k, v in output.step_output_data.metadata.items()}

    # The runs are minutes old: the 7-day default keeps them all.
    assert outcome()["runs_deleted"] == 0
    assert all(instance.get_run_by_id(r) for r in batches)
    # The window overridden to 0 days for one run: everything finished before now that the UI does not need.
    counts = outcome({"ops": {"prune_stream_batch_runs": {"config": {"older_than_days": 0}}}})
    assert counts["runs_deleted"] == 2 and counts["runs_kept_for_ui"] == 1 and counts["bytes_removed"] > 0
    assert [instance.get_run_by_id(r) is not None for r in batches] == [False, False, True]
    # The names retention selects by are the platform's own.
    assert defs.resolve_job_def(STREAM_JOB).name == STREAM_JOB and defs.resolve_sensor_def(STREAM_SENSOR)
    schedule = defs.resolve_schedule_def("stream_run_retention_daily")
    assert schedule.job_name == "stream_run_retention" and schedule.cron_schedule == "17 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_retention_days_zero_keeps_every_run(instance: dg.DagsterInstance) -> None:
    run(instance, DAY1, {**SENSOR_TAGS, SEGMENTS_TAG: "1-1"})
    run(instance, DAY1, {**SENSOR_TAGS, SEGMENTS_TAG: "2-2"})
    assert DagsterStorageResource(run_retention_days=0).prune(instance) is None
    assert len(instance.get_run_records()) == 2


def test_dagster_yaml_purges_sensor_ticks_by_status(instance: dg.DagsterInstance) -> None:
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickData, TickStatus
    from dagster._utils.error import SerializableErrorInfo

    sensor = instance.get_tick_retention_settings(InstigatorType.SENSOR)
    assert sensor == {TickStatus.SKIPPED: 1, TickStatus.STARTED: 7, TickStatus.SUCCESS: 7, TickStatus.FAILURE: 30}
    assert instance.get_tick_retention_settings(InstigatorType.AUTO_MATERIALIZE) == sensor
    assert set(instance.get_tick_retention_settings(InstigatorType.SCHEDULE).values()) == {90}

    # Ticks 2, 10 and 40 days old of each status, in the instance's schedule storage; then the purge
    # the sensor daemon runs after each tick, with the windows it reads from the instance.
    now = datetime.now(UTC).timestamp()
    for status in sensor:
        for age_days in (2, 10, 40):
            instance.create_tick(
                TickData(
                    instigator_origin_id="origin",
                    instigator_name="stream_sensor",
                    instigator_type=InstigatorType.SENSOR,
                    status=status,
                    timestamp=now - age_days * 86400,
                    selector_id="selector",
                    run_ids=[],
                    error=SerializableErrorInfo("boom", [], "RuntimeError") if status == TickStatus.FAILURE else None,
                )
            )
    for status, days in sensor.items():
        instance.purge_ticks("origin", "selector", before=now - days * 86400, tick_statuses=[status])
    left = {(t.status, round((now - t.timestamp) / 86400)) for t in instance.get_ticks("origin", "selector")}
    assert left == {
        (TickStatus.STARTED, 2),
        (TickStatus.SUCCESS, 2),
        (TickStatus.FAILURE, 2),
        (TickStatus.FAILURE, 10),
    }


def test_the_production_instance_config_has_the_same_retention() -> None:
    import yaml

    local = yaml.safe_load((PROJECT_DIR / "dagster.yaml").read_text())
    production = yaml.safe_load((PROJECT_DIR / "deploy" / "dagster.mysql.yaml").read_text())
    assert local["retention"] == production["retention"]


def test_old_runless_observations_go_but_each_assets_latest_and_materializations_stay(
    instance: dg.DagsterInstance,
) -> None:
    health, other = dg.AssetKey("landing_log"), dg.AssetKey("other_feed")

    def observe(key: dg.AssetKey, n: int) -> None:
        instance.report_runless_asset_event(dg.AssetObservation(asset_key=key, metadata={"events_per_s": n}))

    for n in range(5):
        observe(health, n)
    observe(other, 1)
    observe(other, 2)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=other, partition=DAY1))
    cutoff = datetime.now(UTC)
    observe(health, 99)

    def observed(key: dg.AssetKey) -> list[int]:
        records = instance.fetch_observations(key, limit=100).records
        return [r.asset_observation.metadata["events_per_s"].value for r in records]  # type: ignore[union-attr]

    assert observed(health) == [99, 4, 3, 2, 1, 0] and observed(other) == [2, 1]
    report = DagsterStorageResource(run_retention_days=7).prune(instance)
    assert report is not None and report.observations_deleted == 0  # minutes old: inside the 7 days
    from crypto_platform.run_retention import prune_runless_observations

    assert prune_runless_observations(instance, cutoff) == 6
    assert observed(health) == [99] and observed(other) == [2]  # each asset's latest stays
    assert instance.get_materialized_partitions(other) == {DAY1}
    assert prune_runless_observations(instance, cutoff) == 0
    # Nothing is left behind in the runless events' own file either.
    with instance.event_log_storage.run_connection("") as conn:  # type: ignore[attr-defined]
        rows = conn.execute(select(SqlEventLogStorageTable.c.dagster_event_type)).fetchall()
    assert sorted(r[0] for r in rows) == ["ASSET_MATERIALIZATION", "ASSET_OBSERVATION", "ASSET_OBSERVATION"]


@pytest.mark.mysql
def test_retention_on_the_production_mysql_instance(mysql_home: Path) -> None:
    """The same rules through dagster-mysql: one database for runs, events and check results."""
    with dg.DagsterInstance.get() as instance:
        manual = run(instance, DAY1, {})
        batches = [run(instance, DAY1, {**SENSOR_TAGS, SEGMENTS_TAG: f"{n}-{n}"}) for n in range(1, 4)]
        for n in range(3):
            instance.report_runless_asset_event(dg.AssetObservation(asset_key="landing_log", metadata={"n": n}))
        before = ui_state(instance)
        report = DagsterStorageResource(run_retention_days=7).prune(instance, older_than_days=0)
        assert report is not None
        assert report.deleted_run_ids == batches[:2] and report.kept_for_ui == 1
        assert report.event_log_bytes > 0 and report.bytes_removed >= report.event_log_bytes
        assert report.observations_deleted == 2
        assert ui_state(instance) == before
        assert not set(batches[:2]) & (check_rows(instance) | indexed_event_runs(instance))
        assert {r.dagster_run.run_id for r in instance.get_run_records()} == {batches[2], manual}
