"""Files that survive a crash at any moment and a full disk: the one place for how the platform writes.

Every file the platform keeps is either an append-only NDJSON log (landing segments, the manifest,
the session ledger, quarantine, and what the lake writer keeps) or a small document replaced whole
(the heartbeat). The rules, each in one function here and reused by every writer:

- **A torn tail is cut before anything is appended** (:func:`cut_torn_tail`, done by
  :class:`AppendFile` on open). A write cut short by a crash or a full disk leaves a last line
  without its newline; appending after it would glue the next record onto it and make a line that
  is no JSON in the middle of the file, which no reader can skip safely.
- **A short or failed append is finished or undone at once** (:func:`finish_short_write`,
  :func:`undo_short_write`): the file is cut back to its last complete record and the error
  raised, as :class:`DiskFull` when the disk is full. Linux writes what fits and returns a short
  count before it raises ``ENOSPC`` (or ``EFBIG``), so one ``write`` per record is not enough by
  itself.
- **Readers take complete lines only** (:func:`iter_json_lines`): a torn tail is left out, and a
  line that does not decode (only a file written before these rules can hold one) is skipped and
  reported, never raised.
- **A document is replaced atomically** (:func:`replace_file`): a temporary file, renamed over the
  old one; a failed write removes the temporary file, so a full disk leaves the old document.
- **A file is published only complete** (:func:`publish`): flushed to disk, then renamed, then
  its directory flushed.
- **Crash points** (:func:`crash_point`): the writers name the steps of a publication
  (``seal.before_rename`` ...). A test arms one (``CRYPTO_CRASH_AT``, or :func:`arm`), and the process
  kills itself with SIGKILL there, as a power cut or an OOM kill would. Off unless armed; unarmed it
  costs one comparison, and it is never on a per-record path.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("crypto_platform.durable")

# Errors that mean "no room": a full file system, or the user's quota.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    """Bytes available to this process on the file system holding ``path`` (its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # not reached


class DiskFull(OSError):
    """The file system holding ``path`` has no room (ENOSPC/EDQUOT); says where and how much is free.

    ``path`` is the file that did not fit, or the directory of the writer that found the disk full.
    """

    def __init__(self, path: Path, cause: OSError | None = None) -> None:
        self.path = Path(path)
        try:
            self.free = free_bytes(self.path)
        except OSError:
            self.free = 0
        self.message = f"disk full at {self.path} ({human_bytes(self.free)} free)"
        super().__init__(cause.errno if cause is not None else errno.ENOSPC, self.message)

    def __str__(self) -> str:
        return self.message


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in _NO_ROOM)


def as_disk_full(exc: OSError, path: Path) -> OSError:
    """``exc`` as :class:`DiskFull` when it means the disk is full, else ``exc`` itself."""
    if isinstance(exc, DiskFull) or exc.errno not in _NO_ROOM:
        return exc
    return DiskFull(path, exc)


# -- append-only NDJSON files ------------------------------------------------------------------------


def cut_torn_tail(path: Path) -> int:
    """Cut a partial last line (a write cut short by a crash or a full disk); return the bytes removed.

    Truncating only frees space, so this works on a full disk too.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        chunk = 1 << 16
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            nl = f.read(pos - start).rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        if keep < size:
            f.truncate(keep)
            os.fsync(f.fileno())
        return size - keep


def undo_short_write(fd: int, good_size: int, path: Path, cause: OSError) -> OSError:
    """Cut ``fd`` back to ``good_size`` after a failed append; return the error to raise."""
    try:
        os.ftruncate(fd, good_size)
    except OSError as exc:  # cannot happen on a local file system; the next open cuts the tail anyway
        log.warning(f"could not cut {path} back to {good_size} bytes after a failed write: {exc}")
    return as_disk_full(cause, path)


def finish_short_write(fd: int, data: bytes, written: int, good_size: int, path: Path) -> None:
    """After a ``write`` that took only ``written`` bytes of ``data``: write the rest, or undo it all.

    The next write names the cause (ENOSPC, EFBIG, EIO ...): the record is then cut back out and the
    error raised (:class:`DiskFull` for a full disk). A short count with room left (a signal) just
    finishes the record.
    """
    view = memoryview(data)
    while written < len(data):
        try:
            written += os.write(fd, view[written:])
        except OSError as exc:
            raise undo_short_write(fd, good_size, path, exc) from None


class AppendFile:
    """An append-only NDJSON file with one writer: torn tail cut on open, whole records or nothing.

    ``append`` writes one record (one or more complete lines) with one ``write``; a short or failed
    write is undone (:func:`undo_short_write`) and raised, :class:`DiskFull` when the disk is full.
    """

    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self.torn_bytes = cut_torn_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self._fd).st_size

    def append(self, record: bytes) -> None:
        try:
            written = os.write(self._fd, record)
        except OSError as exc:
            raise undo_short_write(self._fd, self.size, self.path, exc) from None
        if written != len(record):
            finish_short_write(self._fd, record, written, self.size, self.path)
        self.size += len(record)
        if self.fsync:
            os.fsync(self._fd)

    def append_json(self, obj: Any) -> None:
        self.append(orjson.dumps(obj) + b"\n")

    def flush_to_disk(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def iter_json_lines(path: Path, offset: int = 0) -> Iterator[dict[str, Any]]:
    """The JSON objects of an NDJSON file's complete lines from ``offset`` on; never raises on content.

    A torn last line is left out (its writer cuts it on its next open). A line that does not decode
    is skipped with a warning naming the file and line: the platform never writes one, but a file
    written by an older version can hold one, and a reader must not fail on it.
    """
    if not path.exists():
        return
    with open(path, "rb") as f:
        if offset:
            f.seek(offset)
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                return
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                log.warning(f"{path}: skipped damaged line {number} after byte {offset}: {exc}")
                continue
            if isinstance(obj, dict):
                yield obj


# -- whole documents and published files -------------------------------------------------------------


def replace_file(path: Path, data: bytes, fsync: bool = False) -> None:
    """Replace ``path`` by ``data`` atomically; on any failure the old file stays and no temporary is left."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise as_disk_full(exc, path) from None


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(source: Path, target: Path, fsync: bool, step: str) -> None:
    """Rename a complete, checked ``source`` to ``target``: flushed first, its directory after.

    ``step`` names the writer for the crash points ``<step>.before_fsync``, ``<step>.before_rename``
    and ``<step>.after_rename``.
    """
    crash_point(f"{step}.before_fsync")
    if fsync:
        fsync_path(source)
    crash_point(f"{step}.before_rename")
    os.replace(source, target)
    if fsync:
        fsync_path(target.parent)
    crash_point(f"{step}.after_rename")


# -- crash points ----------------------------------------------------------------------------------

_UNSET = object()
_armed: object = _UNSET


def arm(step: str | None) -> None:
    """Kill this process at crash point ``step`` (None: at none). Tests only."""
    global _armed
    _armed = step


def crash_point(step: str) -> None:
    """SIGKILL this process here when ``step`` is the armed crash point (``CRYPTO_CRASH_AT``)."""
    global _armed
    if _armed is _UNSET:
        from crypto_platform.settings import SettingsError, load_settings

        try:
            _armed = load_settings().crash_at
        except SettingsError:  # reported by whatever loads the settings for real; no crash point
            _armed = None
    if _armed == step:
        os.kill(os.getpid(), signal.SIGKILL)
