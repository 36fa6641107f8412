"""A backfill over a range of days (one run for several partitions, as ``multi_run(7)`` launches it)
gives exactly what per-day rebuilds and the stream's own batch runs give, day by day.

The landing log holds trades and XA bars on two UTC days, with frames that straddle midnight and a
re-sent frame, in a session that is open throughout (so no minute is a gap and nothing is repaired).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from crypto_platform.assets.bars import minute_bars
from crypto_platform.assets.raw import raw_aggregates, raw_trades
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.polygon import PolygonRestResource
from crypto_platform.settings import SIMULATOR_API_KEY
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream.manifest import iter_manifest
from crypto_platform.stream.session_ledger import SessionLedger
from crypto_platform.stream_batches import SEGMENTS_TAG
from crypto_platform_tests.test_stream_sensor import DAY1_MS, DAY2_MS, Landing, trades_frame

DAYS = ["2025-11-24", "2025-11-25"]
ASSETS = [raw_trades, raw_aggregates, minute_bars]
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture(scope="module")
def rest() -> Iterator[Simulator]:
    sim = Simulator(SimulatorConfig(rate=4, pairs=("BTC-USD",)))
    with sim.running_in_thread():
        yield sim


def xa(start_ms: int, close: str) -> bytes:
    bar = {"ev": "XA", "pair": "BTC-USD", "v": 1.5, "vw": 97000.5, "z": 0.1, "o": 97000.1, "c": float(close)}
    bar.update(h=97009.9, l=96990.1, s=start_ms, e=start_ms + 60_000)
    return orjson.dumps([bar])


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Landing:
    landing = Landing(tmp_path_factory.mktemp("backfill"))
    ledger = SessionLedger(landing.settings.landing_dir / "sessions.ndjson")
    session = ledger.new_session()
    ledger.record(session, "connect", 1, url="ws://127.0.0.1/crypto")
    ledger.record(session, "first_frame", 2)
    # The frames below come an hour (receive clock) after the session began: none of them is where the
    # stream began, so no minute is partial at the start either.
    landing.recv = 3_600 * 10**9
    for i in range(12):
        t = DAY1_MS + i * 600_000  # 23:00Z on day 1, ten minutes a segment, into day 2
        frames = [trades_frame(i * 20, 20, t), xa(t - t % 60_000, f"9700{i % 10}.5")]
        if i % 5 == 4:
            frames.append(trades_frame(i * 20, 20, t))  # re-sent
        frames.append(trades_frame(10_000 + i * 5, 5, DAY2_MS + i * 60_000))
        landing.segment(*frames, session=session)
    ledger.close()  # the session stays open: no gaps
    return landing


def resources(landing: Landing, lake: Path, sim: Simulator) -> dict[str, Any]:
    return {
        "stream": landing.resource(),
        "lake": LakeResource(root=str(lake)),
        "polygon_rest": PolygonRestResource(base_url=sim.rest_url, api_key=SIMULATOR_API_KEY, pairs=["BTC-USD"]),
    }


def run(res: dict[str, Any], partition_key: str | None = None, tags: dict[str, str] | None = None) -> None:
    result = dg.materialize(
        ASSETS, partition_key=partition_key, tags=tags or {}, resources=res, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success


def tables(lake: Path) -> dict[tuple[str, str], Any]:
    lr = LakeResource(root=str(lake))
    return {(a.key.path[-1], d): lr.read_partition(a.key.path[-1], d) for a in ASSETS for d in DAYS}


def test_a_range_backfill_equals_day_rebuilds_and_the_stream(landing: Landing, rest: Simulator, tmp_path: Path) -> None:
    ranged, daily, stream = tmp_path / "ranged", tmp_path / "daily", tmp_path / "stream"
    run(resources(landing, ranged, rest), tags={RANGE_START: DAYS[0], RANGE_END: DAYS[1]})
    for day in DAYS:
        run(resources(landing, daily, rest), partition_key=day)
    for entry in iter_manifest(landing.settings.landing_dir):  # one batch per segment and day, as the sensor asks
        for day in sorted(entry["days"]):
            run(
                resources(landing, stream, rest),
                partition_key=day,
                tags={SEGMENTS_TAG: f"{entry['seq']}-{entry['seq']}"},
            )
    by_range, by_day, by_stream = tables(ranged), tables(daily), tables(stream)
    for key, table in by_day.items():
        assert table is not None and table.num_rows > 0, key
        assert by_range[key].equals(table), f"{key}: the range backfill differs from the day's rebuild"
        assert by_stream[key].equals(table), f"{key}: the stream's batches differ from the day's rebuild"
    # Day 1: segments 0-5 (23:00-23:50Z), 20 trades each; day 2: segments 6-11 and the 5 a segment
    # at 01:00Z on; the re-sent frames collapse.
    assert {day: by_day[("raw_trades", day)].num_rows for day in DAYS} == {DAYS[0]: 120, DAYS[1]: 180}
    assert {day: by_day[("minute_bars", day)].num_rows for day in DAYS} == {DAYS[0]: 6, DAYS[1]: 18}
