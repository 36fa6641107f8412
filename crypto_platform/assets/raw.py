"""Raw lake tables built from the landing log: ``raw_trades``, ``raw_quotes``, ``raw_aggregates``, ``raw_book``.

Replay is the only way data moves downstream (DESIGN §3.3): a run launched by the stream sensor
carries the last sealed segment it covers (tag ``crypto/segments``) and upserts the segments after
the partition's watermark up to that one into the day (so a failed run's segments are taken in by
the next run); a run without the tag (a manual materialization, a backfill) rebuilds the day from
every segment. Both go through the same de-duplication by natural key, keeping the
earliest receipt, so any sequence of incremental runs ends in exactly the table a rebuild gives.

- trades: key (pair, exchange, trade id; a hash of the trade when the id is missing); a rebuild
  keeps the trades gap repair fetched from REST (``source = 'rest_repair'``) and history
  (``flat_file``, ``rest_history``), which the landing log cannot give back, still de-duplicated
  against the stream's trades by key;
- quotes: key (pair, exchange, event time, seq), seq numbering identical (pair, exchange, t)
  quotes within their frame, so a re-sent frame collapses onto the first copy;
- aggregates (XA and XAS): every revision is kept, key (pair, channel, start, receive time);
  ``revision`` counts them from 0 in receive order and ``is_current`` marks the latest;
- book (XL2 snapshots; Polygon deprecated the channel, it is off by default): key (pair,
  exchange, event time, seq) like quotes; each side is a list of ``{price, size}`` structs.

Decoding, de-duplication and the exact decimal reading are in :mod:`crypto_platform.lake.decode`
(DuckDB over the segment files). Prices and sizes go from the wire text to ``decimal128(38, 18)``
without passing through a float.
"""

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.assets.landing_log import landing_log
from crypto_platform.lake.decode import (
    DECIMAL_SQL,
    LEVELS_SQL,
    EventShape,
    SegmentFile,
    decode,
    frames_at,
    merge,
    trade_hash,
)
from crypto_platform.partitions import DAILY_PARTITIONS
from crypto_platform.resources.lake import LakeResource, segments_through
from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream.landing_log import DAY_MS, iter_manifest, last_manifest_entry, segment_path
from crypto_platform.stream_batches import SEGMENTS_TAG, parse_segment_range

DECIMAL = pa.decimal128(38, 18)
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


def _segment_files(
    root: Path, entries: Iterable[dict[str, Any]], day: str, channels: frozenset[str]
) -> list[SegmentFile]:
    """The sealed segments whose manifest entry says they hold ``channels`` events of ``day``."""
    return [
        SegmentFile(int(e["seq"]), segment_path(root, e), int(e.get("bytes") or 0))
        for e in entries
        if channels & set((e.get("days") or {}).get(day, {}))
    ]


def _fill_trade_ids(table: pa.Table, segments: Sequence[SegmentFile]) -> pa.Table:
    """Trades that came without an id get ``h:<sha1 of t|p|s|c>`` from their exact wire text (rare)."""
    missing = pc.is_null(table["trade_id"])
    if not table["trade_id"].null_count:
        return table
    rows = table.filter(missing).select(["segment", "received_ns", "idx"]).to_pylist()
    frames = frames_at(segments, {(r["segment"], r["received_ns"]) for r in rows})
    ids = [trade_hash(frames[(r["segment"], r["received_ns"])][r["idx"]]) for r in rows]
    filled = pc.replace_with_mask(
        table["trade_id"].combine_chunks(), missing.combine_chunks(), pa.array(ids, pa.string())
    )
    return table.set_column(table.schema.get_field_index("trade_id"), "trade_id", filled)


_LINEAGE_SQL = "received_ns, session, segment"
_NO_CONDITIONS = "('null', '[]', '0', 'false', '\"\"')"  # what json.dumps(c or []) turned into []

