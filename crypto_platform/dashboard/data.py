"""What the market page shows, read from where analysts read it; no Streamlit in here.

- Latest prices come from the lake's ``raw_trades`` (seconds behind the feed), not from a warehouse
  table that waits for its load. The lake is read in exactly one place, :func:`lake_trades`, through
  ``LakeResource.read_partition``, so a change of the lake's storage format changes nothing here.
- Minute bars and alerts come from the SQL warehouse (MySQL, or the SQLite stand-in) through the
  same ``MYSQL_URL`` as the platform, via the ``crypto_minute_bars_flagged`` view and ``crypto_alerts``.
- Feed health comes from the ingester's lock, heartbeat and session ledger, as ``crypto-platform status``.

Every function returns a :class:`Panel`: rows, or a problem explained in words (the database is
down, the tables do not exist yet, nothing has arrived): the page shows the words, never a trace.
:data:`COUNTS` counts warehouse queries and lake reads, so the benchmark can show that many viewers
share one set of queries.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.days import DAY_MS, MINUTE_MS
from crypto_platform.lake.tables import between
from crypto_platform.resources.lake import LakeResource, build_lake_resource
from crypto_platform.settings import Settings
from crypto_platform.stream import supervision
from crypto_platform.stream.session_ledger import gaps, ledger_path, sessions
from crypto_platform.warehouse.errors import WarehouseConnectionError
from crypto_platform.warehouse.sql import SqlWarehouse

# Changes shown beside each price: the latest trade against the last trade this long before it.
CHANGE_WINDOWS_MS = {"1m": MINUTE_MS, "1h": 60 * MINUTE_MS, "24h": DAY_MS}
# The feed counts as stale when its last event is older than this while the ingester runs.
FEED_STALE_AFTER_S = 60.0
ALERTS_SHOWN = 200
# A page should not hang on an unreachable database: give up on a connection after this long.
CONNECT_TIMEOUT_S = 3.0
START_STREAM = (
    "Start the stream: `make dev` (the stream sensor starts the ingester within seconds), or run "
    "`crypto-platform stream` beside a running Dagster."
)

COUNTS: Counter[str] = Counter()  # "warehouse_queries", "lake_reads"


@dataclass(frozen=True)
class Panel:
    """One panel's data, or why there is none (``problem``, worded for the page)."""

    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    problem: str | None = None
    # ok | db_down | no_tables | empty | no_pair_data | feed_down
    kind: str = "ok"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class Sources:
    """Where the page reads: the lake, the SQL warehouse and the ingester's files."""

    settings: Settings
    lake: LakeResource
    warehouse: SqlWarehouse

    @property
    def database(self) -> str:
        """The database for messages: host and masked URL, never the password."""
        wh = self.warehouse
        if wh.dialect == "sqlite":
            return f"the SQLite stand-in {wh.sqlite_path}"
        return f"MySQL at {wh.host}:{wh.port} (MYSQL_URL={wh.masked_url})"

    @property
    def ledger(self) -> Path:
        return ledger_path(self.settings.landing_dir)


def sources(settings: Settings) -> Sources:
    return Sources(
        settings,
        build_lake_resource(settings),
        SqlWarehouse(settings.mysql_url, connect_timeout=CONNECT_TIMEOUT_S),
    )


# ------------------------------------------------------------------------------------------------
# the lake: latest prices


# How far before a time its last trade is looked for first. Almost every pair traded within the
# first reach; the search widens (an hour, then the rest of the two days) only for the pairs that
# did not, so a refresh reads a few minutes of trades, not two days of them (millions late in a busy day).
REACH_MS: tuple[int | None, ...] = (2 * MINUTE_MS, 60 * MINUTE_MS, None)
TRADE_COLUMNS = ["pair", "event_ms", "trade_id", "exchange", "price"]


