"""Every lake table's Arrow schema and row order, defined once.

One ``DECIMAL``: prices and sizes are ``decimal128(38, 18)`` everywhere (Delta ``decimal(38,18)``,
MySQL ``DECIMAL(38,18)``, Snowflake ``NUMBER(38,18)``), read from the wire text, never a float.

``minute_bars`` is derived from its warehouse table spec (the lake table has exactly the warehouse
table's columns, so the loaders copy it as it is). The raw tables and ``daily_open_close`` are
written here once: their warehouse specs differ on purpose (32- vs 64-bit integers are one
``int`` kind there; ``raw_book`` and the lineage columns have no warehouse column), so a derivation
would need as many exceptions as columns.

Every table is ordered by columns that hold its whole natural key (:data:`ORDER`): a read gives
the same rows in the same order however the table's files were written (one file per append, or
one per rebuilt day), so "incremental equals rebuild" is a plain table equality.
"""

from __future__ import annotations

import pyarrow as pa

from crypto_platform.warehouse.tables import MINUTE_BARS

DECIMAL = pa.decimal128(38, 18)
# The partition column of every lake table: the UTC day (the Dagster partition key), as text.
DATE_COLUMN = "date"

_LINEAGE = [("received_ns", pa.int64()), ("session", pa.int64()), ("segment", pa.int64())]
TRADES_SCHEMA = pa.schema(
    [
        ("pair", pa.string()),
        ("exchange", pa.int32()),
        ("trade_id", pa.string()),
        ("price", DECIMAL),
        ("size", DECIMAL),
        ("conditions", pa.string()),
        ("event_ms", pa.int64()),
        ("polygon_received_ms", pa.int64()),
        *_LINEAGE,
        ("source", pa.string()),
    ]
)
QUOTES_SCHEMA = pa.schema(
    [
        ("pair", pa.string()),
        ("exchange", pa.int32()),
        ("event_ms", pa.int64()),
        ("seq", pa.int32()),
        ("bid_price", DECIMAL),
        ("bid_size", DECIMAL),
        ("ask_price", DECIMAL),
        ("ask_size", DECIMAL),
        ("polygon_received_ms", pa.int64()),
        *_LINEAGE,
    ]
)
AGGREGATES_SCHEMA = pa.schema(
    [
        ("channel", pa.string()),
        ("pair", pa.string()),
        ("start_ms", pa.int64()),
        ("end_ms", pa.int64()),
        ("open", DECIMAL),
        ("high", DECIMAL),
        ("low", DECIMAL),
        ("close", DECIMAL),
        ("volume", DECIMAL),
        ("vwap", DECIMAL),
        ("avg_trade_size", DECIMAL),
        *_LINEAGE,
        ("revision", pa.int32()),
        ("is_current", pa.bool_()),
    ]
)
# A book side: the levels as sent, best first. Typed and exact (not JSON text), so DuckDB and pandas
# can unnest and compare levels without parsing anything.
BOOK_LEVELS = pa.list_(pa.struct([("price", DECIMAL), ("size", DECIMAL)]))
BOOK_SCHEMA = pa.schema(
    [
        ("pair", pa.string()),
        ("exchange", pa.int32()),
        ("event_ms", pa.int64()),
        ("seq", pa.int32()),
        ("bids", BOOK_LEVELS),
        ("asks", BOOK_LEVELS),
        ("polygon_received_ms", pa.int64()),
        *_LINEAGE,
    ]
)
_ARROW_TYPES = {"dec": DECIMAL, "int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}
MINUTE_BARS_SCHEMA = pa.schema([(c.name, _ARROW_TYPES[c.kind]) for c in MINUTE_BARS.columns])
DAILY_OPEN_CLOSE_SCHEMA = pa.schema(
    [
        ("pair", pa.string()),
        ("day", pa.date32()),
        ("status", pa.string()),
        ("open", DECIMAL),
        ("close", DECIMAL),
        ("open_trade_ms", pa.int64()),
        ("open_trade_id", pa.string()),
        ("open_exchange", pa.int32()),
        ("close_trade_ms", pa.int64()),
        ("close_trade_id", pa.string()),
        ("close_exchange", pa.int32()),
        ("fetched_ms", pa.int64()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "raw_trades": TRADES_SCHEMA,
    "raw_quotes": QUOTES_SCHEMA,
    "raw_aggregates": AGGREGATES_SCHEMA,
    "raw_book": BOOK_SCHEMA,
    "minute_bars": MINUTE_BARS_SCHEMA,
    "daily_open_close": DAILY_OPEN_CLOSE_SCHEMA,
}
# Row order of a read: leading time column first (what the raw tables' merge keeps), whole key included.
ORDER: dict[str, tuple[str, ...]] = {
    "raw_trades": ("event_ms", "pair", "exchange", "trade_id"),
    "raw_quotes": ("event_ms", "pair", "exchange", "seq"),
    "raw_aggregates": ("start_ms", "channel", "pair", "received_ns"),
    "raw_book": ("event_ms", "pair", "exchange", "seq"),
    "minute_bars": ("minute_ms", "pair"),
    "daily_open_close": ("pair", "day"),
}