TRADES_SHAPE = EventShape(
    channels=("XT",),
    time_field="t",
    fields={
        "pair": "VARCHAR",
        "p": DECIMAL_SQL,
        "s": DECIMAL_SQL,
        "t": "BIGINT",
        "c": "JSON",
        "i": "VARCHAR",
        "x": "INTEGER",
        "r": "BIGINT",
    },
    select=f"""e.pair AS pair,
        coalesce(e.x, 0) AS exchange,
        nullif(e.i, '') AS trade_id,
        e.p AS price,
        e.s AS size,
        CASE WHEN e.c IS NULL OR e.c::VARCHAR IN {_NO_CONDITIONS} THEN '[]' ELSE replace(e.c::VARCHAR, ',', ', ') END
            AS conditions,
        e.t AS event_ms,
        e.r AS polygon_received_ms,
        {_LINEAGE_SQL},
        'ws' AS source""",
    required={"pair": "pair", "price": "p", "size": "s"},
)
QUOTES_SHAPE = EventShape(
    channels=("XQ",),
    time_field="t",
    fields={
        "pair": "VARCHAR",
        "bp": DECIMAL_SQL,
        "bs": DECIMAL_SQL,
        "ap": DECIMAL_SQL,
        "as": DECIMAL_SQL,
        "t": "BIGINT",
        "x": "INTEGER",
        "r": "BIGINT",
    },
    select=f"""e.pair AS pair,
        coalesce(e.x, 0) AS exchange,
        e.t AS event_ms,
        e.bp AS bid_price,
        e.bs AS bid_size,
        e.ap AS ask_price,
        e."as" AS ask_size,
        e.r AS polygon_received_ms,
        {_LINEAGE_SQL}""",
    required={"pair": "pair"},
    # seq numbers identical (pair, exchange, t) quotes within their frame, in frame order.
    window="""SELECT *, (row_number() OVER (PARTITION BY segment, received_ns, pair, exchange, event_ms
                                           ORDER BY idx) - 1)::INTEGER AS seq FROM decoded""",
)
_BAR_FIELDS = {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume", "vw": "vwap", "z": "avg_trade_size"}
AGGREGATES_SHAPE = EventShape(
    channels=("XA", "XAS"),
    time_field="s",
    # "s" is a size in XT and a bar start in XA, so it is read as a decimal (exact for both).
    fields={"pair": "VARCHAR", **dict.fromkeys(_BAR_FIELDS, DECIMAL_SQL), "s": DECIMAL_SQL, "e": "BIGINT"},
    select=f"""e.ev AS channel,
        e.pair AS pair,
        e.s::BIGINT AS start_ms,
        e.e AS end_ms,
        {", ".join(f'e."{f}" AS {col}' for f, col in _BAR_FIELDS.items())},
        {_LINEAGE_SQL},
        NULL::INTEGER AS revision,
        NULL::BOOLEAN AS is_current""",
    required={"pair": "pair", "end_ms": "e", **{col: f for f, col in _BAR_FIELDS.items()}},
    lenient=True,  # XA's close "c" is a number, XT's conditions "c" a list
)
_LEVELS = "list_transform(e.{side}, lambda l: CASE WHEN len(l) = 2 THEN {{'price': l[1], 'size': l[2]}} END)"
BOOK_SHAPE = EventShape(
    channels=("XL2",),
    time_field="t",
    fields={"pair": "VARCHAR", "t": "BIGINT", "x": "INTEGER", "r": "BIGINT", "b": LEVELS_SQL, "a": LEVELS_SQL},
    select=f"""e.pair AS pair,
        coalesce(e.x, 0) AS exchange,
        e.t AS event_ms,
        {_LEVELS.format(side="b")} AS bids,
        {_LEVELS.format(side="a")} AS asks,
        e.r AS polygon_received_ms,
        {_LINEAGE_SQL}""",
    required={"pair": "pair", "bids": "b", "asks": "a"},
    window=QUOTES_SHAPE.window,
)
# Revision 0.. in receive order per bar; the latest is current.
_NUMBER_REVISIONS = """
SELECT * EXCLUDE (revision, is_current),
       (row_number() OVER bar - 1)::INTEGER AS revision,
       row_number() OVER bar = count(*) OVER (PARTITION BY pair, channel, start_ms) AS is_current
FROM merged
WINDOW bar AS (PARTITION BY pair, channel, start_ms ORDER BY received_ns, segment)
ORDER BY start_ms, channel, pair, received_ns
"""


@dataclass(frozen=True)
class RawTable:
    """How one raw table is built from landed events."""

    name: str
    schema: pa.Schema
    shape: EventShape
    key: tuple[str, ...]
    order: tuple[str, ...]
    finish: str | None = None  # SQL over ``merged`` after de-duplication
    fixup: Callable[[pa.Table, Sequence[SegmentFile]], pa.Table] | None = None
    # Rows a rebuild keeps from the partition: ones that did not come from the landing log.
    kept_on_rebuild: tuple[str, tuple[str, ...]] | None = None

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self.shape.channels)

    def decode(self, root: Path, entries: Iterable[dict[str, Any]], day: str) -> pa.Table:
        """Rows of ``day`` (by event time) from the given sealed segments, not yet de-duplicated."""
        lo = int(DAILY_PARTITIONS.time_window_for_partition_key(day).start.timestamp() * 1000)
        segments = _segment_files(root, entries, day, self.channels)
        return decode(self.shape, segments, (lo, lo + DAY_MS), self.schema, self.fixup)

    def build(
        self, root: Path, entries: Iterable[dict[str, Any]], day: str, existing: pa.Table | None, incremental: bool
    ) -> tuple[pa.Table, int, int]:
        """The day's table from ``entries`` (plus ``existing`` rows, see below); returns (table, rows read, dupes).

        Incremental: every existing row stays a candidate. Rebuild: only the rows the landing log
        cannot give back (``kept_on_rebuild``, e.g. trades repaired from REST) are kept.
        """
        decoded = self.decode(root, entries, day)
        if existing is not None and not incremental:
            if self.kept_on_rebuild is None:
                existing = None
            else:
                column, values = self.kept_on_rebuild
                existing = existing.filter(pc.is_in(existing[column], value_set=pa.array(values, pa.string())))
        merged, dupes = merge(decoded, existing, self.schema, self.key, self.order, self.finish)
        return merged, decoded.num_rows, dupes


