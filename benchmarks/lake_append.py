"""What appending one sealed segment to the raw Delta tables costs early in a busy day and late in it.

The landing log is ``partition_build.py``'s (simulator events over 5 pairs, 5 s segments). Each
measured segment is applied to ``raw_trades``, ``raw_quotes`` and ``raw_aggregates`` with
:func:`crypto_platform.lake.raw.apply_segments` (decode, de-duplicate against the rows the segment
can collide with, one Delta commit carrying the watermark): the first ``--batches`` segments
(early: the day nearly empty), then every segment up to the last ``--batches`` one by one, as the
writer appends them while they seal, and each of those (late). Baseline, in the same run and on the same late
segments: the previous layout's batch, which merged the segment into the whole day and rewrote the
day's Parquet file (read day, ``merge``, write), for ``raw_trades`` and ``raw_quotes``.

    python benchmarks/lake_append.py [--events 2000000] [--batches 5] [--check]

Target: late/early at most 1.3 (a batch's cost does not grow with the day).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.partition_build import DAY, land  # noqa: E402
from crypto_platform.lake.decode import merge  # noqa: E402
from crypto_platform.lake.raw import AGGREGATES, QUOTES, TRADES, apply_segments  # noqa: E402
from crypto_platform.lake.tables import DeltaLake  # noqa: E402
from crypto_platform.stream.manifest import iter_manifest  # noqa: E402

TABLES = (TRADES, QUOTES, AGGREGATES)
TARGET_RATIO = 1.3


def apply(lake: DeltaLake, landing: Path, upto: int) -> float:
    started = time.perf_counter()
    for spec in TABLES:
        apply_segments(lake, spec, landing, upto)
    return time.perf_counter() - started


def old_layout_batch(lake: DeltaLake, landing: Path, seq: int, work: Path) -> float:
    """The previous layout's batch: the segment merged into the whole day, the day's file rewritten."""
    entries = [e for e in iter_manifest(landing, after_seq=seq - 1, through_seq=seq)]
    started = time.perf_counter()
    for spec in (TRADES, QUOTES):
        day = lake.read(spec.name, DAY)
        decoded = spec.decode(landing, entries, DAY)
        merged, _ = merge(decoded, day, spec.schema, spec.key, spec.order, spec.finish)
        pq.write_table(merged, work / f"{spec.name}.parquet")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 when late/early exceeds the target")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lake-append-"))
    try:
        day = land(work / "data", args.events, trades_per_second=250)
        landing = work / "data" / "landing"
        seqs = [int(e["seq"]) for e in iter_manifest(landing)]
        lake = DeltaLake(str(work / "lake"))
        n = args.batches
        # Segment by segment through the day, as the writer appends them while they seal.
        timings = [apply(lake, landing, s) for s in seqs[:-n]]
        early, catch_up = timings[:n], sum(timings[n:])
        rows = {spec.name: lake.count(spec.name, DAY) for spec in TABLES}
        old = [old_layout_batch(lake, landing, s, work) for s in seqs[-n:]]
        late = [apply(lake, landing, s) for s in seqs[-n:]]
        files = {spec.name: len(lake.files(spec.name, DAY)) for spec in TABLES}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    e, late_m, old_m = statistics.median(early), statistics.median(late), statistics.median(old)
    ratio = late_m / e
    print(f"landing log: {day.events:,} events in {len(seqs)} segments; day before the late batches: {rows}")
    print(f"files per table at the end: {files}; the {len(seqs) - 2 * n} middle segments took {catch_up:.2f} s in all")
    print(f"append of one segment to 3 raw tables: early median {e * 1000:.0f} ms {[round(x * 1000) for x in early]}")
    print(f"{'':39}late  median {late_m * 1000:.0f} ms {[round(x * 1000) for x in late]}")
    print(f"late/early {ratio:.2f} (target <= {TARGET_RATIO})")
    print(
        f"baseline, previous layout (merge into the day, rewrite the day's file; trades and quotes only): "
        f"late median {old_m * 1000:.0f} ms, {old_m / late_m:.1f}x the append"
    )
    if args.check and ratio > TARGET_RATIO:
        print(f"MISSED: late/early {ratio:.2f} > {TARGET_RATIO}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
