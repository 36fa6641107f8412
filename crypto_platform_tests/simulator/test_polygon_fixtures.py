"""Both ends checked against Polygon's own words (``crypto_platform_tests/fixtures/polygon``), not each other.

Client side: the ingester completes its handshake with a server that speaks only the literal fixture
frames, lands Polygon's example events unchanged, and the lake decodes them exactly. Server side:
the simulator's status texts, acknowledgements, event keys and types, REST bodies and refused ticker
forms match the fixtures. The simulator has its own copy of the server protocol; it must not import
the ingester's.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from crypto_platform.assets.raw import raw_aggregates, raw_book, raw_quotes, raw_trades
from crypto_platform.polygon import protocol
from crypto_platform.resources.lake import LakeResource
from crypto_platform.simulator import wire
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream.landing_log import validate
from crypto_platform_tests.conftest import local_settings
from crypto_platform_tests.simulator.conftest import HISTORY_START_MS, KEY, RawClient, wait_for
from crypto_platform_tests.stream.conftest import FAST, Running, landed_events

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "polygon"
WS = {f["name"]: f for f in json.loads((FIXTURES / "websocket.json").read_text())["frames"]}
REST = {b["name"]: b for b in json.loads((FIXTURES / "rest.json").read_text())["bodies"]}
DATA = ["XT", "XT_live", "XQ", "XL2", "XA", "XAS"]


def event(name: str) -> dict[str, Any]:
    (only,) = json.loads(WS[name]["frame"])
    return only


def shape(value: Any) -> Any:
    """A JSON value's type, recursively: numbers are one type (Polygon mixes 73 and 0.65 in one field)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return ["list", shape(value[0])] if value else ["list"]
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return "null"


# -- the client side: the ingester and the lake against Polygon's frames ----------------------------


