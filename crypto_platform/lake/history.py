"""Days the stream never saw, from Polygon's history: Flat Files first, REST ``/v3/trades`` otherwise.

What a reader here returns is ready for the lake: ``raw_trades`` rows (``source`` ``flat_file`` or
``rest_history``, exact ``decimal128(38, 18)`` prices and sizes, ms event time, no landing lineage)
or minute bars (Polygon's ``minute_aggs`` or REST minute bars). Nothing here writes a lake table;
the assets do, after a reader has returned the whole day, so a failure never leaves half a day.

- **Fast.** A day's trades file of the whole market is about 4M rows. It is parsed by Arrow's
  multi-threaded CSV reader with the column types declared, so prices and sizes go from the text
  straight to decimals (never through a float), and the rest are vectorised Arrow kernels.
- **Resumable.** Work in progress lives under ``<data dir>/history/<day>/``: the Flat Files download
  as a ``.part`` continued by byte range; REST pages one Parquet file each, with the next page's URL
  in ``state.json``. A failed run's successor continues from the last completed file or page.
  :func:`finish_day` removes the folder once the day is in the lake.
- **Damage is named.** A truncated or corrupt gzip, or a line that does not parse, fails with the
  file and line (found by a slower second pass, only on failure); the downloaded copy is removed so
  the next attempt fetches it again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq
from isal import igzip_threaded, isal_zlib

from crypto_platform.days import MINUTE_MS, day_bounds_ms
from crypto_platform.lake.bars import DECIMAL
from crypto_platform.lake.gap_repair import REST_BARS_SCHEMA, rest_minute_bars
from crypto_platform.lake.raw import TRADES
from crypto_platform.lake.schemas import TRADES_SCHEMA
from crypto_platform.polygon.flat_files import (
    MINUTE_AGGS,
    FlatFilesClient,
    Progress,
    object_key,
)
from crypto_platform.polygon.flat_files import (
    TRADES as TRADES_DATASET,
)
from crypto_platform.polygon.rest_client import PolygonRest

FLAT_FILE_SOURCE = "flat_file"
REST_HISTORY_SOURCE = "rest_history"
MINUTE_AGGS_SOURCE = "minute_aggs"
REST_BARS_SOURCE = "rest_minute_bars"
_NS_PER_MS = 1_000_000

TRADES_COLUMNS: dict[str, pa.DataType] = {
    "ticker": pa.string(),
    "conditions": pa.string(),
    "exchange": pa.int32(),
    "id": pa.string(),
    "participant_timestamp": pa.int64(),
    "price": DECIMAL,
    "size": DECIMAL,
}
# The reader's types for a trades file: tickers and conditions are a few distinct texts, read as
# dictionaries so that each distinct value is converted once, not once per row.
_TEXT_CODES = pa.dictionary(pa.int32(), pa.string())
TRADES_CSV_COLUMNS: dict[str, pa.DataType] = {**TRADES_COLUMNS, "ticker": _TEXT_CODES, "conditions": _TEXT_CODES}
AGGS_COLUMNS: dict[str, pa.DataType] = {
    "ticker": pa.string(),
    "volume": DECIMAL,
    "open": DECIMAL,
    "close": DECIMAL,
    "high": DECIMAL,
    "low": DECIMAL,
    "window_start": pa.int64(),
    "transactions": pa.int64(),
}

Log = Callable[[str], None]


class HistoryError(RuntimeError):
    """History could not be read; the message says why and what to do."""


class DamagedFileError(HistoryError):
    """A Flat File is truncated, corrupt or has a line that does not parse (named in the message)."""


def _no_log(message: str) -> None:
    pass


# -- parsing ----------------------------------------------------------------------------------------


# What reading a damaged gzip CSV raises: Arrow's parse errors, and the inflater's (truncated, corrupt).
_UNREADABLE: tuple[type[Exception], ...] = (pa.ArrowInvalid, OSError, EOFError, cast(type[Exception], isal_zlib.error))


def _read_csv(path: Path, name: str, columns: dict[str, pa.DataType]) -> pa.Table:
    """The file's columns, typed. A gzip file is inflated by ISA-L on a thread of its own.

    Arrow would inflate with zlib on the thread that feeds its parser, about 0.8 s of a core for a
    whole market's day (250 MB of text), during which the parser's threads wait; ISA-L does it in
    about half that, beside the parser (it releases the GIL).
    """
    convert = pv.ConvertOptions(column_types=columns, include_columns=list(columns), strings_can_be_null=False)
    read = pv.ReadOptions(block_size=16 << 20)
    try:
        if path.suffix == ".gz":
            with igzip_threaded.open(path, "rb") as stream:
                table = pv.read_csv(stream, read_options=read, convert_options=convert)
        else:
            table = pv.read_csv(path, read_options=read, convert_options=convert)
    except _UNREADABLE as exc:
        line, why = locate_damage(path, columns)
        raise DamagedFileError(
            f"{name}: line {line}: {why} ({exc}); the file is not used and nothing was written — the next run "
            "fetches it again"
        ) from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DamagedFileError(f"{name}: line 1: the header lacks {missing}")
    return table


def locate_damage(path: Path, columns: dict[str, pa.DataType]) -> tuple[int, str]:
    """The 1-based line where a gzip CSV stops being readable, and why (the slow, exact second pass)."""
    decoder = zlib.decompressobj(wbits=31)
    line, buffer, header = 1, b"", None
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4096)  # small steps, so a gzip error is placed near its line
            try:
                data = decoder.decompress(chunk) if chunk else decoder.flush()
            except zlib.error as exc:
                return line + buffer.count(b"\n"), f"the gzip data is corrupt ({exc})"
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                if header is None:
                    header = raw.decode("utf-8", "replace").strip().split(",")
                else:
                    problem = _bad_row(raw, header, columns)
                    if problem:
                        return line, problem
                line += 1
            if not chunk:
                break
            if decoder.eof and decoder.unused_data:
                # Another gzip member follows (concatenated members are valid gzip).
                rest = decoder.unused_data
                decoder = zlib.decompressobj(wbits=31)
                buffer += decoder.decompress(rest)
    if not decoder.eof:
        return line, "the gzip stream is truncated (the file ends before its end marker)"
    if buffer.strip():
        problem = _bad_row(buffer, header or [], columns)
        if problem:
            return line, problem
    return line, "the file does not parse"


def _bad_row(raw: bytes, header: list[str], columns: dict[str, pa.DataType]) -> str | None:
    import csv

    try:
        (fields,) = list(csv.reader([raw.decode("utf-8")]))
    except (UnicodeDecodeError, ValueError, csv.Error) as exc:
        return f"not a CSV line ({exc})"
    if len(fields) != len(header):
        return f"{len(fields)} fields where the header has {len(header)}"
    for name, value in zip(header, fields, strict=True):
        kind = columns.get(name)
        if kind is None:
            continue
        try:
            if pa.types.is_decimal(kind):
                if not Decimal(value).is_finite():
                    raise InvalidOperation
            elif pa.types.is_integer(kind):
                int(value)
        except (InvalidOperation, ValueError):
            return f"{name} {value!r} is not a {kind}"
    return None


def _pairs_filter(table: pa.Table, pairs: Iterable[str] | None) -> pa.Table:
    chosen = None if pairs is None else set(pairs)
    if chosen is None or "*" in chosen:
        return table
    wanted = sorted(chosen)
    return table.filter(pc.is_in(table["pair"], value_set=pa.array(wanted, pa.string())))


def _per_distinct(values: pa.ChunkedArray, fn: Callable[[str], str]) -> pa.Array:
    """``fn`` applied to each distinct value once (a day has a few tickers and conditions, millions of rows).

    The distinct values are few, so plain Python does them (some Arrow string kernels cost seconds
    on their first call in a process, and every Dagster run is a fresh process).
    """
    encoded = pc.dictionary_encode(values.combine_chunks())
    mapped = pa.array([None if v is None else fn(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(mapped, encoded.indices)


def _pair_of(ticker: pa.ChunkedArray) -> pa.Array:
    # "X:BTC-USD" -> "BTC-USD"
    return _per_distinct(ticker, lambda t: t.removeprefix("X:"))


_COMMA = re.compile(r"\s*,\s*")


def _condition_json(condition: str) -> str:
    """A file's conditions (``2``, ``1,2``, ``"1, 2"``, ``[1,2]``, empty) as the stream's JSON text (``[1, 2]``)."""
    return "[" + _COMMA.sub(", ", condition.strip("[]{} ")) + "]"


def read_trades_csv(
    path: Path, name: str, day: date, pairs: Iterable[str] | None = None, received_ns: int | None = None
) -> tuple[pa.Table, dict[str, int]]:
    """A Flat Files trades file as ``raw_trades`` rows of ``day`` (``source='flat_file'``), in the table's order.

    Returns the table and counts (rows in the file, rows kept, rows outside the day or the pairs,
    copies dropped). A day of the whole market is about 4M rows, so nothing here runs per row in
    Python (see :func:`_trades_order`). Copies of one trade in the file (same key and event time:
    the platform's rule that a trade's copies share its time, see :mod:`crypto_platform.lake.raw`)
    collapse onto the first, as the merge would keep it.
    """
    raw = _read_csv(path, name, TRADES_CSV_COLUMNS).unify_dictionaries()
    # The sort's columns in one piece each (small integers); texts and decimals are taken from their chunks.
    for column in ("ticker", "conditions", "exchange", "participant_timestamp"):
        raw = raw.set_column(raw.schema.get_field_index(column), column, raw[column].combine_chunks())
    rows_in_file = raw.num_rows
    ticker = _dictionary(raw["ticker"])
    conditions = _dictionary(raw["conditions"])
    pair_names = [t.removeprefix("X:") for t in ticker.dictionary.to_pylist()]
    stamps = raw["participant_timestamp"]
    event_ms = pc.divide(stamps.chunk(0), _NS_PER_MS) if rows_in_file else pa.array([], pa.int64())
    lo, hi = day_bounds_ms(day)
    keep = _rows_kept(event_ms, ticker, pair_names, lo, hi, pairs)
    rows, copies = _trades_order(event_ms, ticker, pair_names, raw["exchange"], raw["id"], lo, keep)
    n = len(rows)
    taken = pa.array(rows, pa.int64())
    stamp = time.time_ns() if received_ns is None else received_ns
    condition_text = pa.array([_condition_json(c) for c in conditions.dictionary.to_pylist()], pa.string())
    table = pa.table(
        {
            "pair": pc.take(pa.array(pair_names, pa.string()), ticker.indices.take(taken)),
            "exchange": raw["exchange"].take(taken),
            "trade_id": raw["id"].take(taken),
            "price": raw["price"].take(taken),
            "size": raw["size"].take(taken),
            "conditions": pc.take(condition_text, conditions.indices.take(taken)),
            "event_ms": event_ms.take(taken),
            "polygon_received_ms": pa.nulls(n, pa.int64()),
            "received_ns": pa.repeat(pa.scalar(stamp, pa.int64()), n),
            "session": pa.nulls(n, pa.int64()),
            "segment": pa.nulls(n, pa.int64()),
            "source": pa.repeat(pa.scalar(FLAT_FILE_SOURCE, pa.string()), n),
        },
        schema=TRADES_SCHEMA,
    )
    skipped = rows_in_file - n - copies
    return table, {"rows_in_file": rows_in_file, "rows": n, "rows_skipped": skipped, "copies_dropped": copies}


def _dictionary(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """The one chunk of a combined dictionary column (an empty one for an empty file)."""
    if column.num_chunks:
        return column.chunk(0)
    return pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), pa.array([], pa.string()))


def _rows_kept(
    event_ms: pa.Array, ticker: pa.DictionaryArray, pair_names: list[str], lo: int, hi: int, pairs: Iterable[str] | None
) -> np.ndarray | None:
    """A mask of the rows inside the day and the pairs; None when that is every row (the usual case)."""
    keep = None
    if len(event_ms):
        low, high = (v.as_py() for v in pc.min_max(event_ms).values())
        if low < lo or high >= hi:
            times = event_ms.to_numpy(zero_copy_only=False)
            keep = (times >= lo) & (times < hi)
    chosen = None if pairs is None else set(pairs)
    if chosen is not None and "*" not in chosen:
        wanted = np.array([p in chosen for p in pair_names] + [False], np.bool_)
        codes = ticker.indices.to_numpy(zero_copy_only=False)
        by_pair = wanted[codes]
        keep = by_pair if keep is None else keep & by_pair
    return keep


# Bits of the packed sort key: milliseconds into the day (a day is < 2**27 ms), pair rank, exchange.
_PAIR_BITS, _EXCHANGE_BITS = 20, 16


def _trades_order(
    event_ms: pa.Array,
    ticker: pa.DictionaryArray,
    pair_names: list[str],
    exchange: pa.ChunkedArray,
    trade_id: pa.ChunkedArray,
    lo: int,
    keep: np.ndarray | None,
) -> tuple[np.ndarray, int]:
    """Row numbers of the kept rows in the table's order (event_ms, pair, exchange, trade_id), and copies dropped.

    Sorting four columns, one of them text, is what made a day slow (seconds for 4M rows). The
    first three are small integers here (ms into the day, the pair's rank among the day's few
    pairs, the exchange id), so they are packed into one int64 and sorted by numpy; only rows that
    tie on all three (same ms, pair and exchange) are then ordered by trade id, among themselves.
    Values that do not fit the packing (a negative or huge exchange id, a null) take Arrow's
    general sort instead, with the same result.
    """
    every = keep is None
    rows = np.flatnonzero(keep) if keep is not None else None
    if not len(event_ms) or (rows is not None and not len(rows)):
        return np.zeros(0, np.int64), 0
    rank = {p: i for i, p in enumerate(sorted(set(pair_names)))}
    ranks = np.array([rank[p] for p in pair_names] or [0], np.int64)
    exchanges = exchange.chunk(0) if exchange.num_chunks == 1 else exchange.combine_chunks()
    fits = (
        event_ms.null_count == 0
        and exchanges.null_count == 0
        and ticker.null_count == 0
        and len(pair_names) < 2**_PAIR_BITS
        and pc.min(exchanges).as_py() >= 0
        and pc.max(exchanges).as_py() < 2**_EXCHANGE_BITS
    )
    if not fits:
        sub = pa.table(
            {
                "t": event_ms,
                "p": pc.take(pa.array(pair_names, pa.string()), ticker.indices),
                "x": exchanges,
                "i": trade_id,
            }
        )
        if rows is not None:
            sub = sub.take(pa.array(rows))
        order = pc.sort_indices(sub, [(c, "ascending") for c in ("t", "p", "x", "i")]).to_numpy()
        rows = order if rows is None else rows[order]
        ordered = sub.take(pa.array(order))
        copy = np.zeros(len(rows), np.bool_)
        copy[1:] = True
        for c in ("t", "p", "x", "i"):  # nulls are never copies of each other here (kept, as Arrow's sort leaves them)
            copy[1:] &= pc.fill_null(pc.equal(ordered[c][1:], ordered[c][:-1]), False).to_numpy(zero_copy_only=False)
        return (rows[~copy], int(copy.sum())) if copy.any() else (rows, 0)
    # The packed key, built in place: a whole market's day is 4M rows, each temporary 32 MB.
    times = event_ms.to_numpy(zero_copy_only=False)
    codes = ranks[ticker.indices.to_numpy(zero_copy_only=False)]
    exchange_ids = exchanges.to_numpy()
    if rows is not None:
        times, codes, exchange_ids = times[rows], codes[rows], exchange_ids[rows]
    key = times - lo
    key <<= _PAIR_BITS + _EXCHANGE_BITS
    codes <<= _EXCHANGE_BITS
    key |= codes
    key |= exchange_ids
    order = np.argsort(key, kind="stable")
    rows = order if every else rows[order]  # type: ignore[index]
    key = key[order]
    tie = key[1:] == key[:-1]
    if not tie.any():
        return rows, 0
    tied = np.zeros(len(rows), np.bool_)
    tied[1:] |= tie
    tied[:-1] |= tie
    at = np.flatnonzero(tied)
    group = pa.table({"k": key[at], "i": trade_id.take(pa.array(rows[at]))})
    within = pc.sort_indices(group, [("k", "ascending"), ("i", "ascending")]).to_numpy()  # stable: file order last
    rows[at] = rows[at][within]
    # Copies (same ms, pair, exchange and id) now sit next to each other; the first in the file stays.
    ids_in_order = group["i"].take(pa.array(within))
    same_id = pc.equal(ids_in_order[1:], ids_in_order[:-1]).to_numpy(zero_copy_only=False)
    same_key = key[at]
    copy = np.zeros(len(rows), np.bool_)
    copy[at[1:]] = (same_key[1:] == same_key[:-1]) & (np.diff(at) == 1) & same_id
    return (rows[~copy], int(copy.sum())) if copy.any() else (rows, 0)


def read_aggs_csv(path: Path, name: str, pairs: Iterable[str] | None = None) -> pa.Table:
    """A Flat Files minute (or day) aggregates file as bars: pair, minute_ms, OHLCV, vwap (none), trade count."""
    raw = _read_csv(path, name, AGGS_COLUMNS)
    table = pa.table(
        {
            "pair": _pair_of(raw["ticker"]),
            "minute_ms": pc.divide(raw["window_start"], _NS_PER_MS),
            "open": raw["open"],
            "high": raw["high"],
            "low": raw["low"],
            "close": raw["close"],
            "volume": raw["volume"],
            "vwap": pa.nulls(raw.num_rows, DECIMAL),  # minute_aggs carry no VWAP
            "trade_count": raw["transactions"],
        },
        schema=REST_BARS_SCHEMA,
    )
    table = _pairs_filter(table, pairs)
    return table.take(pc.sort_indices(table, [("pair", "ascending"), ("minute_ms", "ascending")]))


# -- resumable work per day -------------------------------------------------------------------------


@dataclass
class DayWork:
    """The folder holding one day's download in progress, and its small state file."""

    root: Path
    day: date
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, history_dir: Path, day: date) -> DayWork:
        work = cls(Path(history_dir) / day.isoformat(), day)
        work.root.mkdir(parents=True, exist_ok=True)
        try:
            work.state = json.loads((work.root / "state.json").read_text())
        except (OSError, ValueError):
            work.state = {}
        return work

    def save(self) -> None:
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, sort_keys=True))
        os.replace(tmp, self.root / "state.json")


