"""A seeded, deterministic synthetic crypto market: the simulator's source of every event.

Why it is shaped like this:

- **Any window is computable on its own.** Every second of every pair is generated from an RNG
  seeded by ``(seed, pair, second)``, and prices follow per-minute anchors made of multi-scale
  value noise (a random walk's look, computable without the past). So the WebSocket feed and the
  REST history agree for the same simulated time, and a day's open/close needs only the day's
  first and last trades.
- **Exact numbers.** Prices and sizes are integers of ticks and size units; their JSON text is
  rendered from the integers, so the wire carries exact decimals (the platform must keep them).
- **Polygon's quirks are reproduced.** Trades come in bursts; quotes bracket trades; XAS and XA
  bars exist only for windows with trades; now and then a trade arrives late and the minute's XA
  bar is re-sent corrected (same ``s``); XL2 snapshots are full books, not deltas.
"""

from __future__ import annotations

import hashlib
import math
import operator
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import numpy as np

# Known pairs: (typical price, price decimals, size decimals). Others get values derived from a hash.
KNOWN_PAIRS: dict[str, tuple[float, int, int]] = {
    "BTC-USD": (91_000.0, 2, 8),
    "ETH-USD": (3_100.0, 2, 8),
    "SOL-USD": (140.0, 3, 6),
    "XRP-USD": (2.1, 5, 2),
    "DOGE-USD": (0.16, 6, 2),
    "SHIB-USD": (0.0000125, 10, 0),
    "BTC-EUR": (84_000.0, 2, 8),
    "ETH-BTC": (0.034, 6, 8),
}
# Crypto exchange ids seen on the wire, drawn with weights 0.45, 0.25, 0.2, 0.1.
EXCHANGES = (1, 2, 4, 23)
# Per-minute log-price volatility of the finest noise octave; octaves up to ~2 years.
_MINUTE_VOL = 0.0006
_OCTAVES = 21

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Lru(Generic[K, V]):
    """A small bounded cache (the market is queried in time order, so recent keys are hot)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        data = self._data
        if key in data:
            data.move_to_end(key)
            return data[key]
        value = make()
        data[key] = value
        if len(data) > self.maxsize:
            data.popitem(last=False)
        return value


def fixed(units: int, dp: int) -> str:
    """Integer ``units`` of ``10**-dp`` as the shortest exact decimal text (``12345, 2 -> "123.45"``)."""
    if dp == 0:
        return str(units)
    sign = "-" if units < 0 else ""
    q, r = divmod(abs(units), 10**dp)
    if r == 0:
        return f"{sign}{q}"
    return f"{sign}{q}.{r:0{dp}d}".rstrip("0")


@dataclass(frozen=True)
class PairSpec:
    pair: str
    price: float
    price_dp: int
    size_dp: int

    @property
    def tick(self) -> float:
        return 10.0**-self.price_dp


def pair_spec(pair: str) -> PairSpec:
    if pair in KNOWN_PAIRS:
        price, price_dp, size_dp = KNOWN_PAIRS[pair]
        return PairSpec(pair, price, price_dp, size_dp)
    rng = random.Random(f"pair|{pair}")
    price = 10 ** rng.uniform(-4, 4)
    price_dp = max(2, 5 - math.floor(math.log10(price)))
    return PairSpec(pair, price, price_dp, 8 if price > 1 else 2)


class Trade(NamedTuple):
    t: int  # exchange time, ms
    price: int  # ticks
    size: int  # size units
    side: int  # 1 sell, 2 buy (taker side)
    id: str
    exchange: int
    received: int  # Polygon's receive time, ms
    late: bool  # delivered after its minute's first XA bar


class Quote(NamedTuple):
    t: int
    bid: int
    bid_size: int
    ask: int
    ask_size: int
    exchange: int
    received: int


class Agg(NamedTuple):
    """OHLCV over some trades; ``pv`` is sum(price*size) in tick*unit, for an exact VWAP."""

    open_t: int
    open: int
    high: int
    low: int
    close_t: int
    close: int
    volume: int
    pv: int
    trade_count: int


def agg_of(trades: list[Trade]) -> Agg | None:
    """OHLCV of trades given in time order (first is the open, last the close)."""
    if not trades:
        return None
    prices = [tr.price for tr in trades]
    sizes = [tr.size for tr in trades]
    return Agg(
        trades[0].t,
        prices[0],
        max(prices),
        min(prices),
        trades[-1].t,
        prices[-1],
        sum(sizes),
        sum(map(operator.mul, prices, sizes)),
        len(trades),
    )


def merge(a: Agg | None, b: Agg | None) -> Agg | None:
    if a is None:
        return b
    if b is None:
        return a
    first = a if a.open_t <= b.open_t else b
    last = b if b.close_t >= a.close_t else a
    return Agg(
        first.open_t,
        first.open,
        max(a.high, b.high),
        min(a.low, b.low),
        last.close_t,
        last.close,
        a.volume + b.volume,
        a.pv + b.pv,
        a.trade_count + b.trade_count,
    )


@dataclass(frozen=True)
class Second:
    """Everything one pair does in one second."""

    pair: str
    second: int
    trades: list[Trade]
    quotes: list[Quote]
    on_time: Agg | None  # trades delivered in their second (the XAS bar)
    late: Trade | None


@dataclass(frozen=True)
class Minute:
    pair: str
    minute: int
    first_bar: Agg | None  # the XA bar as first sent (without the late trade)
    final_bar: Agg | None  # the corrected bar (what REST serves)
    late: Trade | None


class Market:
    """The deterministic market: a pure function of (seed, pair, time) plus bounded caches."""

    def __init__(
        self,
        seed: int,
        pairs: tuple[str, ...],
        trades_per_second: float = 1.0,
        late_probability: float = 0.15,
        book_levels: int = 10,
    ) -> None:
        self.seed = seed
        self.pairs = pairs
        self.specs = {p: pair_spec(p) for p in pairs}
        self.trades_per_second = trades_per_second
        self.late_probability = late_probability
        self.book_levels = book_levels
        self._seconds: _Lru[tuple[str, int], Second] = _Lru(max(64, 4 * len(pairs)))
        self._summaries: _Lru[tuple[str, int], tuple[Agg | None, Trade | None]] = _Lru(200 * max(1, len(pairs)))
        self._minutes: _Lru[tuple[str, int], Minute] = _Lru(4096)
        self._anchors: _Lru[tuple[str, int], float] = _Lru(8192)
        self._activities: _Lru[tuple[str, int], float] = _Lru(4 * max(1, len(pairs)))
        self._lattice: _Lru[tuple[str, int, int], float] = _Lru(65536)

    # -- prices -----------------------------------------------------------------------------------

    def _node(self, pair: str, octave: int, index: int) -> float:
        return self._lattice.get(
            (pair, octave, index), lambda: random.Random(f"{self.seed}|{pair}|n|{octave}|{index}").gauss(0.0, 1.0)
        )

    def anchor(self, pair: str, minute: int) -> float:
        """The pair's price at the start of ``minute`` (minutes since the epoch)."""

        def make() -> float:
            log_move = 0.0
            for octave in range(_OCTAVES):
                span = 1 << octave
                index, offset = divmod(minute, span)
                frac = offset / span
                smooth = frac * frac * (3 - 2 * frac)
                a = self._node(pair, octave, index)
                b = self._node(pair, octave, index + 1)
                log_move += _MINUTE_VOL * math.sqrt(span) * 0.5 * (a + (b - a) * smooth)
            return self.specs[pair].price * math.exp(max(-3.0, min(3.0, log_move)))

        return self._anchors.get((pair, minute), make)

    # -- seconds ----------------------------------------------------------------------------------

    def _activity(self, pair: str, minute: int) -> float:
        """Bursty arrivals: a per-minute intensity (mean 1) times a per-second burst factor.

        Kept per minute: every second of the minute asks, and seeding a generator costs more than
        an empty second's other work (history renders whole days of mostly empty seconds).
        """
        return self._activities.get(
            (pair, minute), lambda: random.Random(f"{self.seed}|{pair}|a|{minute}").lognormvariate(-0.32, 0.8)
        )

    def _late_second(self, pair: str, minute: int) -> int | None:
        rng = random.Random(f"{self.seed}|{pair}|late|{minute}")
        return rng.randrange(60) if rng.random() < self.late_probability else None

    def second(self, pair: str, second: int) -> Second:
        return self._seconds.get((pair, second), lambda: self._make_second(pair, second))

    def _make_second(self, pair: str, second: int) -> Second:
        # Vectorised: one seeded numpy generator per (pair, second) draws every random number at once.
        spec = self.specs[pair]
        g = np.random.Generator(np.random.PCG64(_seed(self.seed, pair, "s", second)))
        minute, sec_in_minute = divmod(second, 60)
        burst = (0.3, 0.6, 1.0, 1.0, 1.4, 2.7)[int(g.integers(6))]
        n = int(g.poisson(self.trades_per_second * self._activity(pair, minute) * burst))
        start_ms = second * 1000
        late_index = 0 if n and self._late_second(pair, minute) == sec_in_minute else -1
        if n == 0:
            self._summaries.get((pair, second), lambda: (None, None))
            return Second(pair, second, [], [], None, None)
        a0, a1 = self.anchor(pair, minute), self.anchor(pair, minute + 1)
        offsets = np.sort(g.integers(0, 1000, n))
        u = g.random((8, n))
        t = start_ms + offsets
        price = (a0 + (a1 - a0) * ((sec_in_minute + offsets / 1000.0) / 60.0)) * (1.0 + 0.0002 * g.standard_normal(n))
        ticks = np.maximum(1, np.rint(price / spec.tick)).astype(np.int64)
        size = np.maximum(1, np.rint(g.lognormal(0.0, 1.1, n) * 2_000.0 / price * 10**spec.size_dp)).astype(np.int64)
        exchange = np.select([u[0] < 0.45, u[0] < 0.7, u[0] < 0.9], list(EXCHANGES[:3]), EXCHANGES[3])
        side = np.where(u[1] < 0.5, 2, 1)
        received = t + 5 + (u[2] * 36).astype(np.int64)
        spread = np.maximum(1, np.rint(ticks * 0.00008)).astype(np.int64)
        below = (u[3] * (spread + 1)).astype(np.int64)
        qt = np.maximum(start_ms, t - 1 - (u[4] * 50).astype(np.int64))
        bid_size = np.maximum(1, np.rint(size * (0.5 + 3.5 * u[5]))).astype(np.int64)
        ask_size = np.maximum(1, np.rint(size * (0.5 + 3.5 * u[6]))).astype(np.int64)
        q_received = qt + 5 + (u[7] * 36).astype(np.int64)
        ex_list = exchange.tolist()
        uuid_bits = g.integers(0, 2**63, (n, 2), dtype=np.int64).tolist()
        ids = [
            str(uuid.UUID(int=(hi << 64) | lo)) if ex == 23 else str(second * 1_000_000 + j)
            for j, (ex, (hi, lo)) in enumerate(zip(ex_list, uuid_bits, strict=True))
        ]
        late = [False] * n
        if late_index >= 0:
            late[late_index] = True
        ticks_l, size_l = ticks.tolist(), size.tolist()
        trades = list(map(Trade, t.tolist(), ticks_l, size_l, side.tolist(), ids, ex_list, received.tolist(), late))
        bids = (ticks - below).tolist()
        asks = (ticks + spread - below).tolist()
        quotes = list(
            map(Quote, qt.tolist(), bids, bid_size.tolist(), asks, ask_size.tolist(), ex_list, q_received.tolist())
        )
        on_time = agg_of(trades[1:] if late_index == 0 else trades)
        late_trade = trades[0] if late_index == 0 else None
        self._summaries.get((pair, second), lambda: (on_time, late_trade))
        return Second(pair, second, trades, quotes, on_time, late_trade)

    def _summary(self, pair: str, second: int) -> tuple[Agg | None, Trade | None]:
        def make() -> tuple[Agg | None, Trade | None]:
            sec = self._make_second(pair, second)
            return sec.on_time, sec.late

        return self._summaries.get((pair, second), make)

    def book(self, pair: str, second: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """An XL2 snapshot for the end of ``second``: (bids, asks) as (price ticks, size units)."""
        spec = self.specs[pair]
        rng = random.Random(f"{self.seed}|{pair}|b|{second}")
        minute, sec_in_minute = divmod(second, 60)
        a0, a1 = self.anchor(pair, minute), self.anchor(pair, minute + 1)
        mid = max(2, round((a0 + (a1 - a0) * (sec_in_minute + 1) / 60.0) / spec.tick))
        step = max(1, round(mid * 0.00005))
        unit = 10**spec.size_dp
        bids = [(mid - step * (i + 1), max(1, round(rng.uniform(0.01, 3.0) * unit))) for i in range(self.book_levels)]
        asks = [(mid + step * (i + 1), max(1, round(rng.uniform(0.01, 3.0) * unit))) for i in range(self.book_levels)]
        return [b for b in bids if b[0] > 0], asks

    # -- minutes, days ----------------------------------------------------------------------------

    def minute(self, pair: str, minute: int) -> Minute:
        def make() -> Minute:
            first: Agg | None = None
            late: Trade | None = None
            for s in range(minute * 60, minute * 60 + 60):
                on_time, late_here = self._summary(pair, s)
                first = merge(first, on_time)
                late = late_here or late
            final = merge(first, agg_of([late])) if late else first
            return Minute(pair, minute, first, final, late)

        return self._minutes.get((pair, minute), make)

    def bar(self, pair: str, start_ms: int, end_ms: int) -> Agg | None:
        """The final (corrected) bar over ``[start_ms, end_ms)``, built from minutes where aligned."""
        result: Agg | None = None
        t = start_ms
        while t < end_ms:
            if t % 60_000 == 0 and t + 60_000 <= end_ms:
                result = merge(result, self.minute(pair, t // 60_000).final_bar)
                t += 60_000
            else:
                nxt = min(end_ms, (t // 1000 + 1) * 1000)
                sec = self.second(pair, t // 1000)
                result = merge(result, agg_of([tr for tr in sec.trades if t <= tr.t < nxt]))
                t = nxt
        return result

    def first_trade(self, pair: str, start_ms: int, end_ms: int) -> Trade | None:
        for s in range(start_ms // 1000, end_ms // 1000):
            trades = self.second(pair, s).trades
            if trades:
                return trades[0]
        return None

    def last_trade(self, pair: str, start_ms: int, end_ms: int) -> Trade | None:
        for s in range(end_ms // 1000 - 1, start_ms // 1000 - 1, -1):
            trades = self.second(pair, s).trades
            if trades:
                return trades[-1]
        return None


def _seed(*parts: object) -> int:
    """A stable 64-bit seed from the parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "big")
