"""Stream gaps in event time, and the REST data that fills them.

The session ledger says *when* (receive clock) the stream was down. Bars are keyed by *event* time,
so each gap is placed on the event clock by the data around it: it opens at the last event time
the session before it delivered and closes at the event time of the next session's first frame.
That holds whatever the offset between the two clocks (a replay, a simulator running history at
60x); a session with no rows in the day falls back to the ledger's receive times, which is right
for a live feed, where the clocks agree to within the feed's latency.

The stream's very beginning is a gap too: the first session that received data began inside a
minute whose earlier trades (and the corrections of the minutes before it) were never received. It
is a window of one instant, the first session's first event time, after no session
(``after_session`` 0), placed on the day whose rows hold that session's first frames. The minutes
it touches are partial, so they are in a gap and repaired like any other, instead of being settled
from part of their trades. A session that ends inside a minute is followed by a gap that opens at
its last event, so that minute is in a gap already.

A minute is *in a gap* when the window in which its data (trades, and corrections up to the
revision window after its end) could arrive overlaps the gap: ``[minute, minute + 60 s +
revision window)`` against ``[gap start, gap end]``. Such minutes are repaired from REST
(``/v2/aggs`` minute bars, or ``/v3/trades`` when trade repair is on).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.days import MINUTE_MS, minute_of
from crypto_platform.lake.bars import BARS_SCHEMA
from crypto_platform.lake.schemas import TRADES_SCHEMA
from crypto_platform.lake.tables import DeltaLake
from crypto_platform.polygon.rest_client import PolygonRest
from crypto_platform.stream.session_ledger import LEDGER_FILE, GapWindow, Session, gaps, sessions

# ``after_session`` of the gap before the first session: no session was before it.
BEFORE_THE_STREAM = 0
REST_SOURCE = "rest_repair"

# Per session: the event time of its first frame (the freshest event in it) and its last event
# time. Trades carry their event time; a bar is known at its end.
_SESSION_CLOCK_SQL = """
WITH samples AS (
    SELECT session, received_ns, event_ms AS t FROM trades WHERE session IS NOT NULL
    UNION ALL
    SELECT session, received_ns, end_ms AS t FROM aggregates WHERE session IS NOT NULL
),
firsts AS (SELECT session, min(received_ns) AS first_ns FROM samples GROUP BY session)
SELECT s.session,
       max(s.t) FILTER (WHERE s.received_ns = f.first_ns) AS first_ms,
       max(s.t) AS last_ms,
       min(f.first_ns) AS first_ns
