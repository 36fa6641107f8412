"""The lake on an S3-compatible store (moto's server, started here): the same tables, and racing writers safe.

Two writers apply the same sealed segments at once (a restarted writer and one that has not died yet,
on hosts that share no lock): both read the table's watermark before either commits, so both decide
the segments are new. Delta's conflict check refuses the second commit, because it carries the same
application transaction (segment watermark) as the first; that writer's next pass reads the new
watermark and has nothing left to do. Nothing is lost or doubled.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake.exceptions import CommitFailedError

from crypto_platform.lake.raw import LANDING_APP_ID, TRADES, apply_segments, rebuild_day
from crypto_platform.lake.tables import DeltaLake
from crypto_platform_tests.conftest import free_port
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

DAY = "2025-11-24"
KEY = ("pair", "exchange", "trade_id")


@pytest.fixture(scope="module")
def s3_store() -> Iterator[dict[str, str]]:
    """An S3-compatible server on loopback with a bucket ``lake``; yields delta-rs storage options."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    try:
        boto3.client(
            "s3",
            endpoint_url=options["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="lake")
        yield options
    finally:
        server.stop()


@dataclass(frozen=True)
class RacingLake(DeltaLake):
    """A lake whose commits wait until every racing writer has decided (a barrier, nothing faked)."""

    barrier: Any = None

    def append(self, name: str, rows: pa.Table, watermarks: Any = None, base: Any = None) -> None:
        self.barrier.wait(timeout=60)
        super().append(name, rows, watermarks, base=base)


def _landing(tmp_path: Path, segments: int) -> tuple[Landing, int]:
    landing = Landing(tmp_path)
    last = 0
    for s in range(segments):
        last = landing.segment(
            trades_frame(s * 50, 50, DAY1_MS + s * 1_000), trades_frame(s * 50, 10, DAY1_MS, dup_of=0)
        )
    return landing, last


def _keys(table: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(zip(*(table[c].to_pylist() for c in KEY), strict=True))


def test_appends_and_rebuilds_on_the_object_store_equal_the_local_lake(
    s3_store: dict[str, str], tmp_path: Path
) -> None:
    landing, last = _landing(tmp_path, 4)
    remote = DeltaLake("s3://lake/equal", s3_store)
    local = DeltaLake(str(tmp_path / "lake"))
    for lake in (remote, local):
        for upto in range(1, last + 1):  # segment by segment, as the writer appends them
            apply_segments(lake, TRADES, landing.settings.landing_dir, upto)
    got, want = remote.read("raw_trades", DAY), local.read("raw_trades", DAY)
    assert got is not None and want is not None and got.num_rows == 200
    assert got.equals(want)
    assert remote.watermark("raw_trades", LANDING_APP_ID) == last
    # A rebuild of the day on the store gives the same rows back.
    rebuild_day(remote, TRADES, landing.settings.landing_dir, DAY, last)
    rebuilt = remote.read("raw_trades", DAY)
    assert rebuilt is not None and rebuilt.equals(want)


def test_two_writers_racing_on_the_store_apply_each_segment_exactly_once(
    s3_store: dict[str, str], tmp_path: Path
) -> None:
    landing, last = _landing(tmp_path, 3)
    # The table exists (the first segment is in); the next two are what both writers find new.
    apply_segments(DeltaLake("s3://lake/race", s3_store), TRADES, landing.settings.landing_dir, 1)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def writer(name: str) -> None:
        lake = RacingLake("s3://lake/race", s3_store, barrier=barrier)
        try:
            apply_segments(lake, TRADES, landing.settings.landing_dir, last)
            outcomes[name] = "committed"
        except CommitFailedError as exc:
            outcomes[name] = f"refused: {exc}"
        except Exception as exc:  # reported by the assertion below
            outcomes[name] = f"failed: {exc!r}"

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(o.split(":")[0] for o in outcomes.values()) == ["committed", "refused"], outcomes
    assert any("Concurrent transaction" in o for o in outcomes.values()), outcomes

    # The refused writer's next pass finds the segments applied and adds nothing.
    lake = DeltaLake("s3://lake/race", s3_store)
    again = apply_segments(lake, TRADES, landing.settings.landing_dir, last)
    assert again.rows_added == 0 and again.segments == 0
    assert again.through == last
    table = lake.read("raw_trades", DAY)
    assert table is not None and table.num_rows == 150
    keys = _keys(table)
    assert len(set(keys)) == len(keys)  # nothing doubled
    assert pc.count_distinct(table["trade_id"]).as_py() == 150  # nothing lost: ids 0..149
    assert lake.watermark("raw_trades", LANDING_APP_ID) == last
