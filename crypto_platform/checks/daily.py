"""Asset checks on ``daily_open_close``, including a reconciliation against the day's raw trades.

Blocking (ERROR): schema, one row per (pair, day), values (status is ``ok`` or ``no_data``; an ``ok``
day has positive open and close and its opening trade is not after its closing trade) and the
partition day; a wrong row here would be copied to the warehouses as the day's official figures.

``matches_raw_trades`` only WARNs. It compares REST with what the stream captured, for the pairs and
sides where both exist and the stream was connected at the REST trade's time:

- the same trade (exchange and trade id) on both sides must have the same price: tolerance 0;
- otherwise the stream's first trade of the day (for the open) and its last trade at or before the
  REST closing trade (for the close, which also covers a REST answer fetched before the day ended)
  must be within ``RECONCILE_TOLERANCE`` (1 %) of the REST figure.

Why 1 % and not 0: the simulator's REST open/close *is* the first and last trade of the day
(``simulator/rest_api.py`` ``open_close`` takes ``market.first_trade``/``last_trade``), so against it
the trade-identity rule always applies and any difference is a real error. Real Polygon computes the
daily open/close across exchanges with its own rules (which prints count, which exchange opens), so
its opening trade can differ from the first print the stream saw, seconds apart; crypto rarely moves
1 % in seconds, while the errors worth catching (a wrong pair, a shifted day, a scaled price) are far
larger. A disagreement does not say which side is wrong, so it warns rather than blocks.
"""

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.assets.daily import SCHEMA as DAILY_SCHEMA
from crypto_platform.checks.figures import (
    MAX_EXAMPLES,
    Figures,
    Rule,
    duplicate_figures,
    greater,
    not_positive,
    rule_figures,
    schema_figures,
)
from crypto_platform.checks.lake import IN_PARTITION_DAY, SCHEMA, UNIQUE_KEY, VALID_VALUES, merge, partition_days
from crypto_platform.partitions import day_bounds_ms
from crypto_platform.resources.lake import LakeResource

RECONCILE = "matches_raw_trades"
RECONCILE_TOLERANCE = Decimal("0.01")
KEY = ("pair", "day")
STATUSES = ["ok", "no_data"]


def _when_ok(rule: Rule) -> Rule:
    return Rule(rule.name, rule.columns, lambda t: pc.and_(pc.equal(t["status"], "ok"), rule.violated(t)))


RULES = (
    Rule("status_unknown", ("status",), lambda t: pc.invert(pc.is_in(t["status"], value_set=pa.array(STATUSES)))),
    _when_ok(Rule("open_missing", ("open",), lambda t: pc.is_null(t["open"]))),
    _when_ok(Rule("close_missing", ("close",), lambda t: pc.is_null(t["close"]))),
    _when_ok(not_positive("open")),
    _when_ok(not_positive("close")),
    _when_ok(greater("open_trade_ms", "close_trade_ms")),
    Rule(
        "no_data_with_prices",
        ("status", "open", "close"),
        lambda t: pc.and_(pc.equal(t["status"], "no_data"), pc.or_(pc.is_valid(t["open"]), pc.is_valid(t["close"]))),
    ),
)


def _day_rules(day: str) -> list[Rule]:
    lo, hi = day_bounds_ms(day)
    want = pa.scalar(date.fromisoformat(day), pa.date32())

    def outside(column: str) -> Any:
        return lambda t: pc.or_(pc.less(t[column], lo), pc.greater_equal(t[column], hi))

    return [
        Rule("day_is_not_the_partition", ("day",), lambda t: pc.not_equal(t["day"], want)),
        Rule("open_trade_outside_day", ("open_trade_ms",), outside("open_trade_ms")),
        Rule("close_trade_outside_day", ("close_trade_ms",), outside("close_trade_ms")),
    ]


def _rel(a: Decimal, b: Decimal) -> Decimal:
    return abs(a - b) / abs(b) if b else abs(a - b)


