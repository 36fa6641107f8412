"""The landing log's readers: what the sensor, the assets and the status command see of it.

They read only what the sealer has announced (``manifest.ndjson``, appended in seq order by one
process) and the sealed segments it names, never the segments being written, so they need no lock
and can run in any process while the ingester appends. They are kept apart from the writer
(:mod:`crypto_platform.stream.landing_log`) because every reader imports them and none needs the
writer's machinery (sealer processes, fsync policies, crash repair).
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

log = logging.getLogger("crypto_platform.landing_log")

MANIFEST_FILE = "manifest.ndjson"
LOG_ID_FILE = "LOG_ID"


def log_id(root: Path) -> str | None:
    """The landing log's identity (a new log after a wiped data directory gets a new one)."""
    path = root / LOG_ID_FILE
    return path.read_text().strip() if path.exists() else None


def iter_manifest(
    root: Path, after_seq: int = 0, through_seq: int | None = None, day: str | None = None
) -> Iterator[dict[str, Any]]:
    """Manifest entries with ``after_seq < seq <= through_seq``, in order; a torn last line is ignored.

    ``day``: only the entries of segments holding events of that UTC day. The manifest is in seq
    order (one sealer appends it, sealing in order), so the first entry after ``after_seq`` is
    found by bisection over the file's bytes and only the lines from there on are read: what a
    sensor tick or a stream run costs does not grow with the log (a 30-day log at 5 s segments is
    half a million lines). With ``day``, the lines naming it are found by a byte search over the
    mapped file, so the other days' lines are never looked at one by one.
    """
    path = root / MANIFEST_FILE
    if not path.exists():
        return
    marker = orjson.dumps(day) + b":" if day is not None else None
    with open(path, "rb") as f:
        f.seek(_offset_after(f, after_seq))
        for line in f if marker is None else _lines_with(f, marker):
            if not line.endswith(b"\n"):
                break
            try:
                seq = _line_seq(line)
            except (ValueError, KeyError, TypeError):
                seq = None  # a damaged line: _entry names it
            if seq is not None and through_seq is not None and seq > through_seq:
                break
            if seq is not None and seq <= after_seq:
                continue
            entry = parse_entry(line, path)
            if entry is None:
                continue
            if day is None or day in (entry.get("days") or {}):
                yield entry


def _lines_with(f: BinaryIO, marker: bytes) -> Iterator[bytes]:
    """The complete lines from ``f``'s position on that contain ``marker`` (a torn last line is not one)."""
    start = f.tell()
    if f.seek(0, os.SEEK_END) == 0:
        return
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        end = data.rfind(b"\n") + 1  # what follows is a torn line
        pos = data.find(marker, start, end)
        while pos >= 0:
            stop = data.find(b"\n", pos) + 1
            yield data[data.rfind(b"\n", start, pos) + 1 or start : stop]  # -1 + 1: the line at start
            pos = data.find(marker, stop, end)


def last_manifest_entry(root: Path) -> dict[str, Any] | None:
    """The newest complete manifest line, read from the file's tail (the manifest only grows)."""
    path = root / MANIFEST_FILE
    if not path.exists():
        return None
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)  # the text considered ends here
        window = _PROBE_BYTES
        while end > 0:
            start = max(0, end - window)
            f.seek(start)
            data = f.read(end - start)
            last = data.rfind(b"\n")  # after it: a torn line, or nothing
            before = data.rfind(b"\n", 0, max(last, 0))
            if last < 0 or (before < 0 and start > 0):
                if start == 0:
                    return None
                window *= 2  # a line longer than the window: look further back
                continue
            line = data[before + 1 : last]
            entry = parse_entry(line, path) if line.strip() else None
            if entry is not None:
                return entry
            end = start + last  # a blank or damaged line: the one before it
    return None


def count_manifest(root: Path) -> int:
    """How many segments the manifest announces (its complete lines), without parsing them."""
    path = root / MANIFEST_FILE
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(functools.partial(f.read, 1 << 20), b""))


_PROBE_BYTES = 65_536  # below this much, reading on beats bisecting


def parse_entry(line: bytes, path: Path) -> dict[str, Any] | None:
    """A manifest line's entry; None, with a warning, for a line an older version damaged."""
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        log.warning(f"{path}: skipped a damaged manifest line ({exc}): {line[:80]!r}")
        return None
    return entry if isinstance(entry, dict) and "seq" in entry else None


def _line_seq(line: bytes) -> int:
    # Entries are written with "seq" first ({"seq":12,...}); anything else is parsed in full.
    if line.startswith(b'{"seq":'):
        end = line.find(b",", 7)
        if end > 7 and line[7:end].isdigit():
            return int(line[7:end])
    return int(orjson.loads(line)["seq"])


def _offset_after(f: BinaryIO, after_seq: int) -> int:
    """A line start before which every manifest line has ``seq <= after_seq`` (bisection over bytes)."""
    lo, hi = 0, f.seek(0, os.SEEK_END)
    if after_seq <= 0:
        return 0
    while hi - lo > _PROBE_BYTES:
        mid = (lo + hi) // 2
        f.seek(mid)
        f.readline()  # to the next line start
        start = f.tell()
        line = f.readline()
        try:
            seq = _line_seq(line) if line.endswith(b"\n") else None
        except ValueError:  # a damaged line: look before it
            seq = None
        if start >= hi or seq is None:
            hi = mid
        elif seq <= after_seq:
            lo = start + len(line)
        else:
            hi = mid
    return lo


def segment_path(root: Path, entry: dict[str, Any]) -> Path:
    return root / entry["file"]


def split_line(line: bytes) -> tuple[int, int, bytes]:
    # {"r":123,"n":4,"f":...}\n  -- parse the two integers by position, keep the frame's bytes.
    r_end = line.index(b",", 5)
    n_end = line.index(b",", r_end + 5)
    return int(line[5:r_end]), int(line[r_end + 5 : n_end]), line[n_end + 5 : -2]


def iter_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """``(recv_ns, session, frame bytes)`` per line: the frame text exactly as landed."""
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            yield split_line(line)
