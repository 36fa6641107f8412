"""What one stream batch costs late in a busy day, next to the same kind of batch early in it.

Each batch runs as production runs it: the lake writer's append of its segments (outside the run,
not timed), then the ``stream_batch`` job of ``crypto_platform.definitions`` in a fresh Python
process per run (as Dagster's run launcher starts one), executed with ``dagster.execute_job`` on a
real Dagster instance (a temporary ``DAGSTER_HOME`` holding the project's ``dagster.yaml``, SQLite
run storage), subset to the assets and checks the stream sensor requests while the writer runs
(``plan_batches``, ``batch_selection`` and ``batch_checks``, the sensor's own functions). So whatever
a round builds at the time (today: minute bars, alerts, the MySQL copies and the checks inside them;
the catch-up round also the lake checks and the Snowflake copies) is what is measured, and the
script keeps measuring it when the job changes.

The landing log is ``partition_build.py``'s (simulator events over 5 pairs, 5 s segments). The first
``--batches`` segments are run one batch each (early: the day nearly empty); then one run takes in
everything up to the last ``--batches`` segments; then those run one batch each (late).

Reads: a run process starts with nothing in memory, so its first read of the day's tables is a cold
read (from disk, through the OS page cache: the file was written moments before, as in production);
later steps of the same run may find the day in the run's lake memory (warm). No read is warm across
runs, since production never keeps a process between runs. Per step, the figures show where the time
goes; "process" is the whole run process (interpreter start, imports, run), "run" is Dagster's run
start to end.

Backends: the zero-setup stand-ins (SQLite for MySQL, a local fakesnow server for Snowflake), or
MariaDB/MySQL with ``--mysql-url`` (a database of its own: it is written to).

    python benchmarks/late_day_batch.py [--events 2000000] [--batches 3] [--mysql-url URL] [--json PATH]

No target: the figure to watch is late/early (1.0 would be a batch cost independent of the day).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.partition_build import land  # noqa: E402
from benchmarks.simulator_rate import PAIRS, free_port  # noqa: E402
from benchmarks.summary import Summary, median, peak_rss_bytes, runs  # noqa: E402
from crypto_platform.lake.raw import RAW_TABLES, apply_segments  # noqa: E402
from crypto_platform.lake.tables import DeltaLake  # noqa: E402
from crypto_platform.lake.writer import lake_of  # noqa: E402
from crypto_platform.local import stack as local_stack  # noqa: E402
from crypto_platform.local.stack import install_instance_config  # noqa: E402
from crypto_platform.settings import child_environment, load_settings  # noqa: E402
from crypto_platform.stream.manifest import iter_manifest, log_id  # noqa: E402
from crypto_platform.stream_batches import (  # noqa: E402
    CHECK_SEGMENTS_TAG,
    LANDING_LOG_TAG,
    SEGMENTS_TAG,
    DayBatch,
    StreamCursor,
    plan_batches,
)

JOB = "stream_batch"


def stream_batch_job() -> dg.JobDefinition:
    """The job as the code location defines it (module scope, so a run process can reconstruct it)."""
    from crypto_platform.definitions import defs

    return defs.resolve_job_def(JOB)


def run_one(segments: str, day: str, channels: str, log: str, checked: str = "") -> int:
    """In the run process: execute one round as the sensor requests it while the lake writer runs (its
    assets, and its checks: the lake checks too when ``checked`` gives their segment range); print the
    run id. The job is subset as the daemon subsets it for a run request with asset check keys."""
    from crypto_platform.sensors import batch_checks, batch_selection

    lake_checks = bool(checked)
    chans = channels.split(",")
    # The Snowflake copies come with the checked rounds (the same 300 s default), and the sessions'
    # MySQL copy too (the ledger has news on a connect or a disconnect, not in a typical round).
    news = {"snowflake": lake_checks, "ledger_news": lake_checks}
    job = dg.reconstructable(stream_batch_job).get_subset(
        asset_selection=set(batch_selection(chans, True, **news)),
        asset_check_selection=set(batch_checks(chans, True, lake_checks, **news) or []),
    )
    tags = {SEGMENTS_TAG: segments, LANDING_LOG_TAG: log, "dagster/partition": day}
    if checked:
        tags[CHECK_SEGMENTS_TAG] = checked
    result = dg.execute_job(job, instance=dg.DagsterInstance.get(), tags=tags)
    print(json.dumps({"run_id": result.run_id, "success": result.success, "peak_rss_bytes": peak_rss_bytes()}))
    return 0 if result.success else 1


class Runner:
    """Launches each batch in a fresh process and reads its timings back from the instance."""

    def __init__(self, env: dict[str, str], landing: Path, lake: DeltaLake) -> None:
        self.env = env
        self.landing = landing
        self.lake = lake
        self.log = log_id(landing) or ""
        os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]  # the project's dagster.yaml reads it
        self.instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])

    def batch(self, first: int, last: int, checked_from: int | None = None) -> dict[str, Any]:
        """One round over segments ``first``-``last`` (the lake checks too, from ``checked_from``)."""
        # The lake writer's part, as in production outside the run (not timed here).
        for spec in RAW_TABLES.values():
            apply_segments(self.lake, spec, self.landing, last)
        entries = list(iter_manifest(self.landing, after_seq=first - 1, through_seq=last))
        batches, _ = plan_batches(entries, StreamCursor(self.log, first - 1), self.log, len(entries) + 1)
        b: DayBatch = max(batches, key=lambda x: x.events)  # the segments' busiest day (one day here)
        started = time.perf_counter()
        command = [sys.executable, "-m", "benchmarks.late_day_batch", "--run-one", b.segment_range, b.day]
        command += [",".join(sorted(b.channels)), self.log]
        if checked_from is not None:
            command.append(f"{checked_from}-{last}")
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        wall = time.perf_counter() - started
        lines = [line for line in proc.stdout.splitlines() if line.startswith('{"run_id"')]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"the batch {b.segment_range} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        run_id = json.loads(lines[-1])["run_id"]
        stats = self.instance.get_run_stats(run_id)
        steps = {s.step_key: (s.end_time or 0) - (s.start_time or 0) for s in self.instance.get_run_step_stats(run_id)}
        return {
            "process": wall,
            "run": (stats.end_time or 0) - (stats.start_time or 0),
            "steps": steps,
            "events": b.events,
            "segments": b.segment_range,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--mysql-url", help="MariaDB/MySQL URL of a database for this run (default: the SQL stand-in)")
    parser.add_argument("--json", type=Path, help="also write the per-batch figures here (for a later comparison)")
    parser.add_argument("--run-one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        return run_one(*args.run_one)

    summary = Summary(
        "late_day_batch",
        f"{args.events:,} events landed (5 pairs, 5 s segments); {args.batches} early and {args.batches} late "
        "batches, each one stream_batch run in a fresh process (execute_job on a real instance)",
    )
    work = Path(tempfile.mkdtemp(prefix="late-day-batch-"))
    home = work / "dagster_home"
    # The repo's instance config with its stores inside this throwaway home.
    install_instance_config(load_settings({}, cwd=ROOT), home)
    overrides = {
        "CRYPTO_PROJECT_DIR": str(ROOT),
        "CRYPTO_STATE_DIR": str(work / "state"),
        "CRYPTO_DATA_DIR": str(work / "state" / "data"),
        "DAGSTER_HOME": str(home),
        "CRYPTO_FAKESNOW_PORT": str(free_port()),
        "CRYPTO_SIMULATOR_PORT": str(free_port()),
        "CRYPTO_SIMULATOR_S3_PORT": str(free_port()),
        # The landing log's pairs, so a gap repair asks the simulator for pairs it serves.
        "CRYPTO_PAIRS": PAIRS,
    }
    if args.mysql_url:
        overrides["MYSQL_URL"] = args.mysql_url
    env = child_environment(overrides)
    if not args.mysql_url:
        env.pop("MYSQL_URL", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    settings = load_settings(env, cwd=ROOT)
    fakesnow = local_stack.fakesnow_service(settings) if settings.snowflake.local else None
    paths = local_stack.stack_paths(settings)
    try:
        if fakesnow is not None:
            local_stack.start_service(fakesnow, paths, env, ready_timeout=120)
        day = land(settings.data_dir, args.events, trades_per_second=250)
        runner = Runner(env, settings.landing_dir, lake_of(settings))
        seqs = [int(e["seq"]) for e in day.entries]
        n = args.batches
        early = [runner.batch(s, s) for s in seqs[:n]]
        fill = runner.batch(seqs[n], seqs[-n - 1], checked_from=seqs[0])  # a checked round, as every 300 s
        late = [runner.batch(s, s) for s in seqs[-n:]]
    finally:
        if fakesnow is not None:
            local_stack.stop_service(fakesnow, paths)
        # The simulator a run started on demand for gap repair (the resource's autostart).
        local_stack.stop_service(local_stack.simulator_service(settings), paths)
        shutil.rmtree(work, ignore_errors=True)

    mysql = "MariaDB/MySQL (--mysql-url)" if args.mysql_url else "SQLite stand-in"
    snowflake = "fakesnow" if settings.snowflake.local else "Snowflake"
    summary.line(
        f"landed {day.events:,} events in {len(seqs)} segments (~{day.events // len(seqs):,} a segment); "
        f"SQL copies on the {mysql}, Snowflake copies on {snowflake}"
    )
    summary.line(f"before the late batches, one run took in {fill['events']:,} events ({fill['run']:.1f} s)")
    for name, batches in (("early (day nearly empty)", early), ("late (day nearly full)", late)):
        for what in ("run", "process"):
            values = [b[what] for b in batches]
            summary.line(f"{name:<26} {what:<8} median {median(values):6.2f} s (runs {runs(values, '.2f')})")
    launch = [b["process"] - b["run"] for b in early + late]
    summary.line(f"process start, imports and instance (process - run): median {median(launch):.2f} s")
    for what in ("run", "process"):
        ratio = median(b[what] for b in late) / median(b[what] for b in early)
        summary.line(f"late / early, {what}: {ratio:.2f}x")
    summary.line("steps, median seconds early -> late (each run's first read of the day is cold):")
    for step in sorted(late[0]["steps"], key=lambda k: -median(b["steps"].get(k, 0) for b in late)):
        e, l_ = (median(b["steps"].get(step, 0) for b in batches) for batches in (early, late))
        summary.line(f"  {step:40s} {e:6.2f} -> {l_:6.2f}")
    if args.json:
        args.json.write_text(json.dumps({"events": day.events, "early": early, "fill": fill, "late": late}, indent=1))
    return summary.finish(check=False)


if __name__ == "__main__":
    sys.exit(main())