def reconcile_figures(daily: pa.Table, trades: pa.Table | None) -> Figures:
    """REST open/close against the stream's trades of the same day (see the module docstring)."""
    figures = Figures(daily.num_rows, extra={"sides_compared": 0, "sides_not_covered": 0, "max_rel_diff": 0.0})
    if trades is None or trades.num_rows == 0:
        figures.extra["sides_not_covered"] = 2 * daily.num_rows
        figures.examples.append("no raw_trades for the day: nothing to compare")
        return figures
    by_pair: dict[str, list[dict[str, Any]]] = {}
    ordered = trades.select(["pair", "exchange", "trade_id", "price", "event_ms"]).sort_by(
        [("pair", "ascending"), ("event_ms", "ascending"), ("received_ns", "ascending")]
        if "received_ns" in trades.column_names
        else [("pair", "ascending"), ("event_ms", "ascending")]
    )
    for row in ordered.to_pylist():
        by_pair.setdefault(row["pair"], []).append(row)
    worst = Decimal(0)
    for rest in daily.filter(pc.equal(daily["status"], "ok")).to_pylist():
        stream = by_pair.get(rest["pair"])
        if not stream:
            figures.extra["sides_not_covered"] += 2  # type: ignore[operator]
            continue
        ids = {(t["exchange"], t["trade_id"]): t for t in stream}
        first_ms, last_ms = stream[0]["event_ms"], stream[-1]["event_ms"]
        sides = [
            ("open", rest["open"], rest["open_trade_ms"], (rest["open_exchange"], rest["open_trade_id"]), first_ms),
            ("close", rest["close"], rest["close_trade_ms"], (rest["close_exchange"], rest["close_trade_id"]), last_ms),
        ]
        for side, price, at_ms, trade_key, edge_ms in sides:
            same = ids.get(trade_key)
            covered = at_ms is not None and (edge_ms <= at_ms if side == "open" else edge_ms >= at_ms)
            if same is not None:
                ref, tolerance, how = same["price"], Decimal(0), "same trade"
            elif covered:
                before = [t for t in stream if t["event_ms"] <= at_ms]
                ref = stream[0]["price"] if side == "open" else before[-1]["price"]
                tolerance, how = RECONCILE_TOLERANCE, "stream trade"
            else:
                figures.extra["sides_not_covered"] += 1  # type: ignore[operator]
                continue
            figures.extra["sides_compared"] += 1  # type: ignore[operator]
            diff = _rel(ref, price)
            worst = max(worst, diff)
            if diff > tolerance:
                figures.violations += 1
                if len(figures.examples) < MAX_EXAMPLES:
                    figures.examples.append(
                        f"{rest['pair']} {side}: REST {price} vs {how} {ref} "
                        f"({float(diff):.4%}, tolerance {float(tolerance):.0%})"
                    )
    figures.extra["max_rel_diff"] = float(worst)
    figures.extra["reconciliation_errors"] = figures.violations
    return figures


def evaluate_daily_day(daily: pa.Table | None, trades: pa.Table | None, day: str) -> dict[str, Figures]:
    names = [SCHEMA, UNIQUE_KEY, VALID_VALUES, IN_PARTITION_DAY, RECONCILE]
    if daily is None:
        return dict.fromkeys(names, Figures(0, 1, [f"no lake partition daily_open_close/date={day}"]))
    out = {SCHEMA: schema_figures(daily, DAILY_SCHEMA)}
    if out[SCHEMA].violations:
        skipped = Figures(daily.num_rows, 1, ["not evaluated: the schema check failed"])
        return {name: out.get(name, skipped) for name in names}
    out[UNIQUE_KEY] = duplicate_figures(daily, KEY)
    out[VALID_VALUES] = rule_figures(daily, RULES, KEY)
    out[IN_PARTITION_DAY] = rule_figures(daily, _day_rules(day), KEY)
    out[RECONCILE] = reconcile_figures(daily, trades)
    return out


_SPECS = [
    dg.AssetCheckSpec(SCHEMA, asset="daily_open_close", blocking=True, description="columns and types"),
    dg.AssetCheckSpec(UNIQUE_KEY, asset="daily_open_close", blocking=True, description="one row per (pair, day)"),
    dg.AssetCheckSpec(VALID_VALUES, asset="daily_open_close", blocking=True, description="status and prices"),
    dg.AssetCheckSpec(
        IN_PARTITION_DAY, asset="daily_open_close", blocking=True, description="day and trade times in the partition"
    ),
    dg.AssetCheckSpec(
        RECONCILE,
        asset="daily_open_close",
        blocking=False,
        additional_deps=["raw_trades"],
        description="open/close against the day's first and last raw trades (same trade: exact; else within 1%)",
    ),
]


@dg.multi_asset_check(
    name="daily_open_close_checks",
    specs=_SPECS,
    can_subset=True,
    description="Schema, key, values and partition day of daily_open_close, and a reconciliation with raw_trades.",
)
def daily_open_close_checks(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> Iterator[dg.AssetCheckResult]:
    days = partition_days(context, lake, "daily_open_close")
    read = lake.read_partition
    per_day = [(d, evaluate_daily_day(read("daily_open_close", d), read("raw_trades", d), d)) for d in days]
    selected = {k.name for k in context.selected_asset_check_keys}
    for spec in _SPECS:
        if spec.name not in selected:
            continue
        figures = merge([(d, found[spec.name]) for d, found in per_day]) if per_day else Figures(0, 0, ["no partition"])
        yield dg.AssetCheckResult(
            asset_key="daily_open_close",
            check_name=spec.name,
            passed=figures.passed,
            severity=dg.AssetCheckSeverity.ERROR if spec.blocking else dg.AssetCheckSeverity.WARN,
            metadata=figures.metadata(),
        )
