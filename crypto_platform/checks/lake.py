"""Asset checks on the raw lake tables: schema, natural key, values, partition day, freshness.

One ``multi_asset_check`` per raw asset rather than one ``asset_check`` per rule: each check op is a
step, and under ``dagster dev`` every step is a process, so five rules as five steps would cost
five process starts on every stream-sensor run; one step reads the partition once and reports all
of them.

Which checks block (``blocking=True``, ERROR) and why: schema, natural-key uniqueness, value
invariants, the partition day and the one-current-revision rule. A row that breaks them would be
copied as is into MySQL and Snowflake and into minute bars (a duplicate trade doubles its volume, a
row of another day breaks the day-replace arithmetic of every downstream load), so the run stops
before anything downstream of the asset. Freshness and crossed quotes only WARN: a lake that lags
the landing log is late, not wrong, and exchanges do publish locked or crossed quotes in fast
markets; stopping the day's load for one would lose more than it protects.

Partitions: the checks are not partitioned themselves; they check every day of the run that
materialized the asset (one day from the sensor, up to seven from a backfill run). Executed alone
from the UI without a partition, they check the newest day in the lake.
"""

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.assets import raw
from crypto_platform.assets.raw import RawTable
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
    one_current_figures,
    percentiles,
    rule_figures,
    schema_figures,
)
from crypto_platform.lake.gap_repair import lake_session_clock, stream_coverage
from crypto_platform.lake.tables import between, in_ranges, time_ranges
from crypto_platform.partitions import DAILY_PARTITIONS, day_bounds_ms
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream.manifest import iter_manifest
from crypto_platform.stream_batches import BatchScope

SCHEMA = "schema"
UNIQUE_KEY = "unique_key"
VALID_VALUES = "valid_values"
IN_PARTITION_DAY = "in_partition_day"
FRESHNESS = "lake_freshness"
UNCROSSED = "uncrossed_quotes"
ONE_CURRENT = "one_current_revision"
STREAM_COVERAGE = "stream_coverage"

# The lake may trail the landing log by this much before freshness warns: a segment is sealed
# every 5 s and the stream sensor ticks every 5 s, so a healthy pipeline stays well below it.
LAKE_LAG_WARN_S = 300.0


def partition_days(context: dg.AssetCheckExecutionContext, lake: LakeResource, asset: str) -> list[str]:
    """The days the run covers; without a partition, the newest day present in the lake."""
    if context.has_partition_key_range:
        return list(DAILY_PARTITIONS.get_partition_keys_in_range(context.partition_key_range))
    if context.has_partition_key:
        return [context.partition_key]
    return lake.days(asset)[-1:]


_SUMMED = ("violations.", "duplicate_keys", "bars", "segments_pending", "sides_", "reconciliation_errors", "minutes_")
_MAXED = ("lake_lag_s", "max_rel_diff")


def merge(figures: Sequence[tuple[str, Figures]]) -> Figures:
    """One figure set over several days: counts add up, lags take the worst day, the rest the last day."""
    out = Figures(sum(f.rows for _, f in figures))
    for day, f in figures:
        out.violations += f.violations
        out.examples += [f"{day}: {e}" for e in f.examples]
        for k, v in f.extra.items():
            if k.startswith(_SUMMED) and isinstance(v, int | float):
                out.extra[k] = out.extra.get(k, 0) + v  # type: ignore[operator]
            elif k in _MAXED and isinstance(v, int | float):
                out.extra[k] = max(v, out.extra.get(k, v))  # type: ignore[type-var]
            else:
                out.extra[k] = v
    out.examples = out.examples[:10]
    if "duplicate_rate" in out.extra:
        out.extra["duplicate_rate"] = out.violations / out.rows if out.rows else 0.0
    out.extra["days"] = ", ".join(d for d, _ in figures)
    return out


