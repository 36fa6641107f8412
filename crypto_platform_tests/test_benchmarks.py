"""The benchmarks' bookkeeping: a missed target fails ``--check``, a trade never loaded is never left out, and
the backfill benchmark's files are what the platform reads."""

from __future__ import annotations

import gzip
import math
from datetime import date
from pathlib import Path

import pyarrow.compute as pc
import pytest

from benchmarks.freshness import latencies, window_keys
from benchmarks.history_backfill import write_minute_aggs_file
from benchmarks.summary import Summary, percentile
from crypto_platform.days import day_bounds_ms
from crypto_platform.lake.history import read_aggs_csv


def test_percentile_is_nearest_rank_and_keeps_misses() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (50.0, 95.0, 100.0)
    # Two misses in 100 trades: the p99 is a miss, the p95 is not.
    with_misses = [*values[:98], math.inf, math.inf]
    assert percentile(with_misses, 95) == 95.0
    assert math.isinf(percentile(with_misses, 99))
    assert math.isnan(percentile([], 50))


def test_check_fails_only_on_a_missed_target(capsys: pytest.CaptureFixture[str]) -> None:
    met = Summary("x")
    met.target("rate >= 1", True, "2")
    assert met.finish(check=True) == 0
    missed = Summary("x")
    missed.target("rate >= 1", True, "2")
    missed.target("part ran", False, "skipped")
    assert missed.finish(check=False) == 0
    assert missed.finish(check=True) == 1
    assert "target part ran: MISSED (skipped)" in capsys.readouterr().out


def test_every_trade_sent_in_the_window_counts_and_a_missing_one_is_a_miss() -> None:
    opened = {"1": ["BTC-USD|1|a"]}
    # Connection 1 sent two more; it dropped and connection 2 sent one.
    closed = {"1": ["BTC-USD|1|a", "BTC-USD|1|b", "ETH-USD|2|c"], "2": ["BTC-USD|1|d|x"]}
    keys = window_keys(opened, closed)
    assert keys == [("BTC-USD", 1, "b"), ("ETH-USD", 2, "c"), ("BTC-USD", 1, "d|x")]
    held = {("BTC-USD", 1, "b"): (7, 1_000, 0), ("ETH-USD", 2, "c"): (8, 2_000, 0)}
    seen = {7: 11.5}  # segment 8 was never seen loaded
    assert latencies(keys, held, seen) == [10.5, math.inf, math.inf]


def test_the_backfill_benchmarks_minute_aggs_file_is_what_the_platform_reads(tmp_path: Path) -> None:
    """Every pair a bar every minute of the day, exact decimals, as the platform's minute_aggs reader sees it."""
    day = date(2025, 11, 20)
    path = tmp_path / "minute_aggs.csv.gz"
    assert write_minute_aggs_file(path, day, pairs=3, seed=1) == 3 * 1440
    bars = read_aggs_csv(path, "minute_aggs")
    lo, hi = day_bounds_ms(day)
    assert bars.num_rows == 3 * 1440
    assert set(bars["pair"].to_pylist()) == {"C0000-USD", "C0001-USD", "C0002-USD"}
    assert bars.group_by(["pair", "minute_ms"]).aggregate([]).num_rows == bars.num_rows  # one bar a pair-minute
    assert pc.min(bars["minute_ms"]).as_py() == lo and pc.max(bars["minute_ms"]).as_py() == hi - 60_000
    text = gzip.decompress(path.read_bytes()).decode().splitlines()
    assert text[0] == "ticker,volume,open,close,high,low,window_start,transactions"
    first = text[1].split(",")
    at = pc.and_(pc.equal(bars["minute_ms"], lo), pc.equal(bars["pair"], first[0].removeprefix("X:")))
    row = bars.filter(at).to_pylist()[0]
    # The decimals are the file's text exactly (no float on the way), and low <= open, close <= high.
    assert [str(row[c]).rstrip("0") for c in ("volume", "open", "close", "high", "low")] == [
        v.rstrip("0") for v in first[1:6]
    ]
    assert all(
        r["low"] <= min(r["open"], r["close"]) <= max(r["open"], r["close"]) <= r["high"] for r in bars.to_pylist()
    )