def lake_trades(lake: LakeResource, lo: int, hi: int) -> pa.Table | None:
    """The one read of the lake: ``raw_trades`` with event time in ``[lo, hi]`` (None: no partition).

    The days' partitions the span touches, pruned to the files whose event times can be in it.
    """
    COUNTS["lake_reads"] += 1
    parts = []
    for day_ms in range(lo - lo % DAY_MS, hi + 1, DAY_MS):
        rows = lake.read_partition("raw_trades", _utc_day(day_ms), between("event_ms", lo, hi), TRADE_COLUMNS)
        if rows is not None and rows.num_rows:
            parts.append(rows)
    return pa.concat_tables(parts) if parts else None


def _utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def _last_at_or_before(trades: pa.Table, times: np.ndarray, at_ms: int) -> Decimal | None:
    """The price of the last trade at or before ``at_ms``, None when there is none.

    "Last" as in the warehouse's ``crypto_latest_price`` view: the highest event time, ties broken
    by the highest trade id, then the highest exchange, so the page and the view agree.
    """
    before = times <= at_ms
    if not before.any():
        return None
    tied = np.flatnonzero(times == times[before].max())
    best = max(tied.tolist(), key=lambda i: (trades["trade_id"][i].as_py(), trades["exchange"][i].as_py()))
    return trades["price"][best].as_py()


def _last_trades(
    src: Sources, at: dict[str, int], floor: int, anchor: int | None = None
) -> dict[str, tuple[int, Decimal | None]]:
    """Per pair: (event time, price) of its last trade at or before ``at[pair]`` and not before ``floor``.

    One read per reach of :data:`REACH_MS` (``[anchor - reach, latest at]``; the anchor defaults to
    the earliest ``at``), the next ones only for the pairs not found yet.
    """
    found: dict[str, tuple[int, Decimal | None]] = {}
    missing = dict(at)
    for reach in REACH_MS:
        if not missing:
            break
        hi = max(missing.values())
        start = min(missing.values()) if anchor is None else min(anchor, min(missing.values()))
        lo = floor if reach is None else max(floor, start - reach)
        rows = lake_trades(src.lake, lo, hi) if lo <= hi else None
        if rows is None:
            continue
        for pair, limit in list(missing.items()):
            mine = rows.filter(pc.and_(pc.equal(rows["pair"], pair), pc.less_equal(rows["event_ms"], limit)))
            if mine.num_rows == 0:
                continue
            times = mine["event_ms"].to_numpy()
            last = int(times.max())
            found[pair] = (last, _last_at_or_before(mine, times, last))
            del missing[pair]
    return found


