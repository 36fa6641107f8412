"""The stream sensor, one test per cursor transition (build_sensor_context on a real instance), and the
runs it requests executed against a real landing log."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from crypto_platform.assets.raw import raw_trades
from crypto_platform.lake import writer
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.sensors import stream_sensor
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream import supervision
from crypto_platform.stream.landing_log import LandingLog
from crypto_platform.stream.manifest import log_id
from crypto_platform.stream.session_ledger import SessionLedger
from crypto_platform.stream_batches import LANDING_LOG_TAG, SEGMENTS_TAG, StreamCursor
from crypto_platform_tests.conftest import local_settings

DAY1_MS = 1_764_028_800_000 - 3_600_000  # 2025-11-24T23:00Z
DAY2_MS = 1_764_028_800_000 + 3_600_000  # 2025-11-25T01:00Z


def trades_frame(start_id: int, n: int, t: int, dup_of: int | None = None) -> bytes:
    """Trades ``start_id``.. of a frame stamped ``t``; with ``dup_of``, a re-send of trades ``dup_of``..
    of a frame stamped ``t`` (the same trades: id, time, price; as Polygon re-sends them)."""

    def event(i: int) -> dict[str, object]:
        return {
            "ev": "XT",
            "pair": "BTC-USD",
            "p": f"9700{i % 10}.1{i % 7}",
            "s": f"0.0000000{i % 9}1",
            "t": t + i,
            "i": str(i),
            "x": 1 + i % 2,
            "c": [2],
            "r": t + i + 5,
        }

    events = [event(i if dup_of is None else dup_of + i - start_id) for i in range(start_id, start_id + n)]
    return orjson.dumps(events).replace(b'"p":"', b'"p":').replace(b'","s":"', b',"s":').replace(b'","t"', b',"t"')


class Landing:
    """Writes sealed segments the way the ingester does."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = local_settings(tmp_path)
        self.log = LandingLog(self.settings.landing_dir)
        self.log.open()
        self.recv = 1

    def segment(self, *frames: bytes, session: int = 1) -> int:
        for f in frames:
            self.recv += 1
            self.log.append(self.recv, session, f)
        seq = self.log.seal()
        assert seq is not None
        return seq

    def resource(self, autostart: bool = False, **settings: Any) -> StreamResource:
        """The sensor's resource on this landing log (three segments a round unless ``settings`` say)."""
        s = self.settings
        return StreamResource(
            project_dir=str(s.project_dir),
            state_dir=str(s.state_dir),
            data_dir=str(s.data_dir),
            autostart=autostart,
            **{"max_segments_per_tick": 3, **settings},
        )


def tick(landing: Landing, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"stream": landing.resource()}) as ctx:
        result = stream_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def test_no_landing_log_yet_skips_and_keeps_no_cursor(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    res = StreamResource(
        project_dir=str(settings.project_dir),
        state_dir=str(settings.state_dir),
        data_dir=str(settings.data_dir),
        autostart=False,
    )
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(instance=instance, resources={"stream": res}) as ctx,
    ):
        result = stream_sensor(ctx)
    assert not result.run_requests and "no landing log yet" in (result.skip_reason.skip_message or "")
    assert result.cursor is None
    (obs,) = result.asset_events
    assert obs.metadata["ingester"].value == "not running (autostart is off)"


def test_first_segments_request_one_run_per_day(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 5, DAY1_MS))
    landing.segment(trades_frame(5, 5, DAY1_MS), trades_frame(10, 5, DAY2_MS))
    with dg.instance_for_test() as instance:
        result = tick(landing, instance, None)
    lid = log_id(landing.settings.landing_dir)
    assert [(r.partition_key, r.tags[SEGMENTS_TAG], r.run_key) for r in result.run_requests] == [
        ("2025-11-24", "1-2", f"landing:{lid}:2025-11-24:1-2"),
        ("2025-11-25", "2-2", f"landing:{lid}:2025-11-25:2-2"),
    ]
    decoded = StreamCursor.decode(result.cursor)
    assert (decoded.log_id, decoded.seq) == (lid, 2) and decoded.launched_at > 0


