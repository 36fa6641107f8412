"""The stream sensor: keeps the ingester alive and turns sealed segments into runs, exactly once.

Each tick does bounded work, far below Dagster's 60 s evaluation limit: read the heartbeat, start
the ingester if none holds the lock (never two: the lock decides), list at most
``max_segments_per_tick`` new sealed segments, and request one run per UTC day they touch, keyed by
the segment range (crypto_platform.stream_batches). The cursor lives in Dagster's storage, so
restarts and reloads neither skip nor repeat a batch.

While one of its runs is queued or running, the sensor requests no other (back-pressure: the next
run takes every segment sealed meanwhile, so a slow run makes batches bigger, not the queue longer).
The runs are of the ``stream_batch`` job: the minute bars and alerts when the batch has trades or
bars, and the MySQL and Snowflake copies, with every check of those assets and of the raw tables.
The raw tables themselves are appended by the lake writer as segments seal, outside any run: a
round takes only the segments the writer has appended (so the run reads them from the lake) and
leaves the raw assets out. Without a running writer the run applies the segments to the raw tables
itself. Rounds come at most every ``CRYPTO_BATCH_INTERVAL_S``; the lake checks (raw tables on every
row appended since the last checked round, minute bars, alerts) join one at most every
``CRYPTO_CHECK_INTERVAL_S`` and the Snowflake copies at most every ``CRYPTO_SNOWFLAKE_INTERVAL_S``,
which keeps Dagster's own storage per day bounded (each check evaluation is three events in the
event log) and a Snowflake warehouse from never suspending. A run goes in one process (no process
per step: a step process costs a few seconds of imports, which is most of a micro-batch's budget),
and ``dagster.yaml`` lets one ``stream_batch`` run go at a time (tag ``crypto/landing_log``) so
batches apply in order; each stage keeps its own watermark, so a failed run's segments are taken in
by the next one. Ingester health (events/s, lag, reconnects, gaps, last error) is reported as an
observation of the ``landing_log`` asset, visible on its page in the UI: at most every 30 s while
all is well, on every tick with news; and in every tick's log.
"""

import dataclasses
import time
from collections.abc import Iterable

import dagster as dg

from crypto_platform.assets.alerts import crypto_alerts
from crypto_platform.assets.bars import minute_bars
from crypto_platform.assets.landing_log import landing_log
from crypto_platform.assets.raw import raw_aggregates, raw_book, raw_quotes, raw_trades
from crypto_platform.assets.warehouse import COPIES, WAREHOUSE_ASSETS
from crypto_platform.checks.bars import minute_bars_checks
from crypto_platform.checks.lake import raw_aggregates_checks, raw_book_checks, raw_quotes_checks, raw_trades_checks
from crypto_platform.lake import writer
from crypto_platform.lake.raw import LANDING_APP_ID, RAW_TABLES
from crypto_platform.lake.tables import DeltaLake
from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream.manifest import iter_manifest
from crypto_platform.stream_batches import CHECK_SEGMENTS_TAG, LANDING_LOG_TAG, SEGMENTS_TAG, StreamCursor, plan_batches

RAW_BY_CHANNEL = {"XT": raw_trades, "XQ": raw_quotes, "XA": raw_aggregates, "XAS": raw_aggregates, "XL2": raw_book}
# Built from trades and XA bars: selected (with both raw tables) when a batch has either.
BAR_INPUTS = {raw_trades.key, raw_aggregates.key}
STREAM_COPIES = [(c, WAREHOUSE_ASSETS[c.asset_name(b)]) for c in COPIES if c.stream for b in ("mysql", "snowflake")]
RAW_KEYS = {a.key for a in RAW_BY_CHANNEL.values()}
# Every check a stream_batch run can execute, in a stable order.
CHECK_KEYS: list[dg.AssetCheckKey] = [
    key
    for definition in (
        raw_trades_checks,
        raw_quotes_checks,
        raw_aggregates_checks,
        raw_book_checks,
        minute_bars_checks,
        crypto_alerts,
        *(asset for _, asset in STREAM_COPIES),
    )
    for key in definition.check_keys
]


