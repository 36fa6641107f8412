"""Analyst views on MySQL/MariaDB, SQLite and Snowflake: latest price per pair, minute bars with gap flags,
daily summary per pair.

Every view exists under the same columns on all three warehouses (Snowflake names upper-case, in
``MARKET_DATA.POLYGON``), described once in :data:`VIEWS` (docs/tables.md is generated from it).
They are re-created whenever a migration reaches the current schema version, so a release that changes
one replaces it: MySQL and Snowflake ``CREATE OR REPLACE VIEW``; SQLite has no OR REPLACE, so ``DROP VIEW
IF EXISTS`` + ``CREATE VIEW`` in the migration's transaction.

Exact numbers everywhere (decided): MySQL and Snowflake aggregate DECIMAL/NUMBER exactly. SQLite keeps
decimals as canonical text with 18 decimals (what the loaders write), so its daily summary never casts
to REAL: ``high``/``low`` compare the text by (sign, length, digits), and ``volume`` is summed in four
base-10^9 integer limbs with the carries propagated in SQL and rendered back to text. Plain SQL, no
user-defined function, so the views also work in any SQLite client that opens the file.

fakesnow (the local Snowflake) turns ``SUM(x)`` into ``SUM(TRY_CAST(x AS DOUBLE))`` unless ``x`` is
already a cast, so the Snowflake summary sums ``x::NUMBER(38,18)``: a no-op on Snowflake, exact on
both. Counts use ``COUNT(CASE WHEN … THEN 1 END)``, which needs no SUM at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto_platform.warehouse.migrations import Dialect
from crypto_platform.warehouse.tables import MINUTE_BARS, Table


@dataclass(frozen=True)
class View:
    """An analyst view: its names, what it answers and its columns (after ``base``'s, when it has one)."""

    name: str  # MySQL / SQLite name
    snowflake: str  # name in MARKET_DATA.POLYGON
    doc: str
    columns: tuple[tuple[str, str], ...]  # (column, meaning), in order
    base: Table | None = None  # the view starts with every column of this table (``b.*``)

    def column_names(self) -> list[str]:
        """The view's columns in order (lower-case), base-table columns and their time companions first."""
        head: list[str] = []
        if self.base is not None:
            for c in self.base.columns:
                head += [c.name] + ([c.human] if c.human else [])
        return head + [c for c, _ in self.columns]


LATEST_PRICE = View(
    name="crypto_latest_price",
    snowflake="LATEST_PRICE",
    doc="The last trade of each pair in crypto_trades: highest event_ms, ties broken by the highest trade_id, "
    "then the highest exchange (arbitrary but stable). One row per pair.",
    columns=(
        ("pair", "pair"),
        ("price", "price of the pair's last trade (exact)"),
        ("size", "its size"),
        ("exchange", "its exchange id"),
        ("trade_id", "its trade id"),
        ("event_ms", "its exchange timestamp (epoch ms)"),
        ("event_time", "the same as UTC datetime"),
        ("source", "'ws' or 'rest_repair'"),
    ),
)

MINUTE_BARS_FLAGGED = View(
    name="crypto_minute_bars_flagged",
    snowflake="MINUTE_BARS_FLAGGED",
    doc="Every row of crypto_minute_bars with three 0/1 flags for quick filtering.",
    base=MINUTE_BARS,
    columns=(
        ("xa_missing", "1 when Polygon sent no XA bar for the minute (xa_close IS NULL)"),
        ("follows_hole", "1 when the pair's previous bar is not the previous minute (minutes without bars before)"),
        ("gap_flag", "1 when the bar is in a stream gap or was repaired from REST (in_gap OR repaired)"),
    ),
)

DAILY_SUMMARY = View(
    name="crypto_daily_summary",
    snowflake="DAILY_SUMMARY",
    doc="One row per pair and UTC day from crypto_minute_bars, beside Polygon's daily open/close when fetched. "
    "Exact on every warehouse (SQLite included: see warehouse/views.py).",
    columns=(
        ("pair", "pair"),
        ("day", "UTC day"),
        ("open", "open of the day's first bar"),
        ("high", "highest bar high"),
        ("low", "lowest bar low"),
        ("close", "close of the day's last bar"),
        ("volume", "sum of bar volumes (exact)"),
        ("trade_count", "sum of bar trade counts"),
        ("bars", "bars in the day (at most 1,440)"),
        ("gap_bars", "bars with in_gap"),
        ("repaired_bars", "bars with repaired"),
        ("xa_missing_bars", "bars without Polygon's XA bar"),
        ("rest_open", "Polygon's daily open (crypto_daily_open_close), NULL when not fetched"),
        ("rest_close", "Polygon's daily close, NULL when not fetched"),
    ),
)

VIEWS: tuple[View, ...] = (LATEST_PRICE, MINUTE_BARS_FLAGGED, DAILY_SUMMARY)
VIEW_NAMES = tuple(v.name for v in VIEWS)


# ------------------------------------------------------------------------------------------------
# latest price


def _latest_price_sql(dialect: Dialect, prefix: str) -> str:
    if dialect == "snowflake":
        # Snowflake is columnar: one window pass; QUALIFY keeps the top row per pair.
        return f"""
SELECT PAIR, PRICE, SIZE, EXCHANGE, TRADE_ID, EVENT_MS, EVENT_TIME, SOURCE
FROM {prefix}TRADES
QUALIFY ROW_NUMBER() OVER (PARTITION BY PAIR ORDER BY EVENT_MS DESC, TRADE_ID DESC, EXCHANGE DESC) = 1"""
    # Correlated MAX lookups ride the (pair, event_ms) index. A window function over a per-pair
    # MAX join was measured quadratic on MariaDB 10.11 (split-materialised derived table), so none here.
    # The exchange lookup makes the view one row per pair even when two exchanges share a trade id.
    return """
SELECT t.pair, t.price, t.size, t.exchange, t.trade_id, t.event_ms, t.event_time, t.source
FROM crypto_trades t
WHERE t.event_ms = (SELECT MAX(m.event_ms) FROM crypto_trades m WHERE m.pair = t.pair)
  AND t.trade_id = (SELECT MAX(u.trade_id) FROM crypto_trades u WHERE u.pair = t.pair AND u.event_ms = t.event_ms)
  AND t.exchange = (SELECT MAX(x.exchange) FROM crypto_trades x
                    WHERE x.pair = t.pair AND x.event_ms = t.event_ms AND x.trade_id = t.trade_id)"""


# ------------------------------------------------------------------------------------------------
# minute bars with flags


def _minute_bars_flagged_sql(dialect: Dialect, prefix: str) -> str:
    if dialect == "snowflake":
        bars, gap = f"{prefix}MINUTE_BARS", "COALESCE(b.IN_GAP, FALSE) OR COALESCE(b.REPAIRED, FALSE)"
    else:
        bars, gap = "crypto_minute_bars", "COALESCE(b.in_gap, 0) = 1 OR COALESCE(b.repaired, 0) = 1"
    return f"""
SELECT b.*,
       CASE WHEN b.xa_close IS NULL THEN 1 ELSE 0 END AS xa_missing,
       CASE WHEN LAG(b.minute_ms) OVER (PARTITION BY b.pair ORDER BY b.minute_ms) IS NOT NULL
             AND LAG(b.minute_ms) OVER (PARTITION BY b.pair ORDER BY b.minute_ms) <> b.minute_ms - 60000
            THEN 1 ELSE 0 END AS follows_hole,
       CASE WHEN {gap} THEN 1 ELSE 0 END AS gap_flag
FROM {bars} b"""


# ------------------------------------------------------------------------------------------------
# daily summary

_LIMB = 1_000_000_000  # SQLite sums decimals in base-10^9 integer limbs (no int64 overflow for any day)


def _floor_div(x: str) -> str:
    """floor(x / 10^9) in SQLite, whose integer division truncates toward zero."""
    return f"(({x}) - ((({x}) % {_LIMB}) + {_LIMB}) % {_LIMB}) / {_LIMB}"


def sqlite_limbs(col: str, alias: str) -> str:
    """Per-row select items splitting canonical decimal text ``col`` into signed base-10^9 limbs.

    ``[-]I.F`` (F: exactly 18 digits, I up to 20) -> ``alias_3`` (I above its last 9 digits),
    ``alias_2`` (I's last 9 digits), ``alias_1`` / ``alias_0`` (F's two halves), each carrying the sign.
    """
    a = f"ltrim({col}, '-')"
    i = f"substr({a}, 1, instr({a}, '.') - 1)"
    f = f"substr({a}, instr({a}, '.') + 1)"
    sign = f"(CASE WHEN {col} LIKE '-%' THEN -1 ELSE 1 END)"
    parts = {
        3: f"CAST(substr({i}, 1, max(length({i}) - 9, 0)) AS INTEGER)",
        2: f"CAST(substr({i}, -9) AS INTEGER)",
        1: f"CAST(substr({f}, 1, 9) AS INTEGER)",
        0: f"CAST(substr({f}, 10, 9) AS INTEGER)",
    }
    return ", ".join(f"{sign} * {expr} AS {alias}_{k}" for k, expr in parts.items())


def sqlite_exact_sum(source: str, col: str, group: list[str], extra: dict[str, str] | None = None) -> str:
    """A SELECT over ``source`` grouped by ``group`` whose column ``col`` is the exact sum of text ``col``.

    Limb sums are normalised with floor carries (0 <= limb < 10^9 below the top one); a negative top
    limb means a negative total, which is rendered from the normalised negated sums instead. ``extra``
    (alias -> aggregate expression) adds other aggregates of the same groups, passed through.
    """
    extra = extra or {}
    keys = ", ".join(group)
    aggregates = "".join(f", {expr} AS {alias}" for alias, expr in extra.items())
    rows = f"SELECT *, {sqlite_limbs(col, 'l')} FROM ({source})"
    sums = ", ".join(f"SUM(l_{k}) AS s_{k}" for k in range(4))
    step = f"SELECT {keys}{aggregates}, {sums} FROM ({rows}) GROUP BY {keys}"
    # Two normalisations side by side: of the sums (p_*) and of their negation (n_*).
    for k in range(3):
        items = []
        for side, minus in (("p", ""), ("n", "-")):
            value = f"({minus}s_{k} + {side}c_{k - 1})" if k else f"({minus}s_{k})"
            items += [f"{_floor_div(value)} AS {side}c_{k}", f"{value} - {_floor_div(value)} * {_LIMB} AS {side}_{k}"]
        step = f"SELECT *, {', '.join(items)} FROM ({step})"
    step = f"SELECT *, (s_3 + pc_2) AS p_3, (-s_3 + nc_2) AS n_3 FROM ({step})"

    def text(side: str) -> str:
        whole = f"CASE WHEN {side}_3 > 0 THEN {side}_3 || printf('%09d', {side}_2) ELSE CAST({side}_2 AS TEXT) END"
        return f"{whole} || '.' || printf('%09d%09d', {side}_1, {side}_0)"

    # printf turns NULL into 0: a group whose values are all NULL must stay NULL (as SUM does).
    total = f"CASE WHEN s_0 IS NULL THEN NULL WHEN p_3 >= 0 THEN {text('p')} ELSE '-' || {text('n')} END"
    passed = "".join(f", {alias}" for alias in extra)
    return f"SELECT {keys}{passed}, {total} AS {col} FROM ({step})"


def sqlite_exact_max(col: str, *, largest: bool = True) -> str:
    """MAX (or MIN) of canonical decimal text: non-negatives order by (length, digits), negatives reversed."""
    key = f"printf('%03d', length({col})) || {col}"
    neg, pos = f"{col} LIKE '-%'", f"{col} NOT LIKE '-%'"
    first, then = (pos, neg) if largest else (neg, pos)
    return (
        f"COALESCE(substr(MAX(CASE WHEN {first} THEN {key} END), 4), substr(MIN(CASE WHEN {then} THEN {key} END), 4))"
    )


# Bar counts of a day, the same on every warehouse ({gap} / {rep}: the dialect's test of the flag).
_COUNTS = {
    "bars": "COUNT(*)",
    "gap_bars": "COUNT(CASE WHEN {gap} THEN 1 END)",
    "repaired_bars": "COUNT(CASE WHEN {rep} THEN 1 END)",
    "xa_missing_bars": "COUNT(CASE WHEN xa_close IS NULL THEN 1 END)",
}


def _counts(gap: str, rep: str) -> dict[str, str]:
    return {alias: expr.format(gap=gap, rep=rep) for alias, expr in _COUNTS.items()}


def _daily_summary_sql(dialect: Dialect, prefix: str) -> str:
    if dialect == "snowflake":
        bars, doc = f"{prefix}MINUTE_BARS", f"{prefix}DAILY_OPEN_CLOSE"
        day = "TO_DATE(TO_TIMESTAMP_NTZ(MINUTE_MS, 3))"
        counts = "".join(f", {e} AS {a.upper()}" for a, e in _counts("IN_GAP", "REPAIRED").items())
        grouped = f"""
  SELECT PAIR, {day} AS DAY, MIN(MINUTE_MS) AS FIRST_MS, MAX(MINUTE_MS) AS LAST_MS,
         MAX(HIGH) AS HIGH, MIN(LOW) AS LOW, SUM(VOLUME::NUMBER(38,18)) AS VOLUME,
         SUM(TRADE_COUNT::NUMBER(38,0)) AS TRADE_COUNT{counts}
  FROM {bars}
  GROUP BY PAIR, {day}"""
    elif dialect == "mysql":
        bars, doc = "crypto_minute_bars", "crypto_daily_open_close"
        counts = "".join(f", {e} AS {a}" for a, e in _counts("in_gap = 1", "repaired = 1").items())
        grouped = f"""
  SELECT pair, DATE(minute_time) AS day, MIN(minute_ms) AS first_ms, MAX(minute_ms) AS last_ms,
         MAX(high) AS high, MIN(low) AS low, SUM(volume) AS volume, SUM(trade_count) AS trade_count{counts}
  FROM crypto_minute_bars
  GROUP BY pair, DATE(minute_time)"""
    else:
        bars, doc = "crypto_minute_bars", "crypto_daily_open_close"
        extra = {
            "first_ms": "MIN(minute_ms)",
            "last_ms": "MAX(minute_ms)",
            "high": sqlite_exact_max("high"),
            "low": sqlite_exact_max("low", largest=False),
            "trade_count": "SUM(trade_count)",
            **_counts("in_gap = 1", "repaired = 1"),
        }
        source = (
            "SELECT pair, date(minute_ms / 1000, 'unixepoch') AS day, minute_ms, high, low, volume, trade_count, "
            f"in_gap, repaired, xa_close FROM {bars}"
        )
        grouped = sqlite_exact_sum(source, "volume", ["pair", "day"], extra)
    return f"""
SELECT d.pair, d.day, o.open, d.high, d.low, c.close, d.volume, d.trade_count, d.bars, d.gap_bars,
       d.repaired_bars, d.xa_missing_bars, r.open AS rest_open, r.close AS rest_close
FROM ({grouped}
) d
JOIN {bars} o ON o.pair = d.pair AND o.minute_ms = d.first_ms
JOIN {bars} c ON c.pair = d.pair AND c.minute_ms = d.last_ms
LEFT JOIN {doc} r ON r.pair = d.pair AND r.day = d.day"""


_BODIES = {
    LATEST_PRICE.name: _latest_price_sql,
    MINUTE_BARS_FLAGGED.name: _minute_bars_flagged_sql,
    DAILY_SUMMARY.name: _daily_summary_sql,
}


def view_sql(dialect: Dialect, *, database: str = "", schema: str = "") -> list[str]:
    """Statements that (re)create every analyst view.

    Snowflake views name their tables as ``database.schema.TABLE``: a view must not depend on the
    session's current schema (fakesnow resolves unqualified names when the view is queried).
    """
    if dialect == "snowflake" and not (database and schema):
        raise ValueError("Snowflake views need the database and schema")
    prefix = f"{database}.{schema}." if dialect == "snowflake" else ""
    out: list[str] = []
    for view in VIEWS:
        body = _BODIES[view.name](dialect, prefix)
        if dialect == "snowflake":
            out.append(f"CREATE OR REPLACE VIEW {prefix}{view.snowflake} AS {body}")
        elif dialect == "mysql":
            out.append(f"CREATE OR REPLACE VIEW {view.name} AS {body}")
        else:
            out += [f"DROP VIEW IF EXISTS {view.name}", f"CREATE VIEW IF NOT EXISTS {view.name} AS {body}"]
    return out