def test_nothing_new_skips_and_keeps_the_cursor(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 5, DAY1_MS))
    with dg.instance_for_test() as instance:
        first = tick(landing, instance, None)
        again = tick(landing, instance, first.cursor)
    assert not again.run_requests and again.cursor == first.cursor
    assert "no new sealed segments" in (again.skip_reason.skip_message or "")


def test_new_segments_after_the_cursor_only(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 5, DAY1_MS))
    with dg.instance_for_test() as instance:
        first = tick(landing, instance, None)
        landing.segment(trades_frame(5, 5, DAY1_MS))
        second = tick(landing, instance, first.cursor)
    assert [r.tags[SEGMENTS_TAG] for r in second.run_requests] == ["2-2"]


def test_work_per_tick_is_bounded(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    for i in range(7):
        landing.segment(trades_frame(i * 5, 5, DAY1_MS))
    with dg.instance_for_test() as instance:
        first = tick(landing, instance, None)
        second = tick(landing, instance, first.cursor)
        third = tick(landing, instance, second.cursor)
    assert [r.tags[SEGMENTS_TAG] for r in (*first.run_requests, *second.run_requests, *third.run_requests)] == [
        "1-3",
        "4-6",
        "7-7",
    ]


def test_a_run_in_flight_holds_new_segments_back_and_its_successor_takes_them_all(tmp_path: Path) -> None:
    from dagster._core.storage.dagster_run import DagsterRun

    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 5, DAY1_MS))
    lid = log_id(landing.settings.landing_dir)
    with dg.instance_for_test() as instance:
        first = tick(landing, instance, None)
        (request,) = first.run_requests
        running = instance.add_run(
            DagsterRun(job_name="stream_batch", status=dg.DagsterRunStatus.STARTED, tags=dict(request.tags))
        )
        landing.segment(trades_frame(5, 5, DAY1_MS))
        landing.segment(trades_frame(10, 5, DAY1_MS))
        held = tick(landing, instance, first.cursor)
        assert not held.run_requests and held.cursor is None  # the cursor stays where it was
        assert running.run_id in (held.skip_reason.skip_message or "")
        other_log = instance.add_run(  # a run of another landing log does not hold this one back
            DagsterRun(job_name="stream_batch", status=dg.DagsterRunStatus.STARTED, tags={LANDING_LOG_TAG: "other"})
        )
        instance.report_run_failed(running)
        after = tick(landing, instance, first.cursor)
    assert other_log.status == dg.DagsterRunStatus.STARTED
    assert [r.tags[SEGMENTS_TAG] for r in after.run_requests] == ["2-3"]
    decoded = StreamCursor.decode(after.cursor)
    assert (decoded.log_id, decoded.seq) == (lid, 3)


def paced_tick(
    landing: Landing, instance: dg.DagsterInstance, cursor: str | None, interval_s: float
) -> dg.SensorResult:
    s = landing.settings
    stream = StreamResource(
        project_dir=str(s.project_dir),
        state_dir=str(s.state_dir),
        data_dir=str(s.data_dir),
        autostart=False,
        batch_interval_s=interval_s,
    )
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"stream": stream}) as ctx:
        result = stream_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def test_runs_wait_for_the_batch_interval_and_the_next_round_takes_everything_sealed_meanwhile(
    tmp_path: Path,
) -> None:
    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 5, DAY1_MS))
    with dg.instance_for_test() as instance:
        first = paced_tick(landing, instance, None, 30)
        assert [r.tags[SEGMENTS_TAG] for r in first.run_requests] == ["1-1"]  # the first round goes at once
        launched = StreamCursor.decode(first.cursor).launched_at
        landing.segment(trades_frame(5, 5, DAY1_MS))
        landing.segment(trades_frame(10, 5, DAY1_MS))
        held = paced_tick(landing, instance, first.cursor, 30)
        assert not held.run_requests and held.cursor is None  # nothing taken: the segments wait
        assert "next stream_batch round in" in (held.skip_reason.skip_message or "")
        # Once the interval has passed since the last round (the cursor says when that was)...
        earlier = dataclasses.replace(StreamCursor.decode(first.cursor), launched_at=launched - 31).encode()
        due = paced_tick(landing, instance, earlier, 30)
    # ...one run takes every segment sealed meanwhile, and the round's time moves on.
    assert [r.tags[SEGMENTS_TAG] for r in due.run_requests] == ["2-3"]
    assert StreamCursor.decode(due.cursor).launched_at >= launched