def batch_selection(
    channels: Iterable[str], lake_writer: bool = False, snowflake: bool = True, ledger_news: bool = True
) -> list[dg.AssetKey]:
    """The assets a micro-batch run builds for a day whose new segments hold ``channels``.

    ``lake_writer``: the lake writer has already appended the segments to the raw tables, so the run
    leaves them out (their checks still run, on the new rows: :func:`batch_checks`). ``snowflake``:
    the round also loads the Snowflake copies. ``ledger_news``: the session ledger changed since the
    last round, so the MySQL copy of the sessions loads (a Snowflake round loads it anyway).
    """
    lake = {RAW_BY_CHANNEL[c].key for c in channels if c in RAW_BY_CHANNEL}
    if lake & BAR_INPUTS:
        lake |= BAR_INPUTS | {minute_bars.key, crypto_alerts.key}
    copies = []
    for copy, asset in STREAM_COPIES:
        to_snowflake = asset.key.path[0].startswith("snowflake_")
        if to_snowflake and not snowflake:
            continue
        # The session ledger's copy: in MySQL when the ledger has news, in Snowflake with its round
        # (which takes all the news since the last one).
        ledger_copy = copy.upstream == landing_log.key and (to_snowflake or ledger_news)
        if ledger_copy or copy.upstream in lake:
            copies.append(asset.key)
    built = lake - RAW_KEYS if lake_writer else lake
    return sorted(built, key=str) + copies


def batch_checks(
    channels: Iterable[str],
    lake_writer: bool = False,
    lake_checks: bool = True,
    snowflake: bool = True,
    ledger_news: bool = True,
) -> list[dg.AssetCheckKey] | None:
    """The checks of a micro-batch run. None: Dagster's default, every check of the selected assets.

    With the lake writer: the checks defined inside their assets always (the copies' parity: each
    load is compared with the lake; the alerts' check), and when ``lake_checks`` is due, the checks
    of the raw tables (on the rows appended since the last checked round) and of the minute bars.
    """
    if not lake_writer:
        return None
    channels = list(channels)
    assets = set(batch_selection(channels, lake_writer, snowflake, ledger_news))
    if lake_checks:
        assets |= {RAW_BY_CHANNEL[c].key for c in channels if c in RAW_BY_CHANNEL}
        return [key for key in CHECK_KEYS if key.asset_key in assets]
    # Checks defined inside their asset (the copies' parity, the alerts' check) go wherever it goes:
    # Dagster cannot run such an asset without them.
    inside = {asset.key for _, asset in STREAM_COPIES} | {crypto_alerts.key}
    return [key for key in CHECK_KEYS if key.asset_key in assets & inside]


stream_batch = dg.define_asset_job(
    "stream_batch",
    selection=dg.AssetSelection.assets(*batch_selection(RAW_BY_CHANNEL)),
    executor_def=dg.in_process_executor,
    tags={"dagster/max_retries": "2"},  # dagster.yaml enables run retries for jobs that ask
    description="One micro-batch of sealed landing segments: raw tables, minute bars, alerts and their warehouse "
    "copies for one UTC day (launched by stream_sensor; each run selects what its segments hold).",
)


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# A run in flight longer than this no longer holds new batches back (it is stuck; run monitoring
# will fail it): the stream must not stall behind it.
STUCK_AFTER_S = 600.0


