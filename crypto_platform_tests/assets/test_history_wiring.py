"""raw_trades and minute_bars for a past day: filled from the simulator's Flat Files and merged with
what the stream landed by key, the stream's row winning a conflict."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest

from crypto_platform.assets.bars import minute_bars
from crypto_platform.assets.raw import raw_quotes, raw_trades
from crypto_platform.checks.lake import raw_quotes_checks
from crypto_platform.lake.history import read_aggs_csv, read_trades_csv
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.polygon import PolygonRestResource
from crypto_platform.simulator.flat_files import object_key
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream.session_ledger import SessionLedger
from crypto_platform_tests.test_stream_sensor import Landing

DAY = date(2025, 11, 20)
DAY_MS = 1_763_596_800_000  # 2025-11-20T00:00Z
PAIR = "BTC-USD"
VALUES = ["pair", "exchange", "trade_id", "price", "size", "conditions", "event_ms"]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    cfg = SimulatorConfig(rate=2.0, pairs=(PAIR,), start_ms=DAY_MS + 2 * 86_400_000, s3_port=0, history_start=DAY)
    with Simulator(cfg).running_in_thread() as simulator:
        yield simulator


def use_simulator_history(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings a run reads: history on, from this simulator's REST and Flat Files."""
    assert sim.s3 is not None
    for name, value in {
        "CRYPTO_HISTORY_SOURCE": "auto",
        "CRYPTO_SIMULATOR_PORT": str(sim.port),
        "CRYPTO_SIMULATOR_S3_PORT": str(sim.s3.port),
        "CRYPTO_PAIRS": PAIR,
    }.items():
        monkeypatch.setenv(name, value)