@dataclass(frozen=True)
class LakeAssetChecks:
    """Everything the checks need to know about one raw table."""

    spec: RawTable
    time_column: str
    rules: tuple[Rule, ...]
    # (name, blocking, severity, description, figures function) beyond the common four
    extra: tuple[tuple[str, bool, str, Callable[[pa.Table], Figures]], ...] = ()
    # Whether the stream's coverage of the day is a check: for a table history cannot fill (quotes).
    coverage: bool = False


def _crossed(table: pa.Table) -> Figures:
    return rule_figures(table, [greater("bid_price", "ask_price")], ("pair", "exchange", "event_ms", "seq"))


def _one_current(table: pa.Table) -> Figures:
    return one_current_figures(table, ("pair", "channel", "start_ms"))


def _source_unknown(table: pa.Table) -> pa.ChunkedArray:
    known = ["ws", "rest_repair", "flat_file", "rest_history"]
    return pc.invert(pc.is_in(table["source"], value_set=pa.array(known)))


TABLE_CHECKS: dict[str, LakeAssetChecks] = {
    "raw_trades": LakeAssetChecks(
        raw.TRADES,
        "event_ms",
        (
            missing("price"),
            missing("size"),
            not_positive("price"),
            not_positive("size"),
            Rule("source_unknown", ("source",), _source_unknown),
        ),
    ),
    "raw_quotes": LakeAssetChecks(
        raw.QUOTES,
        "event_ms",
        (not_positive("bid_price"), not_positive("ask_price"), negative("bid_size"), negative("ask_size")),
        ((UNCROSSED, False, "bid <= ask wherever both sides are quoted (WARN: exchanges do cross)", _crossed),),
        coverage=True,
    ),
    "raw_aggregates": LakeAssetChecks(
        raw.AGGREGATES,
        "start_ms",
        (
            missing("open"),
            not_positive("low"),
            greater("low", "open"),
            greater("low", "close"),
            greater("open", "high"),
            greater("close", "high"),
            greater("low", "high"),
            negative("volume"),
            Rule("end_not_after_start", ("start_ms", "end_ms"), lambda t: pc.less_equal(t["end_ms"], t["start_ms"])),
        ),
        ((ONE_CURRENT, True, "exactly one is_current revision per (pair, channel, start_ms)", _one_current),),
    ),
}
TABLE_CHECKS["raw_book"] = LakeAssetChecks(raw.BOOK, "event_ms", ())


def freshness_figures(
    table: pa.Table, spec: RawTable, time_column: str, day: str, landing: Path, run_segments: tuple[int, int] | None
) -> Figures:
    """How far the partition trails the landing log, and how old its data was when it landed.

    ``lake_lag_s``: receive time of the newest sealed segment with this table's events for the day
    that the partition has not absorbed yet, minus the newest receive time in the partition (0 when
    caught up). Latencies: event time -> landed (``received_ns``) over the day; for a sensor run also
    landed -> lake for the rows of the run's segments, measured now (just after the write).
    """
    max_seg = int(pc.max(table["segment"]).as_py() or 0) if table.num_rows else 0
    max_recv = int(pc.max(table["received_ns"]).as_py() or 0) if table.num_rows else 0
    pending = [e for e in iter_manifest(landing, after_seq=max_seg, day=day) if spec.channels & e["days"][day].keys()]
    newest = max((int(e.get("recv_last_ns") or 0) for e in pending), default=0)
    lag_s = max(0.0, (newest - max_recv) / 1e9) if pending else 0.0
    extra: dict[str, float | int | str] = {"lake_lag_s": round(lag_s, 3), "segments_pending": len(pending)}
    if table.num_rows:
        landed_ms = pc.divide(table["received_ns"], 1_000_000)
        extra.update(percentiles(pc.divide(pc.subtract(landed_ms, table[time_column]), 1000.0), "event_to_landed_s"))
    if run_segments is not None and table.num_rows:
        first, last = run_segments
        mine = table.filter(pc.and_(pc.greater_equal(table["segment"], first), pc.less_equal(table["segment"], last)))
        now_ns = time.time_ns()
        # integer ms first: int64 ns beyond 2**53 do not convert to double exactly (and pyarrow refuses)
        waited_ms = pc.divide(pc.subtract(now_ns, mine["received_ns"]), 1_000_000)
        extra.update(percentiles(pc.divide(waited_ms, 1000.0), "landed_to_lake_s"))
    violations = int(lag_s > LAKE_LAG_WARN_S)
    examples = [f"{len(pending)} sealed segments not in the lake, {lag_s:.0f}s behind"] if violations else []
    return Figures(table.num_rows, violations, examples, extra)


