"""The simulator's wire protocol and every fault, each observed by a real client over a real socket."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import pytest
from polygon import RESTClient, WebSocketClient
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crypto_platform.polygon.rest_client import PolygonRest, PolygonUnavailableError, RestPolicy
from crypto_platform.simulator.server import ONE_SHOT_FAULTS, Simulator, SimulatorConfig
from crypto_platform_tests.simulator.conftest import HISTORY_START_MS, KEY, RawClient, wait_for


async def test_handshake_acks_each_topic_and_reports_errors(simulator: Simulator) -> None:
    client = await RawClient.open(simulator)
    await wait_for(lambda: simulator.counters()["totals"]["connections"] == 1, what="connection")
    await client.send("subscribe", "XT.BTC-USD")
    await wait_for(lambda: "auth_required" in client.statuses(), what="auth_required")
    await client.login("XT.BTC-USD, XQ.X:ETH-USD,XZ.BTC-USD")
    await wait_for(lambda: len(client.events("status")) >= 6, what="acks")
    messages = [e["message"] for e in client.events("status")]
    assert messages[0] == "Connected Successfully"
    assert "subscribed to: XT.BTC-USD" in messages and "subscribed to: XQ.ETH-USD" in messages
    assert any(e["status"] == "error" and "XZ.BTC-USD" in e["message"] for e in client.events("status"))
    await wait_for(lambda: client.events("XT") and client.events("XQ"), what="data")
    assert {(e["ev"], e["pair"]) for e in client.events() if e["ev"] != "status"} <= {
        ("XT", "BTC-USD"),
        ("XQ", "ETH-USD"),
    }
    await client.close()


async def test_unsubscribe_stops_delivery(simulator: Simulator) -> None:
    client = await RawClient.open(simulator)
    await client.login("XT.*")
    await wait_for(lambda: len(client.events("XT")) >= 5, what="trades")
    await client.send("unsubscribe", "XT.*")
    await wait_for(lambda: "unsubscribed to: XT.*" in [e["message"] for e in client.events("status")], what="ack")
    after_ack = len(client.events("XT"))
    await client.send("subscribe", "XQ.BTC-USD")
    await wait_for(lambda: len(client.events("XQ")) >= 5, what="quotes after resubscribe")
    assert len(client.events("XT")) == after_ack
    await client.close()


async def test_counters_match_what_a_client_received(simulator: Simulator) -> None:
    client = await RawClient.open(simulator)
    await client.login("XT.*,XQ.*,XAS.*")
    await wait_for(lambda: len(client.events()) >= 200, what="events")
    await client.close()
    await wait_for(lambda: simulator.counters()["connections"]["1"]["closed"] is not None, what="closed")
    conn = simulator.counters()["connections"]["1"]
    received: dict[str, dict[str, int]] = {}
    for e in client.events():
        if e["ev"] != "status":
            received.setdefault(e["ev"], {}).setdefault(e["pair"], 0)
            received[e["ev"]][e["pair"]] += 1
    assert received == conn["events"]
    keys = [f"{e['pair']}|{e['x']}|{e['i']}" for e in client.events("XT")]
    assert keys == conn["trade_keys"] and len(set(keys)) == len(keys)


async def test_two_clients_at_once() -> None:
    async with Simulator(SimulatorConfig(rate=300, max_connections=2)) as sim:
        a, b = await RawClient.open(sim), await RawClient.open(sim)
        await a.login("XT.*")
        await b.login("XQ.*")
        await wait_for(lambda: a.events("XT") and b.events("XQ"), what="both clients fed")
        assert not a.events("XQ") and not b.events("XT")
        await a.close()
        await b.close()


@pytest.mark.parametrize("evict_older", [False, True])
async def test_max_connections_completes_handshake_then_closes_1008(evict_older: bool) -> None:
    async with Simulator(SimulatorConfig(rate=300, evict_older=evict_older)) as sim:
        first = await RawClient.open(sim)
        await first.login("XT.*")
        await wait_for(lambda: first.events("XT"), what="first fed")
        second = await RawClient.open(sim)
        await second.login("XT.*")
        loser, winner = (first, second) if evict_older else (second, first)
        assert await loser.closed() == 1008
        assert "max_connections" in loser.statuses()
        if not evict_older:
            assert "subscribed to: XT.*" in [e["message"] for e in loser.events("status")]
        before = len(winner.events("XT"))
        await wait_for(lambda: len(winner.events("XT")) > before, what="winner still fed")
        await winner.close()


async def test_auth_timeout() -> None:
    async with Simulator(SimulatorConfig(rate=10, auth_timeout_s=0.2)) as sim:
        client = await RawClient.open(sim)
        assert await client.closed() == 1008
        assert client.statuses() == ["connected", "auth_timeout"]


async def test_withheld_greeting() -> None:
    config = SimulatorConfig(rate=10, faults=(("withhold_greeting", {}),))
    async with Simulator(config) as sim, connect(sim.ws_url) as ws:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)


@pytest.mark.parametrize(
    ("fault", "params", "code", "status"),
    [
        ("drop", {}, 1006, None),
        ("close", {"code": 1011}, 1011, None),
        ("close", {"code": 1000}, 1000, None),
        ("close", {"code": 1001}, 1001, None),
        ("slow_consumer", {}, 1008, "slow_consumer"),
        ("force_disconnect", {}, 1008, "force_disconnect"),
    ],
)
async def test_disconnect_faults(
    simulator: Simulator, fault: str, params: dict[str, Any], code: int, status: str | None
) -> None:
    client = await RawClient.open(simulator)
    await client.login("XT.*")
    await wait_for(lambda: client.events("XT"), what="data")
    simulator.set_fault(fault, **params)
    assert await client.closed() == code
    if status:
        assert client.statuses()[-1] == status
    await wait_for(lambda: simulator.counters()["connections"]["1"]["closed"] == code, what="server-side record")


async def test_official_client_reconnects_after_drop_and_stops_on_1001(simulator: Simulator) -> None:
    client = WebSocketClient(
        api_key=KEY, feed=simulator.feed, market="crypto", secure=False, raw=True, subscriptions=["XT.*"]
    )

    async def handle(msg: Any) -> None:
        pass

    task = asyncio.create_task(client.connect(handle))
    await wait_for(lambda: simulator.counters()["totals"]["sent"] > 0, what="first connection fed")
    simulator.set_fault("drop")
    await wait_for(lambda: simulator.counters()["totals"]["connections"] == 2, what="reconnect after 1006")
    await wait_for(lambda: simulator.counters()["connections"]["2"]["sent"] > 0, what="second connection fed")
    simulator.set_fault("close", code=1001)
    # The official client's known defect: a 1001 close ends connect() without an error.
    assert await asyncio.wait_for(task, 10) is None
    assert simulator.counters()["totals"]["connections"] == 2


@pytest.mark.parametrize("kind", ["not_array", "no_ev", "invalid_json", "truncated"])
async def test_malformed_frames(simulator: Simulator, kind: str) -> None:
    raw = await RawClient.open(simulator)
    await raw.login("XT.*")
    await wait_for(lambda: raw.events("XT"), what="data")
    simulator.set_fault("malformed", kind=kind)
    await wait_for(lambda: simulator.counters()["totals"]["malformed"] == 1, what="malformed sent")
    before = len(raw.events("XT"))
    await wait_for(lambda: len(raw.events("XT")) > before, what="stream continues after the malformed frame")
    bad = [
        t
        for t, f in zip(raw.texts, raw.frames, strict=True)
        if not isinstance(f, list) or any(not isinstance(e, dict) or "ev" not in e for e in f)
    ]
    assert len(bad) == 1
    await raw.close()


async def test_malformed_frame_kills_the_official_parsed_client(simulator: Simulator) -> None:
    client = WebSocketClient(api_key=KEY, feed=simulator.feed, market="crypto", secure=False, subscriptions=["XT.*"])
    got: list[Any] = []

    async def handle(msgs: list[Any]) -> None:
        got.extend(msgs)

    task = asyncio.create_task(client.connect(handle))
    await wait_for(lambda: got, what="parsed data")
    simulator.set_fault("malformed", kind="no_ev")
    with pytest.raises(KeyError):
        await asyncio.wait_for(task, 10)


async def test_oversize_frame_closes_default_clients_but_not_unlimited_ones(simulator: Simulator) -> None:
    unlimited = await RawClient.open(simulator)
    await unlimited.login("XT.*")
    limited = await connect(simulator.ws_url)  # websockets' default max_size is 1 MiB, like the official client
    await limited.recv()
    await limited.send(json.dumps({"action": "auth", "params": KEY}))
    await limited.recv()
    await wait_for(lambda: simulator.counters()["totals"]["connections"] == 2, what="two connections")
    simulator.set_fault("oversize")
    await wait_for(lambda: any(len(t) > 1_048_576 for t in unlimited.texts), what="oversize frame delivered")
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(limited.recv(), 10)
    assert info.value.rcvd is None and info.value.sent is not None and info.value.sent.code == 1009
    await unlimited.close()


async def test_delayed_pongs_trip_a_client_keepalive(simulator: Simulator) -> None:
    client = await RawClient.open(simulator, ping_interval=0.1, ping_timeout=0.3)
    await client.login("XT.*")
    await wait_for(lambda: client.events("XT"), what="data")
    simulator.set_fault("delay_pongs", seconds=1)
    await client.closed()
    # The client gave up on its own keepalive: it sent 1011 "keepalive ping timeout".
    sent = client.ws.close_exc.sent
    assert sent is not None and sent.code == 1011 and "keepalive" in sent.reason


async def test_server_that_drops_every_connection_after_subscribe() -> None:
    async with Simulator(SimulatorConfig(rate=100, faults=(("drop_after_subscribe", {}),))) as sim:
        client = await RawClient.open(sim)
        await client.login("XT.*")
        assert await client.closed() == 1006


def test_control_endpoint_reads_counters_and_fires_faults() -> None:
    with Simulator(SimulatorConfig(rate=100)).running_in_thread() as sim:
        with urllib.request.urlopen(f"{sim.rest_url}/_sim/counters", timeout=5) as resp:
            assert json.load(resp)["totals"]["connections"] == 0
        with urllib.request.urlopen(f"{sim.rest_url}/_sim/fault?name=rest_429&count=1&retry_after=0", timeout=5):
            pass
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{sim.rest_url}/_sim/fault?name=bogus", timeout=5)
        assert info.value.code == 400


def test_rest_throttling_errors_and_latency() -> None:
    with Simulator(SimulatorConfig(rate=5)).running_in_thread() as sim:
        rest = RESTClient(api_key=KEY, base=sim.rest_url)
        sim.set_fault("rest_429", count=2, retry_after=1)
        assert json.loads(rest.get_daily_open_close_agg("crypto/BTC/USD", "2025-06-01", raw=True).data)["open"]
        sim.set_fault("rest_5xx", count=2, status=503)
        assert json.loads(rest.get_daily_open_close_agg("crypto/BTC/USD", "2025-06-01", raw=True).data)["close"]
        sim.set_fault("rest_latency", seconds=2)
        policy = RestPolicy(read_timeout_s=0.3, retries=0)
        with pytest.raises(PolygonUnavailableError):
            PolygonRest(sim.rest_url, KEY, policy).daily_open_close("BTC-USD", __import__("datetime").date(2025, 6, 1))


async def full_speed_events(
    seed: int, n: int, topics: str = "XT.*,XQ.*,XA.*,XAS.*", prerender: bool = False
) -> list[dict[str, Any]]:
    cfg = SimulatorConfig(
        rate=None,
        seed=seed,
        start_ms=HISTORY_START_MS,
        total_events=n,
        events_per_frame=10,
        pairs=("BTC-USD", "ETH-USD"),
        prerender=prerender,
    )
    async with Simulator(cfg) as sim:
        client = await RawClient.open(sim)
        await client.login(topics)
        # A generous deadline: 60k events at full speed take seconds, more on a loaded machine.
        await wait_for(lambda: len([e for e in client.events() if e["ev"] != "status"]) >= n, 60, "n events")
        await client.close()
    return [e for e in client.events() if e["ev"] != "status"]


async def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a = await full_speed_events(11, 3000)
    b = await full_speed_events(11, 3000)
    c = await full_speed_events(12, 3000)
    assert a == b
    assert a != c


async def test_prerendered_replay_sends_the_same_stream_as_live_generation() -> None:
    live = await full_speed_events(9, 5000)
    replay = await full_speed_events(9, 5000, prerender=True)
    assert replay == live and len(replay) == 5000


async def test_trade_ids_are_unique_per_pair_and_exchange_even_in_bursts() -> None:
    events = await full_speed_events(3, 60_000, topics="XT.*")
    keys = [(e["pair"], e["x"], e["i"]) for e in events]
    per_second = max(sum(1 for e in events if e["t"] // 1000 == s) for s in {e["t"] // 1000 for e in events})
    assert per_second > 1000  # a burst beyond 1000 trades in one second is covered
    assert len(set(keys)) == len(keys)


async def test_rest_history_equals_what_the_websocket_sent() -> None:
    # 3 minutes at full speed over BTC-USD, then the same window from REST.
    lo, hi = HISTORY_START_MS, HISTORY_START_MS + 180_000
    cfg = SimulatorConfig(rate=None, seed=5, start_ms=lo, pairs=("BTC-USD", "ETH-USD"))
    async with Simulator(cfg) as sim:
        client = await RawClient.open(sim)
        await client.login("XT.BTC-USD,XA.BTC-USD")
        # Past the window plus the late-correction delay, every bar revision of the window is in.
        await wait_for(
            lambda: (
                client.frames and isinstance(client.frames[-1], list) and client.frames[-1][-1].get("t", 0) > hi + 5_000
            ),
            timeout=30,
            what="3 minutes sent",
        )
        await client.close()
    events = client.events()
    ws_trades = {
        (e["x"], e["i"]): (Decimal(str(e["p"])), Decimal(str(e["s"])))
        for e in events
        if e["ev"] == "XT" and lo <= e["t"] < hi
    }
    ws_bars = {}
    for e in events:
        if e["ev"] == "XA" and lo <= e["s"] < hi:
            ws_bars[e["s"]] = e  # the last revision wins
    assert len(ws_bars) == 3
    with Simulator(SimulatorConfig(rate=None, seed=5, pairs=("BTC-USD", "ETH-USD"))).running_in_thread() as sim:
        rest = PolygonRest(sim.rest_url, KEY)
        rest_trades = {(t.exchange, t.id): (t.price, t.size) for t in rest.trades("BTC-USD", lo * 10**6, hi * 10**6)}
        rest_bars = {a.timestamp: a for a in rest.minute_aggs("BTC-USD", lo, hi)}
    assert rest_trades == ws_trades
    assert set(rest_bars) == set(ws_bars)
    for start, bar in ws_bars.items():
        agg = rest_bars[start]
        assert (agg.open, agg.high, agg.low, agg.close, agg.volume, agg.vwap) == tuple(
            Decimal(str(bar[k])) for k in ("o", "h", "l", "c", "v", "vw")
        )


async def test_a_planted_trade_reaches_subscribers_exactly(simulator: Simulator) -> None:
    client = await RawClient.open(simulator)
    await client.login("XT.BTC-USD")
    await wait_for(lambda: client.events("XT"), what="trades")
    simulator.plant_trade("ETH-USD", "3000", "1")  # not subscribed: not sent (actions run in order)
    url = f"{simulator.rest_url}/_sim/fault?name=trade&pair=BTC-USD&price=97000.50&size=25"
    await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).close())
    await wait_for(lambda: [e for e in client.events("XT") if e["i"].startswith("planted-")], what="the planted trade")
    (planted,) = [t for t in client.texts if "planted-" in t]
    assert '"pair":"BTC-USD","p":97000.50,' in planted and '"s":25,' in planted and '"i":"planted-1"' in planted
    keys = [k for c in simulator.counters()["connections"].values() for k in c["trade_keys"]]
    assert "BTC-USD|1|planted-1" in keys and not any("ETH-USD|1|planted" in k for k in keys)
    with pytest.raises(ValueError, match="price must be a positive number"):
        simulator.plant_trade("BTC-USD", "-5", "1")
    await client.close()


@pytest.mark.parametrize("fault", sorted(ONE_SHOT_FAULTS))
def test_a_one_shot_fault_at_start_is_refused_with_the_way_to_fire_it(
    fault: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from crypto_platform.cli import main

    with pytest.raises(SystemExit) as info:
        main(["simulate", "--fault", fault])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"fault {fault!r} fires once" in err and f"/_sim/fault?name={fault}" in err
    with pytest.raises(ValueError, match="cannot be set at start"):
        Simulator(SimulatorConfig(rate=10, faults=((fault, {}),)))


def test_a_switch_given_at_start_is_on_from_the_first_request() -> None:
    from crypto_platform.simulator.cli import _fault

    fault = _fault("rest_429:count=1,retry_after=0")
    with Simulator(SimulatorConfig(rate=5, faults=(fault,))).running_in_thread() as sim:
        url = f"{sim.rest_url}/v1/open-close/crypto/BTC/USD/2025-06-01?apiKey={KEY}"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=10)
        assert info.value.code == 429
        with urllib.request.urlopen(url, timeout=10) as resp:  # count=1: only the first one
            assert json.load(resp)["symbol"] == "BTC-USD"
