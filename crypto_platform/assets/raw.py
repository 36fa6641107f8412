"""Raw lake tables built from the landing log: ``raw_trades``, ``raw_quotes``, ``raw_aggregates``, ``raw_book``.

The tables, their de-duplication and the Delta writes are in :mod:`crypto_platform.lake.raw`; the
assets only choose the mode. A run launched by the stream sensor (tag ``crypto/segments``) applies
the sealed segments after the table's watermark through its last segment (an append of the new
rows, never a read of the day); a run without the tag (a manual materialization, a backfill)
rebuilds the day from every segment in one Delta commit. Both use the same decode and the same
rule (natural key, earliest receipt), so appends end in exactly the table a rebuild gives.
"""

import dagster as dg

from crypto_platform.assets.landing_log import landing_log
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
from crypto_platform.partitions import DAILY_PARTITIONS
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream.landing_log import last_manifest_entry
from crypto_platform.stream_batches import SEGMENTS_TAG, parse_segment_range

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
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
        group_name="lake",
        kinds={"python", "delta"},
        owners=["team:data-platform"],
        code_version="3",
        description=description,
    )
    def build(context: dg.AssetExecutionContext, stream: StreamResource, lake: LakeResource) -> dg.MaterializeResult:
        tag = context.run.tags.get(SEGMENTS_TAG)
        root = stream.landing_dir
        tables = lake.tables()
        if tag:
            upto = parse_segment_range(tag)[1]
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
        for day in context.partition_keys:
            with lake.locked(spec.name):
                table, new, dupes, segments, missing = rebuild_day(tables, spec, root, day, upto)
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
            }
        )

    return build


raw_trades = _raw_asset(
    TRADES,
    "Every XT trade of the UTC day from the landing log: exact decimals, one row per (pair, exchange, trade_id). "
    "Stream runs append their new segments' rows; manual runs and backfills rebuild the day.",
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
