"""The warehouse tables, defined once and rendered for MySQL/MariaDB, SQLite and Snowflake.

Why a small column spec instead of SQLAlchemy ``Table`` objects: the same definition has to produce
three dialects (Snowflake included, which SQLAlchemy cannot render without another dependency), the
migration list (columns carry the schema version that added them), the loaders' validation (widths,
nullability, decimal fit) and the parity checksum. One list of :class:`Column` per table does all of it.

Conventions (prices and sizes are decimals on the wire, so no float may ever hold them):
- prices and sizes are ``DECIMAL(38,18)`` / ``NUMBER(38,18)``; SQLite keeps them as canonical text
  with 18 decimals so nothing is ever rounded through a float;
- every ms (or ns) time column gets a UTC ``DATETIME(3)`` / ``TIMESTAMP_NTZ(3)`` companion for humans
  (``event_ms`` -> ``event_time``), computed by the database, never supplied by the loader;
- primary keys are the lake's natural keys; a secondary index serves "pair + time range" queries;
- each table has a partition column: the UTC day of a row is the day of that column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["str", "text", "int", "dec", "bool", "date"]

DECIMAL_PRECISION = 38
DECIMAL_SCALE = 18
# Digits allowed before the decimal point in DECIMAL(38,18).
DECIMAL_INTEGER_DIGITS = DECIMAL_PRECISION - DECIMAL_SCALE


@dataclass(frozen=True)
class Column:
    """One loader-supplied column. ``human`` names the generated UTC datetime companion, if any."""

    name: str
    kind: Kind
    length: int = 0  # VARCHAR length for kind "str"
    nullable: bool = True
    added_in: int = 1  # schema version that introduced the column
    human: str | None = None  # name of the generated DATETIME(3) column derived from this time column
    unit: Literal["ms", "ns", ""] = ""  # unit of a time column with a human companion
    doc: str = ""  # what the column means (docs/tables.md is generated from it)


@dataclass(frozen=True)
class Index:
    """A secondary index introduced after its table (``added_in`` > the table's version)."""

    columns: tuple[str, ...]
    added_in: int

    @property
    def name(self) -> str:
        return "ix_" + "_".join(self.columns)


@dataclass(frozen=True)
class Table:
    """A warehouse table: columns the loaders write, natural key, indexes and partition column."""

    name: str  # MySQL / SQLite name
    snowflake: str | None  # Snowflake table name in MARKET_DATA.POLYGON (None: not in Snowflake)
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...] | Index, ...]
    partition: str  # the column whose UTC day is the row's partition day
    added_in: int = 1
    doc: str = ""
    # Bookkeeping tables (load watermarks) are migrated like the others but are not market data.
    bookkeeping: bool = False
    _by_name: dict[str, Column] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({c.name: c for c in self.columns})
        missing = [k for k in (*self.key, self.partition) if k not in self._by_name]
        if missing:
            raise ValueError(f"{self.name}: key/partition columns {missing} are not columns")

    def column(self, name: str) -> Column:
        return self._by_name[name]

    def columns_at(self, version: int) -> tuple[Column, ...]:
        """The columns that exist once the schema is at ``version``."""
        return tuple(c for c in self.columns if c.added_in <= version)

    def indexes_at(self, version: int) -> tuple[Index, ...]:
        """The secondary indexes that exist once the schema is at ``version``."""
        specs = (i if isinstance(i, Index) else Index(tuple(i), self.added_in) for i in self.indexes)
        return tuple(i for i in specs if i.added_in <= version)

    @property
    def has_segments(self) -> bool:
        """Rows carry the landing segment they came from, so loads can resume after a watermark."""
        return "segment" in self._by_name

    @property
    def value_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.name not in self.key)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _pair() -> Column:
    return Column("pair", "str", 32, nullable=False, doc="Polygon crypto pair, e.g. BTC-USD")


def _dec(name: str, doc: str, *, nullable: bool = True, added_in: int = 1) -> Column:
    return Column(name, "dec", nullable=nullable, added_in=added_in, doc=doc)


