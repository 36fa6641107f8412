"""Asset checks on ``minute_bars``: schema, key, OHLC invariants, partition day, XA agreement, coverage.

One ``multi_asset_check`` (one step, one read of the partition), like the raw tables' checks.

Blocking (ERROR), because the warehouse copies and alerts take the bars as they are: schema, one bar
per (pair, minute), the OHLC invariants (low <= open, close <= high; low > 0; volume >= 0; VWAP inside
[low, high]; at least one trade) and minutes inside the partition's day.

Warning only, because they describe the feed rather than a broken table:

- ``matches_xa``: a settled bar built from the stream's trades against Polygon's own current XA bar
  for the minute, within :data:`XA_PRICE_TOLERANCE` (relative) on open/high/low/close and
  :data:`XA_VOLUME_TOLERANCE` on volume. Polygon computes XA from its consolidated trades, so a
  dropped or late trade shows here; a repaired bar (from REST) is not compared.
- ``coverage``: no unexplained missing minute. A minute for which Polygon sent an XA bar (so there
  were trades) but that has no bar here, and that no ledger gap explains, is a hole in the stream
  that the session ledger did not see. The figures also give the day's coverage: minutes observed,
  in gaps, with bars, repaired (from the asset's materialization metadata, computed by the build).
"""

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.assets import bars
from crypto_platform.checks.figures import (
    MAX_EXAMPLES,
    Figures,
    Rule,
    duplicate_figures,
    greater,
    in_window_figures,
    missing,
    negative,
    not_positive,
    rule_figures,
    schema_figures,
)
from crypto_platform.checks.lake import IN_PARTITION_DAY, SCHEMA, UNIQUE_KEY, VALID_VALUES, merge, partition_days
from crypto_platform.lake.tables import between, in_ranges, time_ranges
from crypto_platform.partitions import MINUTE_MS, day_bounds_ms
from crypto_platform.resources.lake import LakeResource
from crypto_platform.stream_batches import BatchScope

MATCHES_XA = "matches_xa"
COVERAGE = "coverage"
XA_PRICE_TOLERANCE = Decimal("0.001")  # 0.1 % of the XA price
XA_VOLUME_TOLERANCE = Decimal("0.01")  # 1 % of the XA volume
KEY = ("pair", "minute_ms")


def _vwap_outside(t: pa.Table) -> pa.ChunkedArray:
    return pc.or_(pc.less(t["vwap"], t["low"]), pc.greater(t["vwap"], t["high"]))


RULES = (
    missing("open"),
    missing("close"),
    not_positive("low"),
    greater("low", "open"),
    greater("low", "close"),
    greater("open", "high"),
    greater("close", "high"),
    negative("volume"),
    Rule("vwap_outside_low_high", ("vwap", "low", "high"), _vwap_outside),
    Rule("no_trades", ("trade_count",), lambda t: pc.less(t["trade_count"], 1)),
)


def _relative_off(built: Decimal, xa: Decimal, tolerance: Decimal) -> bool:
    return abs(built - xa) > tolerance * abs(xa)


