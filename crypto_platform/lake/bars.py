"""Minute bars from trades, exactly and fast: :func:`compute_minute_bars`.

One pass of DuckDB over the Arrow table (zero-copy) gives open, high, low, close, volume, trade
count and first/last trade time per (pair, UTC minute). The VWAP numerator, sum(price * size),
cannot be done there: two ``DECIMAL(38,18)`` values multiply to scale 36, which overflows any
128-bit decimal for ordinary prices (BTC near 100k times a size of 1 is already 42 digits). So the
products are taken in Arrow's 256-bit decimals (``decimal256(76, 36)``, exact for every price
below 10**20 times every size below 10**19) and summed per minute there; the one division per bar
is done on Python integers. Nothing passes through a float.

Definitions (also in the README):

- minute: ``event_ms - event_ms % 60000`` (UTC, the trade's exchange time);
- open / close: price of the first / last trade in the order (event_ms, exchange, trade_id). A
  stream trade and the same trade fetched from REST sort alike, so rebuilds are deterministic;
  trades sharing a millisecond are ordered by exchange and id, which is not always Polygon's order;
- volume: exact sum of sizes; vwap: sum(price * size) / volume rounded half-even to 18 decimals
  (``NULL`` when the volume is 0).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Context, Decimal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.days import MINUTE_MS
from crypto_platform.lake.schemas import DECIMAL

SCALE = 18
# Wide enough for any decimal(76, 36) value: conversions under it never round.
_EXACT = Context(prec=100)

BARS_SCHEMA = pa.schema(
    [
        ("pair", pa.string()),
        ("minute_ms", pa.int64()),
        ("open", DECIMAL),
        ("high", DECIMAL),
        ("low", DECIMAL),
        ("close", DECIMAL),
        ("volume", DECIMAL),
        ("vwap", DECIMAL),
        ("trade_count", pa.int64()),
        ("first_trade_ms", pa.int64()),
        ("last_trade_ms", pa.int64()),
    ]
)
# Columns compute_minute_bars reads, with the types it needs (the raw_trades schema has more).
_INPUT = {
    "pair": pa.string(),
    "exchange": pa.int32(),
    "trade_id": pa.string(),
    "price": DECIMAL,
    "size": DECIMAL,
    "event_ms": pa.int64(),
}

_BARS_SQL = f"""
SELECT pair,
       event_ms - event_ms % {MINUTE_MS} AS minute_ms,
       arg_min(price, (event_ms, exchange, trade_id)) AS open,
       max(price) AS high,
       min(price) AS low,
       arg_max(price, (event_ms, exchange, trade_id)) AS close,
       sum(size) AS volume,
       count(*) AS trade_count,
       min(event_ms) AS first_trade_ms,
       max(event_ms) AS last_trade_ms
FROM trades
GROUP BY ALL
ORDER BY pair, minute_ms
"""


def _checked_input(trades: pa.Table) -> pa.Table:
    missing = [c for c in _INPUT if c not in trades.column_names]
    if missing:
        raise ValueError(
            f"compute_minute_bars needs the raw_trades columns {list(_INPUT)}; missing {missing}: "
            "pass a table with the raw_trades schema (crypto_platform.lake.schemas.TRADES_SCHEMA)"
        )
    wrong = [
        f"{c} is {trades.schema.field(c).type}, not {t}" for c, t in _INPUT.items() if trades.schema.field(c).type != t
    ]
    if wrong:
        raise ValueError(f"compute_minute_bars: {'; '.join(wrong)}: cast the table to the raw_trades schema first")
    table = trades.select(list(_INPUT))
    nulls = [c for c in ("pair", "price", "size", "event_ms") if table[c].null_count]
    if nulls:
        raise ValueError(f"compute_minute_bars: trades with NULL {nulls}: raw_trades never has these empty")
    if table.num_rows and pc.min(table["event_ms"]).as_py() < 0:
        raise ValueError("compute_minute_bars: a trade with a negative event_ms (before 1970) is not a real trade")
    return table


def _pv_sums(trades: pa.Table) -> dict[tuple[str, int], int]:
    """sum(price * size) per (pair, minute) as unscaled integers of 10**-36, exact."""
    try:
        size = trades["size"].cast(pa.decimal256(37, SCALE))
    except pa.ArrowInvalid as exc:
        raise ValueError(f"a trade size of 10**19 or more cannot be a real trade: {exc}") from exc
    pv = pc.multiply(trades["price"].cast(pa.decimal256(38, SCALE)), size)
    event_ms = trades["event_ms"]
    minute = pc.multiply(pc.divide(event_ms, MINUTE_MS), MINUTE_MS)  # event_ms >= 0, checked on input
    grouped = (
        pa.table({"pair": trades["pair"], "minute_ms": minute, "pv": pv})
        .group_by(["pair", "minute_ms"])
        .aggregate([("pv", "sum")])
    )
    return {
        (pair, minute_ms): _unscaled(total, 2 * SCALE)
        for pair, minute_ms, total in zip(
            grouped["pair"].to_pylist(), grouped["minute_ms"].to_pylist(), grouped["pv_sum"].to_pylist(), strict=True
        )
    }


def _unscaled(value: Decimal, scale: int) -> int:
    """A Decimal as an integer count of ``10**-scale`` (exact: the value has at most ``scale`` decimals)."""
    return int(value.scaleb(scale, context=_EXACT))


def _round_half_even(num: int, den: int) -> int:
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and q % 2):
        q += 1
    return q


def _duckdb_bars(table: pa.Table) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register("trades", table)
        return con.sql(_BARS_SQL).to_arrow_table()
    except duckdb.OutOfRangeException as exc:
        raise ValueError(f"a minute's volume does not fit decimal(38,18): {exc}") from exc
    finally:
        con.close()


def compute_minute_bars(trades: pa.Table) -> pa.Table:
    """OHLCV, VWAP, trade count and first/last trade time per (pair, UTC minute) of ``trades``.

    ``trades`` has the raw_trades schema (at least pair, exchange, trade_id, price, size,
    event_ms); the result has :data:`BARS_SCHEMA`, sorted by (pair, minute_ms). Input rows are
    used as given: de-duplicate first (raw_trades already is).
    """
    table = _checked_input(trades)
    if table.num_rows == 0:
        return BARS_SCHEMA.empty_table()
    # Both halves run outside the GIL, so the products are summed while DuckDB aggregates.
    with ThreadPoolExecutor(1) as pool:
        pv_job = pool.submit(_pv_sums, table)
        bars = _duckdb_bars(table)
        pv = pv_job.result()
    volumes = bars["volume"].to_pylist()
    vwap = []
    for pair, minute_ms, volume in zip(bars["pair"].to_pylist(), bars["minute_ms"].to_pylist(), volumes, strict=True):
        den = _unscaled(volume, SCALE)
        # (scale-36 numerator) / (scale-18 volume) is the VWAP in units of 10**-18.
        vwap.append(None if den == 0 else _round_half_even(pv[(pair, minute_ms)], den))
    columns = {name: bars[name] for name in BARS_SCHEMA.names if name != "vwap"}
    columns["vwap"] = pa.array([None if v is None else _from_unscaled(v) for v in vwap], DECIMAL)
    return pa.table({f.name: columns[f.name].cast(f.type) for f in BARS_SCHEMA}, schema=BARS_SCHEMA)


def _from_unscaled(units: int) -> Decimal:
    return Decimal(units).scaleb(-SCALE, context=_EXACT)