class FixtureServer:
    """A WebSocket server that says only what the fixtures say, as the maintainers' mock server does."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.sent_data = asyncio.Event()

    async def handle(self, ws: ServerConnection) -> None:
        await ws.send(WS["greeting"]["frame"])
        async for message in ws:
            action = json.loads(message)
            self.received.append(action)
            if action["action"] == "auth":
                await ws.send(WS["auth_success"]["frame"])
            elif action["action"] == "subscribe":
                for topic in action["params"].split(","):  # one acknowledgement per topic, as sent
                    await ws.send(WS["subscribed"]["frame"].replace(WS["subscribed"]["topic"], topic))
                for name in DATA:
                    await ws.send(WS[name]["frame"])
                self.sent_data.set()


@pytest.fixture
async def fixture_server() -> AsyncIterator[tuple[FixtureServer, int]]:
    server = FixtureServer()
    async with serve(server.handle, "127.0.0.1", 0, compression=None) as ws_server:
        yield server, ws_server.sockets[0].getsockname()[1]


async def test_the_ingester_speaks_polygons_handshake_and_lands_its_frames_exactly(
    tmp_path: Path, fixture_server: tuple[FixtureServer, int]
) -> None:
    server, port = fixture_server
    settings = local_settings(
        tmp_path, CRYPTO_SIMULATOR_PORT=str(port), CRYPTO_PAIRS="BTC-USD", CRYPTO_CHANNELS="XT,XQ,XA", **FAST
    )
    running = Running(settings)
    try:
        await asyncio.wait_for(server.sent_data.wait(), 20)
        await wait_for(lambda: len(landed_events(settings)) == len(DATA), 20, "the fixture events landed")
    finally:
        await running.finish()
    auth, subscribe = server.received[:2]
    assert auth == {"action": "auth", "params": settings.api_key.reveal()}
    assert subscribe["action"] == "subscribe"
    assert set(subscribe["params"].split(",")) == {"XT.BTC-USD", "XQ.BTC-USD", "XA.BTC-USD"}
    (session,) = running.sessions()
    assert session.authenticated
    # Polygon's events, landed as they came (the ingester keeps the wire text).
    assert landed_events(settings, include_active=False) == [event(n) for n in DATA]


DAY = "2025-11-24"
DAY_MS = 86_400_000


def moved_to(day_start_ms: int, frame: str) -> str:
    """The frame with every ms time moved by whole days to ``day_start_ms``'s day; all else literal.

    The lake's partitions start at CRYPTO_START_DATE, after Polygon's examples were written.
    """
    first = int(re.search(r'"[tse]":(\d{13})', frame).group(1))  # type: ignore[union-attr]
    shift = (day_start_ms - first // DAY_MS * DAY_MS) // DAY_MS * DAY_MS
    return re.sub(r'("[trse]":)(\d{13})', lambda m: f"{m.group(1)}{int(m.group(2)) + shift}", frame)


def test_the_lake_decodes_polygons_events_exactly(tmp_path: Path) -> None:
    from crypto_platform_tests.test_stream_sensor import Landing

    landing = Landing(tmp_path)
    day_start = 1_763_942_400_000  # 2025-11-24T00:00Z
    landing.segment(*(moved_to(day_start, WS[name]["frame"]).encode() for name in DATA))
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = {"stream": landing.resource(), "lake": lake}
    assets = [raw_trades, raw_quotes, raw_aggregates, raw_book]
    assert dg.materialize(assets, partition_key=DAY, resources=resources).success
    trades = {r["trade_id"]: r for r in lake.read_partition("raw_trades", DAY).to_pylist()}
    # The spec writes the id as a number, live frames as a string: both land as the same text.
    assert set(trades) == {"14272084", "1b254a48-7258-4465-8215-2610ccf9ab21"}
    assert (trades["14272084"]["price"], trades["14272084"]["size"]) == (Decimal("33021.9"), Decimal("0.01616617"))
    live = trades["1b254a48-7258-4465-8215-2610ccf9ab21"]
    assert (live["price"], live["size"], live["exchange"]) == (Decimal("43575.6"), Decimal("0.00004522"), 23)
    (quote,) = lake.read_partition("raw_quotes", DAY).to_pylist()
    assert (quote["bid_price"], quote["ask_size"]) == (Decimal("33052.79"), Decimal("0.601"))
    bars = {r["channel"]: r for r in lake.read_partition("raw_aggregates", DAY).to_pylist()}
    assert set(bars) == {"XA", "XAS"}
    assert (bars["XA"]["volume"], bars["XA"]["vwap"], bars["XA"]["low"]) == (
        Decimal("951.6112"),
        Decimal("0.7756"),
        Decimal("0.771"),
    )
    (book,) = lake.read_partition("raw_book", DAY).to_pylist()
    assert book["asks"][0] == {"price": Decimal("33718.23"), "size": Decimal("3.5527483")}
    assert book["bids"][1] == {"price": Decimal("33712.7"), "size": Decimal("0.134")}


def test_the_ingesters_protocol_module_reads_polygons_frames() -> None:
    for name in DATA:
        events, problem = validate(WS[name]["frame"].encode())
        assert problem is None and events == [event(name)], name
    assert protocol.EVENT_TIME_FIELD.keys() == set(protocol.CRYPTO_CHANNELS) == {e for e in DATA if "_" not in e}
    for name, status in (("greeting", protocol.STATUS_CONNECTED), ("auth_success", protocol.STATUS_AUTH_SUCCESS)):
        assert event(name)["status"] == status
        assert protocol.MESSAGES[status] == event(name)["message"]
    assert event("max_connections")["status"] == protocol.STATUS_MAX_CONNECTIONS
    pattern = json.loads((FIXTURES / "websocket.json").read_text())["subscribe_params"]["pattern"]
    for text in ("XT.BTC-USD", "XT.X:BTC-USD", " XT.BTC-USD", "xt.btc-usd"):
        topic = protocol.parse_topic(text)
        assert re.match(pattern.replace("?<", "?P<"), topic.pair), text
    assert str(protocol.parse_topic("XA.*")) == "XA.*"


# -- the server side: the simulator against Polygon's frames and bodies -------------------------------


def test_the_simulator_does_not_import_the_clients_protocol_module() -> None:
    code = (
        "import sys; import crypto_platform.simulator.server, crypto_platform.simulator.cli; "
        "print('crypto_platform.polygon.protocol' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_simulators_status_texts_and_acks_are_polygons() -> None:
    for name, status in (("greeting", wire.STATUS_CONNECTED), ("auth_success", wire.STATUS_AUTH_SUCCESS)):
        assert json.loads(wire.status_frame(status)) == json.loads(WS[name]["frame"])
    for name, unsubscribe in (("subscribed", False), ("unsubscribed", True)):
        (topic,) = wire.parse_topics(WS[name]["topic"])
        assert json.loads(wire.subscribe_ack(topic, unsubscribe)) == json.loads(WS[name]["frame"])
    assert shape(json.loads(wire.status_frame("max_connections"))) == shape(json.loads(WS["max_connections"]["frame"]))


async def test_the_simulators_frames_have_polygons_keys_and_types() -> None:
    start = HISTORY_START_MS - 2_000  # just before a minute boundary, so an XA bar comes soon
    async with Simulator(SimulatorConfig(rate=200, pairs=("BTC-USD",), speed=30.0, start_ms=start)) as sim:
        client = await RawClient.open(sim)
        await client.login("XT.*,XQ.*,XA.*,XAS.*,XL2.*")
        await wait_for(lambda: {"XT", "XQ", "XA", "XAS", "XL2"} <= {e["ev"] for e in client.events()}, 20, "all")
        await client.close()
    assert client.frames[0] == json.loads(WS["greeting"]["frame"])
    acks = [e["message"] for e in client.events("status") if e["status"] == "success"]
    assert sorted(acks) == sorted(f"subscribed to: {c}.*" for c in ("XT", "XQ", "XA", "XAS", "XL2"))
    for name in DATA:
        want = event(name)
        if name == "XT":  # the spec types the id as a number; live frames (XT_live) carry a string
            want = {**want, "i": event("XT_live")["i"]}
        for got in client.events(want["ev"]):
            # XQ: live frames also carry lp/ls (last price and size), which the spec leaves out.
            extra = {"lp", "ls"} if want["ev"] == "XQ" else set()
            assert set(got) - extra == set(want), (name, got)
            assert {k: shape(v) for k, v in got.items() if k not in extra} == shape(want), (name, got)
            # Times and exchange ids are whole numbers (ms since the epoch).
            ints = {"t", "r", "x"} | ({"s", "e"} if want["ev"] in ("XA", "XAS") else set())
            assert all(isinstance(got[k], int) for k in ints & set(got)), (name, got)


def _get(sim: Simulator, path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(sim.rest_url + path, headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_the_simulators_rest_bodies_have_polygons_shape_and_refuse_polygons_refusals() -> None:
    day = "2025-06-01"
    with Simulator(SimulatorConfig(rate=20, pairs=("BTC-USD", "ETH-USD"))).running_in_thread() as sim:
        asked = {
            "open_close_crypto": f"/v1/open-close/crypto/BTC/USD/{day}",
            "grouped_crypto": f"/v2/aggs/grouped/locale/global/market/crypto/{day}",
            "aggs_crypto": "/v2/aggs/ticker/X:BTCUSD/range/1/day/2025-06-01/2025-06-02",
            "trades_crypto": f"/v3/trades/X:BTC-USD?timestamp={day}&limit=2",
        }
        for name, path in asked.items():
            status, body = _get(sim, path)
            want = REST[name]["body"]
            assert status == 200, (name, body)
            # request_id: Polygon sends it on every answer, though the spec's grouped example omits it.
            assert set(body) - {"request_id"} == set(want) - {"request_id"}, name
            assert {k: shape(v) for k, v in body.items() if k in want} == shape(want), name
        # Aggregates name the pair X:BTCUSD; the forms Polygon does not use are refused with its error body.
        for ticker in ("X:BTC-USD", "BTC-USD", "BTCUSD"):
            status, body = _get(sim, f"/v2/aggs/ticker/{ticker}/range/1/day/{day}/{day}")
            assert status == 400 and set(body) == set(REST["error"]["body"]), ticker
            assert shape(body) == shape(REST["error"]["body"]) and "X:BTCUSD" in body["error"]
        # Trades take the spec's X:BTC-USD and the aggregates' X:BTCUSD alike.
        assert (
            _get(sim, f"/v3/trades/X:BTCUSD?timestamp={day}&limit=2")[1]["results"]
            == _get(sim, asked["trades_crypto"])[1]["results"]
        )