def finish_day(history_dir: Path, day: date) -> None:
    """Forget a day's work in progress (call once the day is in the lake)."""
    shutil.rmtree(Path(history_dir) / day.isoformat(), ignore_errors=True)


def _progress_logger(log: Log, every_bytes: int = 32 << 20) -> Callable[[Progress], None]:
    last = [0]

    def report(p: Progress) -> None:
        if p.done - last[0] >= every_bytes or p.done == p.total:
            last[0] = p.done
            rate = p.fetched / p.seconds / 1e6 if p.seconds > 0 else 0.0
            log(f"{p.key}: {p.done:,} of {p.total:,} bytes ({p.done / max(1, p.total):.0%}), {rate:.1f} MB/s")

    return report


def fetch_flat_file(
    client: FlatFilesClient, dataset: str, work: DayWork, log: Log = _no_log
) -> tuple[Path, str] | None:
    """The day's file of ``dataset`` on local disk (resuming a partial download); None if not published."""
    key = object_key(dataset, work.day)
    target = work.root / f"{dataset}.csv.gz"
    if target.exists():
        log(f"{key}: already downloaded by an earlier attempt ({target.stat().st_size:,} bytes)")
        return target, key
    info = client.head(key)
    if info is None:
        return None
    part = target.with_name(target.name + ".part")
    if part.exists():
        log(f"{key}: resuming the download at byte {part.stat().st_size:,} of {info.size:,}")
    client.download(info, target, _progress_logger(log))
    return target, key


