"""``minute_bars``: per pair and UTC minute, OHLCV and VWAP built from trades, beside Polygon's XA bar.

Built from the lake's ``raw_trades`` with :func:`~crypto_platform.lake.bars.compute_minute_bars`
(exact decimals), joined with the current XA revision from ``raw_aggregates`` and the differences
(built minus XA). Minutes without trades have no bar, as at Polygon.

Gaps (:mod:`crypto_platform.lake.gap_repair`): minutes whose data could have arrived while the stream
was down are flagged ``in_gap`` and repaired from REST: the minute bar from ``/v2/aggs`` replaces
the stream's (missing or partial) one, or, with ``CRYPTO_REPAIR_TRADES=true``, the gap's trades from
``/v3/trades`` are added to ``raw_trades`` (``source='rest_repair'``) and the bar is rebuilt from the
complete trades. Either way the bar says ``source='rest_repair'`` and ``repaired=true``.

Settled: a bar is final once its end plus ``CRYPTO_BAR_REVISION_WINDOW_S`` has passed at build time.

Modes, like the raw assets: a run from the stream sensor (tag ``crypto/segments``) recomputes only
the minutes touched by the raw rows of segments after the day's bars watermark, plus the minutes of
gaps next to the sessions in them, minutes that left a gap, and bars not yet settled, and replaces
exactly those minutes in one Delta commit (a predicate overwrite on the day and the minutes'
ranges, so only the files holding them are rewritten); any other run rebuilds the day. Every
minute's bar is a function of the day's raw rows, the ledger and REST, so both end in the same
table. The bars watermark of a day (the raw tables' segment watermark the build took in) is an
application transaction ``segments:<day>`` in the same commit as the bars.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.assets import raw
from crypto_platform.assets.raw import TRADES, raw_aggregates, raw_trades
from crypto_platform.lake.bars import compute_minute_bars
from crypto_platform.lake.gap_repair import (
    REST_BARS_SCHEMA,
    GapWindow,
    lake_session_clock,
    ledger_windows,
    minutes_in_gaps,
    minutes_observed,
    rest_minute_bars,
    rest_trades,
    session_clock,
)
from crypto_platform.lake.raw import LANDING_APP_ID
from crypto_platform.lake.schemas import MINUTE_BARS_SCHEMA
from crypto_platform.lake.tables import between, equals, in_ranges, is_false, time_ranges
from crypto_platform.partitions import DAILY_PARTITIONS, MINUTE_MS, day_bounds_ms
from crypto_platform.polygon.rest_client import PolygonRest
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.polygon import PolygonRestResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream_batches import BatchScope

ASSET = "minute_bars"
SCHEMA = MINUTE_BARS_SCHEMA


def bars_app_id(day: str) -> str:
    """The application transaction holding a day's bars watermark (raw segments taken in)."""
    return f"segments:{day}"


_COMPARED = ("open", "high", "low", "close", "volume")