def batch_in_flight(instance: dg.DagsterInstance, log_id: str) -> str | None:
    """The id of a stream_batch run of this landing log that is queued or running, if any."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=IN_FLIGHT, tags={LANDING_LOG_TAG: log_id}), limit=5
    )
    fresh = [r for r in records if time.time() - r.create_timestamp.timestamp() < STUCK_AFTER_S]
    return fresh[0].dagster_run.run_id if fresh else None


# A round runs the lake checks when this many appended segments (five minutes at the default 5 s
# seal) are unchecked, whatever CRYPTO_CHECK_INTERVAL_S says.
CHECK_AFTER_SEGMENTS = 60
# The lake writer's appends are reported to Dagster at most this often per table and day.
REPORT_EVERY_S = 30.0


def lake_watermark(lake: DeltaLake) -> int:
    """The last landing segment every raw table has taken in (0: none)."""
    return min((lake.watermark(name, LANDING_APP_ID) or 0) for name in RAW_TABLES)


def writer_materializations(
    stream: StreamResource, cursor: StreamCursor, now: float
) -> tuple[list[dg.AssetMaterialization], StreamCursor]:
    """Runless materializations of what the lake writer appended since the last report, one per table and day.

    Coalesced: nothing is reported within ``REPORT_EVERY_S`` of the last report, so a table's
    partition gets at most one event per 30 s however often segments seal; the UI's partition
    status and freshness stay true without a run per segment.
    """
    if now - cursor.reported_at < REPORT_EVERY_S:
        return [], cursor
    lake = writer.lake_of(stream.settings())
    through = lake_watermark(lake)
    if through <= cursor.reported_seq:
        return [], cursor
    touched: dict[tuple[str, str], int] = {}
    for entry in iter_manifest(stream.landing_dir, after_seq=cursor.reported_seq, through_seq=through):
        for day, channels in (entry.get("days") or {}).items():
            for name, spec in RAW_TABLES.items():
                if spec.channels & set(channels):
                    touched[(name, day)] = int(entry["seq"])
    events = [
        dg.AssetMaterialization(
            asset_key=name,
            partition=day,
            description="appended by the lake writer",
            metadata={"mode": "lake writer", "segments_through": through, "dagster/row_count": lake.count(name, day)},
        )
        for (name, day) in sorted(touched)
    ]
    return events, dataclasses.replace(cursor, reported_seq=through, reported_at=now)


def health_metadata(stream: StreamResource, action: str) -> dict[str, str | int | float]:
    status = stream.status()
    beat = status.heartbeat or {}
    ledger_gaps = stream.gaps()
    last_event_ms = beat.get("last_event_ms")
    error = beat.get("last_error") or {}
    return {
        "ingester": action,
        "state": str(beat.get("state", "unknown")),
        "pid": status.pid or 0,
        "heartbeat_age_s": round(status.heartbeat_age_s, 1) if status.heartbeat_age_s is not None else -1.0,
        "events_per_s": float(beat.get("events_per_s") or 0.0),
        "lag_s": round(time.time() - last_event_ms / 1000, 1) if last_event_ms else -1.0,
        "reconnects": int(beat.get("reconnects") or 0),
        "gaps": len(ledger_gaps),
        "gap_seconds": round(sum(g.seconds or 0.0 for g in ledger_gaps), 1),
        "quarantined_frames": int(beat.get("quarantined") or 0),
        "last_error": str(error.get("message", "none")),
        # "disk full at <path> (<n> free)" while the ingester waits for room on a full disk.
        "disk": str(beat.get("disk_full") or "ok"),
    }


@dg.sensor(
    name="stream_sensor",
    job=stream_batch,
    minimum_interval_seconds=5,  # the daemon's loop is 5 s at best; every second here is freshness
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Keeps the ingester running (starts it when its lock is free) and launches one run per UTC day "
        "touched by newly sealed landing segments; reports ingester health on landing_log."
    ),
)
def stream_sensor(context: dg.SensorEvaluationContext, stream: StreamResource) -> dg.SensorResult:
    try:
        action = stream.ensure_running()
    except Exception as exc:  # reported, and the sealed segments are still handed over
        action = f"could not start the ingester: {exc}"
    try:
        writer_action = stream.ensure_writer()
    except Exception as exc:  # reported; the stream runs still apply the segments themselves
        writer_action = f"could not start the lake writer: {exc}"
    lake_writer = writer_action == "running" or writer_action.startswith("started")
    context.log.info(f"ingester: {action}; lake writer: {writer_action}")
    health = {**health_metadata(stream, action), "lake_writer": writer_action}
    observation = dg.AssetObservation(asset_key=landing_log.key, metadata=health)

    log = stream.log_id()
    cursor = StreamCursor.decode(context.cursor)
    if log is None:
        return dg.SensorResult(skip_reason=f"no landing log yet; ingester {action}", asset_events=[observation])
    if cursor.log_id != log:
        cursor = StreamCursor(log_id=cursor.log_id, seq=cursor.seq)  # a new landing log: report from its start
    appended, cursor = writer_materializations(stream, cursor, time.time())
    # Health goes to the event log at most every REPORT_EVERY_S while all is well (17,280 ticks a day
    # would each store one), and on every tick that has news: a start, a failure, a stale heartbeat.
    calm = action.startswith("running") and writer_action == "running" and "stale" not in action
    due = time.time() - cursor.observed_at >= REPORT_EVERY_S
    appended_events: list[dg.AssetObservation | dg.AssetMaterialization] = list(appended)
    if not calm or due:
        appended_events.insert(0, observation)
    if calm and due:
        cursor = dataclasses.replace(cursor, observed_at=time.time())
    changed = bool(appended) or (calm and due)
    start = cursor.seq if cursor.log_id == log else 0
    busy = batch_in_flight(context.instance, log)
    if busy is not None:
        # Back-pressure: the next run takes every segment sealed meanwhile, so a slow run makes the
        # next batch bigger instead of queueing one run per tick behind it.
        waiting = f"segments after {start} wait for stream_batch run {busy} to finish"
        context.log.info(waiting)
        return dg.SensorResult(
            skip_reason=waiting, cursor=cursor.encode() if changed else None, asset_events=appended_events
        )
    now = time.time()
    wait_s = cursor.launched_at + stream.batch_interval_s - now
    if wait_s > 0:
        # The cadence: segments sealed meanwhile wait for the next round (the lake already has them).
        waiting = f"next stream_batch round in {wait_s:.0f}s (CRYPTO_BATCH_INTERVAL_S={stream.batch_interval_s:g})"
        return dg.SensorResult(
            skip_reason=waiting, cursor=cursor.encode() if changed else None, asset_events=appended_events
        )
    sealed = stream.sealed_after(start)
    if lake_writer:
        # A round takes the segments the lake writer has appended: the run then reads them from the
        # raw tables, and the rest wait for the next round.
        through = lake_watermark(writer.lake_of(stream.settings()))
        sealed = [e for e in sealed if int(e["seq"]) <= through]
    batches, new_cursor = plan_batches(sealed, cursor, log, stream.max_segments_per_tick)
    # The lake checks and the Snowflake copies join a round at their own cadence (every round without
    # the writer: the run then builds the raw tables, and Dagster runs every check of what it builds).
    # Also due once a round's segments would leave many unchecked (a backlog taken in by rounds back to
    # back): the checked range, and what a checked round reads, stays a few minutes of the feed.
    unchecked = (batches[-1].last_seq if batches else cursor.checked_seq) - cursor.checked_seq
    checks_due = (
        not lake_writer or now - cursor.checked_at >= stream.check_interval_s or unchecked >= CHECK_AFTER_SEGMENTS
    )
    snowflake_due = not lake_writer or now - cursor.snowflake_at >= stream.snowflake_interval_s
    ledger_bytes = stream.ledger_path.stat().st_size if stream.ledger_path.exists() else 0
    ledger_news = not lake_writer or ledger_bytes != cursor.ledger_bytes
    runs = []
    for b in batches:
        tags = {SEGMENTS_TAG: b.segment_range, LANDING_LOG_TAG: log}
        if checks_due and lake_writer:
            # Every segment since the last checked round: no appended row goes unchecked.
            tags[CHECK_SEGMENTS_TAG] = f"{min(cursor.checked_seq + 1, b.first_seq)}-{b.last_seq}"
        runs.append(
            dg.RunRequest(
                run_key=b.run_key(log),
                partition_key=b.day,
                asset_selection=batch_selection(b.channels, lake_writer, snowflake_due, ledger_news),
                asset_check_keys=batch_checks(b.channels, lake_writer, checks_due, snowflake_due, ledger_news),
                tags=tags,
            )
        )
    launched = bool(batches)
    new_cursor = dataclasses.replace(
        new_cursor,
        reported_seq=cursor.reported_seq,
        reported_at=cursor.reported_at,
        launched_at=now if launched else cursor.launched_at,
        observed_at=cursor.observed_at,
        checked_seq=new_cursor.seq if launched and checks_due else cursor.checked_seq,
        checked_at=now if launched and checks_due else cursor.checked_at,
        snowflake_at=now if launched and snowflake_due else cursor.snowflake_at,
        ledger_bytes=ledger_bytes if launched else cursor.ledger_bytes,
    )
    summary = (
        f"segments {start + 1}-{new_cursor.seq}: {len(runs)} run(s) for {', '.join(b.day for b in batches)}"
        if runs
        else "no new sealed segments"
    )
    context.log.info(f"{summary}; {health['events_per_s']} events/s, lag {health['lag_s']}s, gaps {health['gaps']}")
    return dg.SensorResult(
        run_requests=runs,
        cursor=new_cursor.encode(),
        skip_reason=None if runs else f"{summary}; ingester {action}",
        asset_events=appended_events,
    )
