"""Analyst views on the SQL tables: latest price per pair, minute bars with gap flags, daily summary.

Views are re-created on every :func:`crypto_platform.warehouse.sql.SqlWarehouse.migrate` that reaches
the current schema version, so a release that changes one replaces it (MySQL ``CREATE OR REPLACE
VIEW``; SQLite has no OR REPLACE, so ``DROP VIEW IF EXISTS`` + ``CREATE VIEW`` in one transaction).

SQLite keeps decimals as text, so its daily summary compares and sums through ``CAST(… AS REAL)``: the
stand-in's summary is approximate in the last digits; the tables themselves stay exact.
"""

from __future__ import annotations

from crypto_platform.warehouse.migrations import Dialect

VIEW_NAMES = ("crypto_latest_price", "crypto_minute_bars_flagged", "crypto_daily_summary")


def _latest_price() -> str:
    # Correlated MAX lookups ride the (pair, event_ms) index. A window function over a per-pair
    # MAX join was measured quadratic on MariaDB 10.11 (split-materialised derived table), so none here.
    # Ties at the same ms are broken by the highest trade_id: arbitrary but stable.
    return """
SELECT t.pair, t.price, t.size, t.exchange, t.trade_id, t.event_ms, t.event_time, t.source
FROM crypto_trades t
WHERE t.event_ms = (SELECT MAX(m.event_ms) FROM crypto_trades m WHERE m.pair = t.pair)
  AND t.trade_id = (SELECT MAX(u.trade_id) FROM crypto_trades u WHERE u.pair = t.pair AND u.event_ms = t.event_ms)"""


def _minute_bars_flagged() -> str:
    return """
SELECT b.*,
       CASE WHEN b.xa_close IS NULL THEN 1 ELSE 0 END AS xa_missing,
       CASE WHEN LAG(b.minute_ms) OVER (PARTITION BY b.pair ORDER BY b.minute_ms) IS NOT NULL
             AND LAG(b.minute_ms) OVER (PARTITION BY b.pair ORDER BY b.minute_ms) <> b.minute_ms - 60000
            THEN 1 ELSE 0 END AS follows_hole,
       CASE WHEN COALESCE(b.in_gap, 0) = 1 OR COALESCE(b.repaired, 0) = 1 THEN 1 ELSE 0 END AS gap_flag
FROM crypto_minute_bars b"""


def _daily_summary(dialect: Dialect) -> str:
    if dialect == "mysql":
        day = "DATE(minute_time)"
        num = "{}"
    else:
        day = "date(minute_ms / 1000, 'unixepoch')"
        num = "CAST({} AS REAL)"
    return f"""
SELECT d.pair, d.day, o.open, d.high, d.low, c.close, d.volume, d.trade_count, d.bars, d.gap_bars,
       d.repaired_bars, d.xa_missing_bars, doc.open AS rest_open, doc.close AS rest_close
FROM (
  SELECT pair, {day} AS day, MIN(minute_ms) AS first_ms, MAX(minute_ms) AS last_ms,
         MAX({num.format("high")}) AS high, MIN({num.format("low")}) AS low, SUM({num.format("volume")}) AS volume,
         SUM(trade_count) AS trade_count, COUNT(*) AS bars,
         SUM(CASE WHEN in_gap = 1 THEN 1 ELSE 0 END) AS gap_bars,
         SUM(CASE WHEN repaired = 1 THEN 1 ELSE 0 END) AS repaired_bars,
         SUM(CASE WHEN xa_close IS NULL THEN 1 ELSE 0 END) AS xa_missing_bars
  FROM crypto_minute_bars
  GROUP BY pair, {day}
) d
JOIN crypto_minute_bars o ON o.pair = d.pair AND o.minute_ms = d.first_ms
JOIN crypto_minute_bars c ON c.pair = d.pair AND c.minute_ms = d.last_ms
LEFT JOIN crypto_daily_open_close doc ON doc.pair = d.pair AND doc.day = d.day"""


def view_sql(dialect: Dialect) -> list[str]:
    """Statements that (re)create every analyst view."""
    bodies = {
        "crypto_latest_price": _latest_price(),
        "crypto_minute_bars_flagged": _minute_bars_flagged(),
        "crypto_daily_summary": _daily_summary(dialect),
    }
    out: list[str] = []
    for name in VIEW_NAMES:
        if dialect == "mysql":
            out.append(f"CREATE OR REPLACE VIEW {name} AS {bodies[name]}")
        else:
            out += [f"DROP VIEW IF EXISTS {name}", f"CREATE VIEW IF NOT EXISTS {name} AS {bodies[name]}"]
    return out