TRADES = RawTable(
    "raw_trades",
    TRADES_SCHEMA,
    TRADES_SHAPE,
    ("pair", "exchange", "trade_id"),
    ("event_ms", "pair", "exchange", "trade_id"),
    fixup=_fill_trade_ids,
    kept_on_rebuild=("source", ("rest_repair", "flat_file", "rest_history")),
)
QUOTES = RawTable(
    "raw_quotes",
    QUOTES_SCHEMA,
    QUOTES_SHAPE,
    ("pair", "exchange", "event_ms", "seq"),
    ("event_ms", "pair", "exchange", "seq"),
)
AGGREGATES = RawTable(
    "raw_aggregates",
    AGGREGATES_SCHEMA,
    AGGREGATES_SHAPE,
    ("pair", "channel", "start_ms", "received_ns"),
    ("start_ms", "channel", "pair", "received_ns"),
    finish=_NUMBER_REVISIONS,
)
BOOK = RawTable(
    "raw_book",
    BOOK_SCHEMA,
    BOOK_SHAPE,
    ("pair", "exchange", "event_ms", "seq"),
    ("event_ms", "pair", "exchange", "seq"),
)


def segments_to_read(
    root: Path, day: str, channels: frozenset[str], after: int, upto: int
) -> tuple[list[dict[str, Any]], list[int]]:
    """Manifest entries of the sealed segments after ``after`` up to ``upto`` with ``channels`` events of ``day``.

    Returns the entries whose file is on disk and the seqs of those retention already removed.
    Only the manifest's lines after ``after`` are parsed (see ``iter_manifest``): a stream run
    reads what follows the partition's watermark, however long the log; a rebuild (``after`` 0)
    parses only the lines of the day's segments.
    """
    entries: list[dict[str, Any]] = []
    missing: list[int] = []
    prefix = f"{root}{os.sep}"  # os.path, not pathlib: a day's rebuild checks 17k files
    for entry in iter_manifest(root, after_seq=after, through_seq=upto, day=day):
        if channels & entry["days"][day].keys():
            if os.path.exists(prefix + entry["file"]):
                entries.append(entry)
            else:
                missing.append(int(entry["seq"]))
    return entries, missing