def test_a_round_with_nothing_new_does_not_reset_the_interval(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 5, DAY1_MS))
    with dg.instance_for_test() as instance:
        first = paced_tick(landing, instance, None, 0)
        again = paced_tick(landing, instance, first.cursor, 0)
    assert not again.run_requests and again.cursor == first.cursor


def test_a_replaced_data_directory_starts_over(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 5, DAY1_MS))
    stale = StreamCursor("some-old-log", 40).encode()
    with dg.instance_for_test() as instance:
        result = tick(landing, instance, stale)
    assert [r.tags[SEGMENTS_TAG] for r in result.run_requests] == ["1-1"]


def test_requested_runs_build_raw_trades_and_twenty_batches_equal_one_rebuild(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = {"stream": landing.resource(), "lake": lake}
    cursor = None
    with dg.instance_for_test() as instance:
        for batch in range(20):
            # Overlapping ids (a resent frame) and a frame spanning midnight in every batch.
            frames = [trades_frame(batch * 10, 10, DAY1_MS + batch * 1000)]
            if batch % 4 == 3:
                original = DAY1_MS + (batch - 1) * 1000  # batch - 1's frame, re-sent
                frames.append(trades_frame(batch * 10 + 100_000, 5, original, dup_of=(batch - 1) * 10))
            frames.append(trades_frame(batch * 10 + 50_000, 3, DAY2_MS))
            landing.segment(*frames, session=batch // 5 + 1)
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"stream": landing.resource()}
            ) as ctx:
                result = stream_sensor(ctx)
            cursor = result.cursor
            for request in result.run_requests:
                outcome = dg.materialize(
                    [raw_trades],
                    partition_key=request.partition_key,
                    tags=request.tags,
                    resources=resources,
                    instance=instance,
                )
                assert outcome.success
        incremental = lake.read_partition("raw_trades", "2025-11-24")
        rebuilt_lake = LakeResource(root=str(tmp_path / "rebuilt"))
        dg.materialize(
            [raw_trades], partition_key="2025-11-24", resources={**resources, "lake": rebuilt_lake}, instance=instance
        )
    rebuilt = rebuilt_lake.read_partition("raw_trades", "2025-11-24")
    assert incremental is not None and rebuilt is not None and incremental.equals(rebuilt)
    rows = rebuilt.to_pylist()
    assert len(rows) == 200  # the resent frames were de-duplicated
    assert len({(r["pair"], r["exchange"], r["trade_id"]) for r in rows}) == 200
    from decimal import Decimal

    assert str(rows[0]["price"].normalize()) == "97000.1" and rows[0]["size"] == Decimal("0.000000001")


