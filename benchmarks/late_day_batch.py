"""What one stream batch costs in the lake late in a busy day, next to the same batch early in it.

A known limit, measured so that a change to it can be judged: a stream run upserts into the day's
Parquet partition by reading, merging and rewriting the whole day (and its checks evaluate the
whole day), so the lake part of a batch grows with the rows the day already holds.

The landing log is ``partition_build.py``'s (simulator events over 5 pairs, 5 s segments). What a
``stream_batch`` run of a segment with trades, quotes and bars builds (``batch_selection``: the raw
tables, ``minute_bars``, ``crypto_alerts``, the MySQL and Snowflake copies, with every check) is
run in this process through ``dagster.materialize`` with the segment tag, as the sensor's runs
are, against the zero-setup stand-ins (SQLite for MySQL, the local fakesnow server): for each of
the first ``--batches`` segments (early: the day nearly empty), then, after one run takes in
everything up to the last ``--batches`` segments, for each of those (late). Figures per step come
from the run's step timings. Dagster's run launch (a process per run) is not in them.

    python benchmarks/late_day_batch.py [--events 2000000] [--batches 3] [--lake-only]

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
from benchmarks.simulator_rate import free_port  # noqa: E402
from crypto_platform.assets.bars import minute_bars  # noqa: E402
from crypto_platform.assets.raw import raw_aggregates, raw_quotes, raw_trades  # noqa: E402
from crypto_platform.definitions import defs  # noqa: E402
from crypto_platform.local import stack as local_stack  # noqa: E402
from crypto_platform.resources import build_resources  # noqa: E402
from crypto_platform.sensors import batch_selection  # noqa: E402
from crypto_platform.settings import child_environment, load_settings  # noqa: E402
from crypto_platform.stream_batches import SEGMENTS_TAG  # noqa: E402

LAKE = [raw_trades, raw_quotes, raw_aggregates, minute_bars]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--lake-only", action="store_true", help="only the raw tables and minute_bars (no servers)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="late-day-batch-"))
    env = {"CRYPTO_PROJECT_DIR": str(ROOT), "CRYPTO_STATE_DIR": str(work), "CRYPTO_FAKESNOW_PORT": str(free_port())}
    settings = load_settings(env)
    fakesnow = None if args.lake_only else local_stack.fakesnow_service(settings)
    paths = local_stack.stack_paths(settings)
    try:
        if fakesnow is not None:
            local_stack.start_service(fakesnow, paths, child_environment(), ready_timeout=120)
        day = land(settings.data_dir, args.events, trades_per_second=250)
        keys = {a.key for a in LAKE} if args.lake_only else set(batch_selection({"XT", "XQ", "XA", "XAS"}))
        assets = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition) and a.keys & keys]
        checks = [c for c in defs.asset_checks or () if any(k.asset_key in keys for k in c.check_keys)]
        # The landing log's session stays open: no gap, so nothing is fetched from REST.
        resources = build_resources(settings)
        instance = dg.DagsterInstance.ephemeral()

        def batch(first: int, last: int) -> tuple[float, dict[str, float]]:
            started = time.perf_counter()
            result = dg.materialize(
                [*assets, *checks],
                selection=list(keys),
                partition_key=DAY,
                tags={SEGMENTS_TAG: f"{first}-{last}"},
                resources=resources,
                instance=instance,
            )
            if not result.success:
                raise SystemExit(f"the batch {first}-{last} failed")
            steps = {
                s.step_key: (s.end_time or 0) - (s.start_time or 0) for s in instance.get_run_step_stats(result.run_id)
            }
            return time.perf_counter() - started, steps

        seqs = [int(e["seq"]) for e in day.entries]
        n = args.batches
        early = [batch(s, s) for s in seqs[:n]]
        batch(seqs[n], seqs[-n - 1])
        table = resources["lake"].read_partition("raw_trades", DAY)
        rows = table.num_rows if table is not None else 0
        late = [batch(s, s) for s in seqs[-n:]]
        print(f"landed {day.events:,} events in {len(seqs)} segments (~{day.events // len(seqs):,} events a segment)")
        print(f"{len(keys)} assets and {len(checks)} check steps per batch")
        for name, runs in (("early (day nearly empty)", early), (f"late ({rows:,} trades in the day)", late)):
            print(
                f"{name}: median {statistics.median(r[0] for r in runs):.2f} s; runs {[round(r[0], 2) for r in runs]}"
            )
        ratio = statistics.median(r[0] for r in late) / statistics.median(r[0] for r in early)
        print(f"late / early: {ratio:.1f}x; steps, median seconds early -> late:")
        for step in sorted(late[0][1], key=lambda k: -statistics.median(r[1].get(k, 0) for r in late)):
            e, l_ = (statistics.median(r[1].get(step, 0) for r in runs) for runs in (early, late))
            print(f"  {step:32s} {e:6.2f} -> {l_:6.2f}")
        return 0
    finally:
        if fakesnow is not None:
            local_stack.stop_service(fakesnow, paths)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
