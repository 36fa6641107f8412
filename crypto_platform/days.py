"""UTC days and minutes in epoch milliseconds: the one home of the platform's time arithmetic.

Every table keys its rows by event time in epoch ms, partitions by UTC day and builds bars by UTC
minute, and the simulator's feed, REST answers and Flat Files cut time the same way, so the day's
bounds and the minute's length are written once, here. This module imports
nothing but the standard library on purpose: the ingester and the lake writer (``stream/``,
``lake/``) use it on their hot path and must start without loading Dagster, which
``partitions.py`` (the Dagster side of days) does; ``partitions.py`` re-exports these names for the
assets and checks.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, date, datetime

MINUTE_MS = 60_000
DAY_MS = 86_400_000


def day_bounds_ms(day: date | str) -> tuple[int, int]:
    """``[start, end)`` of a UTC day (a ``date`` or ``YYYY-MM-DD``) in epoch ms."""
    d = date.fromisoformat(day) if isinstance(day, str) else day
    start = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1000
    return start, start + DAY_MS


@functools.lru_cache(maxsize=64)
def _day_text(day_number: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * (DAY_MS // 1000)))


def day_of(ms: int) -> str:
    """UTC date of an epoch-ms time as YYYY-MM-DD (memoised per day: the ingester asks once per frame)."""
    return _day_text(ms // DAY_MS)


def clock_text(ms: int) -> str:
    """An epoch-ms time as ``YYYY-MM-DD HH:MM:SS`` UTC, as it is shown to people (gap names, alert tables)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def minute_of(ms: int) -> int:
    """Start of the UTC minute holding an epoch-ms time."""
    return ms - ms % MINUTE_MS


__all__ = ["DAY_MS", "MINUTE_MS", "clock_text", "day_bounds_ms", "day_of", "minute_of"]