def test_the_sensor_starts_the_ingester_once(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(rate=200))
    with sim.running_in_thread():
        settings = local_settings(tmp_path, CRYPTO_SIMULATOR_PORT=str(sim.port))
        res = StreamResource(
            project_dir=str(settings.project_dir),
            state_dir=str(settings.state_dir),
            data_dir=str(settings.data_dir),
            autostart=True,
        )
        try:
            with dg.instance_for_test() as instance:
                with dg.build_sensor_context(instance=instance, resources={"stream": res}) as ctx:
                    first = stream_sensor(ctx)
                with dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"stream": res}) as ctx:
                    second = stream_sensor(ctx)
            assert first.asset_events[0].metadata["ingester"].value.startswith("started (pid ")
            assert second.asset_events[0].metadata["ingester"].value.startswith("running")
            assert supervision.holder_pid(settings) is not None
        finally:
            writer.stop_writer(settings)  # the sensor starts the lake writer beside the ingester
            assert "stopped" in supervision.stop_ingester(settings)


@pytest.mark.parametrize("tag", ["", "x-y"])
def test_a_malformed_segment_tag_fails_the_run_clearly(tmp_path: Path, tag: str) -> None:
    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 5, DAY1_MS))
    resources = {"stream": landing.resource(), "lake": LakeResource(root=str(tmp_path / "lake"))}
    if not tag:
        assert dg.materialize([raw_trades], partition_key="2025-11-24", resources=resources).success
        return
    with pytest.raises(ValueError, match="segment range"):
        dg.materialize([raw_trades], partition_key="2025-11-24", tags={SEGMENTS_TAG: tag}, resources=resources)


def test_with_the_lake_writer_running_a_round_takes_what_it_appended_and_leaves_the_raw_tables_out(
    tmp_path: Path,
) -> None:
    """The writer holds its lock and has appended segments 1-2; segment 3 is sealed but not in the lake.
    The round covers 1-2 only, builds bars, alerts and copies (not the raw tables, which the writer
    owns) and checks the raw tables' new rows; the run, subset as the daemon subsets the job, succeeds."""
    from crypto_platform.checks.lake import raw_trades_checks
    from crypto_platform.definitions import build_definitions
    from crypto_platform.lake import writer
    from crypto_platform.local import stack as local_stack
    from crypto_platform.resources.lake import build_lake_resource
    from crypto_platform_tests.conftest import free_port, run_failures

    landing = Landing(tmp_path)
    settings = landing.settings
    landing.segment(trades_frame(0, 5, DAY1_MS))
    landing.segment(trades_frame(5, 5, DAY1_MS + 60_000))
    lake = build_lake_resource(settings)
    writer.write_pass(lake.tables(), settings.landing_dir, lake.locked)
    landing.segment(trades_frame(10, 5, DAY1_MS + 120_000))
    with writer.writer_lock(settings), dg.instance_for_test() as instance:
        result = tick(landing, instance, None)
        (request,) = result.run_requests
        assert request.tags[SEGMENTS_TAG] == "1-2"
        assert StreamCursor.decode(result.cursor).seq == 2  # segment 3 waits for the writer
        selected = set(request.asset_selection or [])
        assert raw_trades.key not in selected and dg.AssetKey("minute_bars") in selected
        checks = set(request.asset_check_keys or [])
        assert set(raw_trades_checks.check_keys) <= checks
        # The run's resources start the local simulator and fakesnow on demand: on free ports, stopped after.
        ports = {
            k: str(free_port()) for k in ("CRYPTO_SIMULATOR_PORT", "CRYPTO_SIMULATOR_S3_PORT", "CRYPTO_FAKESNOW_PORT")
        }
        run_settings = local_settings(tmp_path, **ports)
        job = build_definitions(run_settings).resolve_job_def("stream_batch")
        try:
            run = job.get_subset(asset_selection=selected, asset_check_selection=checks).execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags, raise_on_error=False
            )
        finally:
            for service in local_stack.all_services(run_settings):
                local_stack.stop_service(service, local_stack.stack_paths(run_settings))
        assert run.success, run_failures(run)
        materialized = {e.asset_key for e in run.get_asset_materialization_events()}
        assert raw_trades.key not in materialized and dg.AssetKey("minute_bars") in materialized
        evaluated = {(e.asset_key, e.check_name) for e in run.get_asset_check_evaluations()}
        assert (raw_trades.key, "unique_key") in evaluated
        assert {e.check_name for e in run.get_asset_check_evaluations() if e.asset_key == raw_trades.key} == {
            k.name for k in raw_trades_checks.check_keys
        }


