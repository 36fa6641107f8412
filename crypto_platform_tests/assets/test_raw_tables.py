"""raw_quotes and raw_aggregates from a real landing log: exact values, de-duplication, bar revisions,
and incremental runs (one per segment) ending in exactly what a rebuild gives; and the de-duplication
(:func:`crypto_platform.lake.decode.merge`) against an exact Python statement of its rule."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pyarrow as pa
import pytest

from crypto_platform.assets.raw import (
    TRADES,
    TRADES_SCHEMA,
    raw_aggregates,
    raw_book,
    raw_quotes,
    raw_trades,
    segments_to_read,
)
from crypto_platform.lake.decode import LandingDecodeError, SegmentFile, can_merge_into, decode, merge
from crypto_platform.lake.raw import LANDING_APP_ID
from crypto_platform.resources.lake import LakeResource
from crypto_platform.stream_batches import SEGMENTS_TAG
from crypto_platform_tests.test_stream_sensor import DAY1_MS, DAY2_MS, Landing, trades_frame

DAY = "2025-11-24"
MINUTE = DAY1_MS - DAY1_MS % 60_000
IDX = pa.field("idx", pa.int64())  # decode's extra column: the event's index in its frame


def quotes_frame(t: int, n: int) -> bytes:
    # Two quotes share (pair, exchange, t) in every frame: seq tells them apart.
    events = [
        {
            "ev": "XQ",
            "pair": "ETH-USD",
            "bp": f"3100.1{i}",
            "bs": "0.000000001",
            "ap": f"3100.2{i}",
            "as": "12.5",
            "t": t + i // 2,
            "x": 1,
            "r": t + 9,
        }
        for i in range(n)
    ]
    return (
        orjson.dumps(events)
        .replace(b'"bp":"', b'"bp":')
        .replace(b'","bs":"', b',"bs":')
        .replace(b'","ap":"', b',"ap":')
        .replace(b'","as":"', b',"as":')
        .replace(b'","t"', b',"t"')
    )


def bar(channel: str, start: int, close: str, volume: str) -> bytes:
    width = 60_000 if channel == "XA" else 1_000
    text = (
        f'[{{"ev":"{channel}","pair":"BTC-USD","v":{volume},"vw":97000.123456,"z":0.01,"o":97000.1,'
        f'"c":{close},"h":97100.5,"l":96999.99,"s":{start},"e":{start + width}}}]'
    )
    return text.encode()


def segments(landing: Landing) -> int:
    landing.segment(quotes_frame(DAY1_MS, 6), bar("XAS", MINUTE, "97001", "0.5"))
    landing.segment(quotes_frame(DAY1_MS, 6))  # the same frame re-sent
    landing.segment(bar("XA", MINUTE, "97010.5", "12.00000001"), quotes_frame(DAY1_MS + 5_000, 4))
    return landing.segment(bar("XA", MINUTE, "97011.25", "12.50000001"))  # a corrected revision


def materialize(asset: dg.AssetsDefinition, landing: Landing, lake: LakeResource, tags: dict[str, str]) -> None:
    resources = {"stream": landing.resource(), "lake": lake}
    assert dg.materialize([asset], partition_key=DAY, tags=tags, resources=resources).success


def test_incremental_runs_equal_a_rebuild_for_quotes_and_aggregates(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    last = segments(landing)
    inc, full = LakeResource(root=str(tmp_path / "inc")), LakeResource(root=str(tmp_path / "full"))
    for asset in (raw_quotes, raw_aggregates):
        for seq in range(1, last + 1):
            materialize(asset, landing, inc, {SEGMENTS_TAG: f"{seq}-{seq}"})
        materialize(asset, landing, full, {})
        name = asset.key.to_user_string()
        assert inc.read_partition(name, DAY).equals(full.read_partition(name, DAY)), name


def rebuilt_rows(tmp_path: Path, asset: dg.AssetsDefinition) -> list[dict]:
    """Land the test segments, rebuild the day of ``asset`` and read its rows back."""
    landing = Landing(tmp_path)
    segments(landing)
    lake = LakeResource(root=str(tmp_path / "lake"))
    materialize(asset, landing, lake, {})
    table = lake.read_partition(asset.key.to_user_string(), DAY)
    assert table is not None
    return table.to_pylist()


def test_quotes_are_exact_and_a_resent_frame_collapses(tmp_path: Path) -> None:
    rows = rebuilt_rows(tmp_path, raw_quotes)
    assert len(rows) == 10  # 6 + 4; the re-sent frame of 6 added nothing
    assert [(r["event_ms"] - DAY1_MS, r["seq"]) for r in rows[:4]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert rows[0]["bid_price"] == Decimal("3100.10") and rows[0]["bid_size"] == Decimal("0.000000001")
    assert all(r["segment"] in (1, 3) for r in rows)  # the first copy wins


def test_every_bar_revision_is_kept_and_the_latest_is_current(tmp_path: Path) -> None:
    rows = rebuilt_rows(tmp_path, raw_aggregates)
    xa = [r for r in rows if r["channel"] == "XA"]
    assert [(r["revision"], r["is_current"], r["close"]) for r in xa] == [
        (0, False, Decimal("97010.5")),
        (1, True, Decimal("97011.25")),
    ]
    assert xa[1]["volume"] == Decimal("12.50000001") and xa[1]["end_ms"] - xa[1]["start_ms"] == 60_000
    (xas,) = [r for r in rows if r["channel"] == "XAS"]
    assert xas["revision"] == 0 and xas["is_current"] and xas["close"] == Decimal("97001")


def book_frame(t: int) -> bytes:
    # Two snapshots in one millisecond (seq 0 and 1); sizes down to 1e-18, a BTC price near 100k.
    return (
        f'[{{"ev":"XL2","pair":"BTC-USD","t":{t},"r":{t + 7},"x":1,'
        f'"b":[[99999.98,0.000000000000000001],[99999.5,2.25]],"a":[[100000.01,1.5]]}},'
        f'{{"ev":"XL2","pair":"BTC-USD","t":{t},"r":{t + 8},"x":1,"b":[[99999.97,3]],"a":[]}}]'
    ).encode()


def test_book_snapshots_keep_exact_levels_and_a_resent_frame_collapses(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    landing.segment(book_frame(DAY1_MS), trades_frame(0, 3, DAY1_MS))
    landing.segment(book_frame(DAY1_MS))  # re-sent
    last = landing.segment(book_frame(DAY1_MS + 1000))
    inc, full = LakeResource(root=str(tmp_path / "inc")), LakeResource(root=str(tmp_path / "full"))
    for seq in range(1, last + 1):
        materialize(raw_book, landing, inc, {SEGMENTS_TAG: f"{seq}-{seq}"})
    materialize(raw_book, landing, full, {})
    rows = full.read_partition("raw_book", DAY).to_pylist()
    assert inc.read_partition("raw_book", DAY).equals(full.read_partition("raw_book", DAY))
    assert [(r["event_ms"] - DAY1_MS, r["seq"], r["segment"]) for r in rows] == [
        (0, 0, 1),
        (0, 1, 1),
        (1000, 0, 3),
        (1000, 1, 3),
    ]
    assert rows[0]["bids"] == [
        {"price": Decimal("99999.98"), "size": Decimal("1E-18")},
        {"price": Decimal("99999.5"), "size": Decimal("2.25")},
    ]
    assert rows[0]["asks"] == [{"price": Decimal("100000.01"), "size": Decimal("1.5")}] and rows[1]["asks"] == []


def test_a_failed_runs_segments_are_taken_in_by_the_next_run(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    landing.segment(trades_frame(0, 5, DAY1_MS))
    lake = LakeResource(root=str(tmp_path / "lake"))
    materialize(raw_trades, landing, lake, {SEGMENTS_TAG: "1-1"})
    landing.segment(trades_frame(5, 5, DAY1_MS))  # its run ("2-2") failed or never ran
    last = landing.segment(trades_frame(10, 5, DAY1_MS))
    materialize(raw_trades, landing, lake, {SEGMENTS_TAG: f"{last}-{last}"})
    table = lake.read_partition("raw_trades", DAY)
    assert sorted(table["segment"].to_pylist()) == [1] * 5 + [2] * 5 + [3] * 5
    assert lake.tables().watermark("raw_trades", LANDING_APP_ID) == last
    # A stale re-execution of the failed run changes nothing and never lowers the watermark.
    materialize(raw_trades, landing, lake, {SEGMENTS_TAG: "2-2"})
    again = lake.read_partition("raw_trades", DAY)
    assert again.equals(table) and lake.tables().watermark("raw_trades", LANDING_APP_ID) == last


def test_a_rebuild_after_retention_reads_what_is_left_and_names_only_the_days_lost_segments(
    tmp_path: Path,
) -> None:
    landing = Landing(tmp_path)
    gone = landing.segment(trades_frame(0, 5, DAY1_MS))
    other_day = landing.segment(trades_frame(100, 5, DAY2_MS))
    landing.segment(trades_frame(5, 5, DAY1_MS))
    root = landing.resource().landing_dir
    for seq in (gone, other_day):  # as CRYPTO_RETENTION_DAYS removes them
        (root / "segments" / f"{seq:012d}.ndjson").unlink()
    entries, missing = segments_to_read(root, DAY, frozenset({"XT"}), 0, other_day + 1)
    assert ([e["seq"] for e in entries], missing) == ([other_day + 1], [gone])
    instance = dg.DagsterInstance.ephemeral()
    lake = LakeResource(root=str(tmp_path / "lake"))
    resources = {"stream": landing.resource(), "lake": lake}
    result = dg.materialize([raw_trades], partition_key=DAY, resources=resources, instance=instance)
    assert result.success
    assert lake.read_partition("raw_trades", DAY)["trade_id"].to_pylist() == [str(i) for i in range(5, 10)]
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if "retention" in e.user_message]
    assert warnings == [f"{DAY}: 1 segments removed by retention were not read, e.g. [{gone}]"]


def _nulls_last(value: Any) -> tuple[bool, Any]:
    return (value is None, 0 if value is None else value)


def expected_merge(
    decoded: list[dict[str, Any]],
    existing: list[dict[str, Any]],
    key_columns: tuple[str, ...] = TRADES.key,
    order: tuple[str, ...] = TRADES.order,
) -> list[dict[str, Any]]:
    """merge's rule row by row: per key the earliest (received_ns, segment), then existing, then frame index;
    NULLs sort last and NULL keys are one key, as in SQL."""
    best: dict[tuple[Any, ...], tuple[tuple[Any, ...], dict[str, Any]]] = {}
    for row, idx in [(r, r["idx"]) for r in decoded] + [(r, -1) for r in existing]:
        key = tuple(row[c] for c in key_columns)
        rank = (_nulls_last(row["received_ns"]), _nulls_last(row["segment"]), idx)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, {c: row[c] for c in TRADES_SCHEMA.names})
    rows = [row for _, row in best.values()]
    return sorted(rows, key=lambda r: tuple(_nulls_last(r[c]) for c in order))


# The trades' key and order (event time first: merge sorts by key and by order separately), and an
# order made of the key's own columns, as for quotes, bars and book (one sort does both).
ORDERINGS = [(TRADES.key, TRADES.order), (("pair", "exchange", "trade_id"), ("exchange", "trade_id", "pair"))]


@pytest.mark.parametrize(("key", "order"), ORDERINGS)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_merge_keeps_each_keys_earliest_receipt_like_an_exact_python_rule(
    seed: int, key: tuple[str, ...], order: tuple[str, ...]
) -> None:
    # Few keys and few receive times, so duplicates, receipt ties (broken by segment, then by the
    # existing row, then by frame index), NULL ids and NULL lineage (REST rows) are all common.
    rng = random.Random(seed)

    def row(i: int, rest: bool = False) -> dict[str, Any]:
        return {
            "pair": rng.choice(["BTC-USD", "ETH-USD"]),
            "exchange": rng.choice([1, 2]),
            "trade_id": rng.choice([None, "1", "2", "3", "10", "a"]),
            "price": Decimal(rng.randrange(1, 10**6)).scaleb(-rng.randrange(0, 19)),
            "size": Decimal(rng.randrange(1, 10**6)).scaleb(-18),
            "conditions": "[]",
            "event_ms": DAY1_MS + rng.randrange(4),
            "polygon_received_ms": None,
            "received_ns": None if rest and rng.random() < 0.5 else rng.randrange(3),
            "session": None if rest else 1,
            "segment": None if rest else rng.randrange(1, 3),
            "source": "rest_repair" if rest else "ws",
            "idx": i,  # unique, so no two decoded rows tie on the whole receipt order
        }

    decoded = [row(i) for i in range(300)]
    existing_rows, _ = merge(
        pa.Table.from_pylist([row(1000 + i, rest=True) for i in range(60)], schema=TRADES_SCHEMA.append(IDX)),
        None,
        TRADES_SCHEMA,
        key,
        order,
    )
    existing = existing_rows.to_pylist()
    for previous in (None, existing):
        got, dropped = merge(
            pa.Table.from_pylist(decoded, schema=TRADES_SCHEMA.append(IDX)),
            None if previous is None else pa.Table.from_pylist(previous, schema=TRADES_SCHEMA),
            TRADES_SCHEMA,
            key,
            order,
        )
        want = expected_merge(decoded, previous or [], key, order)
        assert got.schema == TRADES_SCHEMA
        assert got.to_pylist() == want
        assert dropped == len(decoded) + len(previous or []) - len(want) > 0


@pytest.mark.parametrize("line", [b"{}", b'{"n":1}', b'{"r":null,"f":null}'])
def test_a_record_without_receive_time_or_frame_fails_the_decode_naming_file_and_line(
    tmp_path: Path, line: bytes
) -> None:
    # decode reads such a line as one row without a frame (not as no rows), so it is refused, not skipped.
    path = tmp_path / "000000000001.ndjson"
    path.write_bytes(b'{"r":1,"n":1,"f":' + trades_frame(1, 2, DAY1_MS) + b"}\n" + line + b"\n")
    segment = SegmentFile(1, path, path.stat().st_size)
    with pytest.raises(LandingDecodeError, match=f"{path} line 2: not a landing record"):
        decode(TRADES.shape, [segment], (DAY1_MS - DAY1_MS % 86_400_000, DAY1_MS + 86_400_000), TRADES_SCHEMA)


@pytest.mark.parametrize(("key", "order"), ORDERINGS)
@pytest.mark.parametrize("seed", [5, 6, 7, 8, 9])
def test_merging_a_batch_into_a_large_ordered_day_equals_the_full_merge_and_the_exact_rule(
    seed: int, key: tuple[str, ...], order: tuple[str, ...]
) -> None:
    # A day of merged rows, then batches that re-send some of its trades (later, or earlier: a REST
    # row's receipt can be later than the stream's), reach back before its newest rows, and add new ones.
    rng = random.Random(seed)

    def row(i: int, t: int, received: int, trade_id: str, source: str = "ws") -> dict[str, Any]:
        return {
            "pair": rng.choice(["BTC-USD", "ETH-USD"]),
            "exchange": 1 + int(trade_id) % 3,
            "trade_id": trade_id,
            "price": Decimal(rng.randrange(1, 10**6)).scaleb(-rng.randrange(0, 19)),
            "size": Decimal(rng.randrange(1, 10**6)).scaleb(-18),
            "conditions": "[]",
            "event_ms": t,
            "polygon_received_ms": None,
            "received_ns": received,
            "session": 1,
            "segment": 1 + received // 100,
            "source": source,
            "idx": i,
        }

    def table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=schema)

    day = [row(i, DAY1_MS + i // 3, 10 * i, str(i)) for i in range(2_000)]
    lake, _ = merge(table(day, TRADES_SCHEMA.append(IDX)), None, TRADES_SCHEMA, key, order)
    taken_fast = 0
    for batch in range(4):
        resent = [
            dict(r, idx=j, received_ns=r["received_ns"] + rng.choice([-5, 7, 30_000]))
            for j, r in enumerate(rng.sample(day, 15))
        ]
        new = [
            row(100 + j, DAY1_MS + rng.randrange(600, 800), 40_000 + batch * 100 + j, str(5_000 + batch * 50 + j))
            for j in range(40)
        ]
        decoded = table(resent + new + [dict(new[0], idx=999)], TRADES_SCHEMA.append(IDX))  # and a duplicate within
        taken_fast += can_merge_into(decoded, lake, key, order, None)
        fast, dropped = merge(decoded, lake, TRADES_SCHEMA, key, order)
        full, full_dropped = merge(decoded, lake, TRADES_SCHEMA, key, order, fast=False)
        want = expected_merge(decoded.to_pylist(), lake.to_pylist(), key, order)
        assert fast.schema == TRADES_SCHEMA and fast.equals(full) and dropped == full_dropped
        assert fast.to_pylist() == want
        lake = fast
    assert taken_fast == 4


def test_merging_batch_after_batch_into_the_same_table_keeps_its_chunks_few() -> None:
    # As a process does that keeps the table it wrote: every merge would otherwise add a chunk.
    def trades(first: int, n: int) -> pa.Table:
        rows = [
            {"pair": "BTC-USD", "exchange": 1, "trade_id": str(first + i), "price": Decimal("1.5"), "size": Decimal(1)}
            | {"conditions": "[]", "event_ms": DAY1_MS + first + i, "polygon_received_ms": None}
            | {"received_ns": first + i, "session": 1, "segment": 1 + first // 10, "source": "ws", "idx": i}
            for i in range(n)
        ]
        return pa.Table.from_pylist(rows, schema=TRADES_SCHEMA.append(IDX))

    lake, _ = merge(trades(0, 1_000), None, TRADES_SCHEMA, TRADES.key, TRADES.order)
    for batch in range(100):
        lake, _ = merge(trades(1_000 + batch * 10, 10), lake, TRADES_SCHEMA, TRADES.key, TRADES.order)
        assert lake.column(0).num_chunks <= 33
    assert lake["trade_id"].to_pylist() == [str(i) for i in range(2_000)]