def _ms(name: str, doc: str, *, nullable: bool = True, human: str | None = None) -> Column:
    human = human or name.removesuffix("_ms") + "_time"
    return Column(name, "int", nullable=nullable, human=human, unit="ms", doc=doc)


def _received_ns() -> Column:
    doc = "when our ingester received the frame (epoch ns, its wall clock)"
    return Column("received_ns", "int", nullable=False, human="received_time", unit="ns", doc=doc)


def _lineage() -> tuple[Column, ...]:
    # Which connection session and landing segment a row came from (replay lineage).
    return (
        Column("session", "int", doc="connection session that received the row (crypto_stream_sessions)"),
        Column("segment", "int", doc="landing-log segment the row was read from; NULL for REST repair rows"),
    )


TRADES = Table(
    name="crypto_trades",
    snowflake="TRADES",
    columns=(
        _pair(),
        Column("exchange", "int", nullable=False, doc="Polygon exchange id (x)"),
        Column("trade_id", "str", 80, nullable=False, doc="exchange trade id (i); 'h:' + content hash when absent"),
        _dec("price", "trade price (p), exact", nullable=False),
        _dec("size", "trade size in the base currency (s), exact", nullable=False),
        Column("conditions", "text", doc="Polygon condition codes (c) as a JSON array"),
        _ms("event_ms", "exchange timestamp of the trade (t, epoch ms)", nullable=False),
        _ms("polygon_received_ms", "when Polygon received the trade (r, epoch ms)"),
        _received_ns(),
        *_lineage(),
        Column("source", "str", 16, nullable=False, doc="'ws' (stream) or 'rest_repair' (fetched after a gap)"),
    ),
    key=("pair", "exchange", "trade_id"),
    indexes=(("pair", "event_ms"), ("event_ms",), Index(("segment",), 3)),
    partition="event_ms",
    doc="Every trade (XT / REST repair), de-duplicated on (pair, exchange, trade_id).",
)

QUOTES = Table(
    name="crypto_quotes",
    snowflake="QUOTES",
    columns=(
        _pair(),
        Column("exchange", "int", nullable=False, doc="Polygon exchange id (x)"),
        _ms("event_ms", "exchange timestamp of the quote (t, epoch ms)", nullable=False),
        Column("seq", "int", nullable=False, doc="0, 1, ... for quotes with the same (pair, exchange, t) in a frame"),
        _dec("bid_price", "best bid price (bp)"),
        _dec("bid_size", "size at the best bid (bs)"),
        _dec("ask_price", "best ask price (ap)"),
        _dec("ask_size", "size at the best ask (as)"),
        _ms("polygon_received_ms", "when Polygon received the quote (r, epoch ms)"),
        _received_ns(),
        *_lineage(),
    ),
    key=("pair", "exchange", "event_ms", "seq"),
    indexes=(("pair", "event_ms"), ("event_ms",), Index(("segment",), 3)),
    partition="event_ms",
    doc="Top-of-book quotes (XQ); seq orders identical (pair, exchange, t) within a frame.",
)

AGGREGATES = Table(
    name="crypto_aggregates",
    snowflake="AGGREGATES",
    columns=(
        _pair(),
        Column("channel", "str", 4, nullable=False, doc="'XA' (minute bar) or 'XAS' (second bar)"),
        _ms("start_ms", "bar start (s, epoch ms)", nullable=False),
        _ms("end_ms", "bar end (e, epoch ms)"),
        _dec("open", "Polygon's open (o)"),
        _dec("high", "Polygon's high (h)"),
        _dec("low", "Polygon's low (l)"),
        _dec("close", "Polygon's close (c)"),
        _dec("volume", "Polygon's volume (v)"),
        _dec("vwap", "Polygon's volume-weighted average price (vw)"),
        _dec("avg_trade_size", "Polygon's average trade size (z)"),
        _received_ns(),
        Column("revision", "int", nullable=False, doc="0 for the first version of the bar, +1 per re-sent revision"),
        *_lineage(),
    ),
    key=("pair", "channel", "start_ms"),
    indexes=(("pair", "start_ms"), ("start_ms",), Index(("segment",), 3)),
    partition="start_ms",
    doc="Polygon's own XA (minute) and XAS (second) bars, current revision only.",
)

