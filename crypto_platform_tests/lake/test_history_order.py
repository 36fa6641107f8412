"""The Flat File trades reader's fast order (one packed integer sort) against Arrow's general sort.

Every case the packing has to get right: trades tied on (ms, pair, exchange) ordered by id, copies
of one trade dropped (the first in the file kept), rows outside the day or the pairs left out, and
exchange ids that do not fit the packing (the general sort then).
"""

from __future__ import annotations

import csv
import gzip
import io
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from crypto_platform.lake.history import read_trades_csv
from crypto_platform.lake.raw import TRADES

DAY = date(2025, 11, 20)
LO = 1_763_596_800_000
HEADER = "ticker,conditions,exchange,id,participant_timestamp,price,size\n"


def write(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt") as out:
        out.write(HEADER + "".join(line + "\n" for line in lines))
    return path


def line(ticker: str, exchange: int, trade_id: str, ms: int, price: str = "1.5", conditions: str = "1") -> str:
    return f"{ticker},{conditions},{exchange},{trade_id},{(LO + ms) * 1_000_000 + 123},{price},0.25"


NAMES = ["event_ms", "pair", "exchange", "trade_id", "p"]


def reference(path: Path, pairs: list[str] | None = None) -> list[tuple]:
    """What the table must hold: Arrow's four-column sort of the distinct (time, key) rows in the day."""
    seen, out = set(), []
    for fields in list(csv.reader(io.StringIO(gzip.decompress(path.read_bytes()).decode())))[1:]:
        ticker, _, exchange, trade_id, ns, price, _ = fields
        pair, ms = ticker.removeprefix("X:"), int(ns) // 1_000_000
        if not LO <= ms < LO + 86_400_000 or (pairs is not None and pair not in pairs):
            continue
        if (ms, pair, int(exchange), trade_id) in seen:
            continue
        seen.add((ms, pair, int(exchange), trade_id))
        out.append((ms, pair, int(exchange), trade_id, price))
    table = pa.table({k: list(v) for k, v in zip(NAMES, zip(*out, strict=True), strict=True)})
    table = table.take(pc.sort_indices(table, [(k, "ascending") for k in TRADES.order]))
    return list(zip(*(table[c].to_pylist() for c in ("event_ms", "pair", "exchange", "trade_id")), strict=True))


def keys(table: pa.Table) -> list[tuple]:
    return list(zip(*(table[c].to_pylist() for c in ("event_ms", "pair", "exchange", "trade_id")), strict=True))


LINES = [
    line("X:ETH-USD", 2, "9", 5),
    line("X:BTC-USD", 2, "10", 5),  # ties with the next two on (ms, pair, exchange): ordered by id text
    line("X:BTC-USD", 2, "9", 5),
    line("X:BTC-USD", 2, "100", 5),
    line("X:BTC-USD", 1, "7", 5),
    line("X:BTC-USD", 2, "9", 5, price="2.5"),  # a copy of trade 9: the first in the file stays
    line("X:BTC-USD", 1, "3", 4),
    line("X:ETH-USD", 1, "1", -10),  # the day before
    line("X:ETH-USD", 1, "2", 86_400_000),  # the day after
    line("X:SOL-USD", 6, "5", 3, conditions='"1, 2"'),
]


@pytest.mark.parametrize("pairs", [None, ["BTC-USD", "SOL-USD"]])
def test_the_packed_order_equals_arrows_sort_with_ties_copies_and_rows_outside(tmp_path: Path, pairs) -> None:
    path = write(tmp_path / "day.csv.gz", LINES)
    table, counts = read_trades_csv(path, "day.csv.gz", DAY, pairs)
    assert keys(table) == reference(path, pairs)
    assert counts["copies_dropped"] == 1
    assert counts["rows"] + counts["rows_skipped"] + counts["copies_dropped"] == counts["rows_in_file"] == len(LINES)
    nine = table.filter(pc.and_(pc.equal(table["trade_id"], "9"), pc.equal(table["pair"], "BTC-USD")))
    assert [str(p) for p in nine["price"].to_pylist()] == ["1.500000000000000000"], "the file's first copy is kept"
    sol = table.filter(pc.equal(table["pair"], "SOL-USD"))
    assert sol["conditions"].to_pylist() == ["[1, 2]"]


def test_exchange_ids_beyond_the_packing_take_the_general_sort(tmp_path: Path) -> None:
    lines = [*LINES, line("X:BTC-USD", 70_000, "4", 5), line("X:BTC-USD", 70_000, "3", 5)]
    path = write(tmp_path / "day.csv.gz", lines)
    table, counts = read_trades_csv(path, "day.csv.gz", DAY)
    assert keys(table) == reference(path)
    assert counts["copies_dropped"] == 1


def test_an_empty_file_gives_an_empty_day(tmp_path: Path) -> None:
    table, counts = read_trades_csv(write(tmp_path / "day.csv.gz", []), "day.csv.gz", DAY)
    assert table.num_rows == 0 and counts["rows_in_file"] == 0
