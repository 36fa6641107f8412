"""The REST client's corrections to polygon-api-client, against real HTTP servers on loopback.

The simulator covers the endpoints; these tests pin the failure modes the official client gets
wrong (hung server, throttling, refused key) with a tiny scripted server per test.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal

import pytest

from crypto_platform.polygon.rest_client import (
    PolygonAuthError,
    PolygonRest,
    PolygonUnavailableError,
    RestPolicy,
    ticker_for,
)

Responder = Callable[[http.server.BaseHTTPRequestHandler, int], None]


@contextmanager
def scripted_server(respond: Responder) -> Iterator[tuple[str, list[str]]]:
    """Serve ``respond(handler, request_number)`` on a free loopback port; yield (base url, paths seen)."""
    seen: list[str] = []
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            respond(self, len(seen))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.release = release  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def send_json(handler: http.server.BaseHTTPRequestHandler, status: int, body: object, **headers: str) -> None:
    send_text(handler, status, json.dumps(body), **headers)


def send_text(handler: http.server.BaseHTTPRequestHandler, status: int, text: str, **headers: str) -> None:
    data = text.encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(data)


OPEN_CLOSE_TEXT = (
    '{"symbol":"BTC-USD","isUTC":true,"day":"2026-11-24T00:00:00.000Z","open":97123.45,"close":0.000012345678,'
    '"openTrades":[],"closingTrades":[]}'
)


def test_daily_open_close_keeps_exact_decimals() -> None:
    def respond(handler: http.server.BaseHTTPRequestHandler, n: int) -> None:
        send_text(handler, 200, OPEN_CLOSE_TEXT)

    with scripted_server(respond) as (base, seen):
        result = PolygonRest(base, "k").daily_open_close("BTC-USD", date(2026, 11, 24))
    assert result is not None
    assert result["open"] == Decimal("97123.45")
    assert result["close"] == Decimal("0.000012345678")
    assert seen == ["/v1/open-close/crypto/BTC/USD/2026-11-24"]


def test_day_without_data_is_none() -> None:
    def respond(handler: http.server.BaseHTTPRequestHandler, n: int) -> None:
        send_json(handler, 404, {"status": "NOT_FOUND", "request_id": "x", "message": "Data not found."})

    with scripted_server(respond) as (base, _):
        assert PolygonRest(base, "k").daily_open_close("ETH-USD", date(2020, 1, 1)) is None


def test_refused_key_names_the_setting_and_never_the_key() -> None:
    def respond(handler: http.server.BaseHTTPRequestHandler, n: int) -> None:
        send_json(handler, 401, {"status": "ERROR", "request_id": "x", "error": "Unknown API Key"})

    with scripted_server(respond) as (base, _), pytest.raises(PolygonAuthError) as info:
        PolygonRest(base, "super-secret-key-123").daily_open_close("BTC-USD", date(2026, 11, 24))
    assert "POLYGON_API_KEY" in str(info.value)
    assert "super-secret-key-123" not in str(info.value)


def test_throttling_honours_retry_after_then_succeeds() -> None:
    def respond(handler: http.server.BaseHTTPRequestHandler, n: int) -> None:
        if n <= 2:
            send_json(handler, 429, {"status": "ERROR", "error": "slow down"}, Retry_After="1")
        else:
            send_text(handler, 200, OPEN_CLOSE_TEXT)

    with scripted_server(respond) as (base, seen):
        started = time.monotonic()
        result = PolygonRest(base, "k").daily_open_close("BTC-USD", date(2026, 11, 24))
        waited = time.monotonic() - started
    assert result is not None and len(seen) == 3
    # Two Retry-After: 1 answers were honoured (a lower bound, not a speed threshold).
    assert waited >= 2.0


def test_retry_after_is_capped() -> None:
    def respond(handler: http.server.BaseHTTPRequestHandler, n: int) -> None:
        send_json(handler, 429, {"status": "ERROR", "error": "slow down"}, Retry_After="3600")

    policy = RestPolicy(retries=1, max_retry_after_s=0.2, backoff_factor=0.0)
    with scripted_server(respond) as (base, seen), pytest.raises(PolygonUnavailableError, match="throttling"):
        PolygonRest(base, "k", policy).daily_open_close("BTC-USD", date(2026, 11, 24))
    assert len(seen) == 2


def test_hung_server_times_out_instead_of_hanging() -> None:
    def respond(handler: http.server.BaseHTTPRequestHandler, n: int) -> None:
        handler.server.release.wait(30)  # type: ignore[attr-defined]

    policy = RestPolicy(connect_timeout_s=1.0, read_timeout_s=0.5, retries=0)
    with scripted_server(respond) as (base, seen), pytest.raises(PolygonUnavailableError, match="did not answer"):
        PolygonRest(base, "k", policy).daily_open_close("BTC-USD", date(2026, 11, 24))
    assert len(seen) == 1


def test_minute_aggs_follow_pages_and_stay_exact() -> None:
    pages = {
        1: {
            "status": "OK",
            "results": [{"o": 1.5, "h": 2.25, "l": 1.0, "c": 2.0, "v": 0.00000001, "t": 60_000}],
            "next_url": "https://api.polygon.io/v2/aggs/ticker/X:BTCUSD/range/1/minute/0/1?cursor=p2",
        },
        2: {"status": "OK", "results": [{"o": 2.0, "h": 2.0, "l": 2.0, "c": 2.0, "v": 3, "t": 120_000}]},
    }

    def respond(handler: http.server.BaseHTTPRequestHandler, n: int) -> None:
        send_json(handler, 200, pages[n])

    with scripted_server(respond) as (base, seen):
        aggs = list(PolygonRest(base, "k").minute_aggs("BTC-USD", 0, 180_000))
    assert [a.timestamp for a in aggs] == [60_000, 120_000]
    assert aggs[0].volume == Decimal("1E-8") and aggs[0].high == Decimal("2.25")
    assert seen[0].startswith("/v2/aggs/ticker/X:BTCUSD/range/1/minute/0/179999")
    assert seen[1].endswith("cursor=p2")


def test_ticker_form() -> None:
    assert ticker_for("BTC-USD") == "X:BTCUSD"
