"""compute_minute_bars against an independent exact computation (Python Decimal and Fraction)."""

from __future__ import annotations

import random
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import pyarrow as pa
import pytest

from crypto_platform.assets.raw import TRADES_SCHEMA
from crypto_platform.lake.bars import BARS_SCHEMA, compute_minute_bars

DAY_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z


def trades_table(rows: list[dict[str, Any]]) -> pa.Table:
    full = [
        {
            "conditions": "[]",
            "polygon_received_ms": None,
            "received_ns": 0,
            "session": 1,
            "segment": 1,
            "source": "ws",
            **row,
        }
        for row in rows
    ]
    return pa.Table.from_pylist(full, schema=TRADES_SCHEMA)


def random_trades(seed: int, n: int) -> list[dict[str, Any]]:
    """Tiny-priced tokens with 18-decimal prices, BTC near 100k with sub-satoshi sizes, and many
    trades sharing a millisecond so the open/close tie-break matters."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(["BTC-USD", "PEPE-USD", "SHIB-USD"])
        if kind == "BTC-USD":
            price = Decimal(rng.randrange(99_000_00, 100_000_00)) / 100 + Decimal(rng.randrange(10**6)).scaleb(-18)
            size = Decimal(rng.randrange(1, 10**12)).scaleb(-18)  # down to 1e-18 BTC
        elif kind == "PEPE-USD":
            price = Decimal(rng.randrange(1, 10**10)).scaleb(-18)  # 0.000000000000000001 ..
            size = Decimal(rng.randrange(1, 10**15)) + Decimal(rng.randrange(10**18)).scaleb(-18)
        else:
            price = Decimal(rng.randrange(1, 10**14)).scaleb(-18)
            size = Decimal(rng.randrange(1, 10**19)).scaleb(-18) * 10**9
        out.append(
            {
                "pair": kind,
                "exchange": rng.choice([1, 2, 23]),
                "trade_id": f"{rng.randrange(10**6)}-{i}",
                "price": price,
                "size": size,
                # 3 minutes, few distinct milliseconds: ties everywhere
                "event_ms": DAY_MS + rng.randrange(3) * 60_000 + rng.choice([0, 1, 59_999, rng.randrange(60_000)]),
            }
        )
    return out


def expected_bars(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The definitions in the module docstring, computed row by row with exact Python numbers."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["pair"], r["event_ms"] // 60_000 * 60_000), []).append(r)
    out = []
    for (pair, minute), trades in sorted(groups.items()):
        trades.sort(key=lambda r: (r["event_ms"], r["exchange"], r["trade_id"]))
        with localcontext(prec=200):  # Decimal's default 28 digits would round the sum
            volume = sum(r["size"] for r in trades)
        pv = sum(Fraction(r["price"]) * Fraction(r["size"]) for r in trades)
        vwap = round(pv / Fraction(volume) * 10**18)  # round() on a Fraction is half-even
        out.append(
            {
                "pair": pair,
                "minute_ms": minute,
                "open": trades[0]["price"],
                "high": max(r["price"] for r in trades),
                "low": min(r["price"] for r in trades),
                "close": trades[-1]["price"],
                "volume": volume,
                "vwap": Decimal(vwap).scaleb(-18),
                "trade_count": len(trades),
                "first_trade_ms": trades[0]["event_ms"],
                "last_trade_ms": trades[-1]["event_ms"],
            }
        )
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bars_equal_an_exact_python_computation(seed: int) -> None:
    rows = random_trades(seed, 3_000)
    bars = compute_minute_bars(trades_table(rows))
    assert bars.schema == BARS_SCHEMA
    assert bars.to_pylist() == expected_bars(rows)


def test_vwap_rounds_half_even_at_18_decimals() -> None:
    # (1e-18 * 1 + 2e-18 * 1) / 2 = 1.5e-18 -> 2e-18 (half to even); (1e-18 + 4e-18) / 2 = 2.5e-18 -> 2e-18
    tiny = Decimal("1e-18")
    for prices, want in (((tiny, 2 * tiny), 2 * tiny), ((tiny, 4 * tiny), 2 * tiny)):
        rows = [
            {"pair": "X-USD", "exchange": 1, "trade_id": str(i), "price": p, "size": Decimal(1), "event_ms": DAY_MS + i}
            for i, p in enumerate(prices)
        ]
        (bar,) = compute_minute_bars(trades_table(rows)).to_pylist()
        assert bar["vwap"] == want


def test_btc_near_100k_times_large_sizes_does_not_overflow() -> None:
    # 99,999.99 * 10**15 per trade is a 38-digit product at scale 36: only exact in 256 bits.
    rows = [
        {
            "pair": "BTC-USD",
            "exchange": 1,
            "trade_id": str(i),
            "price": Decimal("99999.99") + Decimal(i).scaleb(-18),
            "size": Decimal(10**15) + Decimal("0.000000000000000001"),
            "event_ms": DAY_MS + i,
        }
        for i in range(1000)
    ]
    assert compute_minute_bars(trades_table(rows)).to_pylist() == expected_bars(rows)


def test_open_and_close_break_ties_by_exchange_then_trade_id() -> None:
    rows = [
        {"pair": "ETH-USD", "exchange": x, "trade_id": tid, "price": Decimal(p), "size": Decimal(1), "event_ms": DAY_MS}
        for x, tid, p in ((2, "a", "3"), (1, "b", "2"), (1, "a", "1"), (23, "z", "4"))
    ]
    (bar,) = compute_minute_bars(trades_table(rows)).to_pylist()
    assert (bar["open"], bar["close"]) == (Decimal(1), Decimal(4))


def test_empty_input_gives_an_empty_table_and_bad_input_a_clear_error() -> None:
    assert compute_minute_bars(TRADES_SCHEMA.empty_table()).num_rows == 0
    with pytest.raises(ValueError, match="missing \\['trade_id'\\]"):
        compute_minute_bars(TRADES_SCHEMA.empty_table().drop_columns(["trade_id"]))
    with pytest.raises(ValueError, match="price is double"):
        compute_minute_bars(
            pa.table(
                {
                    **{n: TRADES_SCHEMA.empty_table()[n] for n in TRADES_SCHEMA.names},
                    "price": pa.array([], pa.float64()),
                }
            )
        )
