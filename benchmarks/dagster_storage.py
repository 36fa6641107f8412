"""What a stream micro-batch costs in Dagster's own storage, per run and per day at each cadence, and
whether run retention keeps it flat.

A real Dagster instance (the repo's ``dagster.yaml``: SQLite storage in a temporary DAGSTER_HOME)
executes the real ``stream_batch`` job, one run per sealed landing segment of a small simulator
landing log (``partition_build.land``), with the selection and the tags the stream sensor gives its
runs, against the zero-setup stand-ins (SQLite for MySQL, the local fakesnow server). Storage is
every file under DAGSTER_HOME (run and event-log databases, each run's own event-log file, captured
compute logs), measured before and after each run; the figure is the median growth per run.

Then two retention windows: each runs ``--window`` more batches and prunes what is older than now
(``prune_stream_runs`` with the cutoff at the window's end), as the daily job does to what is older
than ``CRYPTO_RUN_RETENTION_DAYS``. Flat means the second window leaves the storage where the first
left it (within ``FLAT_TOLERANCE`` of one window's growth).

The runs are those of the default cadences: plain rounds (bars, alerts, MySQL copies with their
parity) every ``CRYPTO_BATCH_INTERVAL_S``, and one round per ``CRYPTO_CHECK_INTERVAL_S`` with the
lake checks and the Snowflake copies; both kinds are measured and a day counts each at its rate.

Also measured: the runless ``landing_log`` observation the stream sensor records at most every 30 s
(whatever the cadence); the windows record them too and retention prunes them with the runs
(``prune_runless_observations``).

    python benchmarks/dagster_storage.py [--runs 5] [--window 5] [--check]

What is not measured here: a run launched by the daemon also records its queueing and launch (about
six small events more than a run executed in one process), and the sensor's ticks live in the
schedule storage, bounded by dagster.yaml's tick retention.

Targets (``--check``): at most 1 GB of Dagster storage a day at the default 30 s cadence, and flat
once retention applies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.partition_build import DAY, land  # noqa: E402
from benchmarks.simulator_rate import PAIRS, free_port  # noqa: E402
from crypto_platform.definitions import build_definitions  # noqa: E402
from crypto_platform.lake.raw import RAW_TABLES, apply_segments  # noqa: E402
from crypto_platform.local import stack as local_stack  # noqa: E402
from crypto_platform.local.stack import install_instance_config  # noqa: E402
from crypto_platform.resources.lake import build_lake_resource  # noqa: E402
from crypto_platform.run_retention import prune_runless_observations, prune_stream_runs  # noqa: E402
from crypto_platform.sensors import batch_checks, batch_selection, health_metadata  # noqa: E402
from crypto_platform.settings import child_environment, load_settings  # noqa: E402
from crypto_platform.stream.manifest import log_id  # noqa: E402
from crypto_platform.stream_batches import CHECK_SEGMENTS_TAG, LANDING_LOG_TAG, SEGMENTS_TAG  # noqa: E402

CADENCES_S = (5, 30, 60, 300)
DEFAULT_CADENCE_S = 30
RETENTION_DAYS = 7
TARGET_BYTES_PER_DAY = 1_000_000_000
FLAT_TOLERANCE = 0.10
# The stream sensor records the ingester's health at most this often (crypto_platform.sensors).
OBSERVE_EVERY_S = 30
OBSERVATIONS_PER_DAY = 86_400 // OBSERVE_EVERY_S
CHECK_INTERVAL_S = 300  # CRYPTO_CHECK_INTERVAL_S and CRYPTO_SNOWFLAKE_INTERVAL_S defaults
OBSERVATIONS = 200


def storage_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file())


def storage_parts(home: Path) -> dict[str, int]:
    """Bytes by kind: the run's own event-log files, the shared databases, captured compute logs."""
    parts = {"run event-log files": 0, "index and run databases": 0, "compute logs": 0, "other": 0}
    for p in home.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(home).parts
        if rel[:2] == ("history", "runs") and not p.name.startswith("index.db"):
            parts["run event-log files"] += p.stat().st_size
        elif rel[0] == "history":
            parts["index and run databases"] += p.stat().st_size
        elif rel[0] == "storage":
            parts["compute logs"] += p.stat().st_size
        else:
            parts["other"] += p.stat().st_size
    return parts


def logical_bytes(instance: dg.DagsterInstance, run_id: str) -> tuple[int, int]:
    """A run's stored event text and check-execution rows: what any SQL storage keeps, before indexes."""
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
    from sqlalchemy import func, select

    storage = instance.event_log_storage
    events, checks = SqlEventLogStorageTable, AssetCheckExecutionsTable
    with storage.run_connection(run_id) as conn:  # type: ignore[attr-defined]
        event_text = conn.execute(select(func.sum(func.length(events.c.event))).where(events.c.run_id == run_id))
        event_bytes = int(event_text.scalar() or 0)
    with storage.index_connection() as conn:  # type: ignore[attr-defined]
        check_text = conn.execute(
            select(func.sum(func.length(checks.c.evaluation_event))).where(checks.c.run_id == run_id)
        )
        check_bytes = int(check_text.scalar() or 0)
    return event_bytes, check_bytes


