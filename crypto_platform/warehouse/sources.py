"""Where each warehouse table's rows come from: a lake partition or the session ledger, in table columns.

Most lake tables already have the warehouse's column names (``raw_trades`` -> ``crypto_trades``,
``minute_bars`` -> ``crypto_minute_bars``; the loaders ignore lineage columns they do not store and
keep only ``is_current`` aggregate revisions). Two do not, and are mapped here so the mapping is
written once and tested:

- ``daily_open_close`` keeps the opening/closing trade as id, exchange and time columns; the warehouse
  has ``open_trades`` / ``closing_trades`` JSON text (the shape of Polygon's answer) and ``is_utc``.
- ``crypto_stream_sessions`` comes from the stream's session ledger (no lake table): one row per
  connection with the gap that preceded it, ns times turned into ms.

Lake partitions are read as pandas with Arrow-backed columns (``types_mapper=pd.ArrowDtype``):
decimals stay ``decimal128(38,18)`` without a Python object per value, which keeps a per-batch load
of a 1M-row day from spending seconds on conversion.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pandas as pd
import pyarrow as pa

from crypto_platform.days import day_bounds_ms
from crypto_platform.stream.session_ledger import Session, gaps
from crypto_platform.warehouse.tables import DAILY_OPEN_CLOSE, STREAM_SESSIONS, Table


def lake_frame(data: pa.Table | None, t: Table) -> pd.DataFrame:
    """A lake partition as pandas (Arrow-backed columns); an absent partition is an empty table frame."""
    if data is None:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in t.names})
    return data.to_pandas(types_mapper=pd.ArrowDtype)


def lake_row_count(t: Table, frame: pd.DataFrame) -> int:
    """Rows the warehouse should hold for this lake partition (current aggregate revisions only)."""
    if "is_current" in frame.columns and "is_current" not in t.names:
        return int(frame["is_current"].fillna(False).astype(bool).sum())
    return len(frame)


def _trade_json(trade_id: Any, exchange: Any, ms: Any) -> str | None:
    if all(pd.isna(v) for v in (trade_id, exchange, ms)):
        return None
    trade: dict[str, Any] = {"i": None if pd.isna(trade_id) else str(trade_id)}
    trade["x"] = None if pd.isna(exchange) else int(exchange)
    trade["t"] = None if pd.isna(ms) else int(ms)
    return json.dumps([trade], separators=(",", ":"))


def daily_open_close_frame(lake: pa.Table | None) -> pd.DataFrame:
    """Lake ``daily_open_close`` -> ``crypto_daily_open_close`` columns.

    ``open_trades`` / ``closing_trades`` become ``[{"i": id, "x": exchange, "t": ms}]`` (NULL without a
    trade); ``is_utc`` is true for fetched days (the lake asks for UTC days) and NULL for ``no_data``.
    """
    df = lake_frame(lake, DAILY_OPEN_CLOSE)
    if df.empty:
        return df
    ok = df["status"].astype(object) == "ok"
    return pd.DataFrame(
        {
            "pair": df["pair"].astype(object),
            "day": df["day"].astype(object),
            "open": df["open"],
            "close": df["close"],
            "open_trade_ms": df["open_trade_ms"],
            "close_trade_ms": df["close_trade_ms"],
            "is_utc": [True if v else None for v in ok],
            "open_trades": [
                _trade_json(*v) for v in zip(df["open_trade_id"], df["open_exchange"], df["open_trade_ms"], strict=True)
            ],
            "closing_trades": [
                _trade_json(*v)
                for v in zip(df["close_trade_id"], df["close_exchange"], df["close_trade_ms"], strict=True)
            ],
            "fetched_ms": df["fetched_ms"],
            "status": df["status"].astype(object),
        }
    )


def _ms(ns: int | None) -> int | None:
    return None if ns is None else int(ns) // 1_000_000


def stream_session_frame(all_sessions: list[Session]) -> pd.DataFrame:
    """Every session of the ledger (oldest first) as ``crypto_stream_sessions`` rows, in that order."""
    before = {g.before_session: g for g in gaps(all_sessions) if g.before_session is not None}
    rows = []
    for s in all_sessions:
        gap = before.get(s.session)
        rows.append(
            {
                "session": s.session,
                "url": s.url,
                "connect_ms": _ms(s.connect_ns),
                "first_frame_ms": _ms(s.first_frame_ns),
                "last_frame_ms": _ms(s.last_frame_ns),
                "disconnect_ms": _ms(s.disconnect_ns),
                "close_code": s.close_code,
                "close_reason": s.reason,
                "frames": s.frames if not s.open else None,
                "events": s.events if not s.open else None,
                "topics": json.dumps(s.topics, separators=(",", ":")),
                "gap_start_ms": _ms(gap.start_ns) if gap else None,
                "gap_end_ms": _ms(gap.end_ns) if gap else None,
                "gap_ms": _ms(gap.end_ns - gap.start_ns) if gap and gap.end_ns is not None else None,
            }
        )
    frame = pd.DataFrame.from_records(rows, columns=list(STREAM_SESSIONS.names))
    return frame.astype({c: "Int64" for c in STREAM_SESSIONS.names if STREAM_SESSIONS.column(c).kind == "int"})


def sessions_of_day(frame: pd.DataFrame, day: date | str) -> pd.DataFrame:
    """The sessions that connected on the UTC ``day`` (the partition's rows)."""
    lo, hi = day_bounds_ms(day)
    return frame[(frame["connect_ms"] >= lo) & (frame["connect_ms"] < hi)].reset_index(drop=True)


def sessions_reaching_into(frame: pd.DataFrame, day: date | str) -> pd.DataFrame:
    """Sessions of earlier days still open at the start of ``day`` or ended during it.

    Their rows belong to earlier partitions but change (disconnect, frame counts) while ``day`` is
    streamed, so per-batch loads of ``day`` refresh them too.
    """
    lo, _ = day_bounds_ms(day)
    earlier = frame["connect_ms"] < lo
    reaching = frame["disconnect_ms"].isna() | (frame["disconnect_ms"] >= lo)
    return frame[earlier & reaching.astype(bool)].reset_index(drop=True)