def latest_prices(src: Sources, pairs: tuple[str, ...], now_ms: int | None = None) -> Panel:
    """Per pair: the latest trade's price and time, with its change over 1 minute, 1 hour and 24 hours.

    A change compares the latest trade with the last trade at least the window before it (exact
    decimals; the percentage rounded to 2 places). Reads today's and yesterday's trades, a few
    minutes of them around each of those times (:data:`REACH_MS`).
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    today = now_ms - now_ms % DAY_MS
    floor = today - DAY_MS
    # The latest trade: looked for back from now (a trade stamped later today counts too).
    latest = _last_trades(src, dict.fromkeys(pairs, today + DAY_MS - 1), floor, anchor=now_ms) if pairs else {}
    earlier = {
        label: _last_trades(src, {p: ms - window for p, (ms, _) in latest.items()}, floor)
        for label, window in CHANGE_WINDOWS_MS.items()
    }
    records = []
    for pair in pairs:
        if pair not in latest:
            records.append({"pair": pair, "price": None, "event_ms": None, "age_s": None})
            continue
        latest_ms, price = latest[pair]
        row: dict[str, Any] = {
            "pair": pair,
            "price": price,
            "event_ms": latest_ms,
            "age_s": round(max(0, now_ms - latest_ms) / 1000, 1),
        }
        for label in CHANGE_WINDOWS_MS:
            ref = earlier[label].get(pair, (0, None))[1]
            row[f"change_{label}"] = None if ref is None or price is None else price - ref
            row[f"pct_{label}"] = None if not ref or price is None else round((price - ref) / ref * 100, 2)
        records.append(row)
    frame = pd.DataFrame.from_records(records)
    if frame["price"].isna().all():
        return Panel(
            frame,
            f"No trades in the lake today or yesterday ({src.settings.lake_dir}). {START_STREAM}",
            "empty",
        )
    return Panel(frame)


# ------------------------------------------------------------------------------------------------
# the warehouse: minute bars and alerts


def _missing_table(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return "no such table" in str(exc)
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return code == 1146  # MySQL: table doesn't exist


def _query(src: Sources, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    COUNTS["warehouse_queries"] += 1
    return src.warehouse.query(sql, params)


def _ph(src: Sources) -> str:
    return "?" if src.warehouse.dialect == "sqlite" else "%s"


def _warehouse_panel(src: Sources, what: str, sql: str, params: tuple[Any, ...], columns: list[str]) -> Panel:
    """Rows of one query as a panel; an unreachable database or missing tables become a problem."""
    try:
        rows = _query(src, sql, params)
    except WarehouseConnectionError as exc:
        return Panel(problem=f"Cannot read {what} from {src.database}: {exc}", kind="db_down")
    except Exception as exc:
        if _missing_table(exc):
            return Panel(
                problem=f"The warehouse tables do not exist yet in {src.database}: nothing has been loaded. "
                + START_STREAM,
                kind="no_tables",
            )
        raise
    return Panel(pd.DataFrame.from_records(rows, columns=columns))


BAR_COLUMNS = [
    "minute_ms",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trade_count",
    "xa_open",
    "xa_high",
    "xa_low",
    "xa_close",
    "source",
    "in_gap",
    "repaired",
    "xa_missing",
    "follows_hole",
]
_NUMBERS = ["open", "high", "low", "close", "volume", "xa_open", "xa_high", "xa_low", "xa_close"]


def minute_bars(src: Sources, pair: str, since_ms: int) -> Panel:
    """The pair's minute bars from ``since_ms`` on, oldest first, from ``crypto_minute_bars_flagged``.

    Prices become floats here: they are drawn, not added up. ``differs`` marks bars whose OHLC
    differs from Polygon's XA bar; ``in_gap``/``repaired`` are 0/1.
    """
    ph = _ph(src)
    panel = _warehouse_panel(
        src,
        "minute bars",
        f"SELECT {', '.join(BAR_COLUMNS)} FROM crypto_minute_bars_flagged "
        f"WHERE pair = {ph} AND minute_ms >= {ph} ORDER BY minute_ms",
        (pair, since_ms),
        BAR_COLUMNS,
    )
    if not panel.ok:
        return panel
    bars = panel.frame
    if bars.empty:
        return _empty_bars(src, pair, since_ms)
    for col in _NUMBERS:
        bars[col] = pd.to_numeric(bars[col].map(lambda v: None if v is None else float(v)), errors="coerce")
    for col in ("in_gap", "repaired", "xa_missing", "follows_hole"):
        bars[col] = bars[col].fillna(0).astype(int)
    bars["minute_ms"] = bars["minute_ms"].astype("int64")
    bars["time"] = pd.to_datetime(bars["minute_ms"], unit="ms", utc=True)
    xa = bars[["xa_open", "xa_high", "xa_low", "xa_close"]].to_numpy()
    built = bars[["open", "high", "low", "close"]].to_numpy()
    bars["differs"] = (bars["xa_missing"] == 0) & ~np.isclose(xa, built, rtol=0, atol=0).all(axis=1)
    return Panel(bars)


def _empty_bars(src: Sources, pair: str, since_ms: int) -> Panel:
    """No bars in range: say whether the table is empty (start the stream) or only this pair/range."""
    panel = _warehouse_panel(src, "minute bars", "SELECT COUNT(*) FROM crypto_minute_bars", (), ["n"])
    if not panel.ok:
        return panel
    if int(panel.frame["n"].iloc[0]) == 0:
        return Panel(problem=f"The minute-bar table is empty in {src.database}. {START_STREAM}", kind="empty")
    since = datetime.fromtimestamp(since_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Panel(
        problem=f"No minute bars for {pair} since {since}: the pair has no data in this range "
        "(choose a longer range, or check that it is in CRYPTO_PAIRS).",
        kind="no_pair_data",
    )


ALERT_COLUMNS = ["ts_ms", "rule", "pair", "value", "threshold", "muted", "reason"]


def alerts(src: Sources, pairs: tuple[str, ...], since_ms: int, limit: int = ALERTS_SHOWN) -> Panel:
    """Alerts of ``pairs`` from ``since_ms`` on, newest first (at most ``limit``)."""
    ph = _ph(src)
    marks = ", ".join([ph] * len(pairs))
    panel = _warehouse_panel(
        src,
        "alerts",
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM crypto_alerts WHERE pair IN ({marks}) AND ts_ms >= {ph} "
        f"ORDER BY ts_ms DESC, rule, pair LIMIT {int(limit)}",
        (*pairs, since_ms),
        ALERT_COLUMNS,
    )
    if not panel.ok:
        return panel
    frame = panel.frame
    frame["time"] = pd.to_datetime(frame["ts_ms"].astype("int64"), unit="ms", utc=True)
    frame["muted"] = frame["muted"].astype(bool)
    for col in ("value", "threshold"):
        frame[col] = frame[col].map(_decimal_text)
    frame["reason"] = frame["reason"].fillna("")
    return Panel(frame[["time", "rule", "pair", "value", "threshold", "muted", "reason"]])


def _decimal_text(value: object) -> str:
    """An exact decimal (Decimal from MySQL, text from SQLite) without trailing zeros."""
    if value is None:
        return ""
    return format(Decimal(str(value)).normalize(), "f")


def price_text(value: Decimal | None) -> str:
    return "" if value is None else _decimal_text(value)


# ------------------------------------------------------------------------------------------------
# feed health


def feed_health(src: Sources, now_ms: int | None = None) -> Panel:
    """The ingester's state: running, heartbeat, events/s, lag, reconnects, gaps in 24 h, last error.

    ``problem`` carries the banner when the ingester is down, hung, or the feed has gone quiet.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    settings = src.settings
    status = supervision.read_status(settings)
    beat = status.heartbeat or {}
    now_ns, since_ns = now_ms * 1_000_000, (now_ms - DAY_MS) * 1_000_000
    # A gap still open (the ingester is disconnected) runs to now; only its last 24 h count.
    spans = [(max(g.start_ns, since_ns), min(g.end_ns or now_ns, now_ns)) for g in gaps(sessions(src.ledger))]
    recent = [(lo, hi) for lo, hi in spans if hi > since_ns]
    last_event_ms = beat.get("last_event_ms")
    lag_s = None if last_event_ms is None else round(max(0, now_ms - int(last_event_ms)) / 1000, 1)
    error = beat.get("last_error") or None
    info = {
        "running": status.running,
        "pid": status.pid,
        "state": beat.get("state"),
        "heartbeat_age_s": None if status.heartbeat_age_s is None else round(status.heartbeat_age_s, 1),
        "events_per_s": beat.get("events_per_s"),
        "lag_s": lag_s,
        "reconnects": beat.get("reconnects"),
        "gaps_24h": len(recent),
        "gap_seconds_24h": round(sum(hi - lo for lo, hi in recent) / 1e9, 1),
        "last_error": error.get("message") if isinstance(error, dict) else error,
    }
    problem = None
    if not status.running:
        problem = (
            f"The ingester is not running (data dir {settings.data_dir}): prices and bars are not updating. "
            + START_STREAM
        )
    elif status.stale:
        problem = (
            f"The ingester (pid {status.pid}) has not written its heartbeat for "
            f"{info['heartbeat_age_s']} s: it may be hung. Check `crypto-platform status` and its log "
            f"{supervision.log_path(settings)}."
        )
    elif lag_s is None or lag_s > FEED_STALE_AFTER_S:
        quiet = "no event has arrived yet" if lag_s is None else f"the last event arrived {lag_s:.0f} s ago"
        problem = f"The feed is stale: {quiet} (state {info['state']}). Check `crypto-platform status`."
    return Panel(pd.DataFrame([info]), problem, "ok" if problem is None else "feed_down", info)
