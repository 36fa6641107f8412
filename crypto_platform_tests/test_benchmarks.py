"""The benchmarks' bookkeeping: a missed target fails ``--check``, and a trade never loaded is never left out."""

from __future__ import annotations

import math

import pytest

from benchmarks.freshness import latencies, window_keys
from benchmarks.summary import Summary, percentile


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