def incremental_start(existing: pa.Table | None, tag: str) -> int:
    """The segment after which a stream-sensor run starts reading: the partition's watermark.

    So a run also takes in the segments of an earlier run that failed. Without a partition the run
    reads the day from the first segment; a partition written before watermarks existed falls back
    to the run's own range.
    """
    if existing is None:
        return 0
    through = segments_through(existing)
    return through if through is not None else parse_segment_range(tag)[0] - 1


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
        kinds={"python", "parquet"},
        owners=["team:data-platform"],
        code_version="2",
        description=description,
    )
    def build(context: dg.AssetExecutionContext, stream: StreamResource, lake: LakeResource) -> dg.MaterializeResult:
        tag = context.run.tags.get(SEGMENTS_TAG)
        root = stream.landing_dir
        if tag:
            upto = parse_segment_range(tag)[1]
        else:
            newest = last_manifest_entry(root)
            upto = int(newest["seq"]) if newest else 0
        total_rows = total_new = total_dupes = total_read = 0
        history: dict[str, dict[str, Any]] = {}
        for day in context.partition_keys:
            with lake.locked(spec.name, day):
                existing = lake.read_partition(spec.name, day)
                after = incremental_start(existing, tag) if tag else 0
                entries, missing = segments_to_read(root, day, spec.channels, after, upto)
                if missing:
                    context.log.warning(
                        f"{day}: {len(missing)} segments removed by retention were not read, e.g. {missing[:10]}"
                    )
                table, new, dupes = spec.build(root, entries, day, existing, incremental=bool(tag))
                if spec is TRADES and not tag:
                    table, figures = with_history(context, stream, day, table, bool(entries))
                    history.update(figures)
                lake.write_partition(spec.name, day, table, through=max(upto, after))
                if history.get(day):
                    finish_history(stream, day)
            total_rows, total_new, total_dupes = total_rows + table.num_rows, total_new + new, total_dupes + dupes
            total_read += len(entries)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": total_rows,
                "mode": "incremental" if tag else "rebuild",
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

    History is read for a day without landing segments, and for a day with some once it has ended
    (the stream may have covered part of it). Not again when the partition already holds history
    rows (a rebuild keeps them). On a key both have, the stream's row wins: merge keeps the earliest
    receipt, and a history row's receipt is its download time; the stream's row also carries the
    lineage (receive time, session, segment). Quotes have no history: their gaps stay as they are.
    ``CRYPTO_HISTORY_SOURCE=off`` turns this off.
    """
    from crypto_platform.lake.history import HISTORY_SOURCES, history_access, history_trades
    from crypto_platform.polygon.rest_client import PolygonRest

    if table.num_rows and pc.any(pc.is_in(table["source"], value_set=pa.array(HISTORY_SOURCES))).as_py():
        return table, {}
    lo = int(DAILY_PARTITIONS.time_window_for_partition_key(day).start.timestamp() * 1000)
    if has_segments and lo + DAY_MS > time.time() * 1000:
        return table, {}
    settings = stream.settings()
    if not settings.history_enabled:
        return table, {}
    access = history_access(settings, PolygonRest(settings.rest_url, settings.api_key.reveal()))
    got = history_trades(access, date.fromisoformat(day), settings.pairs, context.log.info)
    if got is None:
        return table, {}
    fetched, figures = got
    fetched = fetched.append_column("idx", pa.array(np.arange(fetched.num_rows, dtype=np.int64)))
    merged, dupes = merge(fetched, table if table.num_rows else None, TRADES_SCHEMA, TRADES.key, TRADES.order)
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
    "Sensor runs upsert their new segments; manual runs and backfills rebuild the day. Past days (before the "
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
