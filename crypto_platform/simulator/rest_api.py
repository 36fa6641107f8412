"""The simulator's REST endpoints, answering from the same market the WebSocket streams.

A pure request -> response layer (no sockets), so the server stays small. Shapes follow Polygon's
spec (the official client's ``.massive/rest.json``): ``status``/``request_id`` envelopes, absolute
``next_url`` with an opaque cursor that carries every filter (the official client re-sends only path and query),
404 ``NOT_FOUND`` for unknown data, 401 ``Unknown API Key``, 400 ``ERROR`` for a malformed request
(aggregates want ``X:BTCUSD``; trades take ``X:BTC-USD`` as in the spec, or ``X:BTCUSD``). Numbers are
written from integers as exact decimal text. Nothing after the simulated "now" is served.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from crypto_platform.days import DAY_MS, MINUTE_MS, day_bounds_ms
from crypto_platform.simulator.feed import Renderer
from crypto_platform.simulator.market import Agg, Market, Trade

TIMESPAN_MS = {"second": 1_000, "minute": MINUTE_MS, "hour": 3_600_000, "day": DAY_MS, "week": 7 * DAY_MS}
MAX_LIMIT = 50_000
PUBLIC_BASE = "https://api.polygon.io"


@dataclass(frozen=True)
class RestResponse:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class RestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _num(text: str) -> orjson.Fragment:
    return orjson.Fragment(text.encode())


def _encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")


def _decode_cursor(raw: str) -> dict[str, Any]:
    try:
        state = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except ValueError:
        raise RestError(400, "cursor is not valid: use the next_url exactly as returned") from None
    if not isinstance(state, dict):
        raise RestError(400, "cursor is not valid: use the next_url exactly as returned")
    return state


def _day_start_ms(text: str) -> int:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise RestError(400, f"{text!r} is not a date YYYY-MM-DD") from None
    return day_bounds_ms(day)[0]


class RestApi:
    """Routes REST paths to answers from ``market``; ``now_ms`` bounds what has happened yet."""

    def __init__(self, market: Market, now_ms: Callable[[], int], api_keys: frozenset[str]) -> None:
        self.market = market
        self.render = Renderer(market)
        self.now_ms = now_ms
        self.api_keys = api_keys
        self._request_ids = itertools.count(1)

    # -- envelope -------------------------------------------------------------------------------

    def handle(self, target: str, headers: dict[str, str]) -> RestResponse:
        request_id = f"sim-{next(self._request_ids)}"
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else query.pop("apiKey", "")
        query.pop("apiKey", None)
        if key not in self.api_keys:
            return self._json(401, {"status": "ERROR", "request_id": request_id, "error": "Unknown API Key"})
        try:
            body = self._route(path, query)
        except RestError as exc:
            if exc.status == 404:
                return self._json(404, {"status": "NOT_FOUND", "request_id": request_id, "message": exc.message})
            return self._json(exc.status, {"status": "ERROR", "request_id": request_id, "error": exc.message})
        body.setdefault("request_id", request_id)
        return self._json(200, body)

    @staticmethod
    def _json(status: int, body: dict[str, Any]) -> RestResponse:
        return RestResponse(status, orjson.dumps(body), (("Content-Type", "application/json"),))

    def _route(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        seg = [s for s in path.split("/") if s]
        if seg[:3] == ["v1", "open-close", "crypto"] and len(seg) == 6:
            return self.open_close(seg[3], seg[4], seg[5])
        if seg[:7] == ["v2", "aggs", "grouped", "locale", "global", "market", "crypto"] and len(seg) == 8:
            return self.grouped(seg[7])
        if seg[:3] == ["v2", "aggs", "ticker"] and len(seg) == 9 and seg[4] == "range":
            return self.aggs(seg[3], seg[5], seg[6], seg[7], seg[8], query)
        if seg[:2] == ["v3", "trades"] and len(seg) == 3:
            return self.trades(seg[2], query)
        raise RestError(404, "Data not found.")

    # -- helpers --------------------------------------------------------------------------------

    def _pair(self, ticker: str) -> str:
        name = ticker.upper().removeprefix("X:")
        for pair in self.market.pairs:
            if name in (pair, pair.replace("-", "")):
                return pair
        raise RestError(404, f"Data not found: unknown ticker {ticker}.")

    def _aggs_pair(self, ticker: str) -> str:
        """Aggregates name a crypto pair ``X:BTCUSD``: the ``X:`` prefix, no dash (Polygon's spec)."""
        if not ticker.startswith("X:") or "-" in ticker:
            fixed = "X:" + ticker.removeprefix("X:").replace("-", "")
            raise RestError(400, f"ticker {ticker!r} is not a crypto aggregates ticker: write it {fixed}")
        return self._pair(ticker)

    def _trade_obj(self, pair: str, tr: Trade) -> dict[str, Any]:
        tx = self.render.text[pair]
        return {
            "x": tr.exchange,
            "p": _num(tx.price(tr.price)),
            "s": _num(tx.size(tr.size)),
            "c": [tr.side],
            "i": tr.id,
            "t": tr.t,
        }

    def _bar_obj(self, pair: str, agg: Agg, start_ms: int) -> dict[str, Any]:
        b = self.render.bar_text(pair, agg)
        return {
            "o": _num(b.o),
            "h": _num(b.h),
            "l": _num(b.low),
            "c": _num(b.c),
            "v": _num(b.v),
            "vw": _num(b.vw),
            "t": start_ms,
            "n": b.n,
        }

    # -- endpoints ------------------------------------------------------------------------------

    def open_close(self, base: str, quote: str, day_text: str) -> dict[str, Any]:
        pair = self._pair(f"{base}-{quote}")
        start = _day_start_ms(day_text)
        end = min(start + DAY_MS, self.now_ms())
        first = self.market.first_trade(pair, start, end) if end > start else None
        last = self.market.last_trade(pair, start, end) if first else None
        if first is None or last is None:
            raise RestError(404, "Data not found.")
        tx = self.render.text[pair]
        return {
            "symbol": pair,
            "isUTC": True,
            "day": f"{day_text}T00:00:00.000Z",
            "open": _num(tx.price(first.price)),
            "close": _num(tx.price(last.price)),
            "openTrades": [self._trade_obj(pair, first)],
            "closingTrades": [self._trade_obj(pair, last)],
        }

    def grouped(self, day_text: str) -> dict[str, Any]:
        start = _day_start_ms(day_text)
        end = min(start + DAY_MS, self.now_ms())
        results = []
        for pair in self.market.pairs:
            agg = self.market.bar(pair, start, end) if end > start else None
            if agg is not None:
                results.append({"T": "X:" + pair.replace("-", ""), **self._bar_obj(pair, agg, start)})
        return {
            "status": "OK",
            "adjusted": True,
            "queryCount": len(results),
            "resultsCount": len(results),
            "results": results,
        }

    def _time_arg(self, text: str, end: bool) -> int:
        if text.isdigit():
            return int(text) + (1 if end else 0)
        return _day_start_ms(text) + (DAY_MS if end else 0)

    def aggs(self, ticker: str, mult_text: str, timespan: str, frm: str, to: str, query: dict[str, str]) -> dict:
        pair = self._aggs_pair(ticker)
        if timespan not in TIMESPAN_MS or not mult_text.isdigit() or int(mult_text) < 1:
            raise RestError(
                400,
                f"range {mult_text}/{timespan}: multiplier must be >= 1 and timespan one of {', '.join(TIMESPAN_MS)}",
            )
        size = int(mult_text) * TIMESPAN_MS[timespan]
        if "cursor" in query:
            state = _decode_cursor(query["cursor"])
        else:
            lo, hi = self._time_arg(frm, end=False), self._time_arg(to, end=True)
            if hi <= lo:
                raise RestError(400, "The 'to' value cannot be a time that occurs before the 'from' value.")
            state = {
                "lo": lo - lo % size,
                "hi": hi,
                "sort": query.get("sort", "asc"),
                "limit": self._limit(query, 5000),
            }
        lo, hi, sort, limit = int(state["lo"]), int(state["hi"]), state["sort"], int(state["limit"])
        # Buckets that start in [from, to] are whole, as at Polygon; only the current one is partial.
        live = self.now_ms() + 1
        hi = min(hi, live)
        starts = range(lo, hi, size) if sort == "asc" else range(lo + (hi - 1 - lo) // size * size, lo - 1, -size)
        results: list[dict[str, Any]] = []
        nxt: int | None = None
        for bucket in starts:
            if len(results) >= limit:
                nxt = bucket
                break
            agg = self.market.bar(pair, bucket, min(bucket + size, live))
            if agg is not None:
                results.append(self._bar_obj(pair, agg, bucket))
        body: dict[str, Any] = {
            "ticker": "X:" + pair.replace("-", ""),
            "status": "OK",
            "adjusted": True,
            "queryCount": len(results),
            "resultsCount": len(results),
            "results": results,
        }
        if nxt is not None:
            cont = dict(state, lo=nxt) if sort == "asc" else dict(state, hi=nxt + size)
            body["next_url"] = (
                f"{PUBLIC_BASE}/v2/aggs/ticker/{body['ticker']}/range/{mult_text}/{timespan}/"
                f"{frm}/{to}?cursor={_encode_cursor(cont)}"
            )
        return body

    @staticmethod
    def _limit(query: dict[str, str], default: int) -> int:
        raw = query.get("limit", str(default))
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise RestError(400, f"limit={raw!r}: must be a whole number from 1 to {MAX_LIMIT}")
        return int(raw)

    def _ns_bounds(self, query: dict[str, str]) -> tuple[int, int]:
        """``timestamp[.gte|.gt|.lte|.lt]`` as dates or ns -> [lo_ns, hi_ns)."""
        lo, hi = 0, (self.now_ms() + 1) * 1_000_000

        def ns(text: str, end: bool) -> int:
            if text.isdigit():
                return int(text)
            return _day_start_ms(text) * 1_000_000 + (DAY_MS * 1_000_000 if end else 0)

        if "timestamp" in query:
            text = query["timestamp"]
            lo, hi = (int(text), int(text) + 1) if text.isdigit() else (ns(text, False), ns(text, True))
        if "timestamp.gte" in query:
            lo = max(lo, ns(query["timestamp.gte"], False))
        if "timestamp.gt" in query:
            lo = max(lo, ns(query["timestamp.gt"], True) + (1 if query["timestamp.gt"].isdigit() else 0))
        if "timestamp.lte" in query:
            hi = min(hi, ns(query["timestamp.lte"], True) + (1 if query["timestamp.lte"].isdigit() else 0))
        if "timestamp.lt" in query:
            hi = min(hi, ns(query["timestamp.lt"], False))
        return lo, hi

    def _walk_trades(self, pair: str, lo_ms: int, hi_ms: int, asc: bool) -> Iterator[Trade]:
        seconds = range(lo_ms // 1000, (hi_ms + 999) // 1000)
        for s in seconds if asc else reversed(seconds):
            trades = self.market.second(pair, s).trades
            for tr in trades if asc else reversed(trades):
                if lo_ms <= tr.t < hi_ms:
                    yield tr

    def trades(self, ticker: str, query: dict[str, str]) -> dict[str, Any]:
        pair = self._pair(ticker)
        if "cursor" in query:
            state = _decode_cursor(query["cursor"])
        else:
            lo_ns, hi_ns = self._ns_bounds(query)
            order = query.get("order", "desc")
            if order not in ("asc", "desc"):
                raise RestError(400, f"order={order!r}: use asc or desc")
            state = {"lo": lo_ns, "hi": hi_ns, "order": order, "limit": self._limit(query, 1000), "skip": 0}
        lo_ms = -(-int(state["lo"]) // 1_000_000)
        hi_ms = -(-min(int(state["hi"]), (self.now_ms() + 1) * 1_000_000) // 1_000_000)
        asc, limit, skip = state["order"] == "asc", int(state["limit"]), int(state["skip"])
        walk = itertools.islice(self._walk_trades(pair, lo_ms, hi_ms, asc), skip, None)
        page = list(itertools.islice(walk, limit + 1))
        tx = self.render.text[pair]
        results = [
            {
                "conditions": [tr.side],
                "exchange": tr.exchange,
                "id": tr.id,
                "participant_timestamp": tr.t * 1_000_000,
                "price": _num(tx.price(tr.price)),
                "size": _num(tx.size(tr.size)),
            }
            for tr in page[:limit]
        ]
        body: dict[str, Any] = {"status": "OK", "results": results}
        if len(page) > limit:
            # Restart from the page's last millisecond, skipping what was already returned there.
            last_ms = page[limit - 1].t
            already = sum(1 for tr in page[:limit] if tr.t == last_ms)
            if last_ms == (lo_ms if asc else hi_ms - 1):
                already += skip
            cont = dict(state, skip=already)
            if asc:
                cont["lo"] = last_ms * 1_000_000
            else:
                cont["hi"] = (last_ms + 1) * 1_000_000
            body["next_url"] = f"{PUBLIC_BASE}/v3/trades/X:{pair}?cursor={_encode_cursor(cont)}"
        return body
