"""Raw lake tables built from the landing log: ``raw_trades``, ``raw_quotes``, ``raw_aggregates``.

Replay is the only way data moves downstream (DESIGN §3.3): a run launched by the stream sensor
carries the sealed-segment range it covers (tag ``crypto/segments``) and upserts just those
segments into the day; a run without the tag (a manual materialization, a backfill) rebuilds the
day from every segment. Both go through the same de-duplication by natural key, keeping the
earliest receipt, so any sequence of incremental runs ends in exactly the table a rebuild gives.

- trades: key (pair, exchange, trade id; a hash of the trade when the id is missing);
- quotes: key (pair, exchange, event time, seq), seq numbering identical (pair, exchange, t)
  quotes within their frame, so a re-sent frame collapses onto the first copy;
- aggregates (XA and XAS): every revision is kept, key (pair, channel, start, receive time);
  ``revision`` counts them from 0 in receive order and ``is_current`` marks the latest.

Prices and sizes are parsed from the wire text as ``Decimal`` (never through float) and stored as
``decimal128(38, 18)``.
"""

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa

from crypto_platform.assets.landing_log import landing_log
from crypto_platform.partitions import DAILY_PARTITIONS
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream.landing_log import DAY_MS, iter_lines, iter_manifest, segment_path
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


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def _trade_id(event: dict[str, Any]) -> str:
    if event.get("i") not in (None, ""):
        return str(event["i"])
    basis = f"{event.get('t')}|{event.get('p')}|{event.get('s')}|{event.get('c')}"
    return "h:" + hashlib.sha1(basis.encode()).hexdigest()[:20]


