"""Synthetic lake partitions in the lake contract's columns, for tests and the load benchmark.

Why here and not in the tests: the benchmark (``benchmarks/warehouse_load.py``) and the tests must load
the same shapes, and the decode layer's real output may not exist yet when the warehouse is tested.
Decimals come either as ``decimal.Decimal`` objects (what a row-wise decoder yields) or as pyarrow
``decimal128(38,18)`` (what reading a Parquet partition yields); the loaders accept both.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.days import DAY_MS, MINUTE_MS, day_bounds_ms
from crypto_platform.warehouse.frames import DECIMAL_TYPE

DEFAULT_PAIRS = ("BTC-USD", "ETH-USD", "SOL-USD")


def _decimal_column(whole: np.ndarray, frac: np.ndarray, frac_digits: int, arrow: bool) -> pd.Series:
    text = pd.Series(whole.astype(str)) + "." + pd.Series(frac.astype(str)).str.zfill(frac_digits)
    if arrow:
        arr = pc.cast(pa.array(text, type=pa.string()), DECIMAL_TYPE)
        return pd.Series(arr, dtype=pd.ArrowDtype(DECIMAL_TYPE))
    return pd.Series([Decimal(t) for t in text], dtype=object)


def trades(
    day: date | str,
    rows: int,
    *,
    pairs: tuple[str, ...] = DEFAULT_PAIRS,
    seed: int = 7,
    arrow_decimals: bool = False,
    first_id: int = 0,
) -> pd.DataFrame:
    """``rows`` trades spread over the UTC ``day`` (ids unique per pair and exchange)."""
    rng = np.random.default_rng(seed)
    lo, _hi = day_bounds_ms(day)
    idx = np.arange(rows, dtype=np.int64)
    event_ms = lo + (idx * (DAY_MS // max(rows, 1))) + rng.integers(0, 5, rows)
    event_ms = np.minimum(event_ms, lo + 86_399_999)
    pair_idx = idx % len(pairs)
    base = np.array([97_000, 3_500, 180, 1, 2][: len(pairs)] + [1] * max(0, len(pairs) - 5))[pair_idx]
    whole = base + rng.integers(0, 500, rows)
    price = _decimal_column(whole, rng.integers(0, 10**8, rows), 8, arrow_decimals)
    size = _decimal_column(rng.integers(0, 3, rows), rng.integers(1, 10**12, rows), 12, arrow_decimals)
    return pd.DataFrame(
        {
            "pair": np.array(pairs, dtype=object)[pair_idx],
            "exchange": (idx % 4 + 1).astype(np.int64),
            "trade_id": pd.Series((idx + first_id).astype(str)),
            "price": price,
            "size": size,
            "conditions": "[1]",
            "event_ms": event_ms,
            "polygon_received_ms": event_ms + 3,
            "received_ns": event_ms * 1_000_000 + 5_000_000,
            "session": np.int64(1),
            "segment": (idx // 10_000).astype(np.int64),
            "source": "ws",
        }
    )


def minute_bars(day: date | str, pairs: tuple[str, ...] = DEFAULT_PAIRS, minutes: int = 60) -> pd.DataFrame:
    """Bars for the first ``minutes`` of ``day`` per pair, with XA values, one gap bar and one hole."""
    lo, _ = day_bounds_ms(day)
    records = []
    for p_i, pair in enumerate(pairs):
        for m in range(minutes):
            if m == 7:
                continue  # a missing minute: the flagged view reports the hole after it
            px = Decimal(1000 * (p_i + 1)) + Decimal(m) / 100
            records.append(
                {
                    "pair": pair,
                    "minute_ms": lo + m * MINUTE_MS,
                    "open": px,
                    "high": px + Decimal("1.5"),
                    "low": px - Decimal("0.25"),
                    "close": px + Decimal("0.5"),
                    "volume": Decimal("12.000000000123456789"),
                    "vwap": px + Decimal("0.1"),
                    "trade_count": 40 + m,
                    "first_trade_ms": lo + m * MINUTE_MS + 10,
                    "last_trade_ms": lo + m * MINUTE_MS + 59_000,
                    "xa_open": px if m != 3 else None,
                    "xa_high": px + Decimal("1.5") if m != 3 else None,
                    "xa_low": px - Decimal("0.25") if m != 3 else None,
                    "xa_close": px + Decimal("0.5") if m != 3 else None,
                    "xa_volume": Decimal("12.000000000123456789") if m != 3 else None,
                    "xa_vwap": px + Decimal("0.1") if m != 3 else None,
                    "close_diff": Decimal(0) if m != 3 else None,
                    "settled": True,
                    "source": "ws",
                    "in_gap": m == 12,
                    "repaired": m == 12,
                }
            )
    return pd.DataFrame.from_records(records)
