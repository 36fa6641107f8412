"""REST bars come from cheap per-minute aggregates that equal what rendering every trade gives.

A day's bar used to be built by rendering every trade of the day (about 2.4M at the default
density): two minutes per grouped-daily request, past the server's 10 s limit. Bars now come from
the draws that decide arrivals, prices and sizes, a block of minutes at a time; these tests hold
them equal to the full rendering and run the official client against them at the default density.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from polygon import RESTClient

from crypto_platform.simulator.market import DAY_MS, Agg, Market, Minute, agg_of, merge
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform_tests.simulator.conftest import KEY

DAY = "2025-06-01"
DAY_INDEX = 20240  # 2025-06-01 in days since the epoch


def rendered_minute(market: Market, pair: str, minute: int) -> Minute:
    """The minute's bars from every rendered trade: the on-time trades of its seconds, then the late one."""
    first: Agg | None = None
    late = None
    for second in range(minute * 60, minute * 60 + 60):
        sec = market.second(pair, second)
        first = merge(first, sec.on_time)
        late = late or sec.late
    final = merge(first, agg_of([late])) if late else first
    return Minute(pair, minute, first, final, late is not None)


@pytest.mark.parametrize("trades_per_second", [0.05, 3.0, 400.0])
def test_minute_bars_equal_the_full_rendering(trades_per_second: float) -> None:
    pairs = ("BTC-USD", "SHIB-USD")
    rendering = Market(11, pairs, trades_per_second=trades_per_second, late_probability=0.5)
    cheap = Market(11, pairs, trades_per_second=trades_per_second, late_probability=0.5)  # renders nothing
    first_minute = DAY_INDEX * 1440 + 7  # not block-aligned: crosses a block boundary
    late_seen = 0
    for pair in pairs:
        for minute in range(first_minute, first_minute + (8 if trades_per_second > 100 else 25)):
            bars = cheap.minute(pair, minute)
            assert bars == rendered_minute(rendering, pair, minute), (pair, minute)
            late_seen += bars.late
    assert late_seen > 0, "some minutes must carry a late trade for the correction to be tested"


def test_a_days_bar_equals_the_full_rendering() -> None:
    market = Market(3, ("ETH-USD",), trades_per_second=0.2)
    rendered: Agg | None = None
    for minute in range(DAY_INDEX * 1440, DAY_INDEX * 1440 + 1440):
        rendered = merge(rendered, rendered_minute(market, "ETH-USD", minute).final_bar)
    assert rendered is not None and rendered.trade_count > 10_000
    fresh = Market(3, ("ETH-USD",), trades_per_second=0.2)
    assert fresh.bar("ETH-USD", DAY_INDEX * DAY_MS, (DAY_INDEX + 1) * DAY_MS) == rendered


def test_the_official_client_gets_grouped_daily_at_the_default_density() -> None:
    # The default rate (50 events/s over two pairs): about 1.2M trades per pair and day.
    with Simulator(SimulatorConfig(pairs=("BTC-USD", "ETH-USD"))).running_in_thread() as sim:
        rest = RESTClient(api_key=KEY, base=sim.rest_url)  # the client's default timeouts and retries
        grouped = {g.ticker: g for g in rest.get_grouped_daily_aggs(DAY, locale="global", market_type="crypto")}
        assert set(grouped) == {"X:BTCUSD", "X:ETHUSD"}
        btc = grouped["X:BTCUSD"]
        assert btc.transactions > 1_000_000
        # Cross-checked against other routes: the day's first and last trade, and 24 hourly bars.
        day = json.loads(rest.get_daily_open_close_agg("crypto/BTC/USD", DAY, raw=True).data)
        assert (btc.open, btc.close) == (day["open"], day["close"])
        hours = list(rest.list_aggs("X:BTCUSD", 1, "hour", DAY, DAY, limit=50))
        assert len(hours) == 24
        assert sum(h.transactions for h in hours) == btc.transactions
        assert sum(Decimal(str(h.volume)) for h in hours) == Decimal(str(btc.volume))
        assert max(h.high for h in hours) == btc.high and min(h.low for h in hours) == btc.low


def test_a_minutes_xa_bar_is_sent_again_only_when_it_had_a_late_trade() -> None:
    from collections import Counter

    from crypto_platform.simulator.feed import Renderer, Schedule

    market = Market(5, ("BTC-USD",), trades_per_second=2.0, late_probability=0.5)
    start = DAY_INDEX * DAY_MS
    schedule = Schedule(Renderer(market), start)
    schedule.set_topics({("XA", "*")})
    sent = Counter(json.loads(e.text)["s"] for e in schedule.advance(start + 20 * 60_000 + 5_000))
    minutes = range(DAY_INDEX * 1440, DAY_INDEX * 1440 + 20)
    assert sent == {m * 60_000: 1 + market.minute("BTC-USD", m).late for m in minutes}
    assert 0 < sum(market.minute("BTC-USD", m).late for m in minutes) < 20
