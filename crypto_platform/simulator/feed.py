"""What the simulator sends and when: market events scheduled by delivery time and rendered to JSON.

Delivery follows Polygon: trades and quotes at their own time, an XAS bar just after its second,
an XA bar just after its minute, a late trade a moment later, then the corrected XA bar for the
same minute. Rendering writes the exact decimal text from integer ticks, so nothing on the wire
passed through a float.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from itertools import count
from typing import NamedTuple

from crypto_platform.days import MINUTE_MS
from crypto_platform.simulator.market import Agg, Market, PairSpec, Quote, Trade

XAS_DELAY_MS = 1_200
XA_DELAY_MS = 300
LATE_TRADE_DELAY_MS = 1_500
XA_CORRECTION_DELAY_MS = 2_000
VWAP_EXTRA_DP = 4


class Event(NamedTuple):
    """One rendered event, ordered by delivery time (then generation order), with its JSON text.

    A tuple so the delivery queue sorts in C: (deliver_ms, seq) is unique, so the comparison
    never reaches the text.
    """

    deliver_ms: int
    seq: int
    channel: str
    pair: str
    text: str
    trade_key: str | None = None


class _Text:
    """Exact decimal text for one pair's prices and sizes, memoised (prices repeat a lot)."""

    def __init__(self, spec: PairSpec) -> None:
        self.price_dp = spec.price_dp
        self.size_dp = spec.size_dp
        self._prices: dict[int, str] = {}
        self._price_fmt = f"%d.%0{spec.price_dp}d"
        self._size_fmt = f"%d.%0{spec.size_dp}d"
        self._price_scale = 10**spec.price_dp
        self._size_scale = 10**spec.size_dp

    def price(self, ticks: int) -> str:
        text = self._prices.get(ticks)
        if text is None:
            if len(self._prices) > 200_000:
                self._prices.clear()
            text = self._prices[ticks] = _strip(self._price_fmt % divmod(ticks, self._price_scale))
        return text

    def size(self, units: int) -> str:
        # Sizes rarely repeat, so no memo and no zero-stripping: "0.12340000" is the same exact value.
        if self.size_dp == 0:
            return str(units)
        return self._size_fmt % divmod(units, self._size_scale)

    def scaled(self, value: int, dp: int) -> str:
        if dp == 0:
            return str(value)
        q, r = divmod(value, 10**dp)
        return _strip(f"{q}.{r:0{dp}d}")


def _strip(text: str) -> str:
    if "." not in text:
        return text
    text = text.rstrip("0")
    return text[:-1] if text.endswith(".") else text


def _round_div(num: int, den: int) -> int:
    """Round half up of num/den for non-negative integers."""
    return (2 * num + den) // (2 * den)


@dataclass(frozen=True)
class BarText:
    """The XA/XAS fields as exact text (o, h, l, c, v, vw, z) plus the trade count."""

    o: str
    h: str
    low: str
    c: str
    v: str
    vw: str
    z: str
    n: int


