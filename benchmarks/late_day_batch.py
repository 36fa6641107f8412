"""What one stream batch costs in the lake late in a busy day, next to the same batch early in it.

A known limit, measured so that a change to it can be judged: a stream run upserts into the day's
Parquet partition by reading, merging and rewriting the whole day (and its checks evaluate the
whole day), so the lake part of a batch grows with the rows the day already holds.

The landing log is ``partition_build.py``'s (simulator events over 5 pairs, 5 s segments). The lake
part of the ``stream_batch`` job (``raw_trades``, ``raw_quotes``, ``raw_aggregates``,
``minute_bars`` and their checks) is run through ``dagster.materialize`` with the segment tag, as
the sensor's runs are: for each of the first ``--batches`` segments (early: the day nearly empty),
then, after one run takes in everything up to the last ``--batches`` segments, for each of those
(late). The warehouse copies, Dagster's run launch and the event log are not in the figures.

    python benchmarks/late_day_batch.py [--events 2000000] [--batches 3]

No target: the figure to watch is late/early (1.0 would be a batch cost independent of the day).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.partition_build import DAY, land  # noqa: E402
from crypto_platform.assets.bars import minute_bars  # noqa: E402
from crypto_platform.assets.raw import raw_aggregates, raw_quotes, raw_trades  # noqa: E402
from crypto_platform.definitions import defs  # noqa: E402
from crypto_platform.resources.lake import LakeResource  # noqa: E402
from crypto_platform.resources.polygon import PolygonRestResource  # noqa: E402
from crypto_platform.resources.stream import StreamResource  # noqa: E402
from crypto_platform.settings import load_settings  # noqa: E402
from crypto_platform.stream_batches import SEGMENTS_TAG  # noqa: E402

ASSETS = [raw_trades, raw_quotes, raw_aggregates, minute_bars]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="late-day-batch-"))
    try:
        settings = load_settings({"CRYPTO_PROJECT_DIR": str(ROOT), "CRYPTO_STATE_DIR": str(work)})
        day = land(settings.data_dir, args.events, trades_per_second=250)
        keys = {a.key for a in ASSETS}
        checks = [c for c in defs.asset_checks or () if any(k.asset_key in keys for k in c.check_keys)]
        resources = {
            "stream": StreamResource(
                project_dir=str(settings.project_dir),
                state_dir=str(settings.state_dir),
                data_dir=str(settings.data_dir),
                autostart=False,
            ),
            "lake": LakeResource(root=str(settings.lake_dir)),
            # The landing log's session stays open: no gap, so nothing is fetched from REST.
            "polygon_rest": PolygonRestResource(base_url="http://127.0.0.1:9", api_key="unused", pairs=["BTC-USD"]),
        }
        instance = dg.DagsterInstance.ephemeral()

        def batch(first: int, last: int) -> float:
            started = time.perf_counter()
            result = dg.materialize(
                [*ASSETS, *checks],
                selection=list(keys),
                partition_key=DAY,
                tags={SEGMENTS_TAG: f"{first}-{last}"},
                resources=resources,
                instance=instance,
            )
            if not result.success:
                raise SystemExit(f"the batch {first}-{last} failed")
            return time.perf_counter() - started

        seqs = [int(e["seq"]) for e in day.entries]
        n = args.batches
        early = [round(batch(s, s), 2) for s in seqs[:n]]
        batch(seqs[n], seqs[-n - 1])
        lake = resources["lake"]
        assert isinstance(lake, LakeResource)
        table = lake.read_partition("raw_trades", DAY)
        rows = table.num_rows if table is not None else 0
        late = [round(batch(s, s), 2) for s in seqs[-n:]]
        per_segment = day.events // len(seqs)
        print(f"landed {day.events:,} events in {len(seqs)} segments (~{per_segment:,} events a segment)")
        print(f"early batches (day nearly empty): median {statistics.median(early):.2f} s; runs {early}")
        print(f"late batches ({rows:,} trades in the day): median {statistics.median(late):.2f} s; runs {late}")
        print(f"late / early: {statistics.median(late) / statistics.median(early):.1f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