FROM samples s JOIN firsts f USING (session)
GROUP BY s.session
"""
# A session's first rows in a day are its first frames (it began in that day's data) when they were
# received within this long of the ledger's first data frame: the first data frame may hold quotes
# only, so the first trade or bar can come a little later.
OPENING_TOLERANCE_NS = 60 * 1_000_000_000


@dataclass(frozen=True)
class SessionWindow:
    """The event-time span a session delivered."""

    session: int
    first_ms: int
    last_ms: int


def session_clock(trades: pa.Table, aggregates: pa.Table) -> dict[int, tuple[int, ...]]:
    """session -> (event time of its first frame, its last event time, receive time of that frame).

    From the day's raw rows: "first" is the first the day holds, which is the session's own first
    frame only on the day it began.
    """
    con = duckdb.connect()
    try:
        con.register("trades", trades.select(["session", "received_ns", "event_ms"]))
        con.register("aggregates", aggregates.select(["session", "received_ns", "end_ms"]))
        rows = con.sql(_SESSION_CLOCK_SQL).fetchall()
    finally:
        con.close()
    return {int(s): (int(first), int(last), int(first_ns)) for s, first, last, first_ns in rows}


_CLOCK_SOURCES = (("raw_trades", "event_ms"), ("raw_aggregates", "end_ms"))


def lake_session_clock(lake: DeltaLake, day: str) -> dict[int, tuple[int, ...]]:
    """:func:`session_clock` of the day's raw tables, from the data files' statistics.

    A stream run must not read the day (millions of rows late in a busy day) to place the ledger's
    sessions on the event clock. A file whose rows all carry one session gives that session's
    latest event time and earliest receipt from its min/max statistics; only the files that mix
    sessions (a reconnect inside a segment), and those holding a session's first receipt (whose
    event time is needed), are read. The result equals :func:`session_clock` of the full day.
    """
    stats: list[tuple[str, str, str, int, int, int]] = []  # (table, time column, path, session, min ns, max t)
    mixed: dict[str, list[str]] = {}
    for name, column in _CLOCK_SOURCES:
        files = lake.file_stats(name, day)
        if files is None or not files.num_rows:
            continue
        picked = ["path", "num_records", "null_count.session", "min.session", "max.session", "min.received_ns"]
        for f in files.select([*picked, f"max.{column}"]).to_pylist():
            if f["null_count.session"] == f["num_records"]:
                continue  # no streamed rows (REST repair, history)
            known = None not in (f["min.session"], f["min.received_ns"], f[f"max.{column}"])
            if known and f["null_count.session"] == 0 and f["min.session"] == f["max.session"]:
                stats.append((name, column, f["path"], f["min.session"], f["min.received_ns"], f[f"max.{column}"]))
            else:
                mixed.setdefault(name, []).append(f["path"])
    first_ns: dict[int, int] = {}
    last_ms: dict[int, int] = {}
    for _, _, _, session, ns, t in stats:
        first_ns[session] = min(ns, first_ns.get(session, ns))
        last_ms[session] = max(t, last_ms.get(session, t))
    samples: list[pa.Table] = []

    def sample(name: str, column: str, paths: list[str]) -> None:
        rows = lake.read_files(name, day, paths, columns=["session", "received_ns", column])
        rows = rows.filter(pc.is_valid(rows["session"]))
        samples.append(pa.table({"session": rows["session"], "received_ns": rows["received_ns"], "t": rows[column]}))

    for name, column in _CLOCK_SOURCES:
        if mixed.get(name):
            sample(name, column, mixed[name])
    for rows in samples:
        for r in rows.group_by("session").aggregate([("received_ns", "min"), ("t", "max")]).to_pylist():
            s, ns, t = r["session"], r["received_ns_min"], r["t_max"]
            first_ns[s] = min(ns, first_ns.get(s, ns))
            last_ms[s] = max(t, last_ms.get(s, t))
    for name, column in _CLOCK_SOURCES:
        firsts = [p for n, _, p, s, ns, _ in stats if n == name and ns == first_ns[s]]
        if firsts:
            sample(name, column, firsts)
    clock: dict[int, tuple[int, ...]] = {}
    candidates = pa.concat_tables(samples) if samples else None
    for s, ns in first_ns.items():
        at_first = None
        if candidates is not None:
            mine = candidates.filter(
                pc.and_(pc.equal(candidates["session"], s), pc.equal(candidates["received_ns"], ns))
            )
            at_first = pc.max(mine["t"]).as_py() if mine.num_rows else None
        clock[s] = (int(at_first if at_first is not None else last_ms[s]), int(last_ms[s]), int(ns))
    return clock


def _ms(ns: int | None) -> int | None:
    return None if ns is None else ns // 1_000_000


def ledger_windows(
    landing_dir: Path, clock: dict[int, tuple[int, ...]], day_lo: int, day_hi: int, now_ms: int
) -> tuple[list[SessionWindow], list[GapWindow]]:
    """The sessions and gaps of the ledger placed on the event clock, those touching ``[day_lo, day_hi)``.

    An open-ended gap (the ingester is stopped) runs to the end of the day, or to now for today.
    """
    all_sessions = sessions(landing_dir / LEDGER_FILE)
    spans: list[SessionWindow] = []
    for s in all_sessions:
        if s.session in clock:
            first, last = clock[s.session][:2]
        elif s.first_frame_ns is not None:
            first = _ms(s.first_frame_ns) or 0
            last = _ms(s.last_frame_ns or s.disconnect_ns) or max(first, now_ms)
        else:
            continue
        if first < day_hi and last >= day_lo:
            spans.append(SessionWindow(s.session, first, last))
    windows: list[GapWindow] = []
    opening = next((s for s in all_sessions if s.first_frame_ns is not None), None)
    start = _opening_ms(opening, clock) if opening is not None else None
    if opening is not None and start is not None and day_lo <= start < day_hi:
        windows.append(GapWindow(start, start, BEFORE_THE_STREAM, opening.session, "before the first session"))
    for gap in gaps(all_sessions):
        start = clock[gap.after_session][1] if gap.after_session in clock else _ms(gap.start_ns) or 0
        if gap.before_session is None:
            end = min(day_hi, now_ms)
        elif gap.before_session in clock:
            end = clock[gap.before_session][0]
        else:
            end = _ms(gap.end_ns) or start
        if end >= start and start < day_hi and end >= day_lo:
            windows.append(GapWindow(start, end, gap.after_session, gap.before_session, gap.reason))
    return spans, windows


def _opening_ms(opening: Session, clock: dict[int, tuple[int, ...]]) -> int | None:
    """The event time the stream began at, when this day's rows hold the first session's first frames."""
    assert opening.first_frame_ns is not None
    if opening.session not in clock:
        return _ms(opening.first_frame_ns)  # no rows of it this day: the receive clock (a live feed)
    first_ms, _, *received = clock[opening.session]
    if received and 0 <= received[0] - opening.first_frame_ns <= OPENING_TOLERANCE_NS:
        return first_ms
    return None  # the day's first rows of that session come later than its start


def minutes_in_gaps(windows: Iterable[GapWindow], day_lo: int, day_hi: int, revision_window_ms: int) -> set[int]:
    """Minute starts of the day whose data could have arrived during one of the gaps."""
    out: set[int] = set()
    for w in windows:
        # minute m is in the gap iff m <= end and m + 60 s + revision window > start
        lo = max(day_lo, w.start_ms - MINUTE_MS - revision_window_ms + 1)
        lo = -(-lo // MINUTE_MS) * MINUTE_MS  # first minute start >= lo
        hi = min(day_hi - 1, w.end_ms)
        out.update(range(lo, hi + 1, MINUTE_MS))
    return {m for m in out if day_lo <= m < day_hi}


def minutes_observed(spans: Iterable[SessionWindow], day_lo: int, day_hi: int) -> set[int]:
    """Minute starts of the day that overlap a session's event-time span."""
    out: set[int] = set()
    for s in spans:
        lo = max(day_lo, minute_of(s.first_ms))
        hi = min(day_hi - 1, s.last_ms)
        out.update(range(lo, hi + 1, MINUTE_MS))
    return out


