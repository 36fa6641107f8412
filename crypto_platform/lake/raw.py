"""The raw lake tables from the landing log: decode, de-duplicate, and write to Delta.

Replay is the only way data moves downstream: the lake writer (and a stream run) applies sealed
segments in order to each raw table, and a manual materialization or a backfill rebuilds a day
from every segment. Both go through the same de-duplication by natural key, earliest receipt
winning, so any sequence of appends ends in exactly the table a rebuild gives.

- trades: key (pair, exchange, trade id; a hash of the trade when the id is missing); a rebuild
  keeps the trades gap repair fetched from REST (``source = 'rest_repair'``), which the landing
  log cannot give back, still de-duplicated against the stream's trades by key;
- quotes: key (pair, exchange, event time, seq), seq numbering identical (pair, exchange, t)
  quotes within their frame, so a re-sent frame collapses onto the first copy;
- aggregates (XA and XAS): every revision is kept, key (pair, channel, start, receive time);
  ``revision`` counts them from 0 in receive order and ``is_current`` marks the latest;
- book (XL2 snapshots; Polygon deprecated the channel, it is off by default): key (pair,
  exchange, event time, seq) like quotes; each side is a list of ``{price, size}`` structs.

Appending a batch (:func:`apply_segments`) never reads the day. Every natural key holds the
event time (a trade's duplicate is the same trade re-sent: same ``t``; quotes, bars and book
snapshots have the time in the key), so the rows a new row can collide with lie in the batch's
event-time ranges: those rows are read (Delta skips every file whose min/max statistics miss the
ranges), merged with the batch by the rule above, and only what changed is committed: the new
rows as an append, or, when an existing row loses (an earlier receipt arrived later, or a bar's
revisions are renumbered), the ranges replaced by their merged rows. The highest segment applied
goes into the same commit as Delta's application transaction (:data:`LANDING_APP_ID`), so a writer
that died after its commit resumes after it, and one that died before redoes it.
"""

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import CommitFailedError

from crypto_platform.days import day_bounds_ms
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
from crypto_platform.lake.schemas import AGGREGATES_SCHEMA, BOOK_SCHEMA, QUOTES_SCHEMA, TRADES_SCHEMA
from crypto_platform.lake.tables import DeltaLake, any_of, equals, in_ranges, time_ranges, with_date
from crypto_platform.stream.manifest import iter_manifest, segment_path

# The application transaction of the raw tables: its version is the highest landing segment whose
# rows (of every day) are in the table.
LANDING_APP_ID = "crypto_platform.landing"


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

    @property
    def time_column(self) -> str:
        """The event time in the key: what bounds the rows a new row can collide with."""
        return self.order[0]

    @property
    def identity(self) -> tuple[str, ...]:
        """What tells a row from another version of it: key, receipt and (bars) revision numbering."""
        extra = ("revision", "is_current") if "is_current" in self.schema.names else ()
        return (*self.key, *(c for c in ("received_ns", "segment") if c not in self.key), *extra)

    def decode(self, root: Path, entries: Iterable[dict[str, Any]], day: str) -> pa.Table:
        """Rows of ``day`` (by event time) from the given sealed segments, not yet de-duplicated."""
        segments = _segment_files(root, entries, day, self.channels)
        return decode(self.shape, segments, day_bounds_ms(day), self.schema, self.fixup)

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
    # Trades the landing log cannot give back: gap repair's and history's (Flat Files, REST history).
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


RAW_TABLES: dict[str, RawTable] = {t.name: t for t in (TRADES, QUOTES, AGGREGATES, BOOK)}


@dataclass
class Applied:
    """What applying landing segments to one raw table did."""

    through: int  # the table's watermark afterwards
    segments: int = 0  # segments read
    rows_read: int = 0
    rows_added: int = 0
    duplicates: int = 0
    days: dict[str, int] = field(default_factory=dict)  # day -> rows added
    replaced_ranges: int = 0  # commits that replaced rows instead of appending
    missing: list[int] = field(default_factory=list)  # segments retention removed before they were applied


