"""landing_freshness_check and landing_freshness_sensor on a real landing log written by the ingester."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dagster as dg
from mlflow.tracking import MlflowClient

from crypto_platform.assets.landing_log import landing_log
from crypto_platform.checks.landing import (
    CHECK_NAME,
    landing_freshness,
    landing_freshness_check,
    landing_freshness_sensor,
)
from crypto_platform.resources.mlflow import QUALITY_EXPERIMENT, MlflowTrackingResource
from crypto_platform.resources.stream import build_stream_resource
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream.manifest import last_manifest_entry
from crypto_platform_tests.checks.conftest import evaluations
from crypto_platform_tests.simulator.conftest import wait_for
from crypto_platform_tests.stream.conftest import Running, settings_for


def run_check(stream: object) -> dg.AssetCheckEvaluation:
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [landing_log, landing_freshness_check],
            selection=dg.AssetSelection.checks(landing_freshness_check),
            instance=instance,
            resources={"stream": stream},
        )
    return evaluations(result)[("landing_log", CHECK_NAME)]


def sensor_tick(instance: dg.DagsterInstance, cursor: str | None, resources: dict[str, object]) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        result = landing_freshness_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


async def test_the_check_and_the_sensor_follow_a_feed_from_empty_to_flowing_to_stale(tmp_path: Path) -> None:
    async with Simulator(SimulatorConfig(rate=400, pairs=("BTC-USD",))) as sim:
        settings = settings_for(tmp_path, sim, CRYPTO_PAIRS="BTC-USD")
        stream = build_stream_resource(settings)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        resources = {"stream": stream, "mlflow": MlflowTrackingResource(tracking_uri=uri)}

        # Nothing landed yet: the check fails naming what is missing, the sensor reports it.
        # Dagster runs in a worker thread: it must not block (or share) the loop the feed runs on.
        empty = await asyncio.to_thread(run_check, stream)
        assert not empty.passed and empty.severity == dg.AssetCheckSeverity.WARN
        assert "no sealed segment yet" in empty.metadata["examples"].value
        with dg.instance_for_test() as instance:
            first = await asyncio.to_thread(sensor_tick, instance, None, resources)
            (reported,) = first.asset_events
            assert isinstance(reported, dg.AssetCheckEvaluation) and not reported.passed

            running = Running(settings)
            try:
                await wait_for(lambda: last_manifest_entry(settings.landing_dir) is not None, 20, "a sealed segment")
                await wait_for(
                    lambda: (stream.status().heartbeat or {}).get("last_event_ms") is not None, 20, "a heartbeat"
                )
                fresh = await asyncio.to_thread(run_check, stream)
                assert fresh.passed, fresh.metadata["examples"].value
                assert 0 <= fresh.metadata["seconds_since_sealed"].value < fresh.metadata["limit_s"].value
                assert fresh.metadata["completeness_24h"].value > 0

                # The outcome changed: reported again, now passing; then unchanged ticks are skipped.
                second = await asyncio.to_thread(sensor_tick, instance, first.cursor, resources)
                (now_ok,) = second.asset_events
                assert now_ok.passed and now_ok.check_name == CHECK_NAME
                third = await asyncio.to_thread(sensor_tick, instance, second.cursor, resources)
                assert not third.asset_events and "unchanged" in (third.skip_reason.skip_message or "")
            finally:
                await running.finish()

    # Long after the last segment and event, the same landing log is stale.
    later_ns = time.time_ns() + 3_600 * 10**9
    stale = landing_freshness(stream, now_ns=later_ns)
    assert not stale.passed
    assert any(p.startswith("last sealed segment") for p in stale.examples)
    assert any(p.startswith("last event") for p in stale.examples)
    # Both reported evaluations reached MLflow, each with its outcome.
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(QUALITY_EXPERIMENT).experiment_id])
    assert sorted(r.data.tags["passed"] for r in runs) == ["false", "true"]