class Renderer:
    """Renders one market's events as Polygon JSON text."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.text = {p: _Text(spec) for p, spec in market.specs.items()}

    def trade(self, pair: str, tr: Trade) -> str:
        tx = self.text[pair]
        return (
            f'{{"ev":"XT","pair":"{pair}","p":{tx.price(tr.price)},"t":{tr.t},"s":{tx.size(tr.size)},'
            f'"c":[{tr.side}],"i":"{tr.id}","x":{tr.exchange},"r":{tr.received}}}'
        )

    def quote(self, pair: str, q: Quote) -> str:
        tx = self.text[pair]
        return (
            f'{{"ev":"XQ","pair":"{pair}","lp":0,"ls":0,"bp":{tx.price(q.bid)},"bs":{tx.size(q.bid_size)},'
            f'"ap":{tx.price(q.ask)},"as":{tx.size(q.ask_size)},"t":{q.t},"x":{q.exchange},"r":{q.received}}}'
        )

    def bar_text(self, pair: str, agg: Agg) -> BarText:
        tx = self.text[pair]
        vw = _round_div(agg.pv * 10**VWAP_EXTRA_DP, agg.volume)
        return BarText(
            tx.price(agg.open),
            tx.price(agg.high),
            tx.price(agg.low),
            tx.price(agg.close),
            tx.size(agg.volume),
            tx.scaled(vw, tx.price_dp + VWAP_EXTRA_DP),
            tx.size(_round_div(agg.volume, agg.trade_count)),
            agg.trade_count,
        )

    def bar(self, channel: str, pair: str, agg: Agg, start_ms: int, end_ms: int) -> str:
        b = self.bar_text(pair, agg)
        return (
            f'{{"ev":"{channel}","pair":"{pair}","v":{b.v},"vw":{b.vw},"z":{b.z},"o":{b.o},"c":{b.c},'
            f'"h":{b.h},"l":{b.low},"s":{start_ms},"e":{end_ms}}}'
        )

    def book(self, pair: str, second: int) -> str:
        tx = self.text[pair]
        bids, asks = self.market.book(pair, second)
        b = ",".join(f"[{tx.price(p)},{tx.size(s)}]" for p, s in bids)
        a = ",".join(f"[{tx.price(p)},{tx.size(s)}]" for p, s in asks)
        t = second * 1000 + 999
        return f'{{"ev":"XL2","pair":"{pair}","t":{t},"r":{t + 7},"x":1,"b":[{b}],"a":[{a}]}}'


def trade_key(pair: str, tr: Trade) -> str:
    """How tests identify a trade: the natural key (pair, exchange, id)."""
    return f"{pair}|{tr.exchange}|{tr.id}"


class Schedule:
    """Events of the chosen channels and pairs in delivery order, generated second by second.

    ``advance(until_ms)`` generates every second that has started by ``until_ms`` and returns the
    events due by then. Each connection has its own schedule, so what it receives depends only on
    the market and on when it subscribed, never on other connections.
    """

    def __init__(self, renderer: Renderer, start_ms: int, keep_trade_keys: bool = False) -> None:
        self.renderer = renderer
        self.market = renderer.market
        self.start_ms = start_ms
        self.next_second = start_ms // 1000
        self._pending: list[Event] = []
        self.keep_trade_keys = keep_trade_keys
        self._seq = count()
        self.plan: dict[str, frozenset[str]] = {}

    def set_topics(self, topics: set[tuple[str, str]]) -> None:
        """Subscribe to exactly these (channel, pair) topics; a pair of ``*`` means every pair."""
        plan = {}
        for pair in self.market.pairs:
            channels = frozenset(c for c, p in topics if p in ("*", pair))
            if channels:
                plan[pair] = channels
        self.plan = plan

    def _generate(self, second: int) -> None:
        pending = self._pending
        seq = self._seq
        render = self.renderer

        start_ms = self.start_ms

        def push(deliver_ms: int, channel: str, pair: str, text: str, key: str | None = None) -> None:
            if deliver_ms < start_ms:
                return  # it happened before this subscriber connected
            # tuple.__new__ skips NamedTuple's Python-level constructor on this hot path.
            pending.append(tuple.__new__(Event, (deliver_ms, next(seq), channel, pair, text, key)))

        for pair, channels in self.plan.items():
            sec = self.market.second(pair, second)
            if "XT" in channels:
                next_minute = (second // 60 + 1) * MINUTE_MS
                for tr in sec.trades:
                    deliver = next_minute + LATE_TRADE_DELAY_MS if tr.late else tr.t
                    key = trade_key(pair, tr) if self.keep_trade_keys else None
                    push(deliver, "XT", pair, render.trade(pair, tr), key)
            if "XQ" in channels:
                for q in sec.quotes:
                    push(q.t, "XQ", pair, render.quote(pair, q))
            if "XAS" in channels and sec.on_time is not None:
                start = second * 1000
                push(start + XAS_DELAY_MS, "XAS", pair, render.bar("XAS", pair, sec.on_time, start, start + 1000))
            if "XL2" in channels and sec.trades:
                push(second * 1000 + 999, "XL2", pair, render.book(pair, second))
            if "XA" in channels and second % 60 == 59:
                minute = self.market.minute(pair, second // 60)
                start = minute.minute * MINUTE_MS
                end = start + MINUTE_MS
                if minute.first_bar is not None:
                    push(end + XA_DELAY_MS, "XA", pair, render.bar("XA", pair, minute.first_bar, start, end))
                if minute.late and minute.final_bar is not None:
                    push(end + XA_CORRECTION_DELAY_MS, "XA", pair, render.bar("XA", pair, minute.final_bar, start, end))

    def advance(self, until_ms: int) -> list[Event]:
        """Generate up to ``until_ms`` and return the events due by then, in delivery order."""
        generated = False
        while self.next_second * 1000 <= until_ms:
            self._generate(self.next_second)
            self.next_second += 1
            generated = True
        pending = self._pending
        if generated:
            # Mostly sorted already (each pair's events are in time order): timsort is near linear.
            pending.sort()
        k = bisect.bisect_right(pending, (until_ms, math.inf))
        if not k:
            return []
        due = pending[:k]
        del pending[:k]
        plan = self.plan
        # Unsubscribed since it was generated: stop right away, as Polygon does.
        return [e for e in due if e[2] in plan.get(e[3], ())]
