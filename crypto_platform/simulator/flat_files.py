"""The simulator's Flat Files: a day's trades, minute and day aggregates as Polygon's gzip CSVs.

Massive publishes one gzip CSV per UTC day and dataset under ``global_crypto/`` (see the History
sources section of docs/architecture.md). The simulator renders them from the same market its
stream and REST answers come from, so a day's file holds exactly the trades the stream sent
(key for key, the same exact decimal text) and the bars REST serves.

One pass over a day renders all three files (pair by pair, minute by minute: the market keeps the
seconds of the current minute in memory, so the minute bar costs nothing more), writing gzip
members as it goes: a busy day is never held in memory. Files are cached on disk per key, rendered
once, and served with their size known (S3 clients ask for it before they read).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from crypto_platform.days import MINUTE_MS, day_bounds_ms
from crypto_platform.simulator.feed import Renderer
from crypto_platform.simulator.market import Agg, Market, merge

BUCKET = "flatfiles"
PREFIX = "global_crypto"
TRADES = "trades_v1"
MINUTE_AGGS = "minute_aggs_v1"
DAY_AGGS = "day_aggs_v1"
DATASETS = (TRADES, MINUTE_AGGS, DAY_AGGS)
TRADES_HEADER = "ticker,conditions,exchange,id,participant_timestamp,price,size"
AGGS_HEADER = "ticker,volume,open,close,high,low,window_start,transactions"
_NS = 1_000_000


def object_key(dataset: str, day: date) -> str:
    """``global_crypto/trades_v1/2026/11/2026-11-25.csv.gz``."""
    return f"{PREFIX}/{dataset}/{day:%Y}/{day:%m}/{day.isoformat()}.csv.gz"


def parse_key(key: str) -> tuple[str, date] | None:
    """(dataset, day) of a Flat Files key, or None when the key is not one."""
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != PREFIX or parts[1] not in DATASETS or not parts[4].endswith(".csv.gz"):
        return None
    try:
        day = date.fromisoformat(parts[4].removesuffix(".csv.gz"))
    except ValueError:
        return None
    if parts[2:4] != [f"{day:%Y}", f"{day:%m}"]:
        return None
    return parts[1], day


def ticker(pair: str) -> str:
    return f"X:{pair}"


@dataclass(frozen=True)
class StoredObject:
    """A rendered file: where it is, its size, its ETag (MD5 of the bytes, as S3's single-part ETag)."""

    key: str
    path: Path
    size: int
    etag: str
    last_modified: datetime


class _GzipCsv:
    """A gzip CSV written in members as rows come (``mtime=0``: the same day gives the same bytes)."""

    def __init__(self, path: Path, header: str) -> None:
        self.path = path
        self._raw = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)
        self._rows: list[str] = [header + "\n"]
        self._pending = 0

    def add(self, rows: list[str]) -> None:
        self._rows.extend(rows)
        self._pending += len(rows)
        if self._pending >= 20_000:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self._gz.write("".join(self._rows).encode())
            self._rows = []
            self._pending = 0

    def close(self) -> None:
        self.flush()
        self._gz.close()
        self._raw.close()