@dataclass(frozen=True)
class StreamCoverage:
    """How much of a day the stream covered: minutes a session saw outside any gap, of the day so far.

    Coverage of the stream itself, whatever history later filled: a day filled from Flat Files has
    trades for every minute but quotes for none (quotes have no history), so its quote gaps are the
    minutes counted here as not streamed.
    """

    minutes: int  # minutes of the day up to now (all 1,440 of an ended day)
    streamed: frozenset[int]  # minute starts a session saw, outside gaps
    in_gaps: frozenset[int]  # minute starts touching a ledger gap

    @property
    def not_streamed(self) -> int:
        return self.minutes - len(self.streamed)

    @property
    def complete(self) -> bool:
        return self.minutes > 0 and not self.not_streamed

    def missing_ranges(self, lo: int) -> list[tuple[int, int]]:
        """``[start_ms, end_ms)`` ranges of the day's minutes not streamed."""
        every = range(lo, lo + self.minutes * MINUTE_MS, MINUTE_MS)
        return ranges(m for m in every if m not in self.streamed)


def stream_coverage(
    landing_dir: Path,
    rows: pa.Table,
    aggregates: pa.Table | None,
    day_lo: int,
    day_hi: int,
    now_ms: int,
    clock: dict[int, tuple[int, ...]] | None = None,
) -> StreamCoverage:
    """The stream's coverage of ``[day_lo, day_hi)`` from the ledger, placed on the event clock by the day's rows.

    ``rows``: the day's trades or quotes (``session``, ``received_ns``, ``event_ms``); ``aggregates``
    the day's bars when at hand (they place sessions that had no trades). A minute counts as
    streamed when a session's event-time span overlaps it and no gap touches it (the revision
    window does not matter here: it is about a bar's corrections, not about rows missing).
    """
    samples = rows.select(["session", "received_ns", "event_ms"])
    bars = (
        aggregates
        if aggregates is not None
        else pa.table(
            {
                "session": pa.array([], pa.int64()),
                "received_ns": pa.array([], pa.int64()),
                "end_ms": pa.array([], pa.int64()),
            }
        )
    )
    clock = session_clock(samples, bars) if clock is None else clock  # given: the day's, from file statistics
    spans, windows = ledger_windows(landing_dir, clock, day_lo, day_hi, now_ms)
    gap = minutes_in_gaps(windows, day_lo, day_hi, 0)
    last = min(day_hi, now_ms)
    minutes = max(0, -(-(last - day_lo) // MINUTE_MS))
    streamed = {m for m in minutes_observed(spans, day_lo, day_hi) if m < last} - gap
    return StreamCoverage(minutes, frozenset(streamed), frozenset(gap))


def ranges(minutes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted minute starts -> contiguous ``[start_ms, end_ms)`` ranges."""
    out: list[tuple[int, int]] = []
    for m in sorted(set(minutes)):
        if out and out[-1][1] == m:
            out[-1] = (out[-1][0], m + MINUTE_MS)
        else:
            out.append((m, m + MINUTE_MS))
    return out


# What a REST minute aggregate gives: the built bars' columns without the first/last trade times.
REST_BARS_SCHEMA = pa.schema([f for f in BARS_SCHEMA if f.name not in ("first_trade_ms", "last_trade_ms")])


def _dec(value: Any) -> Decimal | None:
    # The client decodes JSON numbers exactly: floats as Decimal, integers as int.
    return None if value is None else Decimal(value)


def rest_minute_bars(client: PolygonRest, pairs: Iterable[str], minutes: Iterable[int]) -> pa.Table:
    """Polygon's minute bars for ``minutes`` (every pair), one request per contiguous range.

    ``PolygonRest.minute_aggs`` splits a range below the 50k-bar limit and follows ``next_url``.
    """
    wanted = set(minutes)
    rows = []
    for pair in pairs:
        for lo, hi in ranges(wanted):
            for agg in client.minute_aggs(pair, lo, hi):
                if agg.timestamp in wanted:
                    rows.append(
                        {
                            "pair": pair,
                            "minute_ms": int(agg.timestamp),
                            "open": _dec(agg.open),
                            "high": _dec(agg.high),
                            "low": _dec(agg.low),
                            "close": _dec(agg.close),
                            "volume": _dec(agg.volume),
                            "vwap": _dec(agg.vwap),
                            "trade_count": agg.transactions,
                        }
                    )
    return pa.Table.from_pylist(rows, schema=REST_BARS_SCHEMA)


def _rest_trade_rows(client: PolygonRest, pair: str, lo: int, hi: int, fetched_ns: int) -> Iterator[dict[str, Any]]:
    for tr in client.trades(pair, lo * 1_000_000, hi * 1_000_000):
        stamp = tr.participant_timestamp or tr.sip_timestamp
        if stamp is None or tr.price is None or tr.size is None:
            continue  # not a usable trade; Polygon always sends these three
        yield {
            "pair": pair,
            "exchange": int(tr.exchange or 0),
            "trade_id": str(tr.id),
            "price": Decimal(tr.price),
            "size": Decimal(tr.size),
            "conditions": json.dumps(tr.conditions or []),
            "event_ms": int(stamp) // 1_000_000,
            "polygon_received_ms": None,
            "received_ns": fetched_ns,
            "session": None,
            "segment": None,
            "source": REST_SOURCE,
        }


def rest_trades(client: PolygonRest, pairs: Iterable[str], minutes: Iterable[int]) -> pa.Table:
    """Every trade of ``minutes`` from ``/v3/trades``, as raw_trades rows (source ``rest_repair``).

    ``received_ns`` is the fetch time; session and segment are empty (the rows never were in the
    landing log). Copies of one trade across pages collapse onto the first.
    """
    fetched_ns = time.time_ns()
    rows: dict[tuple[str, int, str], dict[str, Any]] = {}
    for pair in pairs:
        for lo, hi in ranges(minutes):
            for row in _rest_trade_rows(client, pair, lo, hi, fetched_ns):
                rows.setdefault((row["pair"], row["exchange"], row["trade_id"]), row)
    return pa.Table.from_pylist(list(rows.values()), schema=TRADES_SCHEMA)