MINUTE_BARS = Table(
    name="crypto_minute_bars",
    snowflake="MINUTE_BARS",
    columns=(
        _pair(),
        _ms("minute_ms", "start of the UTC minute (epoch ms)", nullable=False),
        _dec("open", "price of the minute's first trade"),
        _dec("high", "highest trade price in the minute"),
        _dec("low", "lowest trade price in the minute"),
        _dec("close", "price of the minute's last trade"),
        _dec("volume", "sum of trade sizes"),
        _dec("vwap", "volume-weighted average price, sum(price*size)/sum(size)"),
        Column("trade_count", "int", doc="trades in the minute"),
        _ms("first_trade_ms", "time of the first trade (epoch ms)"),
        _ms("last_trade_ms", "time of the last trade (epoch ms)"),
        _dec("xa_open", "open of Polygon's current XA bar for the minute"),
        _dec("xa_high", "high of Polygon's XA bar"),
        _dec("xa_low", "low of Polygon's XA bar"),
        _dec("xa_close", "close of Polygon's XA bar; NULL when Polygon sent none"),
        _dec("xa_volume", "volume of Polygon's XA bar"),
        _dec("xa_vwap", "vwap of Polygon's XA bar"),
        # built minus Polygon's XA bar; NULL when either side is missing
        _dec("open_diff", "open - xa_open; NULL when either is missing"),
        _dec("high_diff", "high - xa_high"),
        _dec("low_diff", "low - xa_low"),
        _dec("close_diff", "close - xa_close"),
        _dec("volume_diff", "volume - xa_volume"),
        Column("settled", "bool", doc="the revision window (CRYPTO_BAR_REVISION_WINDOW_S) has passed"),
        Column("source", "str", 16, doc="'ws' (built from streamed trades) or 'rest_repair'"),
        Column("in_gap", "bool", doc="the minute overlaps a stream gap (no connection)"),
        # v2: the bar was rebuilt with trades fetched from REST after a stream gap
        Column("repaired", "bool", added_in=2, doc="rebuilt from REST trades or bars after a gap"),
    ),
    key=("pair", "minute_ms"),
    indexes=(("minute_ms",),),
    partition="minute_ms",
    doc="Minute bars built from trades, compared with XA, with gap and repair flags.",
)

DAILY_OPEN_CLOSE = Table(
    name="crypto_daily_open_close",
    snowflake="DAILY_OPEN_CLOSE",
    columns=(
        _pair(),
        Column("day", "date", nullable=False, doc="UTC day"),
        _dec("open", "Polygon's daily open"),
        _dec("close", "Polygon's daily close"),
        _ms("open_trade_ms", "time of the opening trade (epoch ms)"),
        _ms("close_trade_ms", "time of the closing trade (epoch ms)"),
        Column("is_utc", "bool", doc="true: the day is a UTC day (always, for fetched days); NULL for no_data"),
        Column("open_trades", "text", doc='opening trade as JSON [{"i": id, "x": exchange, "t": ms}]'),
        Column("closing_trades", "text", doc="closing trade, same JSON shape"),
        _ms("fetched_ms", "when the REST answer was fetched (epoch ms)"),
        # v3: 'ok', or 'no_data' when Polygon had nothing for the pair and day (a row, never a silent skip)
        Column("status", "str", 16, added_in=3, doc="'ok', or 'no_data' when Polygon had nothing for the day"),
    ),
    key=("pair", "day"),
    indexes=(("day",),),
    partition="day",
    doc="REST /v1/open-close/crypto per pair and UTC day.",
)

