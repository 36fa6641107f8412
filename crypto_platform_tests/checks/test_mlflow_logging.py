"""MLflow logging through mlflow_sensor, for every kind of Dagster run, against a real sqlite MLflow store.

Each test runs the platform's real raw assets and checks on a real Dagster instance (a manual
materialization, a sensor-launched run, a backfill run, a run that fails), then evaluates
``mlflow_sensor`` and reads the MLflow store back. The last test shows why the platform does not use
dagster-mlflow's resource for this: on an asset run it leaves its MLflow run RUNNING.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from crypto_platform.assets.raw import raw_trades
from crypto_platform.checks.lake import raw_trades_checks
from crypto_platform.checks.mlflow_events import mlflow_sensor
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mlflow import INGESTION_EXPERIMENT, QUALITY_EXPERIMENT, MlflowTrackingResource
from crypto_platform.stream_batches import SEGMENTS_TAG
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

DAY = "2025-11-24"


class World:
    """A landing log with one day of trades, a lake, an MLflow store and a Dagster instance."""

    def __init__(self, tmp_path: Path, instance: dg.DagsterInstance) -> None:
        self.landing = Landing(tmp_path)
        self.landing.segment(trades_frame(0, 30, DAY1_MS))
        self.instance = instance
        self.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.mlflow = MlflowTrackingResource(tracking_uri=self.uri, params={"pairs": "BTC-USD"})
        self.resources = {"lake": LakeResource(root=str(tmp_path / "lake")), "stream": self.landing.resource()}
        self.cursor: str | None = None

    def run(self, tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [raw_trades, raw_trades_checks],
            partition_key=DAY,
            instance=self.instance,
            resources=self.resources,
            tags=tags,
            raise_on_error=False,
        )

    def tick(self) -> Any:
        """One tick: the run reactions of the runs it logged, or the skip reason when there were none."""
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"mlflow": self.mlflow}
        ) as ctx:
            result = mlflow_sensor(ctx)
            self.cursor = ctx.cursor
        assert isinstance(result, list | dg.SkipReason)
        return result

    def logged(self, run_id: str) -> list[Any]:
        client = MlflowClient(tracking_uri=self.uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        return client.search_runs(ids, filter_string=f"tags.`dagster.run_id` = '{run_id}'", max_results=1000)

    def experiment_of(self, run: Any) -> str:
        return MlflowClient(tracking_uri=self.uri).get_experiment(run.info.experiment_id).name


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with dg.instance_for_test() as instance:
        yield World(tmp_path, instance)


@pytest.mark.parametrize(
    ("tags", "kind"),
    [
        (None, "manual"),
        ({"dagster/sensor_name": "stream_sensor", SEGMENTS_TAG: "1-1"}, "sensor:stream_sensor"),
        ({"dagster/backfill": "bkfl01"}, "backfill:bkfl01"),
    ],
)
def test_each_kind_of_run_is_logged_finished_with_its_tags(
    world: World, tags: dict[str, str] | None, kind: str
) -> None:
    result = world.run(tags)
    assert result.success
    reactions = world.tick()
    assert [r.dagster_run.run_id for r in reactions] == [result.run_id]  # the tick names the run it logged
    runs = world.logged(result.run_id)
    loads = [r for r in runs if world.experiment_of(r) == INGESTION_EXPERIMENT]
    checks = [r for r in runs if world.experiment_of(r) == QUALITY_EXPERIMENT]
    assert {r.info.status for r in runs} == {"FINISHED"}
    (load,) = loads
    assert load.data.tags["dagster.asset"] == "raw_trades" and load.data.tags["dagster.partition"] == DAY
    assert load.data.tags["dagster.run_kind"] == kind
    assert load.data.metrics["rows_loaded"] == 30 and load.data.params == {"pairs": "BTC-USD"}
    evaluated = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {r.data.tags["dagster.check"] for r in checks} == set(evaluated)
    for r in checks:
        assert r.data.metrics["passed"] == float(evaluated[r.data.tags["dagster.check"]].passed)
        assert r.data.tags["dagster.partition"] == DAY


def test_a_tick_that_logged_runs_is_a_success_not_an_empty_skip(world: World) -> None:
    result = world.run()
    with dg.build_sensor_context(instance=world.instance, resources={"mlflow": world.mlflow}) as ctx:
        data = mlflow_sensor.evaluate_tick(ctx)
    # What the sensor daemon reads: run reactions and no skip message make the tick a SUCCESS.
    assert data.skip_message is None and [r.dagster_run.run_id for r in data.dagster_run_reactions] == [result.run_id]
    resources = {"mlflow": world.mlflow}
    with dg.build_sensor_context(instance=world.instance, cursor=data.cursor, resources=resources) as ctx:
        again = mlflow_sensor.evaluate_tick(ctx)
    assert again.skip_message == "no finished runs" and not again.dagster_run_reactions


def test_a_failed_run_is_logged_failed_and_nothing_stays_running(world: World) -> None:
    segment = next((world.landing.settings.landing_dir / "segments").glob("*.ndjson"))
    segment.write_bytes(segment.read_bytes()[:-40] + b"\n")  # a damaged sealed segment fails the build
    result = world.run()
    assert not result.success
    world.tick()
    runs = world.logged(result.run_id)
    assert runs and {r.info.status for r in runs} == {"FAILED"}
    (failed,) = runs
    assert failed.data.tags["dagster.run_status"] == "FAILURE" and failed.data.metrics["failed"] == 1.0
    assert failed.data.tags["dagster.asset"] == "raw_trades" and "damaged" in failed.data.tags["dagster.error"]


def test_a_repeated_tick_logs_nothing_twice(world: World) -> None:
    first = world.run()
    world.tick()
    count = len(world.logged(first.run_id))
    world.cursor = None  # as if the tick had died before its cursor was stored
    world.tick()
    assert len(world.logged(first.run_id)) == count > 0
    assert isinstance(world.tick(), dg.SkipReason)  # nothing new: the cursor is past every run


def test_dagster_mlflow_leaves_its_run_running_on_an_asset_run(tmp_path: Path) -> None:
    """Why the platform logs through MlflowClient: dagster-mlflow's resource ends its MLflow run only from
    a hook, which implicit asset jobs (UI, sensors, backfills) never apply."""
    from dagster_mlflow import mlflow_tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    @dg.asset(required_resource_keys={"mlflow"})
    def scored(context: dg.AssetExecutionContext) -> None:
        context.resources.mlflow.log_metric("rows", 3)

    resource = mlflow_tracking.configured({"experiment_name": "dagster-mlflow-probe", "mlflow_tracking_uri": uri})
    try:
        with dg.instance_for_test() as instance:
            assert dg.materialize([scored], instance=instance, resources={"mlflow": resource}).success
        client = MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("dagster-mlflow-probe").experiment_id])
        assert run.data.metrics["rows"] == 3
        assert run.info.status == "RUNNING"
    finally:
        import mlflow

        mlflow.end_run()  # the fluent active run it left in this process