def test_lake_checks_and_snowflake_copies_join_rounds_at_their_own_cadence(tmp_path: Path) -> None:
    """Round 1 runs every check and both warehouses; round 2, within CRYPTO_CHECK_INTERVAL_S and
    CRYPTO_SNOWFLAKE_INTERVAL_S, only the MySQL copies' parity; round 3, once both are due again, checks
    every segment since round 1 (2-3), so no appended row goes unchecked."""
    from crypto_platform.checks.lake import raw_trades_checks
    from crypto_platform.definitions import build_definitions
    from crypto_platform.lake import writer
    from crypto_platform.resources.lake import build_lake_resource
    from crypto_platform.stream_batches import CHECK_SEGMENTS_TAG

    landing = Landing(tmp_path)
    settings = landing.settings
    lake = build_lake_resource(settings)
    stream = landing.resource(check_interval_s=300, snowflake_interval_s=300)

    def round_(cursor: str | None) -> dg.SensorResult:
        writer.write_pass(lake.tables(), settings.landing_dir, lake.locked)
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"stream": stream}) as ctx:
            result = stream_sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        return result

    def snowflake(request: dg.RunRequest) -> bool:
        return any(k.path[0].startswith("snowflake_") for k in request.asset_selection or [])

    with writer.writer_lock(settings), dg.instance_for_test() as instance:
        landing.segment(trades_frame(0, 5, DAY1_MS))
        first = round_(None)
        (r1,) = first.run_requests
        assert r1.tags[CHECK_SEGMENTS_TAG] == "1-1" and snowflake(r1)
        assert set(raw_trades_checks.check_keys) <= set(r1.asset_check_keys or [])

        landing.segment(trades_frame(5, 5, DAY1_MS + 1000))
        second = round_(first.cursor)
        (r2,) = second.run_requests
        # No connection news (the ledger did not change): the sessions' MySQL copy stays out.
        assert dg.AssetKey("mysql_stream_sessions") not in (r2.asset_selection or [])
        assert CHECK_SEGMENTS_TAG not in r2.tags and not snowflake(r2)
        assert r2.tags[SEGMENTS_TAG] == "2-2"
        mysql = {k for k in r2.asset_selection or [] if k.path[0].startswith("mysql_")}
        assert dg.AssetKey("mysql_trades") in mysql  # only the checks inside the round's assets run
        assert {k.asset_key for k in r2.asset_check_keys or []} == mysql | {dg.AssetKey("crypto_alerts")}
        # Such a round is a valid subset of the job (Dagster refuses an asset without its own checks).
        build_definitions(settings).resolve_job_def("stream_batch").get_subset(
            asset_selection=set(r2.asset_selection or []), asset_check_selection=set(r2.asset_check_keys or [])
        )

        landing.segment(trades_frame(10, 5, DAY1_MS + 2000))
        ledger = SessionLedger(settings.landing_dir / "sessions.ndjson")
        ledger.record(ledger.new_session(), "connect", DAY1_MS * 1_000_000, url="ws://127.0.0.1/crypto")
        ledger.close()
        due = StreamCursor.decode(second.cursor)
        assert due.checked_seq == 1
        due = dataclasses.replace(due, checked_at=due.checked_at - 301, snowflake_at=due.snowflake_at - 301)
        third = round_(due.encode())
        (r3,) = third.run_requests
        assert r3.tags[SEGMENTS_TAG] == "3-3" and r3.tags[CHECK_SEGMENTS_TAG] == "2-3" and snowflake(r3)
        assert dg.AssetKey("mysql_stream_sessions") in (r3.asset_selection or [])  # the ledger's news
        assert StreamCursor.decode(third.cursor).checked_seq == 3


