"""Raw lake tables built from the landing log: ``raw_trades``, ``raw_quotes``, ``raw_aggregates``, ``raw_book``.

The tables, their de-duplication and the Delta writes are in :mod:`crypto_platform.lake.raw`; the
assets only choose the mode. A run launched by the stream sensor (tag ``crypto/segments``) applies
the sealed segments after the table's watermark through its last segment (an append of the new
rows, never a read of the day); a run without the tag (a manual materialization, a backfill)
rebuilds the day from every segment in one Delta commit. Both use the same decode and the same
rule (natural key, earliest receipt), so appends end in exactly the table a rebuild gives.
"""

import time
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.assets.landing_log import landing_log
from crypto_platform.lake.gap_repair import stream_coverage
from crypto_platform.lake.raw import (
    AGGREGATES,
    BOOK,
    QUOTES,
    RAW_TABLES,
    TRADES,
    RawTable,
    apply_segments,
    rebuild_day,
    segments_to_read,
)
from crypto_platform.lake.schemas import AGGREGATES_SCHEMA, BOOK_SCHEMA, DECIMAL, QUOTES_SCHEMA, TRADES_SCHEMA
from crypto_platform.partitions import DAILY_PARTITIONS, DAY_MS, day_bounds_ms
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream.manifest import last_manifest_entry
from crypto_platform.stream_batches import BatchScope

__all__ = [
    "AGGREGATES",
    "AGGREGATES_SCHEMA",
    "BOOK",
    "BOOK_SCHEMA",
    "DECIMAL",
    "QUOTES",
    "QUOTES_SCHEMA",
    "RAW_TABLES",
    "TRADES",
    "TRADES_SCHEMA",
    "RawTable",
    "raw_aggregates",
    "raw_book",
    "raw_quotes",
    "raw_trades",
    "segments_to_read",
]


def _raw_asset(spec: RawTable, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.name,
        partitions_def=DAILY_PARTITIONS,
        deps=[landing_log],
        # A backfill of past days is bound by downloading and parsing each day (history) or reading
        # its segments: runs of 7 days amortise a run's process start (seconds) over a week, and two
        # such runs side by side keep both cores busy while one waits on the network.
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
        group_name="lake",
        kinds={"python", "delta"},
        owners=["team:data-platform"],
        code_version="3",
        description=description,
    )
    def build(context: dg.AssetExecutionContext, stream: StreamResource, lake: LakeResource) -> dg.MaterializeResult:
        scope = BatchScope.from_context(context)
        root = stream.landing_dir
        tables = lake.tables()
        if scope.segments is not None:
            upto = scope.segments[1]
            with lake.locked(spec.name):
                applied = apply_segments(tables, spec, root, upto)
            if applied.missing:
                context.log.warning(
                    f"{len(applied.missing)} segments removed by retention were not applied: {applied.missing[:10]}"
                )
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": sum(tables.count(spec.name, d) for d in context.partition_keys),
                    "mode": "append",
                    "segments_read": applied.segments,
                    "segments_through": applied.through,
                    "rows_read": applied.rows_read,
                    "rows_added": applied.rows_added,
                    "duplicates_dropped": applied.duplicates,
                    "ranges_replaced": applied.replaced_ranges,
                }
            )
        newest = last_manifest_entry(root)
        upto = int(newest["seq"]) if newest else 0
        total_rows = total_new = total_dupes = total_read = 0
        history: dict[str, dict[str, Any]] = {}
        for day in context.partition_keys:
            with lake.locked(spec.name):
                table, new, dupes, segments, missing = rebuild_day(tables, spec, root, day, upto)
                if spec is TRADES:
                    table, figures = with_history(context, stream, day, table, segments > 0)
                    if figures:
                        tables.replace(spec.name, day, table)
                        finish_history(stream, day)
                        history.update(figures)
            if missing:
                context.log.warning(
                    f"{day}: {len(missing)} segments removed by retention were not read, e.g. {missing[:10]}"
                )
            total_rows, total_new, total_dupes = total_rows + table.num_rows, total_new + new, total_dupes + dupes
            total_read += segments
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": total_rows,
                "mode": "rebuild",
                "segments_read": total_read,
                "segments_through": upto,
                "rows_read": total_new,
                "duplicates_dropped": total_dupes,
                **history_metadata(history),
            }
        )

    return build