def test_a_past_day_is_filled_from_flat_files_and_the_stream_wins_a_conflict(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sim.s3 is not None and sim.flat_files is not None
    use_simulator_history(sim, monkeypatch)
    # The stream saw 10:00-10:30 of the day: the simulator's own XT text, one trade with another price.
    landing = Landing(tmp_path / "landing")
    lo_s = DAY_MS // 1000 + 10 * 3600
    seen = [tr for s in range(lo_s, lo_s + 1800) for tr in sim.market.second(PAIR, s).trades]
    assert len(seen) > 50
    conflict = seen[7]
    texts = [sim.renderer.trade(PAIR, tr) for tr in seen]
    texts[7] = sim.renderer.trade(PAIR, conflict._replace(price=conflict.price + 123))
    ledger = SessionLedger(landing.settings.landing_dir / "sessions.ndjson")
    session = ledger.new_session()
    ledger.record(session, "connect", 1, url="ws://127.0.0.1/crypto")
    ledger.record(session, "first_frame", 2)
    for i in range(0, len(texts), 40):
        landing.segment(("[" + ",".join(texts[i : i + 40]) + "]").encode(), session=session)
    ledger.close()

    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = {
        "stream": landing.resource(),
        "lake": lake,
        "polygon_rest": PolygonRestResource(base_url=sim.rest_url, api_key="simulator-key", pairs=[PAIR]),
    }
    result = dg.materialize(
        [raw_trades, minute_bars],
        partition_key=DAY.isoformat(),
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    meta = result.asset_materializations_for_node("raw_trades")[0].metadata
    assert meta["history_source"].value == "flat_file"

    stored = sim.flat_files.get(object_key("trades_v1", DAY))
    assert stored is not None
    published, _ = read_trades_csv(stored.path, stored.key, DAY, [PAIR])
    table = lake.read_partition("raw_trades", DAY.isoformat())
    assert table is not None
    # Every published trade once; the streamed ones keep their stream row (and lineage).
    assert table.num_rows == published.num_rows
    assert meta["history_rows_added"].value == published.num_rows - len(seen)
    streamed = table.filter(pc.equal(table["source"], "ws"))
    assert streamed.num_rows == len(seen) and streamed["segment"].null_count == 0
    from_file = {tuple(r[k] for k in VALUES[:3]): r for r in published.select(VALUES).to_pylist()}
    for row in streamed.select(VALUES).to_pylist():
        expected = from_file[tuple(row[k] for k in VALUES[:3])]
        if row["trade_id"] == conflict.id:
            assert row["price"] != expected["price"], "on a conflict the stream's row wins"
        else:
            assert row == expected, "the streamed trade equals the Flat File's, value for value"
    rest = table.filter(pc.equal(table["source"], "flat_file"))
    assert rest.num_rows == published.num_rows - len(seen)

    bars = lake.read_partition("minute_bars", DAY.isoformat())
    assert bars is not None and sum(bars["trade_count"].to_pylist()) == published.num_rows
    sources = set(bars["source"].to_pylist())
    assert sources == {"ws", "flat_file"}, sources
    assert not any((landing.settings.data_dir / "history").glob("*/*")), "the day's download is cleared"

    # A rebuild keeps the history rows and does not download the day again.
    gets = sim.s3.counters.requests.get("GetObject", 0)
    again = dg.materialize(
        [raw_trades], partition_key=DAY.isoformat(), resources=resources, instance=dg.DagsterInstance.ephemeral()
    )
    assert again.success and sim.s3.counters.requests.get("GetObject", 0) == gets
    rebuilt = lake.read_partition("raw_trades", DAY.isoformat())
    assert rebuilt is not None and rebuilt.select(VALUES).equals(table.select(VALUES))


def test_a_rebuild_of_an_ended_day_the_stream_covered_whole_reads_no_flat_file(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only days (or parts of days) without stream coverage go to history: the Flat File is not fetched."""
    assert sim.s3 is not None and sim.flat_files is not None
    use_simulator_history(sim, monkeypatch)
    # One session, begun before the day (1,000 s before its first row here) and still open: every
    # trade of the day streamed, no gap.
    landing = Landing(tmp_path / "landing")
    ledger = SessionLedger(landing.settings.landing_dir / "sessions.ndjson")
    session = ledger.new_session()
    ledger.record(session, "connect", 1, url="ws://127.0.0.1/crypto")
    ledger.record(session, "first_frame", 2)
    ledger.close()
    landing.recv = 1_000 * 1_000_000_000
    lo_s = DAY_MS // 1000
    texts = [
        sim.renderer.trade(PAIR, tr) for s in range(lo_s, lo_s + 86_400) for tr in sim.market.second(PAIR, s).trades
    ]
    # Small frames, as Polygon sends them (a session's first frame places its start on the event clock).
    frames = [("[" + ",".join(texts[i : i + 5]) + "]").encode() for i in range(0, len(texts), 5)]
    for i in range(0, len(frames), 1_000):
        landing.segment(*frames[i : i + 1_000], session=session)

    lake = LakeResource(root=str(tmp_path / "lake"))
    requests = dict(sim.s3.counters.requests)
    result = dg.materialize(
        [raw_trades],
        partition_key=DAY.isoformat(),
        resources={"stream": landing.resource(), "lake": lake},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    assert sim.s3.counters.requests == requests, "no Flat File request at all (not even a HEAD)"
    meta = result.asset_materializations_for_node("raw_trades")[0].metadata
    assert "history_days" not in meta
    table = lake.read_partition("raw_trades", DAY.isoformat())
    assert table is not None and set(table["source"].to_pylist()) == {"ws"}
    # The stream had the day whole: exactly the Flat File's trades, value for value.
    stored = sim.flat_files.get(object_key("trades_v1", DAY))
    assert stored is not None
    published, _ = read_trades_csv(stored.path, stored.key, DAY, [PAIR])
    assert table.select(VALUES).equals(published.select(VALUES))


def test_a_day_filled_from_history_counts_all_its_quotes_as_a_gap(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quotes have no history: a day whose trades came from Flat Files shows its quotes as a gap, counted."""
    assert sim.s3 is not None
    use_simulator_history(sim, monkeypatch)
    landing = Landing(tmp_path / "landing")  # the stream never ran
    lake = LakeResource(root=str(tmp_path / "lake"))
    result = dg.materialize(
        [raw_trades, raw_quotes, raw_quotes_checks],
        partition_key=DAY.isoformat(),
        resources={"stream": landing.resource(), "lake": lake},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    assert result.asset_materializations_for_node("raw_trades")[0].metadata["history_source"].value == "flat_file"
    trades = lake.read_partition("raw_trades", DAY.isoformat())
    quotes = lake.read_partition("raw_quotes", DAY.isoformat())
    assert trades is not None and trades.num_rows > 1_000 and quotes is not None and quotes.num_rows == 0
    (coverage,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "stream_coverage"]
    assert not coverage.passed and coverage.severity == dg.AssetCheckSeverity.WARN
    figures = {k: v.value for k, v in coverage.metadata.items()}
    assert figures["minutes_not_streamed"] == figures["violations"] == figures["minutes_of_day"] == 1_440
    assert figures["minutes_streamed"] == 0
    assert "2025-11-20 00:00-2025-11-21 00:00 UTC not streamed (1440 min)" in str(figures["examples"])


@pytest.mark.parametrize(("history", "source"), [("flat_files", "minute_aggs"), ("rest", "rest_minute_bars")])
def test_a_past_days_bars_backfilled_without_its_trades_are_polygons_bars(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, history: str, source: str
) -> None:
    """minute_bars alone for a past day, on a lake without raw_trades: Polygon's minute bars stand in,
    from the day's minute_aggs Flat File (or REST /v2/aggs without Flat Files), with source saying which."""
    assert sim.flat_files is not None
    use_simulator_history(sim, monkeypatch)
    monkeypatch.setenv("CRYPTO_HISTORY_SOURCE", history)
    lake = LakeResource(root=str(tmp_path / "lake"))
    result = dg.materialize(
        [minute_bars],
        partition_key=DAY.isoformat(),
        resources={
            "stream": Landing(tmp_path / "landing").resource(),  # the stream never ran
            "lake": lake,
            "polygon_rest": PolygonRestResource(base_url=sim.rest_url, api_key="simulator-key", pairs=[PAIR]),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    stored = sim.flat_files.get(object_key("minute_aggs_v1", DAY))
    assert stored is not None
    published = read_aggs_csv(stored.path, stored.key, [PAIR])
    bars = lake.read_partition("minute_bars", DAY.isoformat())
    assert bars is not None and bars.num_rows == published.num_rows > 1_000
    assert set(bars["source"].to_pylist()) == {source}
    bars = bars.sort_by([("pair", "ascending"), ("minute_ms", "ascending")])
    for column in ("pair", "minute_ms", "open", "high", "low", "close", "volume"):
        assert bars[column].to_pylist() == published[column].to_pylist(), column