class FlatFiles:
    """The ``flatfiles`` bucket of a simulated market: which keys exist, and their bytes on disk.

    A day is published once it has ended (``now_ms`` past its last millisecond), from
    ``first_day`` on. ``market`` should be this object's own instance (same seed and settings as the
    stream's): its caches are not shared with threads serving other requests.
    """

    def __init__(self, market: Market, now_ms: Callable[[], int], cache_dir: Path, first_day: date) -> None:
        self.market = market
        self.render_text = Renderer(market)
        self.now_ms = now_ms
        self.cache_dir = Path(cache_dir)
        self.first_day = first_day
        self._lock = threading.Lock()
        self._day_locks: dict[date, threading.Lock] = {}
        self._objects: dict[str, StoredObject] = {}
        # Fault injection: refuse every GetObject after this many more (None: never).
        self._gets_left: int | None = None

    # -- what exists ----------------------------------------------------------------------------

    def published_days(self) -> list[date]:
        """Every day from ``first_day`` whose last millisecond has passed, oldest first."""
        last = datetime.fromtimestamp(self.now_ms() / 1000, UTC).date() - timedelta(days=1)
        n = (last - self.first_day).days + 1
        return [self.first_day + timedelta(days=i) for i in range(max(0, n))]

    def keys(self, prefix: str = "") -> Iterator[str]:
        """The bucket's keys starting with ``prefix``, in S3's (byte) order."""
        days = self.published_days()
        for dataset in sorted(DATASETS):
            base = f"{PREFIX}/{dataset}/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                continue
            for day in days:
                key = object_key(dataset, day)
                if key.startswith(prefix):
                    yield key

    def is_published(self, key: str) -> bool:
        parsed = parse_key(key)
        return parsed is not None and parsed[1] in set(self.published_days())

    # -- faults -----------------------------------------------------------------------------------

    def refuse_gets_after(self, count: int | None) -> None:
        """Answer 403 to GetObject once ``count`` more have been served (None: lift the fault)."""
        with self._lock:
            self._gets_left = count

    def refusal(self, head: bool) -> str | None:
        """Why a request is refused by an injected fault (None: serve it)."""
        if head:
            return None
        with self._lock:
            if self._gets_left is None:
                return None
            if self._gets_left <= 0:
                return "Access Denied (fault injected by the simulator)"
            self._gets_left -= 1
        return None

    def damage(self, key: str, how: str) -> None:
        """Replace a published file by a damaged copy: ``truncate`` (cut in half) or ``corrupt`` (bytes flipped)."""
        stored = self.get(key)
        if stored is None:
            raise ValueError(f"{key} is not published")
        data = bytearray(stored.path.read_bytes())
        if how == "truncate":
            data = data[: len(data) // 2]
        elif how == "corrupt":
            mid = len(data) // 2
            data[mid : mid + 64] = bytes(b ^ 0x5A for b in data[mid : mid + 64])
        else:
            raise ValueError(f"damage {how!r}: use truncate or corrupt")
        stored.path.write_bytes(bytes(data))
        digest = hashlib.md5(bytes(data), usedforsecurity=False).hexdigest()
        with self._lock:
            self._objects[key] = StoredObject(key, stored.path, len(data), f'"{digest}"', stored.last_modified)

    # -- bytes ------------------------------------------------------------------------------------

    def get(self, key: str) -> StoredObject | None:
        """The rendered object for ``key`` (rendering its day on first use); None if not published."""
        parsed = self.is_published(key) and parse_key(key)
        if not parsed:
            return None
        day = parsed[1]
        with self._lock:
            known = self._objects.get(key)
            day_lock = self._day_locks.setdefault(day, threading.Lock())
        if known is not None:
            return known
        with day_lock:
            if key not in self._objects:
                self._render_day(day)
        return self._objects[key]

    def _render_day(self, day: date) -> None:
        folder = self.cache_dir / day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = {ds: folder / f".{ds}.csv.gz.tmp" for ds in DATASETS}
        trades = _GzipCsv(tmp[TRADES], TRADES_HEADER)
        minutes = _GzipCsv(tmp[MINUTE_AGGS], AGGS_HEADER)
        days = _GzipCsv(tmp[DAY_AGGS], AGGS_HEADER)
        try:
            self._write_day(day, trades, minutes, days)
        finally:
            for f in (trades, minutes, days):
                f.close()
        modified = datetime.fromtimestamp(min(self.now_ms(), day_bounds_ms(day)[1]) / 1000, UTC)
        for ds, path in tmp.items():
            final = folder / f"{ds}.csv.gz"
            os.replace(path, final)
            digest = hashlib.md5(final.read_bytes(), usedforsecurity=False).hexdigest()
            key = object_key(ds, day)
            stored = StoredObject(key, final, final.stat().st_size, f'"{digest}"', modified)
            with self._lock:
                self._objects[key] = stored

    def _agg_row(self, pair: str, agg: Agg, start_ms: int) -> str:
        b = self.render_text.bar_text(pair, agg)
        return f"{ticker(pair)},{b.v},{b.o},{b.c},{b.h},{b.low},{start_ms * _NS},{b.n}\n"

    def _write_day(self, day: date, trades: _GzipCsv, minutes: _GzipCsv, days: _GzipCsv) -> None:
        lo = day_bounds_ms(day)[0]
        first_minute = lo // MINUTE_MS
        market = self.market
        for pair in sorted(market.pairs, key=ticker):
            text = self.render_text.text[pair]
            price, size, tick = text.price, text.size, ticker(pair)
            whole_day: Agg | None = None
            for minute in range(first_minute, first_minute + 1440):
                rows = []
                for second in range(minute * 60, minute * 60 + 60):
                    for tr in market.second(pair, second).trades:
                        rows.append(
                            f"{tick},{tr.side},{tr.exchange},{tr.id},{tr.t * _NS},{price(tr.price)},{size(tr.size)}\n"
                        )
                if rows:
                    trades.add(rows)
                bar = market.minute(pair, minute).final_bar
                if bar is not None:
                    minutes.add([self._agg_row(pair, bar, minute * MINUTE_MS)])
                    whole_day = merge(whole_day, bar)
            if whole_day is not None:
                days.add([self._agg_row(pair, whole_day, lo)])