def with_history(
    context: dg.AssetExecutionContext, stream: StreamResource, day: str, table: pa.Table, has_segments: bool
) -> tuple[pa.Table, dict[str, dict[str, Any]]]:
    """The day's trades with history merged in by key, for a run that is not a stream batch.

    History is read for a day without landing segments, and for an ended day with some that the
    stream did not cover whole (a gap, or minutes before or after the sessions, by the session
    ledger: :func:`~crypto_platform.lake.gap_repair.stream_coverage`). An ended day the stream
    covered minute by minute is complete already: its Flat File is not downloaded again. Not again
    either when the day already holds history rows (a rebuild keeps them). On a key both have, the
    stream's row wins: merge keeps the earliest receipt, and a history row's receipt is its download
    time; the stream's row also carries the lineage (receive time, session, segment). Quotes have no
    history: their gaps stay as they are, counted by the ``raw_quotes`` coverage check.
    ``CRYPTO_HISTORY_SOURCE=off`` turns this off.
    """
    from crypto_platform.lake.history import HISTORY_SOURCES, history_access, history_trades, merge_history
    from crypto_platform.polygon.rest_client import PolygonRest
    from crypto_platform.resources.polygon import build_polygon_rest_resource

    if table.num_rows and pc.any(pc.is_in(table["source"], value_set=pa.array(HISTORY_SOURCES))).as_py():
        return table, {}
    lo = day_bounds_ms(day)[0]
    now_ms = int(time.time() * 1000)
    if has_segments and lo + DAY_MS > now_ms:
        return table, {}
    if has_segments:
        coverage = stream_coverage(stream.landing_dir, table, None, lo, lo + DAY_MS, now_ms)
        if coverage.complete:
            context.log.info(f"{day}: the stream covered every minute of the day: no history is read")
            return table, {}
        context.log.info(
            f"{day}: {coverage.not_streamed} of {coverage.minutes} minutes were not streamed: reading history"
        )
    settings = stream.settings()
    if not settings.history_enabled:
        return table, {}
    # Zero setup: the built-in simulator (REST and Flat Files) is started on demand, as for gap repair.
    build_polygon_rest_resource(settings).ensure_local_simulator()
    access = history_access(settings, PolygonRest(settings.rest_url, settings.api_key.reveal()))
    got = history_trades(access, date.fromisoformat(day), settings.pairs, context.log.info)
    if got is None:
        return table, {}
    fetched, figures = got
    merged, dupes = merge_history(fetched, table)
    figures = {**figures, "rows_added": merged.num_rows - table.num_rows, "rows_already_streamed": dupes}
    context.log.info(f"{day}: history {figures}")
    return merged, {day: figures}


def finish_history(stream: StreamResource, day: str) -> None:
    from crypto_platform.lake.history import finish_day

    finish_day(Path(stream.data_dir) / "history", date.fromisoformat(day))


def history_metadata(history: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not history:
        return {}
    sources = sorted({str(f.get("source")) for f in history.values()})
    return {
        "history_days": len(history),
        "history_source": ",".join(sources),
        "history_rows_added": sum(int(f.get("rows_added", 0)) for f in history.values()),
        "history_requests": sum(int(f.get("requests", 0)) for f in history.values()),
    }


raw_trades = _raw_asset(
    TRADES,
    "Every XT trade of the UTC day from the landing log: exact decimals, one row per (pair, exchange, trade_id). "
    "Stream runs append their new segments' rows; manual runs and backfills rebuild the day. Past days (before the "
    "stream, or partly streamed): launch a backfill over them — each day is filled from Polygon's Flat Files "
    "(source='flat_file', with POLYGON_S3_* keys) or REST /v3/trades (source='rest_history'), merged with any "
    "streamed trades by key (the stream's row wins); a failed day resumes its download.",
)
raw_quotes = _raw_asset(
    QUOTES,
    "Every XQ quote of the UTC day from the landing log: exact decimals, one row per (pair, exchange, event_ms, "
    "seq), a re-sent frame collapsing onto its first copy.",
)
raw_aggregates = _raw_asset(
    AGGREGATES,
    "Every XA (minute) and XAS (second) bar revision of the UTC day by bar start, with its receive time; revision "
    "counts from 0 and is_current marks the latest revision of each bar.",
)
raw_book = _raw_asset(
    BOOK,
    "Every XL2 book snapshot of the UTC day (Polygon deprecated XL2; add it to CRYPTO_CHANNELS to land it): bids and "
    "asks as lists of exact {price, size} levels, one row per (pair, exchange, event_ms, seq).",
)