_ASSEMBLE_SQL = """
WITH merged AS (
    SELECT coalesce(r.pair, b.pair) AS pair,
           coalesce(r.minute_ms, b.minute_ms) AS minute_ms,
           {picked},
           CASE WHEN r.pair IS NULL THEN b.trade_count ELSE r.trade_count END AS trade_count,
           CASE WHEN r.pair IS NULL THEN b.first_trade_ms END AS first_trade_ms,
           CASE WHEN r.pair IS NULL THEN b.last_trade_ms END AS last_trade_ms
    FROM built b FULL OUTER JOIN rest r ON r.pair = b.pair AND r.minute_ms = b.minute_ms
)
SELECT m.pair, m.minute_ms, m.open, m.high, m.low, m.close, m.volume, m.vwap, m.trade_count,
       m.first_trade_ms, m.last_trade_ms,
       x.open AS xa_open, x.high AS xa_high, x.low AS xa_low, x.close AS xa_close, x.volume AS xa_volume,
       x.vwap AS xa_vwap,
       {diffs},
       m.minute_ms + {minute} + {window_ms} <= {now_ms} AS settled,
       CASE WHEN k.pair IS NULL THEN coalesce(t.source, 'ws') ELSE '{rest_source}' END AS source,
       g.minute_ms IS NOT NULL AS in_gap,
       k.pair IS NOT NULL AS repaired
FROM merged m
LEFT JOIN xa x ON x.pair = m.pair AND x.start_ms = m.minute_ms
LEFT JOIN gap_minutes g ON g.minute_ms = m.minute_ms
LEFT JOIN repaired_keys k ON k.pair = m.pair AND k.minute_ms = m.minute_ms
LEFT JOIN trade_sources t ON t.pair = m.pair AND t.minute_ms = m.minute_ms
ORDER BY m.minute_ms, m.pair
""".format(
    picked=",\n           ".join(
        f"CASE WHEN r.pair IS NULL THEN b.{c} ELSE r.{c} END AS {c}" for c in (*_COMPARED, "vwap")
    ),
    diffs=",\n       ".join(f"m.{c} - x.{c} AS {c}_diff" for c in _COMPARED),
    minute=MINUTE_MS,
    window_ms="{window_ms}",
    now_ms="{now_ms}",
    rest_source="{rest_source}",
)
# Where a bar's trades came from: 'ws' when any was streamed, else the history source of its trades.
_TRADE_SOURCES_SQL = f"""
SELECT pair, event_ms - event_ms % {MINUTE_MS} AS minute_ms, max(source) AS source
FROM trades GROUP BY ALL HAVING max(source) IN ('flat_file', 'rest_history')
"""


@dataclass(frozen=True)
class BarSettings:
    """What a build needs from the platform settings."""

    revision_window_ms: int
    repair_trades: bool


@dataclass(frozen=True)
class DayFacts:
    """What an incremental build needs to know about the whole day, found without reading the day."""

    clock: dict[int, tuple[int, ...]]  # the raw tables' session clock (from file statistics)
    has_history: bool
    pairs: Callable[[], set[str]]  # the day's pairs, read only when a gap is repaired


@dataclass
class DayBuild:
    """One day's result: the full partition and the figures reported as metadata."""

    table: pa.Table
    figures: dict[str, Any] = field(default_factory=dict)
    new_trades: pa.Table | None = None  # trades fetched from REST that raw_trades does not hold yet
    redo: set[int] | None = None  # the minutes recomputed (None: the whole day)