def coverage_figures(
    table: pa.Table, day: str, landing: Path, now_ms: int | None = None, clock: dict[int, tuple[int, ...]] | None = None
) -> Figures:
    """Minutes of the day the stream did not cover: for quotes, gaps that nothing fills (they have no history).

    A day backfilled from Flat Files or REST has every trade but no quote, so all its minutes are
    counted here; a partly streamed day counts the minutes outside its sessions and in its gaps.
    Each not-streamed minute is a violation, so the check WARNs on such a day and says how much.
    """
    lo, hi = day_bounds_ms(day)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    coverage = stream_coverage(landing, table, None, lo, hi, now_ms, clock)
    missing = coverage.missing_ranges(lo)
    examples = [
        f"{_clock(a)}-{_clock(b)} UTC not streamed ({(b - a) // 60_000} min): quotes have no history, the gap stays"
        for a, b in missing[:MAX_EXAMPLES]
    ]
    return Figures(
        table.num_rows,
        coverage.not_streamed,
        examples,
        {
            "minutes_of_day": coverage.minutes,
            "minutes_streamed": len(coverage.streamed),
            "minutes_not_streamed": coverage.not_streamed,
            "minutes_in_gaps": len(coverage.in_gaps),
        },
    )


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def evaluate_day(
    checks: LakeAssetChecks,
    table: pa.Table | None,
    day: str,
    landing: Path,
    run_segments: tuple[int, int] | None,
    neighbours: pa.Table | None = None,
    clock: dict[int, tuple[int, ...]] | None = None,
) -> dict[str, Figures]:
    """Every check of one table on one day's rows (``None``: the partition does not exist).

    ``table`` is the day, or a stream run's new rows; then ``neighbours`` are the table's rows their
    keys can collide with (same event-time ranges), where key uniqueness is counted, and ``clock``
    the day's session clock (the coverage of the day is not a property of the new rows).
    """
    spec = checks.spec
    names = [SCHEMA, UNIQUE_KEY, VALID_VALUES, IN_PARTITION_DAY, FRESHNESS, *(e[0] for e in checks.extra)]
    if checks.coverage:
        names.append(STREAM_COVERAGE)
    if table is None:
        gone = Figures(0, 1, [f"no lake partition {spec.name}/date={day}: materialize the day"])
        return dict.fromkeys(names, gone)
    out = {SCHEMA: schema_figures(table, spec.schema)}
    if out[SCHEMA].violations:
        # The other rules read columns by name and type; say so instead of failing on a missing column.
        skipped = Figures(table.num_rows, 1, ["not evaluated: the schema check failed"])
        return {name: out.get(name, skipped) for name in names}
    lo, hi = day_bounds_ms(day)
    out[UNIQUE_KEY] = duplicate_figures(table if neighbours is None else neighbours, spec.key)
    out[VALID_VALUES] = rule_figures(table, checks.rules, spec.key)
    out[IN_PARTITION_DAY] = in_window_figures(table, checks.time_column, lo, hi, spec.key)
    out[FRESHNESS] = freshness_figures(table, spec, checks.time_column, day, landing, run_segments)
    for name, _, _, fn in checks.extra:
        out[name] = fn(table)
    if checks.coverage:
        out[STREAM_COVERAGE] = coverage_figures(table, day, landing, clock=clock)
    return out


