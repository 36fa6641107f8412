"""The lake's per-process memory of partitions it read: reused while the file is the one read, never after."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crypto_platform.resources.lake import RECENT, LakeResource, segments_through


def rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({"k": pa.array(range(start, start + n), pa.int64()), "v": [f"row {i}" for i in range(n)]})


@pytest.fixture
def lake(tmp_path: Path) -> LakeResource:
    return LakeResource(root=str(tmp_path / "lake"), cache_mb=64)


def test_a_second_read_of_an_unchanged_partition_is_the_same_table(lake: LakeResource) -> None:
    lake.write_partition("t", "2025-11-24", rows(1000), through=7)
    first = lake.read_partition("t", "2025-11-24")
    assert first is lake.read_partition("t", "2025-11-24")
    assert first is not None and first.select(["k", "v"]).equals(rows(1000)) and segments_through(first) == 7


def test_only_the_write_id_tells_a_file_of_the_same_inode_size_and_mtime_apart(lake: LakeResource) -> None:
    lake.write_partition("t", "2025-11-24", rows(1000, start=0))
    before = lake.read_partition("t", "2025-11-24")
    path = lake.partition_path("t", "2025-11-24")
    stat = os.stat(path)
    # Another write of the same rows (so of the same size) put into the same inode, with the mtime
    # put back: what a reused inode within one mtime tick would look like.
    lake.write_partition("t", "2025-11-25", rows(1000))
    other = lake.partition_path("t", "2025-11-25").read_bytes()
    assert len(other) == stat.st_size
    with open(path, "r+b") as f:
        f.write(other)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after_stat = os.stat(path)
    assert (after_stat.st_ino, after_stat.st_size, after_stat.st_mtime_ns) == (
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
    )
    after = lake.read_partition("t", "2025-11-24")
    assert after is not before and after is not None and after.equals(before)
    assert lake.read_partition("t", "2025-11-24") is after


def test_a_partition_replaced_by_another_process_is_read_anew(lake: LakeResource) -> None:
    lake.write_partition("t", "2025-11-24", rows(10))
    assert lake.read_partition("t", "2025-11-24") is not None
    code = (
        "import sys; import pyarrow as pa; from crypto_platform.resources.lake import LakeResource; "
        "LakeResource(root=sys.argv[1]).write_partition('t', '2025-11-24', pa.table({'k': [42], 'v': ['other']}))"
    )
    subprocess.run([sys.executable, "-c", code, lake.root], check=True, timeout=120)
    again = lake.read_partition("t", "2025-11-24")
    assert again is not None and again.to_pydict() == {"k": [42], "v": ["other"]}


def test_files_without_a_write_id_and_a_zero_budget_are_read_every_time(lake: LakeResource, tmp_path: Path) -> None:
    path = lake.partition_path("t", "2025-11-24")
    path.parent.mkdir(parents=True)
    pq.write_table(rows(10), path)  # written by something else than write_partition
    assert lake.read_partition("t", "2025-11-24") is not lake.read_partition("t", "2025-11-24")
    off = LakeResource(root=str(tmp_path / "off"), cache_mb=0)
    off.write_partition("t", "2025-11-24", rows(10))
    assert off.read_partition("t", "2025-11-24") is not off.read_partition("t", "2025-11-24")
    assert lake.read_partition("t", "2099-01-01") is None


def test_the_budget_keeps_the_most_recently_read(tmp_path: Path) -> None:
    one_mb = rows(66_000)
    assert 3 * one_mb.nbytes <= 5 << 20 < 4 * one_mb.nbytes
    lake = LakeResource(root=str(tmp_path / "lake"), cache_mb=5)  # room for three of them
    for day in ("2025-11-01", "2025-11-02", "2025-11-03", "2025-11-04"):
        lake.write_partition("t", day, one_mb)
    read = {day: lake.read_partition("t", day) for day in ("2025-11-01", "2025-11-02", "2025-11-03")}
    assert lake.read_partition("t", "2025-11-01") is read["2025-11-01"]  # 01 is now the most recent
    lake.read_partition("t", "2025-11-04")  # over the budget: the least recently read (02) goes
    assert lake.read_partition("t", "2025-11-02") is not read["2025-11-02"]
    assert lake.read_partition("t", "2025-11-01") is read["2025-11-01"]
    kept = [t for _, t in RECENT._tables.values()]
    assert sum(t.nbytes for t in kept) <= 5 << 20


def test_a_written_table_is_kept_as_a_read_from_disk_would_give_it(lake: LakeResource) -> None:
    # Every type the lake's tables use: what is kept is what a read from disk would give.
    decimal = pa.decimal128(38, 18)
    level = pa.struct([("price", decimal), ("size", decimal)])
    table = pa.table(
        {
            "pair": pa.array(["BTC-USD", None], pa.string()),
            "exchange": pa.array([1, 2], pa.int32()),
            "event_ms": pa.array([1, 2], pa.int64()),
            "price": pa.array([Decimal("97000.123456789012345678"), Decimal("0.000000000000000001")], decimal),
            "settled": pa.array([True, None], pa.bool_()),
            "bids": pa.array([[{"price": Decimal("1.5"), "size": Decimal("2")}], []], pa.list_(level)),
        }
    )
    lake.write_partition("t", "2025-11-24", table, through=3)
    kept = lake.read_partition("t", "2025-11-24")
    from_disk = pq.read_table(lake.partition_path("t", "2025-11-24"))
    assert kept is not None and kept.equals(from_disk, check_metadata=True)
    assert lake.read_partition("t", "2025-11-24") is kept  # from memory