def flat_file_trades(
    client: FlatFilesClient, work: DayWork, pairs: Iterable[str] | None, log: Log = _no_log
) -> tuple[pa.Table, dict[str, Any]] | None:
    """The day's trades from Flat Files (None: the day's file is not published)."""
    started = time.monotonic()
    found = fetch_flat_file(client, TRADES_DATASET, work, log)
    if found is None:
        return None
    path, key = found
    try:
        table, counts = read_trades_csv(path, key, work.day, pairs)
    except DamagedFileError:
        path.unlink(missing_ok=True)
        raise
    seconds = time.monotonic() - started
    log(f"{key}: {counts['rows']:,} trades of the pairs ({counts['rows_in_file']:,} in the file), {seconds:.1f} s")
    return table, {**counts, "source": FLAT_FILE_SOURCE, "file": key, "bytes": path.stat().st_size}


def flat_file_minute_bars(
    client: FlatFilesClient, work: DayWork, pairs: Iterable[str] | None, log: Log = _no_log
) -> pa.Table | None:
    """Polygon's minute bars of the day from ``minute_aggs_v1`` (None: not published)."""
    found = fetch_flat_file(client, MINUTE_AGGS, work, log)
    if found is None:
        return None
    path, key = found
    try:
        return read_aggs_csv(path, key, pairs)
    except DamagedFileError:
        path.unlink(missing_ok=True)
        raise