def _minute_of(ms: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.multiply(pc.divide(ms, MINUTE_MS), MINUTE_MS)


def _in_segments(table: pa.Table, first: int, last: int) -> pa.Table:
    seg = table["segment"]
    return table.filter(pc.and_(pc.greater_equal(seg, first), pc.less_equal(seg, last)))


def _minutes(values: pa.ChunkedArray) -> set[int]:
    return set(pc.unique(_minute_of(values)).to_pylist())


def recompute_minutes(
    segments: tuple[int, int],
    trades: pa.Table,
    aggregates: pa.Table,
    existing: pa.Table | None,
    windows: list[GapWindow],
    all_gap_minutes: set[int],
    day: tuple[int, int],
    revision_window_ms: int,
) -> set[int]:
    """The minutes an incremental run must recompute (see the module docstring)."""
    new_trades = _in_segments(trades, *segments)
    new_aggs = _in_segments(aggregates, *segments)
    touched = _minutes(new_trades["event_ms"]) | _minutes(new_aggs["start_ms"])
    sessions = set(pc.unique(new_trades["session"]).to_pylist()) | set(pc.unique(new_aggs["session"]).to_pylist())
    adjacent = [w for w in windows if w.after_session in sessions or w.before_session in sessions]
    touched |= minutes_in_gaps(adjacent, day[0], day[1], revision_window_ms)
    if existing is not None and existing.num_rows:
        stale_gap = existing.filter(existing["in_gap"])["minute_ms"].to_pylist()
        touched |= {m for m in stale_gap if m not in all_gap_minutes}
        touched |= set(existing.filter(pc.invert(existing["settled"]))["minute_ms"].to_pylist())
    return {m for m in touched if day[0] <= m < day[1]}


def _only_minutes(table: pa.Table, column: str, minutes: set[int] | None) -> pa.Table:
    if minutes is None:
        return table
    return table.filter(pc.is_in(_minute_of(table[column]), value_set=pa.array(sorted(minutes), pa.int64())))


def _merge_rest_trades(trades: pa.Table, fetched: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``fetched`` trades not already in ``trades`` (by the raw_trades natural key) merged and sorted, and those."""
    if fetched.num_rows == 0:
        return trades, fetched
    key = list(TRADES.key)
    lo, hi = pc.min(fetched["event_ms"]).as_py(), pc.max(fetched["event_ms"]).as_py()
    near = trades.filter(pc.and_(pc.greater_equal(trades["event_ms"], lo), pc.less_equal(trades["event_ms"], hi)))
    have = set(zip(*(near[k].to_pylist() for k in key), strict=True))
    fresh = [i for i, k in enumerate(zip(*(fetched[k].to_pylist() for k in key), strict=True)) if k not in have]
    new = fetched.take(pa.array(fresh, pa.int64())).cast(trades.schema)
    if not fresh:
        return trades, new
    merged = pa.concat_tables([trades, new])
    order = pc.sort_indices(merged, [(k, "ascending") for k in TRADES.order])
    return merged.take(order), new


def _assemble(
    built: pa.Table,
    rest: pa.Table,
    xa: pa.Table,
    gap_minutes: set[int],
    repaired_keys: pa.Table,
    settings: BarSettings,
    now_ms: int,
    trades: pa.Table | None = None,
    rest_source: str = "rest_repair",
) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register(
            "trades",
            (trades if trades is not None else raw.TRADES_SCHEMA.empty_table()).select(["pair", "event_ms", "source"]),
        )
        con.register("trade_sources", con.sql(_TRADE_SOURCES_SQL).to_arrow_table())
        con.register("built", built)
        con.register("rest", rest)
        con.register("xa", xa)
        con.register("gap_minutes", pa.table({"minute_ms": pa.array(sorted(gap_minutes), pa.int64())}))
        con.register("repaired_keys", repaired_keys)
        sql = _ASSEMBLE_SQL.format(
            window_ms=int(settings.revision_window_ms), now_ms=int(now_ms), rest_source=rest_source
        )
        out = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    return out.cast(SCHEMA)


def _keys(table: pa.Table, time_column: str) -> pa.Table:
    keys = pa.table({"pair": table["pair"], "minute_ms": _minute_of(table[time_column])})
    return keys.group_by(["pair", "minute_ms"]).aggregate([])


def build_day(
    day: str,
    trades: pa.Table,
    aggregates: pa.Table,
    landing_dir: Any,
    settings: BarSettings,
    rest: PolygonRest | None,
    pairs: list[str],
    segments: tuple[int, int] | None = None,
    existing: pa.Table | None = None,
    now_ms: int | None = None,
    history_bars: Callable[[], tuple[pa.Table, str] | None] | None = None,
    facts: DayFacts | None = None,
) -> DayBuild:
    """The day's minute bars: a rebuild (``segments`` None) or an upsert of the touched minutes.

    A day whose trades include history (Flat Files or REST history) is complete: its stream gaps
    are not repaired again. A past day without any trades takes Polygon's minute bars from
    ``history_bars`` (``minute_aggs`` or REST), with ``source`` saying which.

    ``facts``: what the day's raw tables say as a whole when ``trades`` and ``aggregates`` hold only
    the minutes an incremental run recomputes (see :func:`pruned_inputs`).
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    lo, hi = day_bounds_ms(day)
    clock = session_clock(trades, aggregates) if facts is None else facts.clock
    spans, windows = ledger_windows(landing_dir, clock, lo, hi, now_ms)
    gap_minutes = minutes_in_gaps(windows, lo, hi, settings.revision_window_ms)
    incremental = segments is not None and existing is not None
    redo: set[int] | None = None
    if incremental:
        assert segments is not None
        redo = recompute_minutes(
            segments, trades, aggregates, existing, windows, gap_minutes, (lo, hi), settings.revision_window_ms
        )
    repair = gap_minutes if redo is None else gap_minutes & redo
    if _has_history(trades) if facts is None else facts.has_history:
        repair = set()  # the day's trades came from history, which has every trade
    rest_source = "rest_repair"
    seen = set(pc.unique(trades["pair"]).to_pylist()) | set(pc.unique(aggregates["pair"]).to_pylist())
    if repair and facts is not None:
        seen |= facts.pairs()  # a gap's pairs are the day's, not only those of the recomputed minutes
    pairs = sorted(set(pairs) - {"*"} | seen)
    rest_bars = REST_BARS_SCHEMA.empty_table()
    repaired_keys = pa.table({"pair": pa.array([], pa.string()), "minute_ms": pa.array([], pa.int64())})
    new_trades = None
    added = 0
    if repair:
        if rest is None:
            raise ValueError(f"{day}: {len(repair)} minutes lie in stream gaps but no Polygon REST client was given")
        if settings.repair_trades:
            fetched = rest_trades(rest, pairs, repair)
            trades, new_trades = _merge_rest_trades(trades, fetched)
            added = new_trades.num_rows
            repaired_keys = _keys(fetched, "event_ms")
        else:
            rest_bars = rest_minute_bars(rest, pairs, repair)
            repaired_keys = rest_bars.select(["pair", "minute_ms"])

    if trades.num_rows == 0 and history_bars is not None and redo is None and hi <= now_ms:
        got = history_bars()
        if got is not None:
            rest_bars, rest_source = got
            rest_bars = rest_bars.filter(
                pc.and_(pc.greater_equal(rest_bars["minute_ms"], lo), pc.less(rest_bars["minute_ms"], hi))
            )
            repaired_keys = rest_bars.select(["pair", "minute_ms"])
    built = compute_minute_bars(_only_minutes(trades, "event_ms", redo))
    xa_rows = aggregates.filter(pc.and_(pc.equal(aggregates["channel"], "XA"), aggregates["is_current"]))
    xa = _only_minutes(xa_rows, "start_ms", redo)
    table = _assemble(
        built,
        rest_bars,
        xa,
        gap_minutes,
        repaired_keys,
        settings,
        now_ms,
        _only_minutes(trades, "event_ms", redo),
        rest_source,
    )
    if redo is not None and existing is not None:
        kept = existing.filter(pc.invert(pc.is_in(existing["minute_ms"], value_set=pa.array(sorted(redo), pa.int64()))))
        table = pa.concat_tables([kept.cast(SCHEMA), table])
        table = table.take(pc.sort_indices(table, [("minute_ms", "ascending"), ("pair", "ascending")]))

    observed = minutes_observed(spans, lo, hi) - gap_minutes
    last_minute = min(hi, now_ms)
    day_minutes = max(0, -(-(last_minute - lo) // MINUTE_MS))
    xa_keys = _keys(xa_rows, "start_ms")
    bar_minutes = set(pc.unique(table["minute_ms"]).to_pylist())
    repaired = table.filter(table["repaired"])
    figures: dict[str, Any] = {
        "dagster/row_count": table.num_rows,
        "mode": "incremental" if incremental else "rebuild",
        "minutes_recomputed": len(redo) if redo is not None else day_minutes,
        "sessions": len(spans),
        "gaps": len(windows),
        "minutes_observed": len(observed),
        "minutes_in_gaps": len(gap_minutes),
        "minutes_unobserved": max(0, day_minutes - len(observed) - len(gap_minutes)),
        "minutes_with_bars": len(bar_minutes),
        "minutes_repaired": len(set(repaired["minute_ms"].to_pylist())),
        "bars_repaired": repaired.num_rows,
        "trades_repaired": added,
        "xa_bars": xa_keys.num_rows,
        "unsettled_bars": int(pc.sum(pc.invert(table["settled"])).as_py() or 0) if table.num_rows else 0,
    }
    return DayBuild(table, figures, new_trades if added else None, redo)


_HISTORY_SOURCES = ("flat_file", "rest_history")


def pruned_inputs(
    lake: LakeResource, day: str, segments: tuple[int, int], revision_window_ms: int, landing_dir: Any, now_ms: int
) -> tuple[pa.Table, pa.Table, pa.Table, DayFacts]:
    """An incremental build's inputs, each a pruned read: (trades, aggregates, bars, facts).

    The new raw rows are found by their segments, the minutes to recompute from them and from the
    bars still open (unsettled or in a gap), and then only those minutes' trades and aggregates are
    read. A late-day run reads what it changes, not the day's millions of rows.
    """
    tables = lake.tables()
    in_run = between("segment", *segments)
    new_trades = lake.read_partition("raw_trades", day, where=in_run)
    new_aggregates = lake.read_partition("raw_aggregates", day, where=in_run)
    new_trades = new_trades if new_trades is not None else raw.TRADES_SCHEMA.empty_table()
    new_aggregates = new_aggregates if new_aggregates is not None else raw.AGGREGATES_SCHEMA.empty_table()
    open_bars = lake.read_partition(ASSET, day, where=is_false("settled") | equals("in_gap", True))
    open_bars = open_bars if open_bars is not None else SCHEMA.empty_table()
    clock = lake_session_clock(tables, day)
    lo, hi = day_bounds_ms(day)
    _, windows = ledger_windows(landing_dir, clock, lo, hi, now_ms)
    gap_minutes = minutes_in_gaps(windows, lo, hi, revision_window_ms)
    redo = recompute_minutes(
        segments, new_trades, new_aggregates, open_bars, windows, gap_minutes, (lo, hi), revision_window_ms
    )
    sources = tables.file_stats("raw_trades", day)
    has_history = bool(
        sources is not None
        and sources.num_rows
        and pc.any(pc.is_in(sources["min.source"], value_set=pa.array(_HISTORY_SOURCES))).as_py()
    )

    def pairs() -> set[str]:
        found: set[str] = set()
        for name in ("raw_trades", "raw_aggregates"):
            rows = lake.read_partition(name, day, columns=["pair"])
            if rows is not None:
                found |= set(pc.unique(rows["pair"]).to_pylist())
        return found

    facts = DayFacts(clock, has_history, pairs)
    if not redo:
        return new_trades.slice(0, 0), new_aggregates.slice(0, 0), open_bars, facts
    spans = [(a, b + MINUTE_MS - 1) for a, b in time_ranges(pa.array(sorted(redo), pa.int64()))]
    trades = lake.read_partition("raw_trades", day, where=in_ranges("event_ms", spans))
    aggregates = lake.read_partition("raw_aggregates", day, where=in_ranges("start_ms", spans))
    return (
        trades if trades is not None else new_trades.slice(0, 0),
        aggregates if aggregates is not None else new_aggregates.slice(0, 0),
        open_bars,
        facts,
    )


def _has_history(trades: pa.Table) -> bool:
    """Whether the day's trades include history (Flat Files or REST history rows)."""
    history = pa.array(["flat_file", "rest_history"])
    return trades.num_rows > 0 and bool(pc.any(pc.is_in(trades["source"], value_set=history)).as_py())


def _history_bars(
    context: dg.AssetExecutionContext, platform: Any, client: PolygonRest, day: str, pairs: list[str]
) -> Callable[[], tuple[pa.Table, str] | None]:
    """Polygon's minute bars of a past day, read only if the build asks (the day has no trades)."""

    def read() -> tuple[pa.Table, str] | None:
        from crypto_platform.lake.history import finish_day, history_access, history_minute_bars

        access = history_access(platform, client)
        got = history_minute_bars(access, date.fromisoformat(day), pairs, context.log.info)
        finish_day(access.history_dir, date.fromisoformat(day))
        return got

    return read


def _read(lake: LakeResource, asset: str, day: str, missing: pa.Table | None = None) -> pa.Table:
    """The day of ``asset``; without its table, ``missing`` when given, else an error saying what to materialize."""
    table = lake.read_partition(asset, day)
    if table is not None:
        return table
    if missing is not None:
        return missing
    raise ValueError(f"minute_bars for {day} needs the {asset} table: materialize {asset} first")


@dg.asset(
    name=ASSET,
    partitions_def=DAILY_PARTITIONS,
    deps=[raw_trades, raw_aggregates],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
    group_name="lake",
    kinds={"python", "duckdb", "delta"},
    owners=["team:data-platform"],
    code_version="2",
    description=(
        "Per pair and UTC minute: OHLCV, VWAP, trade count and first/last trade time built from raw_trades in "
        "exact decimals, beside Polygon's current XA bar and the differences; settled after the revision window; "
        "minutes in stream gaps repaired from REST (source='rest_repair'). Past days: backfill raw_trades and this "
        "asset together — bars are built from the history trades (source='flat_file' or 'rest_history'), or, for a "
        "day without trades (or this asset backfilled alone), taken from Polygon's minute_aggs file or REST minute "
        "bars (source='minute_aggs' / 'rest_minute_bars'). Metadata: coverage of the day (minutes observed, in gaps, "
        "with bars, repaired)."
    ),
)
def minute_bars(
    context: dg.AssetExecutionContext,
    stream: StreamResource,
    lake: LakeResource,
    polygon_rest: PolygonRestResource,
) -> dg.MaterializeResult:
    platform = stream.settings()
    settings = BarSettings(int(platform.bar_revision_window_s * 1000), platform.repair_trades)
    scope = BatchScope.from_context(context)
    client = polygon_rest.client()
    tables = lake.tables()
    totals: dict[str, Any] = {}
    per_day: dict[str, dict[str, Any]] = {}
    for day in context.partition_keys:
        # raw_trades first, as its own asset locks it: gap repair may add REST trades to it.
        with lake.locked("raw_trades"), lake.locked(ASSET):
            # The bars take in raw rows up to the older of the two raw watermarks.
            marks = [tables.watermark(t, LANDING_APP_ID) for t in ("raw_trades", "raw_aggregates")]
            through = min(m for m in marks if m is not None) if any(m is not None for m in marks) else None
            now_ms = int(time.time() * 1000)
            segments = facts = None
            if scope.segments is not None and tables.count(ASSET, day) > 0:
                first, last = scope.segments
                done = tables.watermark(ASSET, bars_app_id(day))
                segments = ((done if done is not None else first - 1) + 1, through or last)
                window = settings.revision_window_ms
                trades, aggregates, existing, facts = pruned_inputs(
                    lake, day, segments, window, stream.landing_dir, now_ms
                )
            else:
                history = not scope.incremental and platform.history_enabled and day_bounds_ms(day)[1] <= now_ms
                # No raw_trades table yet on a past day (its bars backfilled alone): Polygon's bars stand in.
                trades = _read(lake, "raw_trades", day, missing=raw.TRADES_SCHEMA.empty_table() if history else None)
                aggregates = lake.read_partition("raw_aggregates", day)
                if aggregates is None and (_has_history(trades) or trades.num_rows == 0):
                    # A past day filled from history has no stream bars: nothing to compare with.
                    aggregates = raw.AGGREGATES_SCHEMA.empty_table()
                elif aggregates is None:
                    aggregates = _read(lake, "raw_aggregates", day)
                existing = None
            result = build_day(
                day,
                trades,
                aggregates,
                stream.landing_dir,
                settings,
                client,
                list(polygon_rest.pairs),
                segments,
                existing,
                now_ms=now_ms,
                history_bars=None
                if scope.incremental or not platform.history_enabled
                else _history_bars(context, platform, client, day, polygon_rest.pairs),
                facts=facts,
            )
            if result.new_trades is not None:
                fresh = result.new_trades
                ranges = time_ranges(fresh["event_ms"])
                tables.insert_new("raw_trades", day, fresh, TRADES.key, "event_ms", ranges)
            mark = {bars_app_id(day): through} if through is not None else None
            if result.redo is None:
                tables.replace(ASSET, day, result.table, watermarks=mark)
            elif result.redo:
                minutes = in_ranges("minute_ms", time_ranges(pa.array(sorted(result.redo), pa.int64())))
                rows = _only_minutes(result.table, "minute_ms", result.redo)
                tables.replace(ASSET, day, rows, where=minutes, watermarks=mark)
            elif mark:
                tables.append(ASSET, SCHEMA.empty_table().append_column("date", pa.array([], pa.string())), mark)
            if facts is not None:
                # An incremental build saw the recomputed minutes; the partition's size is the log's.
                result.figures["dagster/row_count"] = tables.count(ASSET, day)
        per_day[day] = result.figures
        for k, v in result.figures.items():
            totals[k] = totals.get(k, 0) + v if isinstance(v, int) else v
        context.log.info(f"{day}: {result.figures}")
    metadata: dict[str, Any] = dict(totals)
    if len(per_day) > 1:
        metadata["per_day"] = dg.MetadataValue.json(per_day)
    return dg.MaterializeResult(metadata=metadata)
