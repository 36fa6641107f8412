"""The official polygon-api-client 1.16.3 works against the simulator unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

import orjson
import pytest
from polygon import RESTClient, WebSocketClient
from polygon.exceptions import AuthError
from polygon.websocket.models import CryptoQuote, CryptoTrade, CurrencyAgg, Level2Book

from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform_tests.simulator.conftest import KEY, wait_for


async def collect(client: WebSocketClient, until: Any, timeout: float = 20.0) -> list[Any]:
    got: list[Any] = []

    async def handle(msgs: list[Any] | str | bytes) -> None:
        # Raw mode passes one frame (text), parsed mode a list of models.
        if isinstance(msgs, str | bytes):
            got.append(msgs)
        else:
            got.extend(msgs)

    task = asyncio.create_task(client.connect(handle))
    try:
        await wait_for(lambda: until(got) or task.done(), timeout, "official client messages")
        if task.done():
            # The client gave up (or crashed) before the data arrived: say why instead of passing.
            raise AssertionError(f"the official client stopped after {len(got)} messages: {task.exception()!r}")
    finally:
        await stop(task)
    return got


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel the official client's task, again if needed: its ``wait_for(recv(), 1)`` can swallow a
    cancellation on Python 3.11 (one that lands as the frame arrives), and the client reads on."""
    for _ in range(50):
        task.cancel()
        done, _pending = await asyncio.wait({task}, timeout=0.2)
        if done:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
            return
    raise AssertionError("the official client did not stop after 50 cancellations")


async def test_parsed_mode_decodes_every_crypto_channel() -> None:
    # Start 2 s before a minute boundary at 30x speed so an XA bar arrives within a second.
    start = 1_763_596_800_000 - 2_000
    cfg = SimulatorConfig(rate=100, pairs=("BTC-USD", "ETH-USD"), speed=30.0, start_ms=start)
    wanted = {"XA", "XAS", "XT", "XQ", "XL2"}
    got: list[Any] = []
    kinds: set[str] = set()

    async def handle(msgs: list[Any]) -> None:
        got.extend(msgs)
        kinds.update(m.event_type for m in msgs)

    async with Simulator(cfg) as sim:
        client = WebSocketClient(
            api_key=KEY,
            feed=sim.feed,
            market="crypto",
            secure=False,
            subscriptions=["XT.*", "XQ.*", "XA.*", "XAS.*", "XL2.*"],
        )
        task = asyncio.create_task(client.connect(handle))
        try:
            await wait_for(lambda: wanted <= kinds or task.done(), 20, "every channel")
            assert not task.done(), f"the official client stopped: {task.exception()!r}"
        finally:
            await stop(task)
    assert wanted <= kinds, f"no data on {sorted(wanted - kinds)}"
    models = {type(m).__name__ for m in got}
    assert models == {"CryptoTrade", "CryptoQuote", "CurrencyAgg", "Level2Book"}
    trades = [m for m in got if isinstance(m, CryptoTrade)]
    assert all(isinstance(t.id, str) and t.pair in ("BTC-USD", "ETH-USD") for t in trades)
    assert all(t.price > 0 and t.size > 0 and t.received_timestamp >= t.timestamp for t in trades)
    quotes = [m for m in got if isinstance(m, CryptoQuote)]
    assert all(q.bid_price < q.ask_price for q in quotes)
    bars = [m for m in got if isinstance(m, CurrencyAgg)]
    for bar in bars:
        assert bar.low <= min(bar.open, bar.close) and max(bar.open, bar.close) <= bar.high
        width = 60_000 if bar.event_type == "XA" else 1_000
        assert bar.end_timestamp - bar.start_timestamp == width and bar.start_timestamp % width == 0
    books = [m for m in got if isinstance(m, Level2Book)]
    assert all(b.bid_prices[0][0] < b.ask_prices[0][0] for b in books)


async def test_raw_mode_gets_frames_as_sent_and_counters_agree(simulator: Simulator) -> None:
    client = WebSocketClient(
        api_key=KEY,
        feed=simulator.feed,
        market="crypto",
        secure=False,
        raw=True,
        subscriptions=["XT.BTC-USD", "XQ.ETH-USD"],
    )
    frames = await collect(client, lambda got: len({e["ev"] for f in got for e in orjson.loads(f)}) >= 3)
    events = [e for f in frames for e in orjson.loads(f)]
    acks = [e["message"] for e in events if e["ev"] == "status"]
    assert sorted(acks) == ["subscribed to: XQ.ETH-USD", "subscribed to: XT.BTC-USD"]
    data = Counter((e["ev"], e["pair"]) for e in events if e["ev"] != "status")
    # Exactly the subscribed channels, each of which delivered data.
    assert set(data) == {("XT", "BTC-USD"), ("XQ", "ETH-USD")}
    await wait_for(lambda: simulator.counters()["connections"]["1"]["closed"] is not None, what="close recorded")
    sent = simulator.counters()["connections"]["1"]["events"]
    # Everything received was counted as sent (the client may have been cancelled mid-stream).
    for (ev, pair), n in data.items():
        assert sent[ev][pair] >= n