def _rest_page_table(pair: str, results: list[dict[str, Any]], received_ns: int) -> pa.Table:
    rows = []
    for tr in results:
        stamp = tr.get("participant_timestamp") or tr.get("sip_timestamp")
        if stamp is None or tr.get("price") is None or tr.get("size") is None:
            continue  # not a usable trade; Polygon always sends these three
        conditions = tr.get("conditions") or []
        rows.append(
            {
                "pair": pair,
                "exchange": int(tr.get("exchange") or 0),
                "trade_id": str(tr.get("id")),
                "price": Decimal(tr["price"]),
                "size": Decimal(tr["size"]),
                "conditions": "[" + ", ".join(str(c) for c in conditions) + "]",
                "event_ms": int(stamp) // _NS_PER_MS,
                "polygon_received_ms": None,
                "received_ns": received_ns,
                "session": None,
                "segment": None,
                "source": REST_HISTORY_SOURCE,
            }
        )
    return pa.Table.from_pylist(rows, schema=TRADES_SCHEMA)


def rest_trades(
    rest: PolygonRest, work: DayWork, pairs: Iterable[str], log: Log = _no_log, page_limit: int = 50_000
) -> tuple[pa.Table, dict[str, Any]]:
    """The day's trades of ``pairs`` from ``/v3/trades``, page by page, resuming after the last page kept.

    Each page is kept as ``rest-<pair>-<page>.parquet``; ``state.json`` holds, per pair, the pages
    done and the URL of the next one (``done`` once the last page is in).
    """
    lo, hi = day_bounds_ms(work.day)
    started = time.monotonic()
    fetched_pages = resumed_pages = rows_fetched = 0
    received_ns = time.time_ns()
    pair_list = sorted(set(pairs) - {"*"})
    for pair in pair_list:
        st = work.state.setdefault("rest", {}).setdefault(pair, {"pages": 0, "next_url": None, "done": False})
        resumed_pages += int(st["pages"])
        if st["done"]:
            continue
        if st["pages"]:
            log(f"{work.day} {pair}: resuming /v3/trades after page {st['pages']}")
        for page in rest.trade_pages(
            pair, lo * _NS_PER_MS, hi * _NS_PER_MS, resume_url=st["next_url"], limit=page_limit
        ):
            table = _rest_page_table(pair, page.results, received_ns)
            path = work.root / f"rest-{pair}-{int(st['pages']):06d}.parquet"
            tmp = path.with_suffix(".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, path)
            st["pages"] += 1
            st["next_url"] = page.next_url
            st["done"] = page.next_url is None
            work.save()
            fetched_pages += 1
            rows_fetched += table.num_rows
            seconds = time.monotonic() - started
            log(
                f"{work.day} {pair}: page {st['pages']} ({table.num_rows:,} trades; {rows_fetched:,} this run, "
                f"{rows_fetched / seconds if seconds else 0:,.0f} trades/s)"
            )
    parts = sorted(work.root.glob("rest-*.parquet"))
    tables = [pq.read_table(p) for p in parts]
    table = pa.concat_tables(tables).cast(TRADES_SCHEMA) if tables else TRADES_SCHEMA.empty_table()
    # Copies of one trade across pages collapse onto the first (the key is the table's).
    table = _dedupe(table)
    figures = {
        "source": REST_HISTORY_SOURCE,
        "rows": table.num_rows,
        "requests": fetched_pages,
        "pages_resumed": resumed_pages,
        "seconds": round(time.monotonic() - started, 3),
    }
    return table, figures


def _dedupe(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    key = list(TRADES.key)
    indexed = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    first = indexed.group_by(key, use_threads=False).aggregate([("_row", "min")])["_row_min"]
    kept = table.take(pc.sort_indices(first))
    return kept.take(pc.sort_indices(kept, [(k, "ascending") for k in TRADES.order]))


def rest_minute_bars_day(rest: PolygonRest, day: date, pairs: Iterable[str]) -> pa.Table:
    """Polygon's minute bars of every minute of ``day`` from REST ``/v2/aggs``."""
    lo, hi = day_bounds_ms(day)
    return rest_minute_bars(rest, sorted(set(pairs) - {"*"}), range(lo, hi, MINUTE_MS))


def merge_history(fetched: pa.Table, streamed: pa.Table) -> tuple[pa.Table, int]:
    """A day's history rows with the day's stream rows: one row per key, the stream's winning; and the copies dropped.

    A day the stream never saw (the usual history day, millions of rows) needs no merge: the
    history reader already gives one row per key and event time, in the table's order. Otherwise
    the raw tables' merge decides (earliest receipt wins: the stream's row, as a history row's
    receipt is its download time).
    """
    if not streamed.num_rows:
        return fetched, 0
    from crypto_platform.lake.decode import merge

    fetched = fetched.append_column("idx", pa.array(np.arange(fetched.num_rows, dtype=np.int64)))
    return merge(fetched, streamed.select(TRADES_SCHEMA.names), TRADES_SCHEMA, TRADES.key, TRADES.order)


# -- the assets' entry points -------------------------------------------------------------------------

HISTORY_SOURCES = (FLAT_FILE_SOURCE, REST_HISTORY_SOURCE)


@dataclass(frozen=True)
class HistoryAccess:
    """What a run needs to read history: where work in progress goes, and the clients (from the settings)."""

    history_dir: Path
    flat_files: FlatFilesClient | None  # None: REST only
    rest: PolygonRest


def history_access(settings: Any, rest: PolygonRest) -> HistoryAccess:
    """Flat Files when the settings choose them (S3 keys set, or the simulator), always REST beside."""
    flat = None
    if settings.history_from_flat_files:
        flat = FlatFilesClient(
            settings.s3_endpoint, settings.s3_bucket, settings.s3_access_key_id, settings.s3_secret_access_key
        )
    return HistoryAccess(Path(settings.data_dir) / "history", flat, rest)


def history_trades(
    access: HistoryAccess, day: date, pairs: Iterable[str], log: Log = _no_log
) -> tuple[pa.Table, dict[str, Any]] | None:
    """A past day's trades: the day's Flat File, or REST ``/v3/trades`` per pair when there is none.

    None when neither can give the day (no Flat File and ``*`` pairs, which REST cannot page).
    """
    work = DayWork.open(access.history_dir, day)
    pair_set = set(pairs)
    if access.flat_files is not None:
        got = flat_file_trades(access.flat_files, work, None if "*" in pair_set else pair_set, log)
        if got is not None:
            return got
        log(f"{day}: no Flat File of trades is published for the day: reading REST /v3/trades")
    if "*" in pair_set:
        log(f"{day}: REST history needs the pairs named (CRYPTO_PAIRS is *): no history read")
        return None
    return rest_trades(access.rest, work, pair_set, log)


def history_minute_bars(
    access: HistoryAccess, day: date, pairs: Iterable[str], log: Log = _no_log
) -> tuple[pa.Table, str] | None:
    """Polygon's minute bars of a past day (``minute_aggs`` file, else REST) and the source to record."""
    pair_set = set(pairs)
    if access.flat_files is not None:
        bars = flat_file_minute_bars(access.flat_files, DayWork.open(access.history_dir, day), pair_set, log)
        if bars is not None:
            return bars, MINUTE_AGGS_SOURCE
    if "*" in pair_set:
        return None
    return rest_minute_bars_day(access.rest, day, pair_set), REST_BARS_SOURCE
