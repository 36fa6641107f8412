"""A Polygon-protocol crypto feed on loopback: WebSocket ``/crypto`` and REST ``/v1 /v2 /v3`` on one port.

It is the platform's zero-setup feed and the test suite's Polygon: the official
``polygon-api-client`` works against it unchanged (``test_official_client.py`` checks it). It adds what the real
service cannot give a test: a seeded market, switchable faults, and counters of everything sent.

Built on ``websockets`` (already needed by the official client): its ``process_request`` hook
answers plain HTTP GETs, so REST and the control endpoints share the WebSocket port. Data frames are
framed here and written straight to the transport (compression is off, server frames are unmasked):
this skips a per-frame Python layer and keeps the simulator well ahead of any client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from crypto_platform.simulator import wire
from crypto_platform.simulator.feed import Event, Renderer, Schedule
from crypto_platform.simulator.market import Market
from crypto_platform.simulator.rest_api import RestApi, RestResponse

# Faults that act once on every open connection, versus switches that stay on until cleared.
ONE_SHOT_FAULTS = frozenset(
    {"drop", "close", "slow_consumer", "force_disconnect", "malformed", "oversize", "delay_pongs", "trade"}
)
PERSISTENT_FAULTS = frozenset(
    {"withhold_greeting", "drop_after_subscribe", "drop_every", "pause", "rest_429", "rest_5xx", "rest_latency"}
)
MALFORMED_KINDS = ("not_array", "no_ev", "invalid_json", "truncated")
_TICK_S = 0.02
_MAX_CATCH_UP_MS = 5_000
_FLOOD_TRADES_PER_PAIR_S = 400.0


@dataclass(frozen=True)
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 7
    pairs: tuple[str, ...] = ("BTC-USD", "ETH-USD")
    # Events per second over all pairs and channels; None or 0 = as fast as each client reads.
    rate: float | None = 50.0
    api_keys: frozenset[str] = frozenset({"simulator-key"})
    max_connections: int = 1
    evict_older: bool = False
    speed: float = 1.0
    start_ms: int | None = None
    events_per_frame: int | None = None
    total_events: int | None = None
    auth_timeout_s: float | None = 10.0
    record_trades: bool = False
    # A client whose unread backlog passes this is cut off with slow_consumer, as Polygon does.
    slow_consumer_bytes: int = 64 * 1024 * 1024
    late_probability: float = 0.15
    faults: tuple[tuple[str, dict[str, Any]], ...] = ()
    # Replay mode for benchmarks: at full speed with total_events, generate the stream for the
    # channels below (every pair) before listening, and stream those frames to a connection that
    # subscribes to exactly them, so generation does not pace the client being measured.
    prerender: bool = False
    prerender_channels: tuple[str, ...] = ("XT", "XQ", "XA", "XAS")

    @property
    def full_speed(self) -> bool:
        return not self.rate


@dataclass
class _Conn:
    id: int
    ws: ServerConnection
    schedule: Schedule
    key: str | None = None
    topics: set[tuple[str, str]] = field(default_factory=set)
    frames: int = 0
    # (channel, pair) -> events sent; a Counter so a whole batch is counted in C.
    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    sent: int = 0
    malformed: int = 0
    trade_keys: list[str] = field(default_factory=list)
    closed: int | None = None
    actions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    over_limit: bool = False
    subscribed_once: bool = False


def _ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """An unmasked, final WebSocket frame (RFC 6455 §5.2) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, n) + payload
    if n < 65_536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def _malformed_payload(kind: str) -> bytes:
    if kind == "not_array":
        return b'{"ev":"XT","pair":"BTC-USD","p":1,"s":1,"t":0,"i":"0","x":1}'
    if kind == "no_ev":
        return b'[{"pair":"BTC-USD","p":1,"s":1,"t":0}]'
    if kind == "invalid_json":
        return b"[{ev: XT, pair: BTC-USD}]"
    if kind == "truncated":
        return b'[{"ev":"XT","pair":"BTC-USD","p":97000.1,"s":0.5,"t":17640000'
    raise ValueError(f"malformed kind {kind!r}: choose from {', '.join(MALFORMED_KINDS)}")