STREAM_SESSIONS = Table(
    name="crypto_stream_sessions",
    snowflake="STREAM_SESSIONS",
    columns=(
        Column("session", "int", nullable=False, doc="connection number, counting up per landing log"),
        Column("url", "str", 255, doc="WebSocket URL connected to"),
        _ms("connect_ms", "connection opened (epoch ms)", nullable=False),
        _ms("first_frame_ms", "first data frame received"),
        _ms("last_frame_ms", "last data frame received"),
        _ms("disconnect_ms", "connection closed; NULL while open"),
        Column("close_code", "int", doc="WebSocket close code"),
        Column("close_reason", "str", 255, doc="WebSocket close reason"),
        Column("frames", "int", doc="frames received; NULL while open"),
        Column("events", "int", doc="events received; NULL while open"),
        Column("topics", "text", doc="subscribed topics as a JSON array"),
        # the gap before this session: previous session's last frame -> this session's first frame
        _ms("gap_start_ms", "start of the gap before this session: the previous session's last frame"),
        _ms("gap_end_ms", "end of that gap: this session's first frame"),
        Column("gap_ms", "int", doc="length of that gap in ms"),
    ),
    key=("session",),
    indexes=(("connect_ms",),),
    partition="connect_ms",
    doc="The session ledger: one row per connection, with the gap that preceded it.",
)

ALERTS = Table(
    name="crypto_alerts",
    snowflake=None,
    columns=(
        Column("rule", "str", 64, nullable=False, doc="price_above, price_below, volume_spike or whale_trade"),
        _pair(),
        _ms("ts_ms", "time of the trade or minute that fired the rule (epoch ms)", nullable=False, human="ts_time"),
        _dec("value", "what crossed: the price, the minute volume, or the trade notional"),
        _dec("threshold", "the rule's threshold (volume_spike: factor x median volume)"),
        Column("muted", "bool", nullable=False, doc="fired in a stream gap or on gap-repair data (kept)"),
        Column("reason", "str", 500, doc="why it was muted, or what fired it"),
    ),
    key=("rule", "pair", "ts_ms"),
    indexes=(("pair", "ts_ms"), ("ts_ms",)),
    partition="ts_ms",
    added_in=2,
    doc="Alerts raised by rules (value vs threshold), muted ones kept with their reason.",
)

LOAD_WATERMARKS = Table(
    name="crypto_load_watermarks",
    snowflake="LOAD_WATERMARKS",
    columns=(
        Column("table_name", "str", 64, nullable=False, doc="warehouse table (its MySQL name)"),
        Column("day", "date", nullable=False, doc="UTC day (partition)"),
        # highest landing segment whose rows of this day are in the table (NULL: not segment-tracked)
        Column("segment", "int", doc="highest landing segment whose rows of the day are in the table"),
        Column("mode", "str", 16, nullable=False, doc="'rebuild' (whole day replaced) or 'upsert'"),
        Column("rows_loaded", "int", nullable=False, doc="rows of the day the table held after that load"),
        _ms("loaded_ms", "when the load committed (epoch ms)", nullable=False),
    ),
    key=("table_name", "day"),
    indexes=(),
    partition="day",
    added_in=3,
    bookkeeping=True,
    doc="Load watermark per table and UTC day, written in the same transaction as the rows (MySQL/SQLite).",
)

TABLES: tuple[Table, ...] = (TRADES, QUOTES, AGGREGATES, MINUTE_BARS, DAILY_OPEN_CLOSE, STREAM_SESSIONS, ALERTS)
# Every table the migrations create: the market-data tables plus bookkeeping.
ALL_TABLES: tuple[Table, ...] = (*TABLES, LOAD_WATERMARKS)
TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in ALL_TABLES}


def table(name: str | Table) -> Table:
    """Look a table up by its SQL name (``crypto_trades``), short name (``trades``) or Snowflake name."""
    if isinstance(name, Table):
        return name
    key = name.lower()
    for t in ALL_TABLES:
        if key in (t.name, t.name.removeprefix("crypto_"), (t.snowflake or "").lower()):
            return t
    raise KeyError(f"no warehouse table {name!r}; known: {', '.join(t.name for t in ALL_TABLES)}")