def _minute_text(minute_ms: int) -> str:
    return datetime.fromtimestamp(minute_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


def xa_figures(table: pa.Table) -> Figures:
    """Settled stream bars that disagree with their XA bar beyond the tolerances (exact decimals).

    At most 1,440 bars per pair and day, so plain Decimal arithmetic is cheap, and unlike Arrow's
    decimal128 it cannot overflow on price x tolerance.
    """
    compared = table.filter(
        pc.and_(pc.and_(table["settled"], pc.invert(table["repaired"])), pc.is_valid(table["xa_close"]))
    ).to_pylist()
    off = []
    for b in compared:
        fields = [c for c in ("open", "high", "low", "close") if _relative_off(b[c], b[f"xa_{c}"], XA_PRICE_TOLERANCE)]
        if _relative_off(b["volume"], b["xa_volume"], XA_VOLUME_TOLERANCE):
            fields.append("volume")
        if fields:
            off.append((b, fields))
    # Each example names the bar (pair, minute) and every value off, built against XA.
    examples = [
        f"pair={b['pair']}, minute={_minute_text(b['minute_ms'])} (minute_ms={b['minute_ms']}): "
        + "; ".join(f"{c} built {b[c]} vs XA {b[f'xa_{c}']}" for c in fields)
        + f" ({b['trade_count']} trades)"
        for b, fields in off[:MAX_EXAMPLES]
    ]
    return Figures(len(compared), len(off), examples, {"bars_compared": len(compared)})


def coverage_figures(table: pa.Table, aggregates: pa.Table | None) -> Figures:
    """XA minutes (current revision) with no bar here and not inside a gap: holes the ledger missed."""
    figures = Figures(table.num_rows)
    if aggregates is None or aggregates.num_rows == 0:
        figures.extra["xa_minutes"] = 0
        return figures
    xa = aggregates.filter(pc.and_(pc.equal(aggregates["channel"], "XA"), aggregates["is_current"]))
    have = set(zip(table["pair"].to_pylist(), table["minute_ms"].to_pylist(), strict=True))
    holes = sorted(
        (pair, start)
        for pair, start in zip(xa["pair"].to_pylist(), xa["start_ms"].to_pylist(), strict=True)
        if (pair, start) not in have
    )
    figures.violations = len(holes)
    figures.examples = [f"pair={p}, minute_ms={m}: Polygon sent an XA bar, no trades here" for p, m in holes][
        :MAX_EXAMPLES
    ]
    figures.extra.update(
        {
            "xa_minutes": xa.num_rows,
            "bars": table.num_rows,
            "bars_in_gaps": int(pc.sum(pc.cast(table["in_gap"], pa.int64())).as_py() or 0),
            "bars_repaired": int(pc.sum(pc.cast(table["repaired"], pa.int64())).as_py() or 0),
        }
    )
    return figures


def evaluate_bars_day(table: pa.Table | None, aggregates: pa.Table | None, day: str) -> dict[str, Figures]:
    names = [SCHEMA, UNIQUE_KEY, VALID_VALUES, IN_PARTITION_DAY, MATCHES_XA, COVERAGE]
    if table is None:
        return dict.fromkeys(names, Figures(0, 1, [f"no lake partition minute_bars/date={day}: materialize the day"]))
    out = {SCHEMA: schema_figures(table, bars.SCHEMA)}
    if out[SCHEMA].violations:
        skipped = Figures(table.num_rows, 1, ["not evaluated: the schema check failed"])
        return {name: out.get(name, skipped) for name in names}
    lo, hi = day_bounds_ms(day)
    out[UNIQUE_KEY] = duplicate_figures(table, KEY)
    out[VALID_VALUES] = rule_figures(table, RULES, KEY)
    out[IN_PARTITION_DAY] = in_window_figures(table, "minute_ms", lo, hi, KEY)
    out[MATCHES_XA] = xa_figures(table)
    # A gap minute with trades has a repaired bar, so only holes the ledger did not see remain.
    out[COVERAGE] = coverage_figures(table, aggregates)
    return out


def bars_to_check(
    lake: LakeResource, day: str, run_segments: tuple[int, int] | None
) -> tuple[pa.Table | None, pa.Table | None]:
    """The bars a check run reads, with the XA bars beside them: the day, or for a stream run the
    minutes its segments' trades and bars touched (a pruned read of each table, not the day)."""
    if not run_segments:
        return lake.read_partition(bars.ASSET, day), lake.read_partition("raw_aggregates", day)
    first, last = run_segments
    in_run = between("segment", first, last)
    minutes: list[pa.Array] = []
    for source, column in (("raw_trades", "event_ms"), ("raw_aggregates", "start_ms")):
        rows = lake.read_partition(source, day, where=in_run, columns=[column])
        if rows is not None and rows.num_rows:
            minutes.append(rows[column].combine_chunks())
    ranges = time_ranges(pa.chunked_array(minutes, pa.int64())) if minutes else []
    if not ranges:
        return bars.SCHEMA.empty_table(), None
    spans = [(lo - lo % MINUTE_MS, hi - hi % MINUTE_MS) for lo, hi in ranges]
    table = lake.read_partition(bars.ASSET, day, where=in_ranges("minute_ms", spans))
    aggregates = lake.read_partition(
        "raw_aggregates", day, where=in_ranges("start_ms", [(lo, hi + MINUTE_MS - 1) for lo, hi in spans])
    )
    return table, aggregates


SPECS = [
    dg.AssetCheckSpec(SCHEMA, asset=bars.ASSET, blocking=True, description="columns and types as the bars schema"),
    dg.AssetCheckSpec(UNIQUE_KEY, asset=bars.ASSET, blocking=True, description="one bar per (pair, minute_ms)"),
    dg.AssetCheckSpec(
        VALID_VALUES,
        asset=bars.ASSET,
        blocking=True,
        description="OHLC invariants: " + ", ".join(r.name for r in RULES),
    ),
    dg.AssetCheckSpec(IN_PARTITION_DAY, asset=bars.ASSET, blocking=True, description="minute_ms inside the day"),
    dg.AssetCheckSpec(
        MATCHES_XA,
        asset=bars.ASSET,
        blocking=False,
        description=f"settled stream bars within {XA_PRICE_TOLERANCE * 100}% (prices) and "
        f"{XA_VOLUME_TOLERANCE * 100}% (volume) of Polygon's XA bar",
    ),
    dg.AssetCheckSpec(
        COVERAGE, asset=bars.ASSET, blocking=False, description="no XA minute without a bar outside the ledger's gaps"
    ),
]
_BLOCKING = {s.name: s.blocking for s in SPECS}


@dg.multi_asset_check(
    name="minute_bars_checks",
    specs=SPECS,
    can_subset=True,
    description="Schema, key, OHLC invariants, partition day, agreement with XA and coverage of minute_bars.",
)
def minute_bars_checks(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> Iterator[dg.AssetCheckResult]:
    days = partition_days(context, lake, bars.ASSET)
    segments = BatchScope.from_context(context).checked
    per_day = [(day, evaluate_bars_day(*bars_to_check(lake, day, segments), day)) for day in days]
    selected = {k.name for k in context.selected_asset_check_keys}
    for spec in SPECS:
        if spec.name not in selected:
            continue
        figures = merge([(day, found[spec.name]) for day, found in per_day]) if per_day else Figures(0)
        if not per_day:
            figures.examples = ["no minute_bars partition in the lake yet"]
        yield dg.AssetCheckResult(
            asset_key=bars.ASSET,
            check_name=spec.name,
            passed=figures.passed,
            severity=dg.AssetCheckSeverity.ERROR if _BLOCKING[spec.name] else dg.AssetCheckSeverity.WARN,
            metadata=figures.metadata(),
        )
