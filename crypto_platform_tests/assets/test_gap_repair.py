"""Gap repair end to end: the real simulator, the real ingester, a dropped connection, and Dagster.

Two simulators with the same seed, clock and speed play the same market. The ingester on one of
them runs uninterrupted ("whole"); the connection of the other ("cut") is dropped and stays down
for two to four simulated minutes. minute_bars for the cut capture must repair the lost minutes
from REST so that they equal what the uninterrupted stream gave, computed independently from the
whole capture: Polygon's own XA bars as streamed, and bars built from the streamed trades.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from crypto_platform.assets.bars import minute_bars
from crypto_platform.assets.raw import raw_aggregates, raw_trades
from crypto_platform.lake.bars import compute_minute_bars
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.polygon import PolygonRestResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.settings import Settings
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream.manifest import iter_manifest
from crypto_platform.stream.session_ledger import gaps, sessions
from crypto_platform.stream_batches import SEGMENTS_TAG
from crypto_platform_tests.simulator.conftest import HISTORY_START_MS, KEY, wait_for
from crypto_platform_tests.stream.conftest import Running, settings_for

PAIRS = ("BTC-USD", "ETH-USD")
DAY = "2025-11-20"
START_MS = HISTORY_START_MS + 10 * 3_600_000  # 10:00 UTC
SPEED = 60.0  # one simulated minute per second
RATE = 20.0  # events per simulated second: ~4.5 trades/s per pair, ~270 per minute


def sim_config(**kw: Any) -> SimulatorConfig:
    return SimulatorConfig(**{"rate": RATE, "seed": 11, "pairs": PAIRS, "speed": SPEED, "start_ms": START_MS, **kw})


@pytest.fixture(autouse=True)
def revision_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # The simulator re-sends a corrected XA bar 2 s after the minute; Polygon's window is longer.
    monkeypatch.setenv("CRYPTO_BAR_REVISION_WINDOW_S", "5")


@dataclass
class Capture:
    whole: Settings
    cut: Settings
    end_ms: int  # simulated time when both captures had stopped


async def _capture(tmp: Path) -> Capture:
    async with Simulator(sim_config()) as whole_sim, Simulator(sim_config()) as cut_sim:
        env = {"CRYPTO_PAIRS": ",".join(PAIRS), "CRYPTO_SEGMENT_MAX_AGE_S": "0.5"}
        whole = settings_for(tmp / "whole", whole_sim, **env)
        # The reconnect waits 2-4 s (jitter): 120-240 simulated seconds are lost.
        cut = settings_for(tmp / "cut", cut_sim, **env, CRYPTO_RECONNECT_INITIAL_S="4", CRYPTO_RECONNECT_MAX_S="4")
        runs = [Running(whole), Running(cut)]
        await wait_for(lambda: cut_sim.now_ms() >= START_MS + 150_000, 30, "2.5 simulated minutes")
        cut_sim.set_fault("drop")
        await wait_for(
            lambda: cut_sim.counters()["connections"].get("2", {}).get("sent", 0) > 0, 30, "the cut stream resumed"
        )
        resumed = cut_sim.now_ms()
        await wait_for(lambda: cut_sim.now_ms() >= resumed + 150_000, 30, "2.5 more simulated minutes")
        for run in runs:
            await run.finish()
        return Capture(whole, cut, max(whole_sim.now_ms(), cut_sim.now_ms()))


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    return asyncio.run(_capture(tmp_path_factory.mktemp("gap_capture")))


@pytest.fixture(scope="module")
def rest_url(capture: Capture) -> Iterator[str]:
    """Polygon REST for the same market, its clock stopped at the end of the captures."""
    with Simulator(sim_config(speed=0.0, start_ms=capture.end_ms)).running_in_thread() as sim:
        yield sim.rest_url


def resources(settings: Settings, lake: Path, rest_url: str) -> dict[str, Any]:
    return {
        "stream": StreamResource(
            project_dir=str(settings.project_dir),
            state_dir=str(settings.state_dir),
            data_dir=str(settings.data_dir),
            autostart=False,
        ),
        "lake": LakeResource(root=str(lake)),
        "polygon_rest": PolygonRestResource(base_url=rest_url, api_key=KEY, pairs=list(PAIRS)),
    }


def materialize(
    assets: list[Any], res: dict[str, Any], tags: dict[str, str] | None = None
) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        assets, partition_key=DAY, resources=res, tags=tags or {}, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    return result


def read(lake: Path, asset: str) -> pa.Table:
    return LakeResource(root=str(lake)).read_partition(asset, DAY)


def minute_counts(trades: pa.Table) -> dict[tuple[str, int], int]:
    keys = zip(trades["pair"].to_pylist(), (t - t % 60_000 for t in trades["event_ms"].to_pylist()), strict=True)
    out: dict[tuple[str, int], int] = {}
    for k in keys:
        out[k] = out.get(k, 0) + 1
    return out


@pytest.fixture(scope="module")
def whole_lake(capture: Capture, rest_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("whole_lake")
    materialize([raw_trades, raw_aggregates], resources(capture.whole, lake, rest_url))
    return lake


@dataclass
class Lost:
    keys: set[tuple[str, int]]  # (pair, minute) where the cut stream has fewer trades than the whole one
    lo: int  # the compared minutes [lo, hi): complete in both captures
    hi: int


@pytest.fixture(scope="module")
def lost(capture: Capture, whole_lake: Path, rest_url: str, tmp_path_factory: pytest.TempPathFactory) -> Lost:
    """What the drop cost, with proof that it is in the ledger and took at least one entire minute."""
    ledger = sessions(capture.cut.landing_dir / "sessions.ndjson")
    assert len(ledger) == 2 and len(gaps(ledger)) == 2  # the drop, and the stop at the end
    lake = tmp_path_factory.mktemp("cut_raw_only")
    materialize([raw_trades], resources(capture.cut, lake, rest_url))
    whole, cut = minute_counts(read(whole_lake, "raw_trades")), minute_counts(read(lake, "raw_trades"))
    # Each capture's first and last minute are partial: compare the minutes strictly inside both.
    lo = max(min(m for _, m in whole), min(m for _, m in cut)) + 60_000
    hi = min(max(m for _, m in whole), max(m for _, m in cut))
    keys = {k for k, n in whole.items() if cut.get(k, 0) < n and lo <= k[1] < hi}
    assert any(cut.get(k, 0) == 0 for k in keys), "no entire minute was lost"
    return Lost(keys, lo, hi)


def xa_current(lake: Path) -> dict[tuple[str, int], dict[str, Any]]:
    aggs = read(lake, "raw_aggregates")
    xa = aggs.filter(pc.and_(pc.equal(aggs["channel"], "XA"), aggs["is_current"]))
    return {(r["pair"], r["start_ms"]): r for r in xa.to_pylist()}


def bars_by_key(table: pa.Table) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["pair"], r["minute_ms"]): r for r in table.to_pylist()}


def test_repaired_bars_equal_what_the_uninterrupted_stream_gave(
    capture: Capture, whole_lake: Path, lost: Lost, rest_url: str, tmp_path: Path
) -> None:
    materialize([raw_trades, raw_aggregates, minute_bars], resources(capture.cut, tmp_path, rest_url))
    bars = bars_by_key(read(tmp_path, "minute_bars"))
    streamed_xa = xa_current(whole_lake)
    streamed_built = bars_by_key(compute_minute_bars(read(whole_lake, "raw_trades")))
    for key in sorted(lost.keys):
        bar, xa, built = bars[key], streamed_xa[key], streamed_built[key]
        assert (bar["source"], bar["repaired"], bar["in_gap"]) == ("rest_repair", True, True), key
        # Polygon's bar as the stream sent it (its last revision) ...
        assert [bar[c] for c in ("open", "high", "low", "close", "volume", "vwap")] == [
            xa[c] for c in ("open", "high", "low", "close", "volume", "vwap")
        ], key
        # ... and the same trades as the stream delivered.
        assert [bar[c] for c in ("high", "low", "volume", "trade_count")] == [
            built[c] for c in ("high", "low", "volume", "trade_count")
        ], key
    # Minutes the cut stream saw completely are built from its own trades and match the whole capture.
    seen = [k for k, b in bars.items() if not b["in_gap"] and lost.lo <= k[1] < lost.hi]
    assert seen, "no minute outside the gap"
    for key in seen:
        assert bars[key]["source"] == "ws" and not bars[key]["repaired"]
        assert {c: bars[key][c] for c in streamed_built[key]} == streamed_built[key], key


def test_trade_repair_restores_the_lost_trades_and_the_exact_bars(
    capture: Capture, whole_lake: Path, lost: Lost, rest_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRYPTO_REPAIR_TRADES", "true")
    materialize([raw_trades, raw_aggregates, minute_bars], resources(capture.cut, tmp_path, rest_url))
    columns = ["pair", "exchange", "trade_id", "price", "size", "conditions", "event_ms"]

    def trades_of_lost_minutes(table: pa.Table) -> list[tuple]:
        rows = [tuple(r[c] for c in columns) for r in table.select(columns).to_pylist()]
        return sorted(r for r in rows if (r[0], r[6] - r[6] % 60_000) in lost.keys)

    repaired_trades = read(tmp_path, "raw_trades")
    assert trades_of_lost_minutes(repaired_trades) == trades_of_lost_minutes(read(whole_lake, "raw_trades"))
    assert "rest_repair" in repaired_trades["source"].to_pylist()
    bars = bars_by_key(read(tmp_path, "minute_bars"))
    streamed_built = bars_by_key(compute_minute_bars(read(whole_lake, "raw_trades")))
    for key in sorted(lost.keys):
        assert bars[key]["source"] == "rest_repair" and bars[key]["repaired"], key
        assert {c: bars[key][c] for c in streamed_built[key]} == streamed_built[key], key


def test_incremental_runs_equal_a_rebuild_with_gap_repair(
    capture: Capture, rest_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRYPTO_REPAIR_TRADES", "true")
    assets = [raw_trades, raw_aggregates, minute_bars]
    seqs = [int(e["seq"]) for e in iter_manifest(capture.cut.landing_dir)]
    batches = [seqs[i : i + 4] for i in range(0, len(seqs), 4)]
    assert len(batches) >= 3
    inc, full = tmp_path / "inc", tmp_path / "full"
    for batch in batches:
        materialize(assets, resources(capture.cut, inc, rest_url), {SEGMENTS_TAG: f"{batch[0]}-{batch[-1]}"})
    materialize(assets, resources(capture.cut, full, rest_url))
    assert read(inc, "minute_bars").equals(read(full, "minute_bars"))
    # REST trades carry their fetch time as receive time, which differs between the two lakes.
    same = [c for c in read(full, "raw_trades").column_names if c != "received_ns"]
    assert read(inc, "raw_trades").select(same).equals(read(full, "raw_trades").select(same))