def rows_to_check(
    lake: LakeResource, checks: LakeAssetChecks, day: str, run_segments: tuple[int, int] | None
) -> tuple[pa.Table | None, pa.Table | None]:
    """What a check run reads: the day (no tag), or a stream run's new rows and their neighbours.

    A stream run checks the rows of its segments (found through the files' segment statistics) and
    key uniqueness among every row of the table in those rows' event-time ranges: the same pruned
    lookup the writer de-duplicates against. Neither grows with the day. Whole days are checked
    when a day is rebuilt and after its compaction (``lake_maintenance``).
    """
    name = checks.spec.name
    if not run_segments:
        return lake.read_partition(name, day), None
    first, last = run_segments
    new = lake.read_partition(name, day, where=between("segment", first, last))
    if new is None or new.num_rows == 0:
        return new, None
    ranges = time_ranges(new[checks.time_column])
    columns = [*checks.spec.key, checks.time_column]
    near = lake.read_partition(
        name, day, where=in_ranges(checks.time_column, ranges), columns=list(dict.fromkeys(columns))
    )
    return new, near


def _specs(asset: str, checks: LakeAssetChecks) -> list[dg.AssetCheckSpec]:
    key = ", ".join(checks.spec.key)
    common = [
        (SCHEMA, True, "columns and types as the asset's Arrow schema says"),
        (UNIQUE_KEY, True, f"one row per natural key ({key})"),
        (VALID_VALUES, True, "value invariants: " + ", ".join(r.name for r in checks.rules) or "none"),
        (IN_PARTITION_DAY, True, f"{checks.time_column} inside the partition's UTC day"),
        (FRESHNESS, False, f"the lake trails the landing log by at most {LAKE_LAG_WARN_S:.0f}s; latency percentiles"),
    ]
    if checks.coverage:
        common.append(
            (
                STREAM_COVERAGE,
                False,
                "minutes of the day the stream did not cover (WARN): no history fills them, so each is counted",
            )
        )
    return [
        dg.AssetCheckSpec(name, asset=asset, blocking=blocking, description=description)
        for name, blocking, description in [*common, *((n, b, d) for n, b, d, _ in checks.extra)]
    ]


def lake_asset_checks(asset: str, checks: LakeAssetChecks) -> dg.AssetChecksDefinition:
    specs = _specs(asset, checks)
    blocking = {s.name: s.blocking for s in specs}

    @dg.multi_asset_check(
        name=f"{asset}_checks",
        specs=specs,
        can_subset=True,
        description=f"Schema, natural key, values, partition day and freshness of {asset}.",
    )
    def run_checks(
        context: dg.AssetCheckExecutionContext, lake: LakeResource, stream: StreamResource
    ) -> Iterator[dg.AssetCheckResult]:
        days = partition_days(context, lake, asset)
        segments = BatchScope.from_context(context).checked
        per_day = []
        for day in days:
            rows, neighbours = rows_to_check(lake, checks, day, segments)
            clock = lake_session_clock(lake.tables(), day) if segments and checks.coverage else None
            per_day.append((day, evaluate_day(checks, rows, day, stream.landing_dir, segments, neighbours, clock)))
        selected = {k.name for k in context.selected_asset_check_keys}
        for name in [s.name for s in specs if s.name in selected]:
            figures = merge([(day, found[name]) for day, found in per_day]) if per_day else Figures(0)
            if not per_day:
                figures.examples = [f"no {asset} partition in the lake yet"]
            yield dg.AssetCheckResult(
                asset_key=asset,
                check_name=name,
                passed=figures.passed,
                severity=dg.AssetCheckSeverity.ERROR if blocking[name] else dg.AssetCheckSeverity.WARN,
                metadata=figures.metadata(),
            )

    return run_checks


raw_trades_checks = lake_asset_checks("raw_trades", TABLE_CHECKS["raw_trades"])
raw_quotes_checks = lake_asset_checks("raw_quotes", TABLE_CHECKS["raw_quotes"])
raw_aggregates_checks = lake_asset_checks("raw_aggregates", TABLE_CHECKS["raw_aggregates"])
raw_book_checks = lake_asset_checks("raw_book", TABLE_CHECKS["raw_book"])
