"""Keeping exactly one ingester alive per data directory: lock, heartbeat, detached start, stop.

Polygon allows one connection per cluster per key, and the ingester must outlive code-server
reloads, so it runs as a detached process and these files are how everyone else
talks to it:

- ``ingester/lock``: ``flock``-ed by the running ingester for its whole life, with its pid inside.
  A lock, not a pid file, decides liveness: the kernel drops it when the process dies, however it
  dies, and a recycled pid or a zombie cannot fake it.
- ``ingester/heartbeat.json``: replaced atomically about once a second with the ingester's state
  and counters (never the key). Stale means hung or dead.
- ``ingester/subscriptions.json``: the wanted topics, when changed at run time; the ingester
  applies it to the live session and every later session subscribes to all of it.

The lake writer (``lake/writer.py``) is supervised the same way, with files of its own: the lock
with its pid (:class:`PidLock`, :func:`lock_holder`), the heartbeat (:func:`write_heartbeat_file`,
:func:`read_document`), the detached start (:func:`spawn_cli`) and the stop (:func:`terminate`)
are written once, here, so both processes are found, started and stopped alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from crypto_platform.durable import is_disk_full, replace_file
from crypto_platform.settings import Settings, child_environment

STALE_AFTER_S = 15.0


class AlreadyRunning(RuntimeError):
    """Another process holds a single-instance lock."""


class IngesterAlreadyRunning(AlreadyRunning):
    """Another ingester holds the lock for this data directory."""


class PidLock:
    """A single-instance lock: ``flock(2)`` on ``path``, the holder's pid inside, held until released or exit.

    A lock, not a pid file, decides liveness: the kernel drops it when the process dies, however it
    dies, and a recycled pid or a zombie cannot fake it. ``refusal`` makes the error raised when
    another process holds it (given that holder's pid, when it wrote one).
    """

    def __init__(self, path: Path, refusal: Callable[[int | None], AlreadyRunning]) -> None:
        self.path = path
        self._refusal = refusal
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refusal(lock_holder(self.path) or None) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def fileno(self) -> int:
        """The locked descriptor, for a helper process that must keep the lock while it lives."""
        assert self._fd is not None, "the lock is not held"
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(path: Path) -> int | None:
    """The pid of the process holding the :class:`PidLock` at ``path``; 0 while it holds it but has
    not written its pid yet; None when no process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None
    finally:
        os.close(fd)  # closing drops our probe lock too


def write_heartbeat_file(path: Path, state: dict[str, Any]) -> None:
    """Replace a heartbeat atomically with ``state``, this process's pid and the time (``ts_ns``).

    On a full disk it raises ``DiskFull`` and the old heartbeat stays.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, orjson.dumps({**state, "pid": os.getpid(), "ts_ns": time.time_ns()}))


def read_document(path: Path) -> dict[str, Any] | None:
    """A JSON document written by :func:`write_heartbeat_file` (or ``replace_file``); None when absent or unreadable."""
    try:
        return dict(orjson.loads(path.read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError, TypeError, ValueError):
        return None


def spawn_cli(settings: Settings, command: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``crypto-platform <command>`` detached (its own session: it outlives a code-server reload).

    The child gets its settings through the environment (absolute paths), never on its command
    line; its output goes to ``log``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = child_environment(
        {
            "CRYPTO_PROJECT_DIR": str(settings.project_dir),
            "CRYPTO_STATE_DIR": str(settings.state_dir),
            "CRYPTO_DATA_DIR": str(settings.data_dir),
        }
    )
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "crypto_platform.cli", command],
            cwd=settings.project_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def ingester_dir(settings: Settings) -> Path:
    return settings.data_dir / "ingester"


def _lock_path(settings: Settings) -> Path:
    return ingester_dir(settings) / "lock"


def heartbeat_path(settings: Settings) -> Path:
    return ingester_dir(settings) / "heartbeat.json"


def subscriptions_path(settings: Settings) -> Path:
    return ingester_dir(settings) / "subscriptions.json"


def log_path(settings: Settings) -> Path:
    return ingester_dir(settings) / "ingester.log"


class IngesterLock(PidLock):
    """The ingester's single-instance lock, held from ``acquire`` until ``release`` or process exit."""

    def __init__(self, settings: Settings) -> None:
        data_dir = settings.data_dir

        def refusal(pid: int | None) -> AlreadyRunning:
            return IngesterAlreadyRunning(
                f"another ingester (pid {pid}) is already running for {data_dir}: "
                "stop it with `crypto-platform stream --stop`, or point CRYPTO_DATA_DIR elsewhere"
            )

        super().__init__(_lock_path(settings), refusal)


def holder_pid(settings: Settings) -> int | None:
    """The pid of the running ingester (0 while it starts); None when no process holds the lock."""
    return lock_holder(_lock_path(settings))


def write_heartbeat(settings: Settings, state: dict[str, Any]) -> None:
    """Replace the ingester's heartbeat (:func:`write_heartbeat_file`)."""
    write_heartbeat_file(heartbeat_path(settings), state)


class DiskReserve:
    """A little space held back on the data directory's disk, given up when the disk is full.

    Once the landing log cannot write, the ingester still has to record why: the session's last
    ledger line, the heartbeat saying "disk full", the sealer's last manifest lines. Deleting this
    file makes room for them; it is taken again before reading resumes, and reading resumes only
    when it can be (so there is room for more than the reserve).
    """

    SIZE = 256 * 1024

    def __init__(self, settings: Settings) -> None:
        self.path = ingester_dir(settings) / "reserve"

    def take(self) -> bool:
        """Hold the reserve (written out, so the space is really taken); False when it does not fit."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size == self.SIZE:
                return True
            replace_file(self.path, bytes(self.SIZE))
            return True
        except OSError as exc:
            if is_disk_full(exc):
                return False
            raise

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class IngesterStatus:
    """What the files say about the ingester right now."""

    pid: int | None
    heartbeat: dict[str, Any] | None
    heartbeat_age_s: float | None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def stale(self) -> bool:
        return self.heartbeat_age_s is None or self.heartbeat_age_s > STALE_AFTER_S

    @property
    def healthy(self) -> bool:
        return self.running and not self.stale


def read_status(settings: Settings) -> IngesterStatus:
    pid = holder_pid(settings)
    heartbeat = read_document(heartbeat_path(settings))
    age = None if heartbeat is None else max(0.0, (time.time_ns() - int(heartbeat["ts_ns"])) / 1e9)
    return IngesterStatus(pid, heartbeat, age)


def start_detached(settings: Settings, ready_timeout: float = 20.0) -> int:
    """Start ``crypto-platform stream`` as a detached process; return its pid once it holds the lock.

    Refuses (``IngesterAlreadyRunning``) when a live ingester holds the lock. The child gets its
    settings through the environment (absolute paths), never on its command line.
    """
    running = holder_pid(settings)
    if running is not None:
        raise IngesterAlreadyRunning(f"an ingester (pid {running}) is already running")
    return start_holding(settings, "stream", _lock_path(settings), log_path(settings), ready_timeout, "the ingester")


def start_holding(settings: Settings, command: str, lock: Path, log: Path, ready_timeout: float, what: str) -> int:
    """:func:`spawn_cli` ``command``; its pid once it holds ``lock`` (so a caller asking again meanwhile
    sees it running and never starts a second one); ``RuntimeError`` with its log's tail if it exits first."""
    proc = spawn_cli(settings, command, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if lock_holder(lock) == proc.pid:
            return proc.pid
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(f"{what} exited at start (code {proc.returncode}): {' | '.join(tail)}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not take its lock within {ready_timeout:.0f}s; see {log}")


def terminate(pid: int, running: Callable[[], bool], timeout: float) -> str:
    """SIGTERM ``pid``, wait until ``running()`` says it let go of its lock; SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running():
            return f"stopped (pid {pid})"
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return f"killed (pid {pid}) after {timeout:.0f}s without a clean stop"


def stop_ingester(settings: Settings, timeout: float = 30.0) -> str:
    """Stop the running ingester (SIGTERM: it seals and closes cleanly; SIGKILL after ``timeout``)."""
    pid = holder_pid(settings)
    if not pid:  # never signal pid 0: that is this process's whole group
        return "not running" if pid is None else "starting (no pid yet); left alone"
    return terminate(pid, lambda: holder_pid(settings) is not None, timeout)


def request_topics(settings: Settings, topics: list[str]) -> None:
    """Change the wanted subscriptions of the running (and every later) ingester session."""
    path = subscriptions_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, orjson.dumps({"topics": sorted(set(topics))}))


def requested_topics(settings: Settings) -> list[str] | None:
    try:
        return list(orjson.loads(subscriptions_path(settings).read_bytes())["topics"])
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
