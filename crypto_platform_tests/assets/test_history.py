"""History readers against the simulator: Flat Files over its S3 endpoint, REST ``/v3/trades`` pages.

Both give the same trades, exactly; bars built from them equal ``minute_aggs``; damaged files are
named by file and line; interrupted downloads resume where they stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from crypto_platform.lake.bars import compute_minute_bars
from crypto_platform.lake.history import (
    FLAT_FILE_SOURCE,
    REST_HISTORY_SOURCE,
    DamagedFileError,
    DayWork,
    flat_file_minute_bars,
    flat_file_trades,
    rest_trades,
)
from crypto_platform.polygon.flat_files import TRADES, FlatFilesAuthError, FlatFilesClient, object_key
from crypto_platform.polygon.rest_client import PolygonRest, PolygonUnavailableError, RestPolicy
from crypto_platform.settings import (
    SIMULATOR_API_KEY,
    SIMULATOR_S3_ACCESS_KEY_ID,
    SIMULATOR_S3_SECRET_ACCESS_KEY,
    Secret,
)
from crypto_platform.simulator.server import Simulator, SimulatorConfig

DAY = date(2025, 11, 20)
PAIRS = ("BTC-USD", "ETH-USD")
# Compared as the lake keeps them; received_ns is the fetch time, source says where a row came from.
VALUES = ["pair", "exchange", "trade_id", "price", "size", "conditions", "event_ms"]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    # Low density: about 0.1 trades/s per pair, the day published (simulated now is two days later).
    cfg = SimulatorConfig(
        rate=2.4, pairs=PAIRS, start_ms=1_763_769_600_000, s3_port=0, history_start=DAY, late_probability=0.3
    )
    with Simulator(cfg).running_in_thread() as simulator:
        yield simulator


def flat_client(sim: Simulator, secret: str = SIMULATOR_S3_SECRET_ACCESS_KEY, **kw: int) -> FlatFilesClient:
    return FlatFilesClient(sim.s3_url, "flatfiles", Secret(SIMULATOR_S3_ACCESS_KEY_ID), Secret(secret), retries=1, **kw)


def rest_client(sim: Simulator) -> PolygonRest:
    return PolygonRest(sim.rest_url, SIMULATOR_API_KEY, RestPolicy(retries=1, backoff_factor=0.01, max_retry_after_s=2))


def test_flat_files_and_rest_give_the_same_trades_and_bars_match_minute_aggs(sim: Simulator, tmp_path: Path) -> None:
    logs: list[str] = []
    flat, figures = flat_file_trades(flat_client(sim), DayWork.open(tmp_path / "flat", DAY), PAIRS, logs.append) or (
        None,
        {},
    )
    assert flat is not None and flat.num_rows > 5000
    assert set(flat["source"].to_pylist()) == {FLAT_FILE_SOURCE}
    assert figures["rows"] == flat.num_rows and any("bytes" in m for m in logs), "progress in bytes is logged"
    assert flat["price"].type == pa.decimal128(38, 18)

    rest, rest_figures = rest_trades(rest_client(sim), DayWork.open(tmp_path / "rest", DAY), PAIRS, page_limit=20_000)
    assert set(rest["source"].to_pylist()) == {REST_HISTORY_SOURCE}
    assert rest_figures["requests"] >= 2
    assert rest.select(VALUES).equals(flat.select(VALUES)), "the same trades, key for key and value for value"
    assert flat.group_by(["pair", "exchange", "trade_id"]).aggregate([]).num_rows == flat.num_rows

    bars = compute_minute_bars(flat)
    aggs = flat_file_minute_bars(flat_client(sim), DayWork.open(tmp_path / "flat", DAY), PAIRS)
    assert aggs is not None and aggs.num_rows == bars.num_rows > 1000
    for column in ("pair", "minute_ms", "high", "low", "volume", "trade_count"):
        assert bars[column].equals(aggs[column]), column
    # Open and close: Polygon's order within one millisecond is its own; the kernel orders ties by
    # exchange and id. Where the first (last) millisecond of a minute has one trade they must agree.
    ties = (
        flat.group_by(["pair", "event_ms"])
        .aggregate([("trade_id", "count")])
        .filter(pc.greater(pc.field("trade_id_count"), 1))
    )
    tied = {(p, m - m % 60_000) for p, m in zip(ties["pair"].to_pylist(), ties["event_ms"].to_pylist(), strict=True)}
    differing = 0
    for b, a in zip(bars.to_pylist(), aggs.to_pylist(), strict=True):
        if (b["open"], b["close"]) != (a["open"], a["close"]):
            differing += 1
            assert (b["pair"], b["minute_ms"]) in tied, f"open/close differ outside a tie: {b} vs {a}"
    assert differing <= len(tied)


def test_wrong_s3_secret_is_refused_without_leaking_it(sim: Simulator, tmp_path: Path) -> None:
    with pytest.raises(FlatFilesAuthError, match="POLYGON_S3_ACCESS_KEY_ID") as info:
        flat_file_trades(flat_client(sim, secret="a-wrong-secret-123"), DayWork.open(tmp_path, DAY), PAIRS)
    assert "a-wrong-secret-123" not in str(info.value) and "a-wrong-secret-123" not in repr(info.value)


@pytest.mark.parametrize("how", ["truncate", "corrupt"])
def test_damaged_gzip_fails_naming_file_and_line(how: str, tmp_path: Path) -> None:
    cfg = SimulatorConfig(rate=0.2, pairs=("BTC-USD",), start_ms=1_763_769_600_000, s3_port=0, history_start=DAY)
    with Simulator(cfg).running_in_thread() as own:
        assert own.flat_files is not None
        key = object_key(TRADES, DAY)
        own.flat_files.damage(key, how)
        work = DayWork.open(tmp_path, DAY)
        with pytest.raises(DamagedFileError, match=rf"{key}: line \d+: ") as info:
            flat_file_trades(flat_client(own), work, ("BTC-USD",))
        line = int(str(info.value).split(": line ")[1].split(":")[0])
        assert line > 10, "the damage is in the middle of the file, not at its start"
        assert ("truncated" in str(info.value)) == (how == "truncate")
        assert not (work.root / "trades_v1.csv.gz").exists(), "the damaged copy is dropped, to be fetched again"


def test_flat_file_download_resumes_from_the_bytes_on_disk(sim: Simulator, tmp_path: Path) -> None:
    assert sim.flat_files is not None and sim.s3 is not None
    key = object_key(TRADES, DAY)
    whole = flat_client(sim).get_bytes(key)
    chunk = max(4096, len(whole) // 6)
    sent_before = sim.s3.counters.bytes_sent
    sim.flat_files.refuse_gets_after(2)
    work = DayWork.open(tmp_path, DAY)
    try:
        with pytest.raises(FlatFilesAuthError):
            flat_file_trades(flat_client(sim, chunk_bytes=chunk), work, PAIRS)
    finally:
        sim.flat_files.refuse_gets_after(None)
    part = work.root / "trades_v1.csv.gz.part"
    assert part.stat().st_size == 2 * chunk, "two chunks were kept"
    logs: list[str] = []
    result = flat_file_trades(flat_client(sim, chunk_bytes=chunk), DayWork.open(tmp_path, DAY), PAIRS, logs.append)
    assert result is not None
    assert any(f"resuming the download at byte {2 * chunk:,}" in m for m in logs)
    assert sim.s3.counters.bytes_sent - sent_before == len(whole), "every byte was fetched once"
    assert (work.root / "trades_v1.csv.gz").read_bytes() == whole


def test_rest_history_resumes_after_the_last_completed_page(sim: Simulator, tmp_path: Path) -> None:
    full, whole = rest_trades(rest_client(sim), DayWork.open(tmp_path / "whole", DAY), ("BTC-USD",), page_limit=1500)
    assert whole["requests"] >= 5

    def fail_after_third_page(message: str) -> None:
        if ": page 3 " in message:
            sim.set_fault("rest_5xx", count=50, status=503)

    work = DayWork.open(tmp_path / "cut", DAY)
    try:
        with pytest.raises(PolygonUnavailableError):
            rest_trades(rest_client(sim), work, ("BTC-USD",), fail_after_third_page, page_limit=1500)
    finally:
        sim.clear_faults()
    logs: list[str] = []
    resumed, figures = rest_trades(
        rest_client(sim), DayWork.open(tmp_path / "cut", DAY), ("BTC-USD",), logs.append, page_limit=1500
    )
    assert figures["pages_resumed"] == 3 and any("resuming /v3/trades after page 3" in m for m in logs)
    assert figures["requests"] == -(-full.num_rows // 3000) - 3 or figures["requests"] >= 1
    assert resumed.select(VALUES).equals(full.select(VALUES))

    # Throttling: 429 with Retry-After is waited out, not a failure.
    sim.set_fault("rest_429", count=2, retry_after=1)
    try:
        patient = PolygonRest(sim.rest_url, SIMULATOR_API_KEY, RestPolicy(retries=3, max_retry_after_s=2))
        started = time.monotonic()
        again, _ = rest_trades(patient, DayWork.open(tmp_path / "throttled", DAY), ("BTC-USD",))
        assert time.monotonic() - started >= 2, "each 429's Retry-After of 1 s was waited out"
    finally:
        sim.clear_faults()
    assert again.select(VALUES).equals(full.select(VALUES))