async def test_wrong_key_raises_auth_error(simulator: Simulator) -> None:
    client = WebSocketClient(
        api_key="wrong-key", feed=simulator.feed, market="crypto", secure=False, subscriptions=["XT.*"]
    )

    async def handle(msgs: list[Any]) -> None:
        pass

    with pytest.raises(AuthError):
        await asyncio.wait_for(client.connect(handle), 10)


def test_rest_client_endpoints_and_pagination() -> None:
    cfg = SimulatorConfig(rate=5, pairs=("BTC-USD", "ETH-USD"))
    with Simulator(cfg).running_in_thread() as sim:
        rest = RESTClient(api_key=KEY, base=sim.rest_url)
        now = sim.now_ms()
        window = (now - 600_000) * 1_000_000, now * 1_000_000
        trades = list(
            rest.list_trades("X:BTC-USD", timestamp_gte=window[0], timestamp_lt=window[1], order="asc", limit=100)
        )
        assert len(trades) > 100, "the window should need several pages"
        stamps = [t.participant_timestamp for t in trades]
        assert stamps == sorted(stamps)
        assert len({(t.exchange, t.id) for t in trades}) == len(trades)
        # Same answer in one page, and in descending order.
        one_page = list(
            rest.list_trades("X:BTCUSD", timestamp_gte=window[0], timestamp_lt=window[1], order="asc", limit=50_000)
        )
        assert [(t.exchange, t.id) for t in one_page] == [(t.exchange, t.id) for t in trades]
        desc = list(
            rest.list_trades("X:BTC-USD", timestamp_gte=window[0], timestamp_lt=window[1], order="desc", limit=37)
        )
        assert [(t.exchange, t.id) for t in desc] == [(t.exchange, t.id) for t in reversed(trades)]

        aggs = list(rest.list_aggs("X:BTCUSD", 1, "minute", now - 3_600_000, now, limit=7))
        assert len(aggs) > 7
        assert [a.timestamp for a in aggs] == sorted(a.timestamp for a in aggs)
        assert all(a.low <= a.open <= a.high and a.transactions > 0 for a in aggs)

        day = "2025-06-01"
        raw = rest.get_daily_open_close_agg("crypto/BTC/USD", day, raw=True)
        import json

        oc = json.loads(raw.data)
        assert oc["symbol"] == "BTC-USD" and oc["isUTC"] is True
        assert oc["openTrades"][0]["t"] <= oc["closingTrades"][0]["t"]

        grouped = rest.get_grouped_daily_aggs(day, locale="global", market_type="crypto")
        by_ticker = {g.ticker: g for g in grouped}
        assert set(by_ticker) == {"X:BTCUSD", "X:ETHUSD"}
        assert by_ticker["X:BTCUSD"].open == oc["open"] and by_ticker["X:BTCUSD"].close == oc["close"]
        daily = list(rest.list_aggs("X:BTCUSD", 1, "day", day, day))
        assert len(daily) == 1 and daily[0].volume == by_ticker["X:BTCUSD"].volume


def test_rest_wrong_key_is_a_bad_response() -> None:
    from polygon.exceptions import BadResponse

    with Simulator(SimulatorConfig(rate=20)).running_in_thread() as sim:
        rest = RESTClient(api_key="wrong", base=sim.rest_url)
        with pytest.raises(BadResponse, match="Unknown API Key"):
            rest.get_daily_open_close_agg("crypto/BTC/USD", "2025-06-01", raw=True)


def test_rest_accepts_the_key_as_an_apikey_query_parameter() -> None:
    import urllib.error
    import urllib.request

    with Simulator(SimulatorConfig(rate=5)).running_in_thread() as sim:
        url = f"{sim.rest_url}/v1/open-close/crypto/BTC/USD/2025-06-01"
        with urllib.request.urlopen(f"{url}?apiKey={KEY}", timeout=10) as resp:
            assert json.loads(resp.read())["symbol"] == "BTC-USD"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{url}?apiKey=wrong", timeout=10)
        assert info.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=10)  # no key at all
        assert info.value.code == 401
