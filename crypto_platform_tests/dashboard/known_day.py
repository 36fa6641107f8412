"""A known market for the dashboard tests: trades in the lake, bars and alerts in the warehouse.

Times are placed relative to "now" (the page shows today's data), every value is fixed, so each
figure the page shows follows from the rows planted here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pandas as pd
import pyarrow as pa

from crypto_platform.assets.raw import TRADES_SCHEMA
from crypto_platform.resources.lake import LakeResource
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.tables import ALERTS, MINUTE_BARS

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
PAIRS = ("BTC-USD", "ETH-USD", "SOL-USD")  # SOL-USD: a pair with no data at all
BAR_MINUTES = 90


@dataclass(frozen=True)
class KnownDay:
    latest_ms: int  # BTC-USD's latest trade
    first_bar_ms: int
    differing_minute_ms: int
    gap_minutes_ms: tuple[int, ...]
    repaired_minutes_ms: tuple[int, ...]
    whale_ms: int


# BTC-USD's trades as (ms before its latest trade, price, size); the changes follow from them.
BTC_TRADES = (
    (DAY + 1_000, "90000", "0.1"),  # 24 h reference
    (2 * HOUR, "95000", "0.2"),  # 1 h reference
    (90_000, "96000", "0.3"),  # 1 min reference
    (30_000, "96500", "0.4"),
    (0, "97000.5", "12"),  # latest: a whale (notional 1,164,006)
)
BTC_LATEST = "97000.5"
BTC_CHANGES = {"1m": "1000.5", "1h": "2000.5", "24h": "7000.5"}
ETH_TRADES = ((HOUR, "3500.25", "1"), (0, "3512.75", "2"))


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def trade_rows(pair: str, latest_ms: int, spec: tuple[tuple[int, str, str], ...], first_id: int = 0) -> list[dict]:
    return [
        {
            "pair": pair,
            "exchange": 1,
            "trade_id": str(first_id + i),
            "price": Decimal(price),
            "size": Decimal(size),
            "conditions": "[]",
            "event_ms": latest_ms - back,
            "polygon_received_ms": latest_ms - back,
            "received_ns": (latest_ms - back) * 1_000_000,
            "session": 1,
            "segment": 1,
            "source": "ws",
        }
        for i, (back, price, size) in enumerate(spec)
    ]


def write_trades(lake: LakeResource, rows: list[dict]) -> None:
    """Write the rows into the lake partitions of their UTC days (merged with what is there)."""
    by_day: dict[str, list[dict]] = {}
    for row in rows:
        by_day.setdefault(_day(row["event_ms"]), []).append(row)
    for day, day_rows in by_day.items():
        table = pa.Table.from_pylist(day_rows, schema=TRADES_SCHEMA)
        old = lake.read_partition("raw_trades", day)
        if old is not None:
            table = pa.concat_tables([old.select(TRADES_SCHEMA.names).cast(TRADES_SCHEMA), table])
        lake.write_partition("raw_trades", day, table)


def bars_frame(
    pair: str, first_ms: int, base: Decimal, known: dict[str, object], minutes: int = BAR_MINUTES
) -> pd.DataFrame:
    records = []
    for m in range(minutes):
        minute_ms = first_ms + m * MINUTE
        if m == 50:
            continue  # a minute without trades
        px = base + Decimal(m % 180)
        xa_close = px + Decimal("0.5")
        if minute_ms == known["differing"]:
            xa_close = px + Decimal("3")
        missing_xa = m == 10
        records.append(
            {
                "pair": pair,
                "minute_ms": minute_ms,
                "open": px,
                "high": px + Decimal("4"),
                "low": px - Decimal("1"),
                "close": px + Decimal("0.5"),
                "volume": Decimal("2.5"),
                "vwap": px + Decimal("0.25"),
                "trade_count": 5,
                "first_trade_ms": minute_ms + 100,
                "last_trade_ms": minute_ms + 59_000,
                "xa_open": None if missing_xa else px,
                "xa_high": None if missing_xa else px + Decimal("4"),
                "xa_low": None if missing_xa else px - Decimal("1"),
                "xa_close": None if missing_xa else xa_close,
                "xa_volume": None if missing_xa else Decimal("2.5"),
                "xa_vwap": None if missing_xa else px + Decimal("0.25"),
                "settled": True,
                "source": "rest_repair" if minute_ms in known["repaired"] else "ws",
                "in_gap": minute_ms in known["gap"],
                "repaired": minute_ms in known["repaired"],
            }
        )
    return pd.DataFrame.from_records(records)


def load_known_day(
    lake: LakeResource, warehouse: SqlWarehouse, now_ms: int | None = None, minutes: int = BAR_MINUTES
) -> KnownDay:
    """Trades, ``minutes`` minute bars per pair up to now (gap, repair, XA difference and hole in the
    first 90) and two alerts; ``minutes=1440`` gives a day of bars (the benchmark's page)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    latest = now_ms - 20_000
    write_trades(lake, trade_rows("BTC-USD", latest, BTC_TRADES) + trade_rows("ETH-USD", latest, ETH_TRADES, 100))
    first_bar = (now_ms // MINUTE) * MINUTE - (minutes - 1) * MINUTE
    known_minutes = {
        "differing": first_bar + 20 * MINUTE,
        "gap": (first_bar + 40 * MINUTE, first_bar + 41 * MINUTE, first_bar + 42 * MINUTE),
        "repaired": (first_bar + 41 * MINUTE, first_bar + 42 * MINUTE),
    }
    warehouse.migrate()
    warehouse.upsert(MINUTE_BARS, bars_frame("BTC-USD", first_bar, Decimal(96000), known_minutes, minutes))
    warehouse.upsert(MINUTE_BARS, bars_frame("ETH-USD", first_bar, Decimal(3500), known_minutes, minutes))
    alerts = pd.DataFrame.from_records(
        [
            {
                "rule": "whale_trade",
                "pair": "BTC-USD",
                "ts_ms": latest,
                "value": Decimal("1164006"),
                "threshold": Decimal(1_000_000),
                "muted": False,
                "reason": "trade 1 on exchange 1: 12 at 97000.5",
            },
            {
                "rule": "volume_spike",
                "pair": "ETH-USD",
                "ts_ms": first_bar + 41 * MINUTE,
                "value": Decimal("40"),
                "threshold": Decimal("12.5"),
                "muted": True,
                "reason": "repair flood: data from gap repair (source=rest_repair)",
            },
        ]
    )
    warehouse.upsert(ALERTS, alerts)
    return KnownDay(
        latest,
        first_bar,
        known_minutes["differing"],  # type: ignore[arg-type]
        known_minutes["gap"],  # type: ignore[arg-type]
        known_minutes["repaired"],  # type: ignore[arg-type]
        latest,
    )
