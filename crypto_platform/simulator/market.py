"""A seeded, deterministic synthetic crypto market: the simulator's source of every event.

Why it is shaped like this:

- **Any window is computable on its own.** Every block of ten minutes of every pair is drawn from
  an RNG seeded by ``(seed, pair, block)``, and prices follow per-minute anchors made of multi-scale
  value noise (a random walk's look, computable without the past). So the WebSocket feed and the
  REST history agree for the same simulated time, and a day's open/close needs only the day's
  first and last trades.
- **Bars are cheap.** What a bar depends on (arrivals, times, prices, sizes) is drawn first and
  aggregated with array reductions; the rest of each trade (side, exchange, id, its quote) only
  when its minute is streamed or listed. A day's bar at the default density (about 1.2M trades a
  pair) takes well under a second this way; rendering every trade took two minutes.
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

from crypto_platform.days import DAY_MS, MINUTE_MS

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
        self.put(key, value)
        return value

    def find(self, key: K) -> V | None:
        data = self._data
        if key in data:
            data.move_to_end(key)
            return data[key]
        return None

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)


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
    late: bool  # a trade of this minute arrives after its first XA bar


_BURSTS = np.array([0.3, 0.6, 1.0, 1.0, 1.4, 2.7])
# Minutes drawn together (divisors of a day's 1,440): as many as keep a block near _BLOCK_TRADES
# trades, so a day's bar at the default density draws 144 blocks, not 1,440 minutes, while a
# full-speed stream does not draw ten minutes ahead of what it sends.
_BLOCK_SIZES = (10, 5, 2, 1)
_BLOCK_TRADES = 12_000


class _Block(NamedTuple):
    """What the bars of a block of minutes depend on: arrivals, times, prices and sizes."""

    first_minute: int
    counts: np.ndarray  # trades per second
    within: np.ndarray  # ms since the block's start, sorted
    ticks: np.ndarray  # prices in ticks
    sizes: np.ndarray  # sizes in units
    minute_starts: np.ndarray  # index of each minute's first trade (one more entry than minutes)
    late: np.ndarray  # per minute: index of its late trade (the first of a second), or -1


class Market:
    """The deterministic market: a pure function of (seed, pair, time) plus bounded caches.

    Drawn in two stages so bars are cheap. A pair's block of ``block_minutes`` minutes comes from one
    seeded generator, vectorised: arrival counts, times, prices and sizes, which is all a bar needs,
    so a day's bar (REST grouped daily) never makes a Python object per trade. The rest of a trade
    (side, exchange, id, receive time, its quote) comes from a generator per minute, drawn only when
    the WebSocket or the trades endpoint needs that minute's trades.
    """

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
        per_minute = trades_per_second * 60
        self.block_minutes = next((m for m in _BLOCK_SIZES if m * per_minute <= _BLOCK_TRADES), 1)
        npairs = max(1, len(pairs))
        # One minute of trade objects per pair (at full speed about 24k trades each).
        self._seconds: _Lru[tuple[str, int], list[Second]] = _Lru(npairs + 1)
        self._blocks: _Lru[tuple[str, int], _Block] = _Lru(npairs + 2)
        self._minutes: _Lru[tuple[str, int], Minute] = _Lru(4096)
        self._days: _Lru[tuple[str, int], Agg | None] = _Lru(64 * npairs)
        self._anchors: _Lru[tuple[str, int], np.ndarray] = _Lru(4 * npairs)
        self._lattice: _Lru[tuple[str, int, int], float] = _Lru(65536)

    # -- prices -----------------------------------------------------------------------------------

    def _node(self, pair: str, octave: int, index: int) -> float:
        return self._lattice.get(
            (pair, octave, index), lambda: random.Random(f"{self.seed}|{pair}|n|{octave}|{index}").gauss(0.0, 1.0)
        )

    def _day_anchors(self, pair: str, day: int) -> np.ndarray:
        """Anchor prices of the day's minutes 0..1440 (the last is the next day's first)."""

        def make() -> np.ndarray:
            minutes = np.arange(day * 1440, day * 1440 + 1441, dtype=np.int64)
            log_move = np.zeros(len(minutes))
            for octave in range(_OCTAVES):
                span = 1 << octave
                index = minutes // span
                frac = (minutes % span) / span
                smooth = frac * frac * (3 - 2 * frac)
                lo = int(index[0])
                nodes = np.array([self._node(pair, octave, i) for i in range(lo, int(index[-1]) + 2)])
                a, b = nodes[index - lo], nodes[index - lo + 1]
                log_move += _MINUTE_VOL * math.sqrt(span) * 0.5 * (a + (b - a) * smooth)
            return self.specs[pair].price * np.exp(np.clip(log_move, -3.0, 3.0))

        return self._anchors.get((pair, day), make)

    def anchor(self, pair: str, minute: int) -> float:
        """The pair's price at the start of ``minute`` (minutes since the epoch)."""
        day, index = divmod(minute, 1440)
        return float(self._day_anchors(pair, day)[index])

    # -- draws ------------------------------------------------------------------------------------

    def _block(self, pair: str, block: int) -> _Block:
        return self._blocks.get((pair, block), lambda: self._make_block(pair, block))

    def _make_block(self, pair: str, block: int) -> _Block:
        spec = self.specs[pair]
        g = np.random.Generator(np.random.PCG64(_seed(self.seed, pair, "b", block)))
        size = self.block_minutes
        first_minute = block * size
        seconds = size * 60
        # Bursty arrivals: a per-minute intensity (mean 1) times a per-second burst factor.
        activity = g.lognormal(-0.32, 0.8, size)
        late_draw, late_second = g.random(size), g.integers(0, 60, size)
        burst = _BURSTS[g.integers(0, len(_BURSTS), seconds)]
        counts = g.poisson(self.trades_per_second * np.repeat(activity, 60) * burst)
        n = int(counts.sum())
        offsets = g.integers(0, 1000, n, dtype=np.int32)
        within = np.sort(np.repeat(np.arange(seconds, dtype=np.int64) * 1000, counts) + offsets)
        day, offset = divmod(first_minute, 1440)
        anchors = self._day_anchors(pair, day)[offset : offset + size + 1]
        minute_of = within // MINUTE_MS
        a0, a1 = anchors[minute_of], anchors[minute_of + 1]
        noise, size_draw = g.standard_normal((2, n))
        price = (a0 + (a1 - a0) * ((within % MINUTE_MS) / MINUTE_MS)) * (1.0 + 0.0002 * noise)
        ticks = np.maximum(1, np.rint(price / spec.tick)).astype(np.int64)
        # Log-normal sizes (sigma 1.1) worth about 2,000 in the quote currency; exp of a normal is
        # the same law as Generator.lognormal at half its cost.
        sizes = np.maximum(1, np.rint(np.exp(1.1 * size_draw) * (2_000.0 * 10**spec.size_dp) / price)).astype(np.int64)
        second_starts = np.cumsum(counts) - counts
        minute_starts = np.append(second_starts[::60], n)
        at = np.arange(size) * 60 + late_second
        late = np.where((late_draw < self.late_probability) & (counts[at] > 0), second_starts[at], -1)
        return _Block(first_minute, counts, within, ticks, sizes, minute_starts, late)

    def _minute_seconds(self, pair: str, minute: int) -> list[Second]:
        """The minute's 60 seconds with every trade and quote."""
        return self._seconds.get((pair, minute), lambda: self._make_seconds(pair, minute))

    def _make_seconds(self, pair: str, minute: int) -> list[Second]:
        b = self._block(pair, minute // self.block_minutes)
        k = minute - b.first_minute
        lo, hi = int(b.minute_starts[k]), int(b.minute_starts[k + 1])
        n = hi - lo
        counts = b.counts[k * 60 : k * 60 + 60]
        start_ms = b.first_minute * MINUTE_MS
        t = start_ms + b.within[lo:hi]
        ticks, sizes = b.ticks[lo:hi], b.sizes[lo:hi]
        g = np.random.Generator(np.random.PCG64(_seed(self.seed, pair, "t", minute)))
        u = g.random((8, n))
        exchange = np.select([u[0] < 0.45, u[0] < 0.7, u[0] < 0.9], list(EXCHANGES[:3]), EXCHANGES[3])
        side = np.where(u[1] < 0.5, 2, 1)
        received = t + 5 + (u[2] * 36).astype(np.int64)
        spread = np.maximum(1, np.rint(ticks * 0.00008)).astype(np.int64)
        below = (u[3] * (spread + 1)).astype(np.int64)
        qt = np.maximum(t - t % 1000, t - 1 - (u[4] * 50).astype(np.int64))
        bid_size = np.maximum(1, np.rint(sizes * (0.5 + 3.5 * u[5]))).astype(np.int64)
        ask_size = np.maximum(1, np.rint(sizes * (0.5 + 3.5 * u[6]))).astype(np.int64)
        q_received = qt + 5 + (u[7] * 36).astype(np.int64)
        uuid_bits = g.integers(0, 2**63, (n, 2), dtype=np.int64).tolist()
        ex_list = exchange.tolist()
        first_second = minute * 60
        second_of = np.repeat(np.arange(first_second, first_second + 60), counts)
        index_in_second = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        ids = [
            str(uuid.UUID(int=(h << 64) | low)) if ex == 23 else str(sid)
            for ex, (h, low), sid in zip(
                ex_list, uuid_bits, (second_of * 1_000_000 + index_in_second).tolist(), strict=True
            )
        ]
        late = [False] * n
        late_index = int(b.late[k]) - lo if b.late[k] >= 0 else -1
        if late_index >= 0:
            late[late_index] = True
        trades = list(
            map(Trade, t.tolist(), ticks.tolist(), sizes.tolist(), side.tolist(), ids, ex_list, received.tolist(), late)
        )
        bids = (ticks - below).tolist()
        asks = (ticks + spread - below).tolist()
        quotes = list(
            map(Quote, qt.tolist(), bids, bid_size.tolist(), asks, ask_size.tolist(), ex_list, q_received.tolist())
        )
        out = []
        i = 0
        for j, count in enumerate(counts.tolist()):
            sec_trades, sec_quotes = trades[i : i + count], quotes[i : i + count]
            late_here = count > 0 and i == late_index
            on_time = agg_of(sec_trades[1:] if late_here else sec_trades)
            out.append(
                Second(pair, first_second + j, sec_trades, sec_quotes, on_time, sec_trades[0] if late_here else None)
            )
            i += count
        return out

    def second(self, pair: str, second: int) -> Second:
        return self._minute_seconds(pair, second // 60)[second % 60]

    # -- bars -------------------------------------------------------------------------------------

    def minute(self, pair: str, minute: int) -> Minute:
        """The minute's bars, from its block's draws alone (no trade objects are made)."""
        found = self._minutes.find((pair, minute))
        if found is None:
            for m in self._make_minutes(pair, minute // self.block_minutes):
                self._minutes.put((pair, m.minute), m)
                if m.minute == minute:
                    found = m
        assert found is not None
        return found

    def _make_minutes(self, pair: str, block: int) -> list[Minute]:
        """Every minute of a block: per-minute aggregates with one reduction per field."""
        b = self._block(pair, block)
        start_ms = b.first_minute * MINUTE_MS
        on_time = np.ones(len(b.within), dtype=bool)
        on_time[b.late[b.late >= 0]] = False
        keep = np.flatnonzero(on_time)
        # Each minute's first on-time trade, in ``keep`` positions (a minute's trades are contiguous).
        starts = np.searchsorted(keep, b.minute_starts)
        firsts = _aggs_by_segment(start_ms, b.within[keep], b.ticks[keep], b.sizes[keep], starts)
        out = []
        for k, first in enumerate(firsts):
            late_index = int(b.late[k])
            if late_index < 0:
                out.append(Minute(pair, b.first_minute + k, first, first, False))
                continue
            one = slice(late_index, late_index + 1)
            (late,) = _aggs_by_segment(start_ms, b.within[one], b.ticks[one], b.sizes[one], np.array([0, 1]))
            out.append(Minute(pair, b.first_minute + k, first, merge(first, late), True))
        return out

    def bar(self, pair: str, start_ms: int, end_ms: int) -> Agg | None:
        """The final (corrected) bar over ``[start_ms, end_ms)``: whole days, then minutes, then trades."""
        result: Agg | None = None
        t = start_ms
        while t < end_ms:
            if t % DAY_MS == 0 and t + DAY_MS <= end_ms:
                result = merge(result, self._day(pair, t // DAY_MS))
                t += DAY_MS
            elif t % MINUTE_MS == 0 and t + MINUTE_MS <= end_ms:
                result = merge(result, self.minute(pair, t // MINUTE_MS).final_bar)
                t += MINUTE_MS
            else:
                nxt = min(end_ms, (t // 1000 + 1) * 1000)
                sec = self.second(pair, t // 1000)
                result = merge(result, agg_of([tr for tr in sec.trades if t <= tr.t < nxt]))
                t = nxt
        return result

    def _day(self, pair: str, day: int) -> Agg | None:
        """A whole UTC day's bar, kept once drawn."""

        def make() -> Agg | None:
            result: Agg | None = None
            for minute in range(day * 1440, day * 1440 + 1440):
                result = merge(result, self.minute(pair, minute).final_bar)
            return result

        return self._days.get((pair, day), make)

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


def _aggs_by_segment(
    start_ms: int, within: np.ndarray, ticks: np.ndarray, sizes: np.ndarray, starts: np.ndarray
) -> list[Agg | None]:
    """``agg_of`` of each segment ``[starts[k], starts[k+1])`` of trades given as arrays in time order.

    ``pv`` is exact: each price x size fits int64 (checked), and the sums are taken over the high
    and low 32 bits separately, so a busy minute's total cannot overflow.
    """
    n = len(ticks)
    out: list[Agg | None] = [None] * (len(starts) - 1)
    if not n:
        return out
    if int(ticks.max()) * int(sizes.max()) >= 2**63:
        raise OverflowError("price x size passes 2**63 ticks x units: use fewer decimals for this pair")
    pv = ticks * sizes
    counts = np.diff(starts)
    full = np.flatnonzero(counts > 0)
    idx = starts[full]
    highs = np.maximum.reduceat(ticks, idx)
    lows = np.minimum.reduceat(ticks, idx)
    volumes = np.add.reduceat(sizes, idx)
    pv_high = np.add.reduceat(pv >> 32, idx)
    pv_low = np.add.reduceat(pv & 0xFFFFFFFF, idx)
    ends = idx + counts[full] - 1
    for j, k in enumerate(full.tolist()):
        first, last = int(idx[j]), int(ends[j])
        out[k] = Agg(
            start_ms + int(within[first]),
            int(ticks[first]),
            int(highs[j]),
            int(lows[j]),
            start_ms + int(within[last]),
            int(ticks[last]),
            int(volumes[j]),
            (int(pv_high[j]) << 32) + int(pv_low[j]),
            int(counts[k]),
        )
    return out


def _seed(*parts: object) -> int:
    """A stable 64-bit seed from the parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "big")