def _trade_rows(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for ev in events:
        yield {
            "pair": ev["pair"],
            "exchange": int(ev.get("x", 0)),
            "trade_id": _trade_id(ev),
            "price": Decimal(ev["p"]),
            "size": Decimal(ev["s"]),
            "conditions": json.dumps(ev.get("c") or []),
            "event_ms": int(ev["t"]),
            "polygon_received_ms": ev.get("r"),
            "source": "ws",
        }


def _quote_rows(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    seen: Counter[tuple[str, int, int]] = Counter()
    for ev in events:
        ident = (ev["pair"], int(ev.get("x", 0)), int(ev["t"]))
        seq = seen[ident]
        seen[ident] += 1
        yield {
            "pair": ident[0],
            "exchange": ident[1],
            "event_ms": ident[2],
            "seq": seq,
            "bid_price": _dec(ev.get("bp")),
            "bid_size": _dec(ev.get("bs")),
            "ask_price": _dec(ev.get("ap")),
            "ask_size": _dec(ev.get("as")),
            "polygon_received_ms": ev.get("r"),
        }


def _aggregate_rows(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for ev in events:
        yield {
            "channel": ev["ev"],
            "pair": ev["pair"],
            "start_ms": int(ev["s"]),
            "end_ms": int(ev["e"]),
            **{
                name: _dec(ev.get(f))
                for name, f in (
                    ("open", "o"),
                    ("high", "h"),
                    ("low", "l"),
                    ("close", "c"),
                    ("volume", "v"),
                    ("vwap", "vw"),
                    ("avg_trade_size", "z"),
                )
            },
        }


def _number_revisions(rows: list[dict[str, Any]]) -> None:
    """Revision 0.. in receive order per bar; the latest is current."""
    by_bar: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        by_bar.setdefault((row["pair"], row["channel"], row["start_ms"]), []).append(row)
    for revisions in by_bar.values():
        revisions.sort(key=lambda r: (r["received_ns"], r["segment"]))
        for i, row in enumerate(revisions):
            row["revision"] = i
            row["is_current"] = i == len(revisions) - 1


@dataclass(frozen=True)
class RawTable:
    """How one raw table is built from landed events."""

    name: str
    channels: frozenset[str]
    time_field: str  # the event time that decides the UTC day
    schema: pa.Schema
    key: tuple[str, ...]
    order: tuple[str, ...]
    rows: Callable[[list[dict[str, Any]]], Iterator[dict[str, Any]]]
    finish: Callable[[list[dict[str, Any]]], None] | None = None

    def rows_in_segments(self, root: Path, entries: Iterable[dict[str, Any]], day: str) -> Iterator[dict[str, Any]]:
        """Rows of ``day`` (by event time) from the given sealed segments."""
        lo = int(DAILY_PARTITIONS.time_window_for_partition_key(day).start.timestamp() * 1000)
        hi = lo + DAY_MS
        marks = [f'"{c}"'.encode() for c in self.channels]
        for entry in entries:
            if not self.channels & set((entry.get("days") or {}).get(day, {})):
                continue
            seq = int(entry["seq"])
            for recv_ns, session, frame in iter_lines(segment_path(root, entry)):
                if not any(m in frame for m in marks):
                    continue
                events = [
                    ev
                    for ev in json.loads(frame, parse_float=Decimal)
                    if ev.get("ev") in self.channels and lo <= int(ev.get(self.time_field, -1)) < hi
                ]
                for row in self.rows(events):
                    row.update(received_ns=recv_ns, session=session, segment=seq)
                    yield row

    def dedupe(self, rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """One row per key, the earliest receipt winning; sorted; returns (rows, duplicates dropped)."""
        best: dict[tuple[Any, ...], dict[str, Any]] = {}
        total = 0
        for row in rows:
            total += 1
            key = tuple(row[k] for k in self.key)
            kept = best.get(key)
            if kept is None or (row["received_ns"], row["segment"]) < (kept["received_ns"], kept["segment"]):
                best[key] = row
        out = sorted(best.values(), key=lambda r: tuple(r[k] for k in self.order))
        if self.finish is not None:
            self.finish(out)
        return out, total - len(out)

    def to_table(self, rows: list[dict[str, Any]]) -> pa.Table:
        try:
            return pa.Table.from_pylist(rows, schema=self.schema)
        except (pa.ArrowInvalid, ValueError) as exc:
            raise ValueError(f"a row does not fit {self.name}' decimal(38,18) columns: {exc}") from exc


TRADES = RawTable(
    "raw_trades",
    frozenset({"XT"}),
    "t",
    TRADES_SCHEMA,
    ("pair", "exchange", "trade_id"),
    ("event_ms", "pair", "exchange", "trade_id"),
    _trade_rows,
)
QUOTES = RawTable(
    "raw_quotes",
    frozenset({"XQ"}),
    "t",
    QUOTES_SCHEMA,
    ("pair", "exchange", "event_ms", "seq"),
    ("event_ms", "pair", "exchange", "seq"),
    _quote_rows,
)
AGGREGATES = RawTable(
    "raw_aggregates",
    frozenset({"XA", "XAS"}),
    "s",
    AGGREGATES_SCHEMA,
    ("pair", "channel", "start_ms", "received_ns"),
    ("start_ms", "channel", "pair", "received_ns"),
    _aggregate_rows,
    _number_revisions,
)


def _raw_asset(spec: RawTable, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.name,
        partitions_def=DAILY_PARTITIONS,
        deps=[landing_log],
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
        group_name="lake",
        kinds={"python", "parquet"},
        owners=["team:data-platform"],
        code_version="1",
        description=description,
    )
    def build(context: dg.AssetExecutionContext, stream: StreamResource, lake: LakeResource) -> dg.MaterializeResult:
        tag = context.run.tags.get(SEGMENTS_TAG)
        root = stream.landing_dir
        entries = list(iter_manifest(root))
        if tag:
            first, last = parse_segment_range(tag)
            entries = [e for e in entries if first <= int(e["seq"]) <= last]
        missing = [e["seq"] for e in entries if not segment_path(root, e).exists()]
        if missing:
            context.log.warning(f"{len(missing)} segments removed by retention were not read, e.g. {missing[:10]}")
            entries = [e for e in entries if e["seq"] not in missing]
        total_rows = total_new = total_dupes = 0
        for day in context.partition_keys:
            rows: list[dict[str, Any]] = list(spec.rows_in_segments(root, entries, day))
            new = len(rows)
            if tag:
                existing = lake.read_partition(spec.name, day)
                if existing is not None:
                    rows.extend(existing.to_pylist())
            merged, dupes = spec.dedupe(rows)
            lake.write_partition(spec.name, day, spec.to_table(merged))
            total_rows, total_new, total_dupes = total_rows + len(merged), total_new + new, total_dupes + dupes
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": total_rows,
                "mode": "incremental" if tag else "rebuild",
                "segments_read": len(entries),
                "rows_read": total_new,
                "duplicates_dropped": total_dupes,
            }
        )

    return build


raw_trades = _raw_asset(
    TRADES,
    "Every XT trade of the UTC day from the landing log: exact decimals, one row per (pair, exchange, trade_id). "
    "Sensor runs upsert their new segments; manual runs and backfills rebuild the day.",
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
