"""The lake writer: appends each sealed landing segment to the raw Delta tables within seconds, outside Dagster.

A long-lived process beside the ingester (``crypto-platform lake-writer``), one per data directory:

- ``lake_writer/lock``: ``flock``-ed for the writer's whole life, its pid inside; the kernel drops
  it however the process dies, so a second writer refuses to start and a restart never races a
  dying one;
- ``lake_writer/heartbeat.json``: replaced atomically after every pass: pid, time, each table's
  watermark and the last error (a failed pass is retried on the next one; nothing is skipped).

The lock, heartbeat, detached start and stop are the ingester's (:mod:`crypto_platform.stream.supervision`),
so the two background processes are found, started and stopped alike.

Each pass applies, table by table, every sealed segment after the table's watermark
(:func:`crypto_platform.lake.raw.apply_segments`: de-duplicated against the rows the segments can
collide with, one commit whose application transaction carries the last segment). So a writer that
died after a commit resumes after it, and one that died before it applies the segments again; a
pass behind the ingester catches up in one bigger commit instead of one per segment. A table's
read-decide-commit holds the same per-table lock as the Dagster assets, so a rebuild from the UI
and the writer never interleave.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crypto_platform.lake.raw import LANDING_APP_ID, RAW_TABLES, Applied, apply_segments
from crypto_platform.lake.tables import DeltaLake
from crypto_platform.settings import Settings
from crypto_platform.stream import supervision
from crypto_platform.stream.manifest import last_manifest_entry

log = logging.getLogger(__name__)
POLL_S = 0.5


class WriterAlreadyRunning(supervision.AlreadyRunning):
    """Another lake writer holds the lock for this data directory."""


def writer_dir(settings: Settings) -> Path:
    return settings.data_dir / "lake_writer"


def heartbeat_path(settings: Settings) -> Path:
    return writer_dir(settings) / "heartbeat.json"


def lock_path(settings: Settings) -> Path:
    return writer_dir(settings) / "lock"


def lake_of(settings: Settings) -> DeltaLake:
    return DeltaLake(settings.lake_url, settings.lake_storage_options() if "://" in settings.lake_url else {})


@contextlib.contextmanager
def table_lock(settings: Settings, table: str) -> Iterator[None]:
    """The per-table write lock the Dagster assets take too (``LakeResource.locked``)."""
    from crypto_platform.resources.lake import build_lake_resource

    with build_lake_resource(settings).locked(table):
        yield


def write_pass(
    lake: DeltaLake,
    landing: Path,
    lock: Callable[[str], contextlib.AbstractContextManager[None]],
    tables: tuple[str, ...] = tuple(RAW_TABLES),
) -> dict[str, Applied]:
    """Apply every sealed segment to each raw table; returns what each table took in."""
    newest = last_manifest_entry(landing)
    if newest is None:
        return {}
    upto = int(newest["seq"])
    out = {}
    for name in tables:
        with lock(name):
            out[name] = apply_segments(lake, RAW_TABLES[name], landing, upto)
    return out


def writer_lock(settings: Settings) -> supervision.PidLock:
    path = lock_path(settings)

    def refusal(pid: int | None) -> supervision.AlreadyRunning:
        return WriterAlreadyRunning(f"a lake writer (pid {pid}) already runs for {settings.data_dir} (lock {path})")

    return supervision.PidLock(path, refusal)


def running_pid(settings: Settings) -> int | None:
    """The running writer's pid (0 when it holds the lock but wrote no pid yet); None when none runs."""
    return supervision.lock_holder(lock_path(settings))


def stop_writer(settings: Settings, timeout: float = 30.0) -> str:
    """Stop the running writer (SIGTERM: it finishes its pass; SIGKILL after ``timeout``, which loses nothing:
    a pass that dies before its commit is applied again by the next writer)."""
    pid = running_pid(settings)
    if not pid:  # never signal pid 0: that is this process's whole group
        return "not running" if pid is None else "starting (no pid yet); left alone"
    return supervision.terminate(pid, lambda: running_pid(settings) is not None, timeout)


def start_detached(settings: Settings, ready_timeout: float = 20.0) -> int:
    """Start ``crypto-platform lake-writer`` in its own session (it outlives a code-server reload); its pid
    once it holds its lock, so the stream sensor's next tick sees it running instead of starting another."""
    log, lock = writer_dir(settings) / "writer.log", lock_path(settings)
    return supervision.start_holding(settings, "lake-writer", lock, log, ready_timeout, "the lake writer")


def read_heartbeat(settings: Settings) -> dict[str, Any] | None:
    return supervision.read_document(heartbeat_path(settings))


def run_writer(settings: Settings, stop: threading.Event, poll_s: float = POLL_S) -> int:
    """Write passes until ``stop`` is set (raises :class:`WriterAlreadyRunning` when another one runs)."""
    lake = lake_of(settings)
    with writer_lock(settings):
        log.info("lake writer %s: %s -> %s", os.getpid(), settings.landing_dir, settings.lake_url)
        error: dict[str, Any] | None = None
        while not stop.is_set():
            started = time.time()
            try:
                applied = write_pass(lake, settings.landing_dir, lambda t: table_lock(settings, t))
                error = None
            except Exception as exc:  # reported in the heartbeat; the next pass tries again
                log.exception("lake writer pass failed")
                applied, error = {}, {"message": str(exc)[:500], "ts": time.time()}
            for name, a in applied.items():
                if a.rows_added or a.replaced_ranges:
                    log.info("%s: segments through %d, %d rows added", name, a.through, a.rows_added)
            supervision.write_heartbeat_file(
                heartbeat_path(settings),
                {
                    "ts": time.time(),
                    "pass_s": round(time.time() - started, 3),
                    "watermarks": {n: lake.watermark(n, LANDING_APP_ID) for n in RAW_TABLES},
                    "last_error": error,
                },
            )
            stop.wait(poll_s)
    return 0


def add_arguments(name: str, parser: Any) -> None:
    parser.add_argument("--poll", type=float, default=POLL_S, help="seconds between passes when idle")


def run(args: Any) -> int:
    """``crypto-platform lake-writer``: the writer in the foreground until SIGTERM/SIGINT."""

    from crypto_platform.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        return run_writer(settings, stop, args.poll)
    except WriterAlreadyRunning as exc:
        print(f"crypto-platform lake-writer: {exc}", file=sys.stderr)
        return 3