def event_kinds(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[int, int]]:
    """A run's events by kind: (count, serialized bytes), biggest first."""
    from dagster._serdes import serialize_value

    kinds: dict[str, list[int]] = {}
    for record in instance.all_logs(run_id):
        kind = record.dagster_event.event_type_value if record.dagster_event else "log message"
        entry = kinds.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += len(serialize_value(record))
    return {k: (n, b) for k, (n, b) in sorted(kinds.items(), key=lambda kv: -kv[1][1])}


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs measured one by one")
    parser.add_argument("--window", type=int, default=5, help="runs per simulated retention window")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dagster-storage-"))
    home = work / "dagster_home"
    # The repo's instance config with its stores inside this throwaway home.
    install_instance_config(load_settings({}, cwd=ROOT), home)
    env = {
        "CRYPTO_PROJECT_DIR": str(ROOT),
        "CRYPTO_STATE_DIR": str(work),
        "DAGSTER_HOME": str(home),
        "CRYPTO_FAKESNOW_PORT": str(free_port()),
        # The landing log's pairs, so a gap repair asks the simulator for pairs it serves.
        "CRYPTO_PAIRS": PAIRS,
        "CRYPTO_SIMULATOR_PORT": str(free_port()),
        "CRYPTO_SIMULATOR_S3_PORT": str(free_port()),
    }
    os.environ.update(env)  # the run's resources read the environment, as a run worker does
    settings = load_settings(env)
    os.environ["DAGSTER_HOME"] = str(home)  # DagsterInstance.get() reads it, as a run worker does
    fakesnow = local_stack.fakesnow_service(settings)
    paths = local_stack.stack_paths(settings)
    try:
        local_stack.start_service(fakesnow, paths, child_environment(), ready_timeout=120)
        segments = 1 + args.runs + 2 * args.window
        day = land(settings.data_dir, 4_000 * segments, trades_per_second=50)
        seqs = [int(e["seq"]) for e in day.entries]
        if len(seqs) < segments:
            raise SystemExit(f"the landing log has {len(seqs)} segments of the day, {segments} needed")
        channels = {"XT", "XQ", "XA", "XAS"}
        # Runs as the sensor requests them while the lake writer runs (the default): the writer has
        # appended the segment; a plain round builds bars, alerts and the MySQL copies (with their
        # parity), and one round per CRYPTO_CHECK_INTERVAL_S also runs the lake checks and the
        # Snowflake copies.
        stream_batch = build_definitions(settings).resolve_job_def("stream_batch")

        def subset(checked: bool) -> dg.JobDefinition:
            # The session ledger changes on a connect or disconnect, not in a typical round.
            news = {"snowflake": checked, "ledger_news": False}
            return stream_batch.get_subset(
                asset_selection=set(batch_selection(channels, True, **news)),
                asset_check_selection=set(batch_checks(channels, True, checked, **news) or []),
            )

        jobs = {False: subset(False), True: subset(True)}
        landing_log_id = log_id(settings.landing_dir) or ""
        lake = build_lake_resource(settings)
        checked_through = [0]
        with dg.DagsterInstance.get() as instance:

            def batch(seq: int, checked: bool = False) -> int:
                for name in RAW_TABLES:
                    apply_segments(lake.tables(), RAW_TABLES[name], settings.landing_dir, seq)
                tags = {
                    "dagster/sensor_name": "stream_sensor",
                    LANDING_LOG_TAG: landing_log_id,
                    SEGMENTS_TAG: f"{seq}-{seq}",
                }
                if checked:
                    tags[CHECK_SEGMENTS_TAG] = f"{checked_through[0] + 1}-{seq}"
                    checked_through[0] = seq
                before = storage_bytes(home)
                result = jobs[checked].execute_in_process(
                    instance=instance, partition_key=DAY, tags=tags, raise_on_error=False
                )
                if not result.success:
                    raise SystemExit(f"the stream_batch run of segment {seq} failed")
                return storage_bytes(home) - before

            queue = iter(seqs)
            batch(next(queue), checked=True)  # the first run creates the databases: not a typical run
            parts_before = storage_parts(home)
            per_run = [batch(next(queue)) for _ in range(args.runs)]
            parts = {k: (v - parts_before[k]) / args.runs for k, v in storage_parts(home).items()}
            last_run = instance.get_run_records(limit=1)[0].dagster_run.run_id
            events = len(instance.all_logs(last_run))
            event_text, check_text = logical_bytes(instance, last_run)
            kinds = event_kinds(instance, last_run)
            per_checked = [batch(next(queue), checked=True) for _ in range(max(2, args.runs // 2))]
            checked_run = instance.get_run_records(limit=1)[0].dagster_run.run_id
            checked_events = len(instance.all_logs(checked_run))
            bytes_per_run = statistics.median(per_run)
            bytes_per_checked = statistics.median(per_checked)

            def runs_bytes_per_day(cadence: int) -> float:
                runs = 86_400 // cadence
                checked = min(runs, 86_400 // CHECK_INTERVAL_S)
                return checked * bytes_per_checked + (runs - checked) * bytes_per_run

            from crypto_platform.resources.stream import build_stream_resource

            health = health_metadata(build_stream_resource(settings), "running")

            def observe(n: int) -> None:
                for _ in range(n):
                    instance.report_runless_asset_event(dg.AssetObservation(asset_key="landing_log", metadata=health))

            before = storage_bytes(home)
            observe(OBSERVATIONS)
            bytes_per_observation = (storage_bytes(home) - before) / OBSERVATIONS

            # Two windows at the default cadence: a run and the sensor's 6 ticks (observations) per 30 s.
            windows = []
            for _ in range(2):
                start = storage_bytes(home)
                for i in range(args.window):
                    batch(next(queue), checked=i % (CHECK_INTERVAL_S // DEFAULT_CADENCE_S) == 0)
                    observe(DEFAULT_CADENCE_S // OBSERVE_EVERY_S)
                grown = storage_bytes(home) - start
                cutoff = datetime.now(UTC)
                started = time.perf_counter()
                report = prune_stream_runs(instance, cutoff, log=lambda _: None)
                report.observations_deleted = prune_runless_observations(instance, cutoff)
                windows.append((grown, report, storage_bytes(home), time.perf_counter() - started))

        for checked in (False, True):
            assets = len(batch_selection(channels, True, snowflake=checked, ledger_news=False))
            checks = len(batch_checks(channels, True, checked, snowflake=checked, ledger_news=False) or [])
            kind = "round with lake checks and Snowflake copies" if checked else "plain round"
            print(f"stream_batch {kind}: {assets} assets and {checks} checks, one 5 s segment (~2,500 events)")
        print(
            "  events of a plain round by kind (count, bytes): "
            + ", ".join(f"{k} {n} ({b:,})" for k, (n, b) in kinds.items())
        )
        print(
            f"Dagster storage per plain round: median {bytes_per_run:,.0f} bytes ({events} events in the event log); "
            f"runs {[f'{b:,}' for b in per_run]}"
        )
        print(
            f"Dagster storage per checked round (one per {CHECK_INTERVAL_S} s): median {bytes_per_checked:,.0f} bytes "
            f"({checked_events} events); runs {[f'{b:,}' for b in per_checked]}"
        )
        print("  mean per run: " + ", ".join(f"{k} {v:,.0f}" for k, v in parts.items()))
        print(
            f"  of which stored text: {event_text:,} bytes of event records and {check_text:,} of check-execution "
            f"rows (a MySQL instance stores these once, plus its indexes; SQLite also copies asset and check "
            f"events into its index)"
        )
        observations_per_day = bytes_per_observation * OBSERVATIONS_PER_DAY
        print(
            f"landing_log observations (at most one per {OBSERVE_EVERY_S} s at any cadence): "
            f"{bytes_per_observation:,.0f} bytes each, {mb(observations_per_day)} a day"
        )
        print("cadence   runs/day   runs' storage/day   with observations   kept at 7 days retention")
        for cadence in CADENCES_S:
            runs_per_day = 86_400 // cadence
            per_day = runs_bytes_per_day(cadence)
            total = per_day + observations_per_day
            mark = "  <- default" if cadence == DEFAULT_CADENCE_S else ""
            print(
                f"{cadence:>5} s   {runs_per_day:>8,}   {mb(per_day):>17}   {mb(total):>17}   "
                f"{mb(total * RETENTION_DAYS):>12}{mark}"
            )
        for i, (grown, report, after, seconds) in enumerate(windows, 1):
            print(
                f"window {i}: +{mb(grown)} over {args.window} runs; retention deleted {report.deleted} runs "
                f"in {seconds:.2f} s "
                f"({mb(report.bytes_removed)}) and {report.observations_deleted} observations, kept "
                f"{report.kept_for_ui} run(s) for the UI; storage after: {mb(after)}"
            )
        default_per_day = runs_bytes_per_day(DEFAULT_CADENCE_S) + observations_per_day
        drift = windows[1][2] - windows[0][2]
        flat = drift <= FLAT_TOLERANCE * windows[1][0]
        print(
            f"target <= {mb(TARGET_BYTES_PER_DAY)}/day at {DEFAULT_CADENCE_S} s: {mb(default_per_day)} "
            f"({'met' if default_per_day <= TARGET_BYTES_PER_DAY else 'MISSED'})"
        )
        print(
            f"target flat under retention: second window left {drift:+,} bytes vs the first "
            f"(tolerance {FLAT_TOLERANCE:.0%} of a window's growth: {'met' if flat else 'MISSED'})"
        )
        missed = default_per_day > TARGET_BYTES_PER_DAY or not flat
        return 1 if args.check and missed else 0
    finally:
        local_stack.stop_service(fakesnow, paths)
        # The simulator a run started on demand for gap repair (the resource's autostart).
        local_stack.stop_service(local_stack.simulator_service(settings), paths)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
