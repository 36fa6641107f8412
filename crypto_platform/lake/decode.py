"""Landing segments -> typed, de-duplicated Arrow tables, with DuckDB: exact and fast.

Why DuckDB: its NDJSON reader parses the segment files on every core and converts JSON numbers
straight from their digits into ``DECIMAL(38,18)`` (tested: ``98765.432109876543210987`` and
``0.000000012345678901`` survive, ``1e-8`` and ``1.5E+3`` are read exactly), so nothing passes
through a float and no Python object is made per event. The per-line ``json`` decoder this
replaces built about 60k events/s; this path (decode, merge, then the minute bars) builds a day of
2M landed events at about 1.1M events/s on an otherwise idle 2-core machine, reading the JSON being
most of it (``benchmarks/partition_build.py``).

A build is :func:`decode` then :func:`merge`:

1. ``read_ndjson`` over the day's segment files with each frame typed as a list of structs that
   hold only the fields the table needs (:class:`EventShape`); ``unnest`` gives one row per event
   with its index in the frame; channel and the partition's event-time window are filtered there.
2. Python fix-ups that need the original text, only for the rare rows that need them (a trade
   without an id gets the same ``h:<sha1>`` id as ever, computed from the exact wire text).
3. De-duplication by natural key over the new rows plus, for an incremental run, the rows already
   in the lake: the earliest ``(received_ns, segment)`` wins, ties going to the row already in the
   lake, then to the earlier event of the frame; the rows are sorted by key and receipt and each
   key keeps its first row (Arrow sorts), then sorted into the table's order.

Limits, on purpose:

- ``DECIMAL(38,18)`` holds 20 integer digits and 18 decimals. A number with more integer digits
  fails the build, naming the segment file and line. A number with more than 18 decimals is
  rounded half-up at the 18th by DuckDB, as the warehouses' DECIMAL(38,18) / NUMBER(38,18) would
  round it; Polygon's prices and sizes have at most 8-10 decimals.
- A line of a sealed segment that cannot be read (the ingester never lands one: malformed frames
  are quarantined first, so this means a damaged file) fails the build with file and line, found
  by an exact Python re-scan that runs only after DuckDB refused the files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.stream.manifest import iter_lines

DECIMAL_SQL = "DECIMAL(38,18)"
LEVELS_SQL = f"{DECIMAL_SQL}[][]"  # XL2 book sides: [[price, size], ...]
# DuckDB's default ceiling for one JSON line is 16 MiB; a landed frame can be bigger (the ingester
# sets no frame size limit) but never bigger than its segment.
_MIN_OBJECT_SIZE = 16 * 1024 * 1024
_INTEGER_DIGITS = 20  # of DECIMAL(38,18)


class LandingDecodeError(ValueError):
    """A sealed segment that cannot be read into a raw table; the message names file and line."""


@dataclass(frozen=True)
class SegmentFile:
    """A sealed segment to read: its sequence number (the rows' ``segment``), path and size."""

    seq: int
    path: Path
    bytes: int = 0


@dataclass(frozen=True)
class EventShape:
    """How one raw table reads its events from frames.

    ``fields``: the JSON fields read from every event of a frame (name -> DuckDB type).
    ``select``: ``expression AS column`` items over ``e`` (the event), ``received_ns``, ``session``,
    ``segment`` and ``idx`` (the event's index in its frame).
    ``required``: column -> JSON field, for columns an event of the table must have.
    ``lenient``: read with ``ignore_errors`` because a field's type clashes with another channel's
    field of the same name (XA's close ``c`` is a number, XT's conditions ``c`` a list); what the
    table itself needs is then proved complete afterwards (see :func:`decode`).
    ``window``: SQL over ``decoded`` that adds what needs the whole frame (the quote ``seq``).
    """

    channels: tuple[str, ...]
    time_field: str
    fields: dict[str, str]
    select: str
    required: dict[str, str] = field(default_factory=dict)
    lenient: bool = False
    window: str | None = None


def _read_sql(shape: EventShape, n_files: int, max_object: int) -> str:
    fields = ", ".join(f'"{name}" {typ}' for name, typ in shape.fields.items())
    frame_type = f"STRUCT(ev VARCHAR, {fields})[]"
    files = ", ".join(f"$f{i}" for i in range(n_files))
    channels = ", ".join(f"'{c}'" for c in shape.channels)
    lenient = ", ignore_errors=true" if shape.lenient else ""
    t = f'e."{shape.time_field}"'
    # A line without a frame (one that does not parse at all, when lenient, or a record without r
    # and f) still gives one row, with a NULL received_ns that the WHERE keeps so that decode() can
    # refuse it: unnest zips the lists of one SELECT, padding the shorter with NULLs, so a one-item
    # list beside a NULL frame gives that row. Not coalesce(f, [NULL]): that copies every frame's
    # events once more (about 10% of the read).
    return f"""
    WITH lines AS (
        SELECT l.r AS received_ns, l.n AS session, s.seq AS segment, l.f AS f,
               CASE WHEN l.f IS NULL THEN [true] ELSE []::BOOLEAN[] END AS no_frame
        FROM read_ndjson([{files}], columns={{'r': 'BIGINT', 'n': 'BIGINT', 'f': '{frame_type}'}},
                         format='newline_delimited', filename=true,
                         maximum_object_size={max_object}{lenient}) l
        JOIN segment_files s ON s.path = l.filename
    ), events AS (
        SELECT received_ns, session, segment, unnest(f) AS e, generate_subscripts(f, 1) - 1 AS idx,
               unnest(no_frame) AS no_frame
        FROM lines
    )
    SELECT {shape.select}, idx
    FROM events
    WHERE (e.ev IN ({channels}) AND {t} >= $lo AND {t} < $hi) OR received_ns IS NULL
    """


def decode(
    shape: EventShape,
    segments: Sequence[SegmentFile],
    window_ms: tuple[int, int],
    schema: pa.Schema,
    fixup: Callable[[pa.Table, Sequence[SegmentFile]], pa.Table] | None = None,
) -> pa.Table:
    """Rows of ``shape``'s channels with event time in ``window_ms`` from ``segments``, before de-duplication.

    The result has ``schema`` plus ``idx``. Any line or event that cannot be read fails with a
    :class:`LandingDecodeError` naming the file and line.
    """
    out_schema = schema.append(pa.field("idx", pa.int64()))
    if not segments:
        return out_schema.empty_table()
    max_object = max(_MIN_OBJECT_SIZE, *(s.bytes + 1 for s in segments))
    params: dict[str, Any] = {f"f{i}": str(s.path) for i, s in enumerate(segments)}
    params.update(lo=window_ms[0], hi=window_ms[1])
    con = duckdb.connect()
    try:
        con.register(
            "segment_files", pa.table({"seq": [s.seq for s in segments], "path": [str(s.path) for s in segments]})
        )
        # con.sql, not con.execute: a DB-API result would copy every row once more on its way to Arrow.
        table = con.sql(_read_sql(shape, len(segments), max_object), params=params).to_arrow_table()
        broken = table["received_ns"].null_count > 0
        missing = [c for c in shape.required if table[c].null_count]
        if not broken and not missing and shape.window:
            con.register("decoded", table)
            table = con.sql(shape.window).to_arrow_table()
    except duckdb.Error as exc:
        raise LandingDecodeError(diagnose(shape, segments) or f"DuckDB could not read the segments: {exc}") from exc
    finally:
        con.close()
    if broken or missing:
        what = "a line that is not JSON" if broken else f"{'/'.join(shape.channels)} events without {missing}"
        raise LandingDecodeError(diagnose(shape, segments) or f"the segments hold {what}")
    if fixup is not None:
        table = fixup(table, segments)
    return table.select(out_schema.names).cast(out_schema)


def merge(
    decoded: pa.Table,
    existing: pa.Table | None,
    schema: pa.Schema,
    key: Sequence[str],
    order: Sequence[str],
    finish: str | None = None,
    fast: bool = True,
) -> tuple[pa.Table, int]:
    """One row per ``key`` of the decoded rows and ``existing`` (rows already in the lake), sorted by ``order``.

    The earliest ``(received_ns, segment)`` wins; on a tie the existing row, then the lower frame
    index. ``finish`` is SQL over ``merged`` run afterwards (bar revision numbering). Returns the
    table (with ``schema``) and the number of rows dropped as duplicates.

    Done with Arrow sorts rather than a SQL window (``QUALIFY row_number()``) or a hash grouping:
    sorting by key and then receipt puts each key's rows next to each other, earliest first, so the
    winners are where the key changes. When ``order`` holds exactly the key's columns (quotes, bars,
    book) that one sort also gives the table's order; otherwise (trades: event time first) the
    order is sorted in a second thread meanwhile (Arrow releases the GIL), as both cores are idle
    once DuckDB is done. NULLs sort last and are one key, as in SQL.

    A stream run adds a few thousand rows to a day that may hold millions: when ``existing`` is a
    table this function made (sorted by ``order``, one row per key) and the shape allows it
    (:func:`can_merge_into`), only the existing rows that share a key with a new row and those
    from the new rows' first ``order`` value on are merged and sorted; the rest is kept as it is
    (``fast=False`` merges everything, the same result).
    """
    with_idx = schema.append(pa.field("idx", pa.int64()))
    if existing is not None and fast and can_merge_into(decoded, existing, key, order, finish):
        return _merge_into(decoded.select(with_idx.names).cast(with_idx), existing, schema, key, order)
    parts = [decoded.select(with_idx.names).cast(with_idx)]
    if existing is not None and existing.num_rows:
        lake = existing.select(schema.names).cast(schema)
        parts.append(lake.append_column("idx", pa.array(np.full(lake.num_rows, -1, np.int64))))
    combined = pa.concat_tables(parts)
    total = combined.num_rows
    if set(order) == set(key):
        by_order = _sort(combined, [*order, *(c for c in _RECEIPT if c not in order)])
        rows = by_order[_first_of_each_key(combined, by_order, key)]
    else:
        with ThreadPoolExecutor(1) as pool:
            ordering = pool.submit(_sort, combined, order)
            keep = _earliest_per_key(combined, key)
            rows = ordering.result()
        if keep is not None:
            # Sorting every row and dropping the losers afterwards spares a copy of the sort columns.
            winner = np.zeros(total, np.bool_)
            winner[keep] = True
            rows = rows[winner[rows]]
    merged = combined.select(schema.names).take(rows)
    if finish is not None:
        con = duckdb.connect()
        try:
            con.register("merged", merged)
            merged = con.sql(finish).to_arrow_table()
        finally:
            con.close()
    return merged.select(schema.names).cast(schema), total - merged.num_rows


_RECEIPT = ("received_ns", "segment", "idx")  # the merge's receipt order, earliest first
_MAX_CHUNKS = 32  # a merged table with more is made contiguous again (one copy)


def can_merge_into(
    decoded: pa.Table, existing: pa.Table, key: Sequence[str], order: Sequence[str], finish: str | None
) -> bool:
    """Whether :func:`merge` may merge ``decoded`` into ``existing`` without sorting all of it.

    It may when ``order`` holds the whole key (so the merged rows are totally ordered: no tie for
    a sort to break), nothing is renumbered afterwards (``finish``), no key or leading ``order``
    value is NULL (joins would not match NULLs as merge does) and ``existing`` is in ``order`` by
    its leading, integer column: which a table made by merge always is.
    """
    lead = order[0] if order else None
    if finish is not None or not existing.num_rows or not decoded.num_rows or not set(key) <= set(order):
        return False
    if lead not in existing.column_names or not pa.types.is_integer(existing.schema.field(lead).type):
        return False
    if any(t[c].null_count for t in (decoded, existing) for c in {*key, lead}):
        return False
    values = existing[lead].to_numpy()
    return bool(np.all(values[1:] >= values[:-1]))


def _merge_into(
    decoded: pa.Table, existing: pa.Table, schema: pa.Schema, key: Sequence[str], order: Sequence[str]
) -> tuple[pa.Table, int]:
    """:func:`merge` of a few new rows into a large, merged and ordered ``existing`` table.

    The existing rows sharing a key with a new row are merged with the new rows by the general
    rule; the winners and the existing rows from the smallest leading ``order`` value among them
    on are sorted; the existing rows before that value stay where they are.
    """
    lake = existing.select(schema.names).cast(schema)
    row = "__row"
    keys = lake.select(list(key)).append_column(row, pa.array(np.arange(lake.num_rows, dtype=np.int64)))
    shared = keys.join(decoded.select(list(key)).group_by(list(key)).aggregate([]), list(key), join_type="left semi")
    hit = np.sort(shared[row].to_numpy())
    winners, dupes = merge(decoded, lake.take(pa.array(hit)), schema, key, order, fast=False)
    lead = order[0]
    start = int(np.searchsorted(lake[lead].to_numpy(), pc.min(winners[lead]).as_py(), side="left"))
    untouched = np.ones(lake.num_rows, np.bool_)
    untouched[hit] = False
    head = lake.slice(0, start)
    if not untouched[:start].all():  # a shared key earlier in the order (rare): leave its row out
        head = head.filter(pa.array(untouched[:start]))
    tail = lake.slice(start).filter(pa.array(untouched[start:]))
    rest = pa.concat_tables([tail, winners])
    merged = pa.concat_tables([head, rest.take(pa.array(_sort(rest, order)))])
    if merged.column(0).num_chunks > _MAX_CHUNKS:
        # Each merge adds a chunk; a process merging batch after batch into the table it keeps
        # (RecentPartitions hands the written table back) would otherwise pile up thousands.
        merged = merged.combine_chunks()
    return merged, dupes


def _sort(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Row numbers in ascending ``columns`` order, NULLs last; stable, so full ties keep their table order."""
    return pc.sort_indices(table.select(list(columns)), [(c, "ascending") for c in columns]).to_numpy()


def _first_of_each_key(table: pa.Table, rows: np.ndarray, key: Sequence[str]) -> np.ndarray:
    """Where, in ``rows`` (sorted so that equal keys are adjacent), a key starts: a mask over ``rows``."""
    first = np.ones(len(rows), np.bool_)
    if len(rows) < 2:
        return first
    taken = pa.array(rows)
    same = np.ones(len(rows) - 1, np.bool_)  # rows[i + 1] has rows[i]'s key so far
    for column in key:
        values = table[column].take(taken)
        later, earlier = values[1:], values[:-1]
        equal = pc.equal(later, earlier)
        if values.null_count:
            equal = pc.or_kleene(equal, pc.and_(pc.is_null(later), pc.is_null(earlier)))
        same &= pc.fill_null(equal, False).to_numpy(zero_copy_only=False)
    first[1:] = ~same
    return first


def _earliest_per_key(table: pa.Table, key: Sequence[str]) -> np.ndarray | None:
    """Row numbers of each key's earliest row by ``(received_ns, segment, idx)``; None when every key is unique."""
    # String columns first: they tell most rows apart, so the sort rarely compares the others.
    columns = sorted(key, key=lambda c: not pa.types.is_string(table.schema.field(c).type))
    by_key = _sort(table, [*columns, *(c for c in _RECEIPT if c not in columns)])
    first = _first_of_each_key(table, by_key, columns)
    return None if first.all() else by_key[first]


# -- exact slow paths, only for the rows or files that need them ------------------------------------


def frames_at(segments: Sequence[SegmentFile], wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], list[Any]]:
    """Events of the frames at ``(segment, received_ns)``, parsed with Decimals exactly as the wire text."""
    by_segment: dict[int, set[int]] = {}
    for seq, recv in wanted:
        by_segment.setdefault(seq, set()).add(recv)
    out: dict[tuple[int, int], list[Any]] = {}
    for segment in segments:
        recvs = by_segment.get(segment.seq)
        if recvs:
            for recv_ns, _, frame in iter_lines(segment.path):
                if recv_ns in recvs:
                    out.setdefault((segment.seq, recv_ns), json.loads(frame, parse_float=Decimal))
    return out


def trade_hash(event: dict[str, Any]) -> str:
    """The id of a trade that came without one: ``h:`` + sha1 of ``t|p|s|c`` as parsed (unchanged since v1)."""
    basis = f"{event.get('t')}|{event.get('p')}|{event.get('s')}|{event.get('c')}"
    return "h:" + hashlib.sha1(basis.encode()).hexdigest()[:20]


def _decimal_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        return f"{json.dumps(value, default=str)} is not a number"
    try:
        number = Decimal(value)
    except InvalidOperation:
        return f"{value!r} is not a number"
    if not number.is_finite():
        return f"{value} is not a finite number"
    if number and number.adjusted() >= _INTEGER_DIGITS:
        return f"{value} has more than {_INTEGER_DIGITS} integer digits: it does not fit decimal(38,18)"
    return None


def _value_problem(value: Any, duck_type: str) -> str | None:
    """Why DuckDB cannot read ``value`` as ``duck_type`` (None: it can, or the type takes anything)."""
    if value is None:
        return None
    if duck_type == DECIMAL_SQL:
        return _decimal_problem(value)
    if duck_type in ("BIGINT", "INTEGER"):
        if isinstance(value, int | Decimal | str) and not isinstance(value, bool):
            try:
                number = Decimal(value)
                if number == number.to_integral_value() and abs(number) < 2 ** (63 if duck_type == "BIGINT" else 31):
                    return None
            except InvalidOperation:
                pass
        return f"{json.dumps(value, default=str)} is not an integer"
    if duck_type == LEVELS_SQL:
        if not isinstance(value, list):
            return "is not a list of [price, size] levels"
        for level in value:
            if not isinstance(level, list):
                return f"level {json.dumps(level, default=str)} is not a [price, size] pair"
            for number in level:
                problem = _decimal_problem(number)
                if problem:
                    return problem
    return None


def diagnose(shape: EventShape, segments: Sequence[SegmentFile]) -> str | None:
    """The first line of ``segments`` that ``shape`` cannot read, and why, naming file and line."""
    for segment in segments:
        with open(segment.path, "rb") as f:
            for number, line in enumerate(f, start=1):
                where = f"{segment.path} line {number}"
                problem = _line_problem(shape, line)
                if problem:
                    return f"{where}: {problem}"
    return None


def _line_problem(shape: EventShape, line: bytes) -> str | None:
    if not line.endswith(b"\n"):
        return "the last line is cut short, which a sealed segment never is: the file is damaged"
    try:
        record = json.loads(line, parse_float=Decimal)
    except ValueError as exc:
        return f"not valid JSON ({exc}): the segment file is damaged; restore it from a copy or remove it"
    if not isinstance(record, dict) or not isinstance(record.get("f"), list):
        return "not a landing record {r, n, f: [...]}: the segment file is damaged"
    for index, event in enumerate(record["f"]):
        if not isinstance(event, dict):
            return f"event {index} is not an object"
        mine = event.get("ev") in shape.channels
        if not mine and shape.lenient:
            continue  # other channels' fields are read leniently
        for name, duck_type in shape.fields.items():
            problem = _value_problem(event.get(name), duck_type)
            if problem:
                return f"event {index} ({event.get('ev')}) field {name!r}: {problem}"
        if mine:
            absent = [src for src in shape.required.values() if event.get(src) is None]
            if absent and event.get(shape.time_field) is not None:
                return f"event {index} ({event.get('ev')}) has no {absent}"
    return None
