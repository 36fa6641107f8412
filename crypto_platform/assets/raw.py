"""``raw_trades``: every XT trade of a UTC day from the landing log, typed, exact, de-duplicated.

Replay is the only way data moves downstream (DESIGN §3.3): a run launched by the stream sensor
carries the sealed-segment range it covers (tag ``crypto/segments``) and upserts just those
segments into the day; a run without the tag (a manual materialization, a backfill) rebuilds the
day from every segment. Both apply the same de-duplication by natural key (pair, exchange, trade
id; a hash of the trade when the id is missing), keeping the earliest receipt, so any sequence of
incremental runs ends in exactly the table a rebuild gives.

Prices and sizes are parsed from the wire text as ``Decimal`` (never through float) and stored as
``decimal128(38, 18)``.
"""

import hashlib
import json
from collections.abc import Iterable, Iterator
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
        ("received_ns", pa.int64()),
        ("session", pa.int64()),
        ("segment", pa.int64()),
        ("source", pa.string()),
    ]
)
TRADE_KEY = ("pair", "exchange", "trade_id")


def _trade_id(event: dict[str, Any]) -> str:
    if event.get("i") not in (None, ""):
        return str(event["i"])
    basis = f"{event.get('t')}|{event.get('p')}|{event.get('s')}|{event.get('c')}"
    return "h:" + hashlib.sha1(basis.encode()).hexdigest()[:20]


def trades_in_segments(root: Path, entries: Iterable[dict[str, Any]], day: str) -> Iterator[dict[str, Any]]:
    """Trade rows of ``day`` (by exchange time) from the given sealed segments."""
    day_start = DAILY_PARTITIONS.time_window_for_partition_key(day).start.timestamp() * 1000
    lo, hi = int(day_start), int(day_start) + DAY_MS
    for entry in entries:
        if day not in (entry.get("days") or {}) or "XT" not in entry["days"][day]:
            continue
        seq = int(entry["seq"])
        for recv_ns, session, frame in iter_lines(segment_path(root, entry)):
            if b'"XT"' not in frame:
                continue
            for ev in json.loads(frame, parse_float=Decimal):
                if ev.get("ev") != "XT" or not lo <= int(ev.get("t", -1)) < hi:
                    continue
                yield {
                    "pair": ev["pair"],
                    "exchange": int(ev.get("x", 0)),
                    "trade_id": _trade_id(ev),
                    "price": Decimal(ev["p"]),
                    "size": Decimal(ev["s"]),
                    "conditions": json.dumps(ev.get("c") or []),
                    "event_ms": int(ev["t"]),
                    "polygon_received_ms": ev.get("r"),
                    "received_ns": recv_ns,
                    "session": session,
                    "segment": seq,
                    "source": "ws",
                }


def dedupe(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One row per natural key, the earliest receipt winning; sorted; returns (rows, duplicates dropped)."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    total = 0
    for row in rows:
        total += 1
        key = (row["pair"], row["exchange"], row["trade_id"])
        kept = best.get(key)
        if kept is None or (row["received_ns"], row["segment"]) < (kept["received_ns"], kept["segment"]):
            best[key] = row
    out = sorted(best.values(), key=lambda r: (r["event_ms"], r["pair"], r["exchange"], r["trade_id"]))
    return out, total - len(out)


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows, schema=TRADES_SCHEMA)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise ValueError(f"a trade does not fit raw_trades' decimal(38,18) columns: {exc}") from exc


@dg.asset(
    partitions_def=DAILY_PARTITIONS,
    deps=[landing_log],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
    group_name="lake",
    kinds={"python", "parquet"},
    owners=["team:data-platform"],
    code_version="1",
    description=(
        "Every XT trade of the UTC day from the landing log: exact decimals, one row per (pair, exchange, "
        "trade_id). Sensor runs upsert their new segments; manual runs and backfills rebuild the day."
    ),
)
def raw_trades(context: dg.AssetExecutionContext, stream: StreamResource, lake: LakeResource) -> dg.MaterializeResult:
    tag = context.run.tags.get(SEGMENTS_TAG)
    root = stream.landing_dir
    entries = list(iter_manifest(root))
    if tag:
        first, last = parse_segment_range(tag)
        entries = [e for e in entries if first <= int(e["seq"]) <= last]
    missing = [e["seq"] for e in entries if not segment_path(root, e).exists()]
    if missing:
        context.log.warning(
            f"segments removed by retention, not read: {missing[:10]}{'...' if len(missing) > 10 else ''}"
        )
        entries = [e for e in entries if e["seq"] not in missing]
    total_rows = total_new = total_dupes = 0
    for day in context.partition_keys:
        rows: list[dict[str, Any]] = list(trades_in_segments(root, entries, day))
        new = len(rows)
        if tag:
            existing = lake.read_partition("raw_trades", day)
            if existing is not None:
                rows.extend(existing.to_pylist())
        merged, dupes = dedupe(rows)
        lake.write_partition("raw_trades", day, to_table(merged))
        total_rows += len(merged)
        total_new += new
        total_dupes += dupes
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": total_rows,
            "mode": "incremental" if tag else "rebuild",
            "segments_read": len(entries),
            "rows_read": total_new,
            "duplicates_dropped": total_dupes,
        }
    )