def _identities(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """The identity columns, NULLs made comparable (a REST-repaired trade has no segment)."""
    out = {}
    for c in columns:
        col = table[c]
        if col.null_count:
            fill = "" if pa.types.is_string(col.type) else (False if pa.types.is_boolean(col.type) else -1)
            col = pc.fill_null(col, fill)
        out[c] = col
    return pa.table(out)


def changes(spec: RawTable, merged: pa.Table, existing: pa.Table | None) -> tuple[pa.Table, int]:
    """The rows of ``merged`` that are not in ``existing`` (to append), and how many of ``existing`` lost."""
    if existing is None or existing.num_rows == 0:
        return merged, 0
    ident = list(spec.identity)
    row = "__row"
    merged_ids = _identities(merged, ident).append_column(row, pa.array(range(merged.num_rows), pa.int64()))
    existing_ids = _identities(existing, ident)
    added = merged_ids.join(existing_ids, ident, join_type="left anti")
    kept = existing_ids.join(merged_ids.select(ident), ident, join_type="left semi").num_rows
    rows = np.sort(added[row].to_numpy())  # merged's order
    return merged.take(pa.array(rows, pa.int64())), existing.num_rows - kept


def rebuilt_day(
    lake: DeltaLake, spec: RawTable, root: Path, day: str, upto: int, kept: pa.Table | None = None
) -> tuple[pa.Table, int, int, int, list[int]]:
    """``day`` as a rebuild makes it from every landed segment through ``upto``, not yet written.

    ``kept``: the rows the landing log cannot give back (``kept_on_rebuild``); read from the table's
    partition when None. Returns (the day's rows, rows read, duplicates dropped, segments read,
    segments retention removed).
    """
    entries, missing = segments_to_read(root, day, spec.channels, 0, upto)
    if kept is None and spec.kept_on_rebuild is not None:
        column, values = spec.kept_on_rebuild
        kept = lake.read(spec.name, day, any_of(equals(column, v) for v in values))
    table, read, dupes = spec.build(root, entries, day, kept, incremental=True)
    return table, read, dupes, len(entries), missing


def rebuild_day(
    lake: DeltaLake, spec: RawTable, root: Path, day: str, upto: int
) -> tuple[pa.Table, int, int, int, list[int]]:
    """Replace ``day`` with every landed segment through ``upto`` (plus the rows kept on rebuild).

    Returns what :func:`rebuilt_day` does. One commit: readers see
    the old day or the new one. The watermark is not moved: it says what the appends have applied,
    and re-applying segments the rebuild already holds adds nothing (their rows are ties, and a tie
    keeps the row already in the table).
    """
    rebuilt = rebuilt_day(lake, spec, root, day, upto)
    lake.replace(spec.name, day, rebuilt[0])
    return rebuilt


def apply_segments(lake: DeltaLake, spec: RawTable, root: Path, upto: int) -> Applied:
    """Apply the sealed segments after the table's watermark through ``upto``; see the module docstring."""
    # The watermark and the final commit use one snapshot: a writer racing this one (no shared lock,
    # say on another host) has its commit of the same segments refused by Delta's conflict check.
    base = lake.open(spec.name)
    after = (base.transaction_version(LANDING_APP_ID) if base is not None else None) or 0
    applied = Applied(through=max(after, upto) if upto > after else after)
    if upto <= after:
        return applied
    entries: list[dict[str, Any]] = []
    prefix = f"{root}{os.sep}"
    for entry in iter_manifest(root, after_seq=after, through_seq=upto):
        if any(spec.channels & set(chans) for chans in (entry.get("days") or {}).values()):
            if os.path.exists(prefix + entry["file"]):
                entries.append(entry)
            else:
                applied.missing.append(int(entry["seq"]))
    applied.segments = len(entries)
    days = sorted({d for e in entries for d, chans in e["days"].items() if spec.channels & set(chans)})
    appends: list[pa.Table] = []
    for day in days:
        decoded = spec.decode(root, [e for e in entries if spec.channels & set(e["days"].get(day, {}))], day)
        if decoded.num_rows == 0:
            continue
        ranges = time_ranges(decoded[spec.time_column])
        bound = in_ranges(spec.time_column, ranges)
        existing = lake.read(spec.name, day, bound)
        merged, dupes = merge(decoded, existing, spec.schema, spec.key, spec.order, spec.finish)
        added, lost = changes(spec, merged, existing)
        applied.rows_read += decoded.num_rows
        applied.duplicates += dupes
        if lost:
            # An existing row lost to a new one (or a bar's revisions were renumbered): a merge on the
            # key, bounded by the ranges, updates those rows and inserts the new ones. Every key of
            # the ranges stays (a loser is replaced by its key's winner), so this is the merged rows.
            lake.upsert(spec.name, day, added, spec.key, spec.time_column, ranges)
            applied.replaced_ranges += 1
        elif added.num_rows:
            appends.append(with_date(added, day))
        applied.rows_added += added.num_rows
        applied.days[day] = added.num_rows
    # The watermark goes with the last commit (an empty one when every row was a duplicate), so it
    # never runs ahead of the rows; anything committed before it is idempotent to redo.
    empty = with_date(spec.schema.empty_table(), "")
    rows = pa.concat_tables(appends) if appends else empty.slice(0, 0)
    if applied.replaced_ranges and base is not None:
        # Our own merge committed since ``base`` was read: commit on top of it, after checking that no
        # other writer applied these segments meanwhile (its watermark would have moved).
        base = lake.open(spec.name)
        now = base.transaction_version(LANDING_APP_ID) if base is not None else None
        if (now or 0) != after:
            raise CommitFailedError(
                f"{spec.name}: another writer applied landing segments {after + 1}-{now} meanwhile; "
                "the next pass starts after them"
            )
    lake.append(spec.name, rows, {LANDING_APP_ID: upto}, base=base)
    return applied