class Simulator:
    """The simulated Polygon service. Use ``async with`` or ``running_in_thread()``."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        npairs = max(1, len(config.pairs))
        if config.full_speed:
            tps = _FLOOD_TRADES_PER_PAIR_S
        else:
            # About two events (a trade and its quote) per trade plus a per-second bar.
            tps = max(0.02, (float(config.rate or 0) - npairs) / (2.0 * npairs))
        self.market = Market(config.seed, config.pairs, trades_per_second=tps, late_probability=config.late_probability)
        self.renderer = Renderer(self.market)
        self._wall0 = time.time()
        self._start_ms = config.start_ms if config.start_ms is not None else int(self._wall0 * 1000)
        self.rest = RestApi(self.market, self.now_ms, config.api_keys)
        self._conns: dict[int, _Conn] = {}
        self._closed: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._planted = itertools.count(1)
        self._faults: dict[str, dict[str, Any]] = {}
        self._rest_counts: dict[str, int] = {}
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = config.port
        self._prerendered: list[tuple[bytes, list[tuple[str, str]]]] = []
        self._prerendered_plan: dict[str, frozenset[str]] = {}
        if config.prerender and not (config.full_speed and config.total_events):
            raise ValueError("prerender needs full speed (rate 0) and total_events")
        for name, params in config.faults:
            if name in ONE_SHOT_FAULTS:
                raise ValueError(
                    f"fault {name!r} fires once on the open connections and cannot be set at start: "
                    "fire it with set_fault() (GET /_sim/fault) once a client is connected"
                )
            self._validate_fault(name, params)
            self._apply_fault(name, dict(params))  # as when switched on while running (REST counts too)

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/crypto"

    @property
    def rest_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def feed(self) -> str:
        """The ``feed=`` argument for ``polygon.WebSocketClient`` (with ``secure=False``)."""
        return f"{self.config.host}:{self.port}"

    def now_ms(self) -> int:
        """Simulated time: the historical start plus elapsed wall time times the speed factor.

        At full speed each connection runs through history at its own pace, so REST serves
        everything up to the wall clock.
        """
        if self.config.full_speed:
            return int(time.time() * 1000)
        return self._start_ms + int((time.time() - self._wall0) * 1000 * self.config.speed)

    def _prerender(self) -> None:
        schedule = Schedule(self.renderer, self._start_ms)
        schedule.set_topics({(c, "*") for c in self.config.prerender_channels})
        # A connection gets the replay when its subscriptions mean the same (per pair or with *).
        self._prerendered_plan = dict(schedule.plan)
        per_frame = self.config.events_per_frame or 10
        left = int(self.config.total_events or 0)
        frames = self._prerendered
        while left > 0:
            events = schedule.advance(schedule.next_second * 1000)[:left]
            left -= len(events)
            for i in range(0, len(events), per_frame):
                chunk = events[i : i + per_frame]
                payload = ("[" + ",".join(e.text for e in chunk) + "]").encode()
                frames.append((_ws_frame(payload), [_CHANNEL_PAIR(e) for e in chunk]))

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.config.prerender and not self._prerendered:
            self._prerender()
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,
            max_size=None,
            ping_interval=None,
            close_timeout=1,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running_in_thread(self) -> Iterator[Simulator]:
        """Run on an event loop in a daemon thread (for sync callers); stop it on exit."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=main, name="polygon-simulator", daemon=True)
        thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(15)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)
            loop.close()

    # -- faults and counters ----------------------------------------------------------------------

    @staticmethod
    def _validate_fault(name: str, params: dict[str, Any]) -> None:
        if name not in ONE_SHOT_FAULTS | PERSISTENT_FAULTS:
            known = ", ".join(sorted(ONE_SHOT_FAULTS | PERSISTENT_FAULTS))
            raise ValueError(f"unknown fault {name!r}: choose from {known}")
        if name == "malformed":
            _malformed_payload(str(params.get("kind", "not_array")))
        if name == "close" and int(params.get("code", 1011)) not in (1000, 1001, 1008, 1011):
            raise ValueError("fault close: code must be 1000, 1001, 1008 or 1011")
        if name == "trade":
            _planted_numbers(params)

    def set_fault(self, name: str, **params: Any) -> None:
        """Switch a fault on (persistent ones) or fire it at every open connection (one-shot ones).

        Thread-safe: callable from any thread while the simulator runs.
        """
        self._validate_fault(name, params)
        if self._loop is not None and self._loop.is_running() and not _in_loop(self._loop):
            done = threading.Event()

            def apply() -> None:
                self._apply_fault(name, params)
                done.set()

            self._loop.call_soon_threadsafe(apply)
            done.wait(10)
        else:
            self._apply_fault(name, params)

    def _apply_fault(self, name: str, params: dict[str, Any]) -> None:
        if name in PERSISTENT_FAULTS:
            self._faults[name] = dict(params)
            if name in ("rest_429", "rest_5xx"):
                self._rest_counts[name] = int(params.get("count", 1))
            return
        for conn in self._conns.values():
            conn.actions.append((name, dict(params)))

    def plant_trade(self, pair: str, price: str, size: str) -> None:
        """Send one extra XT trade (exchange 1, id ``planted-N``, time now) to every open connection,
        e.g. a whale trade for the alert rules; also ``GET /_sim/fault?name=trade&pair=&price=&size=``."""
        self.set_fault("trade", pair=pair, price=price, size=size)

    def clear_faults(self) -> None:
        def clear() -> None:
            self._faults.clear()
            self._rest_counts.clear()

        if self._loop is not None and self._loop.is_running() and not _in_loop(self._loop):
            self._loop.call_soon_threadsafe(clear)
        else:
            clear()

    def _conn_counters(self, conn: _Conn) -> dict[str, Any]:
        out: dict[str, Any] = {
            "frames": conn.frames,
            "events": _nested(conn.events),
            "sent": conn.sent,
            "malformed": conn.malformed,
            "closed": conn.closed,
            "topics": sorted(f"{c}.{pr}" for c, pr in conn.topics),
        }
        if self.config.record_trades:
            out["trade_keys"] = list(conn.trade_keys)
        return out

    def counters(self) -> dict[str, Any]:
        """What was sent: per connection (open and closed) and in total. JSON-serialisable."""
        conns = dict(self._closed)
        for cid, conn in list(self._conns.items()):
            conns[cid] = self._conn_counters(conn)
        totals: dict[str, Any] = {"frames": 0, "sent": 0, "malformed": 0, "events": {}, "connections": len(conns)}
        for c in conns.values():
            totals["frames"] += c["frames"]
            totals["sent"] += c["sent"]
            totals["malformed"] += c["malformed"]
            for ch, pairs in c["events"].items():
                bucket = totals["events"].setdefault(ch, {})
                for pair, n in pairs.items():
                    bucket[pair] = bucket.get(pair, 0) + n
        return {"connections": {str(k): v for k, v in sorted(conns.items())}, "totals": totals}

    # -- HTTP: REST and control -------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path.rstrip("/").endswith("/crypto") and "upgrade" in request.headers.get("Connection", "").lower():
            return None
        if path.startswith("/_sim/"):
            return self._control(request.path)
        if path.startswith(("/v1/", "/v2/", "/v3/")):
            latency = self._faults.get("rest_latency")
            if latency:
                await asyncio.sleep(float(latency.get("seconds", 1.0)))
            for name in ("rest_429", "rest_5xx"):
                if self._rest_counts.get(name, 0) > 0:
                    self._rest_counts[name] -= 1
                    params = self._faults.get(name, {})
                    if name == "rest_429":
                        body = orjson.dumps({"status": "ERROR", "error": "You've exceeded the maximum requests"})
                        extra = (("Retry-After", str(params.get("retry_after", 1))),)
                        return _http(RestResponse(429, body, (("Content-Type", "application/json"), *extra)))
                    status = int(params.get("status", 503))
                    return _http(RestResponse(status, orjson.dumps({"status": "ERROR", "error": "server error"})))
            headers = {k.lower(): v for k, v in request.headers.raw_items()}
            answer = await asyncio.get_running_loop().run_in_executor(None, self.rest.handle, request.path, headers)
            return _http(answer)
        return _http(RestResponse(404, orjson.dumps({"status": "NOT_FOUND", "message": f"no route {path}"})))

    def _control(self, target: str) -> Response:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            if parts.path == "/_sim/counters":
                return _http(RestResponse(200, orjson.dumps(self.counters())))
            if parts.path == "/_sim/fault":
                name = query.pop("name", "")
                params: dict[str, Any] = {k: int(v) if v.lstrip("-").isdigit() else v for k, v in query.items()}
                self._validate_fault(name, params)
                self._apply_fault(name, params)
                return _http(RestResponse(200, b'{"status":"OK"}'))
            if parts.path == "/_sim/clear":
                self._faults.clear()
                self._rest_counts.clear()
                return _http(RestResponse(200, b'{"status":"OK"}'))
            if parts.path == "/_sim/info":
                info = {"now_ms": self.now_ms(), "pairs": list(self.config.pairs), "seed": self.config.seed}
                return _http(RestResponse(200, orjson.dumps(info)))
        except ValueError as exc:
            return _http(RestResponse(400, orjson.dumps({"status": "ERROR", "error": str(exc)})))
        return _http(RestResponse(404, b'{"status":"NOT_FOUND"}'))

    # -- WebSocket --------------------------------------------------------------------------------

    def _authenticated(self, key: str) -> list[_Conn]:
        return [c for c in self._conns.values() if c.key == key and c.closed is None]

    async def _handle(self, ws: ServerConnection) -> None:
        cid = next(self._ids)
        start = self._start_ms if self.config.full_speed else self.now_ms()
        conn = _Conn(cid, ws, Schedule(self.renderer, start, keep_trade_keys=self.config.record_trades))
        self._conns[cid] = conn
        pump = asyncio.create_task(self._pump(conn))
        self._tasks.add(pump)
        try:
            if "withhold_greeting" not in self._faults:
                await ws.send(wire.status_frame(wire.STATUS_CONNECTED))
            async for message in ws:
                await self._on_message(conn, message)
        except ConnectionClosed:
            pass
        finally:
            pump.cancel()
            self._tasks.discard(pump)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            conn.closed = ws.close_code if ws.close_code is not None else wire.CLOSE_ABNORMAL
            self._closed[cid] = self._conn_counters(conn)
            del self._conns[cid]

    async def _on_message(self, conn: _Conn, message: str | bytes) -> None:
        try:
            msg = orjson.loads(message)
            action, params = msg["action"], str(msg.get("params", ""))
        except (ValueError, KeyError, TypeError):
            await conn.ws.send(wire.status_frame(wire.STATUS_ERROR, "invalid message"))
            return
        if action == "auth":
            await self._auth(conn, params)
        elif action in ("subscribe", "unsubscribe"):
            if conn.key is None:
                await conn.ws.send(wire.status_frame(wire.STATUS_AUTH_REQUIRED))
                return
            await self._subscribe(conn, params, unsubscribe=action == "unsubscribe")
        else:
            await conn.ws.send(wire.status_frame(wire.STATUS_ERROR, f"unknown action: {action}"))

    async def _auth(self, conn: _Conn, key: str) -> None:
        if key not in self.config.api_keys:
            await conn.ws.send(wire.status_frame(wire.STATUS_AUTH_FAILED))
            await conn.ws.close(wire.CLOSE_POLICY_VIOLATION, "authentication failed")
            return
        others = self._authenticated(key)
        conn.key = key
        await conn.ws.send(wire.status_frame(wire.STATUS_AUTH_SUCCESS))
        if len(others) >= self.config.max_connections:
            if self.config.evict_older:
                others[0].actions.append(("max_connections", {}))
            else:
                conn.over_limit = True

    async def _subscribe(self, conn: _Conn, params: str, unsubscribe: bool) -> None:
        try:
            topics = wire.parse_topics(params)
        except wire.TopicError as exc:
            await conn.ws.send(wire.status_frame(wire.STATUS_ERROR, str(exc)))
            return
        for topic in topics:
            if topic.channel not in wire.CRYPTO_CHANNELS:
                await conn.ws.send(wire.status_frame(wire.STATUS_ERROR, f"unknown channel: {topic}"))
                continue
            key = (topic.channel, topic.pair)
            if unsubscribe:
                conn.topics.discard(key)
            else:
                conn.topics.add(key)
            await conn.ws.send(wire.subscribe_ack(topic, unsubscribe))
        conn.schedule.set_topics(conn.topics)
        if not unsubscribe:
            conn.subscribed_once = True
            if conn.over_limit:
                conn.actions.append(("max_connections", {}))
            elif "drop_after_subscribe" in self._faults:
                conn.actions.append(("drop", {}))

    async def _act(self, conn: _Conn, name: str, params: dict[str, Any]) -> bool:
        """Carry out one fault on a connection; ``False`` when the connection is gone."""
        ws = conn.ws
        if name == "drop":
            ws.transport.abort()
            return False
        if name == "close":
            await ws.close(int(params.get("code", wire.CLOSE_INTERNAL_ERROR)), str(params.get("reason", "")))
            return False
        if name in ("slow_consumer", "force_disconnect", "max_connections"):
            await ws.send(wire.status_frame(name))
            await ws.close(wire.CLOSE_POLICY_VIOLATION, name)
            return False
        if name == "malformed":
            conn.malformed += 1
            self._write(conn, _malformed_payload(str(params.get("kind", "not_array"))))
        elif name == "oversize":
            pad = "x" * int(params.get("bytes", 1_200_000))
            conn.frames += 1
            self._write(conn, orjson.dumps([{"ev": "status", "status": "info", "message": pad}]))
        elif name == "trade" and {("XT", params["pair"]), ("XT", "*")} & conn.topics:
            price, size = _planted_numbers(params)
            now, planted = self.now_ms(), next(self._planted)
            event = (
                f'{{"ev":"XT","pair":"{params["pair"]}","p":{price},"t":{now},"s":{size},"c":[1],'
                f'"i":"planted-{planted}","x":1,"r":{now}}}'
            )
            conn.frames += 1
            conn.sent += 1
            conn.events[("XT", str(params["pair"]))] += 1
            if self.config.record_trades:
                conn.trade_keys.append(f"{params['pair']}|1|planted-{planted}")
            self._write(conn, f"[{event}]".encode())
        elif name == "delay_pongs":
            # Not reading means pings are not answered until reading resumes.
            ws.transport.pause_reading()
            asyncio.get_running_loop().call_later(float(params.get("seconds", 30)), _resume, ws)
        return True

    def _write(self, conn: _Conn, payload: bytes) -> None:
        if conn.ws.state is State.OPEN:
            conn.ws.transport.write(_ws_frame(payload))

    async def _send_events(self, conn: _Conn, events: list[Event]) -> None:
        """Frame ``events`` (``events_per_frame`` each) and write them in one go; count what went out."""
        if conn.ws.state is not State.OPEN:
            return
        per_frame = self.config.events_per_frame or 1000
        drop_every = self._faults.get("drop_every")
        if drop_every:
            # Cut the batch at the frame that triggers the drop, so the counters stay exact.
            every = max(1, int(drop_every.get("frames", 100)))
            room = (every - conn.frames % every) * per_frame
            if room < len(events):
                events = events[:room]
                conn.actions.append(("drop", {}))
        texts = [e.text for e in events]
        frames = [
            _ws_frame(("[" + ",".join(texts[i : i + per_frame]) + "]").encode())
            for i in range(0, len(texts), per_frame)
        ]
        conn.ws.transport.write(b"".join(frames))
        conn.frames += len(frames)
        conn.sent += len(events)
        conn.events.update(map(_CHANNEL_PAIR, events))
        if self.config.record_trades:
            conn.trade_keys.extend(e.trade_key for e in events if e.trade_key is not None)
        backlog = conn.ws.transport.get_write_buffer_size()
        if backlog > self.config.slow_consumer_bytes:
            conn.actions.append(("slow_consumer", {}))
        elif self.config.full_speed and backlog > 1 << 20:
            await conn.ws.drain()

    async def _replay(self, conn: _Conn) -> None:
        """Stream the prerendered frames from where this connection stands, 64 frames per write."""
        frames = self._prerendered
        while conn.frames < len(frames) and conn.ws.state is State.OPEN and not conn.actions:
            batch = frames[conn.frames : conn.frames + 64]
            conn.ws.transport.write(b"".join(f for f, _ in batch))
            conn.frames += len(batch)
            for _, keys in batch:
                conn.sent += len(keys)
                conn.events.update(keys)
            if conn.ws.transport.get_write_buffer_size() > 1 << 20:
                await conn.ws.drain()

    async def _pump(self, conn: _Conn) -> None:
        """Per connection: carry out pending faults, then send what is due (paced or full speed)."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        connected_at = loop.time()
        while conn.ws.state is State.OPEN:
            while conn.actions:
                name, params = conn.actions.pop(0)
                if not await self._act(conn, name, params):
                    return
            if conn.key is None and cfg.auth_timeout_s and loop.time() - connected_at > cfg.auth_timeout_s:
                await conn.ws.send(wire.status_frame(wire.STATUS_AUTH_TIMEOUT))
                await conn.ws.close(wire.CLOSE_POLICY_VIOLATION, "auth timeout")
                return
            budget_left = cfg.total_events is None or conn.sent < cfg.total_events
            # "pause" holds data back (nothing is dropped: what fell due is sent on resume).
            if conn.schedule.plan and budget_left and "pause" not in self._faults:
                if self._prerendered and conn.schedule.plan == self._prerendered_plan:
                    await self._replay(conn)
                    await asyncio.sleep(_TICK_S)
                    continue
                if cfg.full_speed:
                    events = list(conn.schedule.advance(conn.schedule.next_second * 1000))
                    if cfg.total_events is not None:
                        events = events[: cfg.total_events - conn.sent]
                    if events:
                        await self._send_events(conn, events)
                    await asyncio.sleep(0)
                    continue
                # Catch up at most a few simulated seconds per pass, so a lagging connection (a fast
                # clock, a busy machine) cannot hold the event loop for one huge backlog.
                now = self.now_ms()
                until = min(now, conn.schedule.next_second * 1000 + _MAX_CATCH_UP_MS)
                events = conn.schedule.advance(until)
                if events:
                    await self._send_events(conn, events)
                if until < now:
                    await asyncio.sleep(0)
                    continue
            await asyncio.sleep(_TICK_S)


_CHANNEL_PAIR = operator.itemgetter(2, 3)


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (channel, pair), n in sorted(counts.items()):
        out.setdefault(channel, {})[pair] = n
    return out


def _planted_numbers(params: dict[str, Any]) -> tuple[str, str]:
    """A planted trade's price and size as JSON number text (positive decimals, exact)."""
    from decimal import Decimal, InvalidOperation

    if not str(params.get("pair", "")).strip():
        raise ValueError("fault trade: give pair, price and size, e.g. pair=BTC-USD&price=97000&size=20")
    out = []
    for key in ("price", "size"):
        try:
            value = Decimal(str(params.get(key, "")))
        except InvalidOperation:
            value = Decimal(-1)
        if not value.is_finite() or value <= 0:
            raise ValueError(f"fault trade: {key} must be a positive number, got {params.get(key)!r}")
        out.append(format(value, "f"))
    return out[0], out[1]


def _resume(ws: ServerConnection) -> None:
    with contextlib.suppress(Exception):
        ws.transport.resume_reading()


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _http(answer: RestResponse) -> Response:
    headers = Headers()
    for name, value in answer.headers:
        headers[name] = value
    headers.setdefault("Content-Type", "application/json")
    headers["Content-Length"] = str(len(answer.body))
    headers["Connection"] = "close"
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
    return Response(answer.status, reason.get(answer.status, "Error"), headers, answer.body)