def test_health_is_recorded_at_most_every_30_s_while_all_is_well_and_at_once_with_news(tmp_path: Path) -> None:
    """Ingester and lake writer running with a fresh heartbeat: the first tick records the health
    observation, the next ones within 30 s do not, one 30 s later does; a stopped ingester is news."""
    import time

    from crypto_platform.lake import writer
    from crypto_platform.stream import supervision

    landing = Landing(tmp_path)
    settings = landing.settings
    landing.segment(trades_frame(0, 5, DAY1_MS))

    def observations(result: dg.SensorResult) -> int:
        return sum(isinstance(e, dg.AssetObservation) for e in result.asset_events)

    with dg.instance_for_test() as instance, writer.writer_lock(settings):
        ingester = supervision.IngesterLock(settings)
        ingester.acquire()
        supervision.write_heartbeat(settings, {"ts_ns": time.time_ns(), "state": "streaming"})
        first = tick(landing, instance, None)
        second = tick(landing, instance, first.cursor)
        assert observations(first) == 1 and observations(second) == 0
        late = dataclasses.replace(StreamCursor.decode(second.cursor or first.cursor), observed_at=time.time() - 31)
        assert observations(tick(landing, instance, late.encode())) == 1
        ingester.release()
        down = tick(landing, instance, first.cursor)
        assert observations(down) == 1
        (obs,) = [e for e in down.asset_events if isinstance(e, dg.AssetObservation)]
        assert obs.metadata["ingester"].value == "not running (autostart is off)"


def test_a_backlog_is_checked_round_by_round_not_in_one_read(tmp_path: Path) -> None:
    """Within CRYPTO_CHECK_INTERVAL_S, a round that would leave CHECK_AFTER_SEGMENTS or more appended
    segments unchecked runs the lake checks anyway (a backlog taken in by rounds back to back)."""
    from crypto_platform.lake import writer
    from crypto_platform.resources.lake import build_lake_resource
    from crypto_platform.sensors import CHECK_AFTER_SEGMENTS
    from crypto_platform.stream_batches import CHECK_SEGMENTS_TAG

    landing = Landing(tmp_path)
    settings = landing.settings
    lake = build_lake_resource(settings)
    stream = landing.resource(
        check_interval_s=300, snowflake_interval_s=300, max_segments_per_tick=CHECK_AFTER_SEGMENTS + 5
    )
    with writer.writer_lock(settings), dg.instance_for_test() as instance:
        landing.segment(trades_frame(0, 2, DAY1_MS))
        writer.write_pass(lake.tables(), settings.landing_dir, lake.locked)
        with dg.build_sensor_context(instance=instance, resources={"stream": stream}) as ctx:
            first = stream_sensor(ctx)
        assert CHECK_SEGMENTS_TAG in first.run_requests[0].tags  # the first round: due by time
        few = CHECK_AFTER_SEGMENTS // 2
        for i in range(few):
            landing.segment(trades_frame(10 + i, 1, DAY1_MS + 1000 + i))
        writer.write_pass(lake.tables(), settings.landing_dir, lake.locked)
        with dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"stream": stream}) as ctx:
            second = stream_sensor(ctx)
        assert CHECK_SEGMENTS_TAG not in second.run_requests[0].tags  # 30 unchecked: not yet
        for i in range(CHECK_AFTER_SEGMENTS):
            landing.segment(trades_frame(100 + i, 1, DAY1_MS + 5000 + i))
        writer.write_pass(lake.tables(), settings.landing_dir, lake.locked)
        with dg.build_sensor_context(instance=instance, cursor=second.cursor, resources={"stream": stream}) as ctx:
            third = stream_sensor(ctx)
        (request,) = third.run_requests
        last = 1 + few + CHECK_AFTER_SEGMENTS
        assert request.tags[CHECK_SEGMENTS_TAG] == f"2-{last}"  # every unchecked segment, once
