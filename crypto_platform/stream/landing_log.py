"""The landing log: every received frame, durable before anything else happens to it.

Append-only segments of NDJSON lines ``{"r":recv_ns,"n":session,"f":<frame verbatim>}`` (the
contract is in docs/architecture.md). Why this shape:

- **One write per frame, unbuffered.** A frame is in the OS page cache as soon as ``append``
  returns, so killing the process (even SIGKILL) loses nothing received. ``fsync`` (against power
  loss) is a policy: per frame, per seal (default), or never.
- **Sealed segments are immutable and announced by the manifest.** Sealing renames the active file
  into ``segments/`` and then appends a manifest line; readers (the stream sensor, the assets) only
  ever look at sealed segments, so they never see a half-written file.
- **Crash repair is local.** A torn last line is cut back to the last newline; a sealed segment
  whose manifest line never got written has it rebuilt from the segment itself.
- **Lines stay valid JSON.** The frame is embedded verbatim (it is JSON already), with raw CR/LF
  turned into spaces (they can only be whitespace in valid JSON). Frames that are not a JSON array
  of objects with ``ev`` go to ``quarantine.ndjson`` with the reason, and are counted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

DAY_MS = 86_400_000
FSYNC_POLICIES = ("never", "seal", "frame")


@functools.lru_cache(maxsize=64)
def _day_text(day_number: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_number * 86_400))


def day_of(ms: int) -> str:
    """UTC date of an epoch-ms time as YYYY-MM-DD (memoised per day: it runs once per frame)."""
    return _day_text(ms // DAY_MS)


def validate(frame: bytes) -> tuple[list[dict[str, Any]] | None, str | None]:
    """``(events, None)`` for a JSON array of objects that all carry ``ev``; else ``(None, reason)``."""
    try:
        events = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc}"
    if type(events) is not list:
        return None, f"not a JSON array but {type(events).__name__}"
    for i, event in enumerate(events):
        if type(event) is not dict or "ev" not in event:
            return None, f"element {i} is not an object with 'ev'"
    return events, None


# Per channel [count, t_min, t_max] of one frame, and the frame's overall event-time range.
FrameSummary = tuple[dict[str, list[int]], int | None, int | None]


def summarize(events: list[Any], recv_ms: int) -> FrameSummary:
    """One pass over a frame's events: counts and time ranges per channel.

    Event time is ``t``, or ``s`` for bars (XA/XAS carry no ``t``), or the receive time for status
    events. Raises ``KeyError``/``TypeError``/``AttributeError`` for an element that is not an object
    with ``ev``, so the caller validates and summarises in the same pass.
    """
    frame_stats: dict[str, list[int]] = {}
    lo = hi = None
    for event in events:
        t = event.get("t") or event.get("s") or recv_ms
        if type(t) is not int:
            t = recv_ms
        channel = event["ev"]
        acc = frame_stats.get(channel)
        if acc is None:
            frame_stats[channel] = [1, t, t]
        else:
            acc[0] += 1
            if t < acc[1]:
                acc[1] = t
            elif t > acc[2]:
                acc[2] = t
        if lo is None or t < lo:
            lo = t
        if hi is None or t > hi:
            hi = t
    return frame_stats, lo, hi


@dataclass
class SegmentStats:
    """What the manifest says about a segment; built while appending, or rebuilt by a scan."""

    frames: int = 0
    events: int = 0
    bytes: int = 0
    recv_first_ns: int | None = None
    recv_last_ns: int | None = None
    sessions: set[int] = field(default_factory=set)
    # day -> channel -> [events, t_min, t_max]
    days: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    first_frame_monotonic: float | None = None

    def add(self, recv_ns: int, session: int, events: list[dict[str, Any]], nbytes: int) -> None:
        self.add_summary(recv_ns, session, events, nbytes, summarize(events, recv_ns // 1_000_000))

    def add_summary(
        self, recv_ns: int, session: int, events: list[dict[str, Any]], nbytes: int, summary: FrameSummary
    ) -> None:
        self.frames += 1
        self.events += len(events)
        self.bytes += nbytes
        if self.recv_first_ns is None:
            self.recv_first_ns = recv_ns
        self.recv_last_ns = recv_ns
        self.sessions.add(session)
        frame_stats, lo, hi = summary
        if lo is None or hi is None:
            return
        if lo // DAY_MS == hi // DAY_MS:
            self._merge(day_of(lo), frame_stats)
            return
        recv_ms = recv_ns // 1_000_000
        for event in events:  # a frame across midnight (rare): split it by day
            t = event.get("t") or event.get("s") or recv_ms
            t = t if type(t) is int else recv_ms
            self._merge(day_of(t), {event["ev"]: [1, t, t]})

    def _merge(self, day: str, frame_stats: dict[str, list[int]]) -> None:
        day_map = self.days.get(day)
        if day_map is None:
            day_map = self.days[day] = {}
        for channel, (count, t_min, t_max) in frame_stats.items():
            stat = day_map.get(channel)
            if stat is None:
                day_map[channel] = [count, t_min, t_max]
            else:
                stat[0] += count
                if t_min < stat[1]:
                    stat[1] = t_min
                if t_max > stat[2]:
                    stat[2] = t_max

    def manifest_entry(self, seq: int, file: str, quarantined: int) -> dict[str, Any]:
        return {
            "seq": seq,
            "file": file,
            "bytes": self.bytes,
            "frames": self.frames,
            "events": self.events,
            "quarantined": quarantined,
            "recv_first_ns": self.recv_first_ns,
            "recv_last_ns": self.recv_last_ns,
            "sessions": sorted(self.sessions),
            "sealed_ns": time.time_ns(),
            "days": {
                day: {ch: {"events": s[0], "t_min": s[1], "t_max": s[2]} for ch, s in sorted(chs.items())}
                for day, chs in sorted(self.days.items())
            },
        }


def _seq_name(seq: int) -> str:
    return f"{seq:012d}.ndjson"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class RepairReport:
    torn_bytes: int = 0
    sealed_on_open: list[int] = field(default_factory=list)
    manifest_rebuilt: list[int] = field(default_factory=list)


class LandingLog:
    """The writer. One per data directory at a time (the ingester's lock guarantees it)."""

    def __init__(
        self,
        root: Path,
        fsync: str = "seal",
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 5.0,
        retention_days: int = 0,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r}: choose one of {', '.join(FSYNC_POLICIES)}")
        self.root = root
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.retention_days = retention_days
        self.active_dir = root / "active"
        self.segments_dir = root / "segments"
        self.manifest_path = root / "manifest.ndjson"
        self.quarantine_path = root / "quarantine.ndjson"
        self.next_seq = 1
        self.segments_sealed = 0
        self.quarantined_total = 0
        self._fd: int | None = None
        self._quarantine_fd: int | None = None
        self._manifest_fd: int | None = None
        self._stats = SegmentStats()
        self._seg_quarantined = 0
        self._active_path: Path | None = None
        self._sealed_channels: Counter[str] = Counter()
        self._sealed_last_event_ms: int | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> RepairReport:
        """Create the layout, repair what a crash left, and get ready to append."""
        for d in (self.root, self.active_dir, self.segments_dir):
            d.mkdir(parents=True, exist_ok=True)
        log_id_path = self.root / "LOG_ID"
        if not log_id_path.exists():
            tmp = log_id_path.with_suffix(".tmp")
            tmp.write_text(uuid.uuid4().hex)
            os.replace(tmp, log_id_path)
        self._manifest_fd = os.open(self.manifest_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._quarantine_fd = os.open(self.quarantine_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        report = RepairReport()
        known = {int(e["seq"]) for e in iter_manifest(self.root)}
        sealed = sorted(int(p.name.split(".")[0]) for p in self.segments_dir.glob("*.ndjson"))
        active = sorted(int(p.name.split(".")[0]) for p in self.active_dir.glob("*.ndjson.open"))
        self.next_seq = max([0, *known, *sealed, *active]) + 1
        for seq in sealed:
            if seq not in known:
                self._append_manifest(
                    scan_segment(self.segments_dir / _seq_name(seq)).manifest_entry(
                        seq, f"segments/{_seq_name(seq)}", 0
                    )
                )
                report.manifest_rebuilt.append(seq)
        for seq in active:
            path = self.active_dir / f"{_seq_name(seq)}.open"
            report.torn_bytes += _cut_torn_tail(path)
            if path.stat().st_size == 0:
                path.unlink()
                continue
            stats = scan_segment(path)
            self._seal_file(seq, path, stats, 0)
            report.sealed_on_open.append(seq)
        return report

    def close(self) -> None:
        """Seal what is pending and release the files (a clean stop)."""
        self.seal()
        for fd in (self._quarantine_fd, self._manifest_fd):
            if fd is not None:
                os.close(fd)
        self._quarantine_fd = self._manifest_fd = None

    # -- appending --------------------------------------------------------------------------------

    def _open_segment(self) -> None:
        self._active_path = self.active_dir / f"{_seq_name(self.next_seq)}.open"
        self._fd = os.open(self._active_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._stats = SegmentStats(first_frame_monotonic=time.monotonic())

    def append(self, recv_ns: int, session: int, frame: bytes) -> list[dict[str, Any]] | None:
        """Land one frame; return its events, or ``None`` when it was quarantined."""
        try:
            events = orjson.loads(frame)
            summary = summarize(events, recv_ns // 1_000_000) if type(events) is list else None
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            summary = None
        if summary is None:
            # The slow path names the exact reason; only malformed frames take it.
            self._quarantine(recv_ns, session, frame, validate(frame)[1] or "malformed")
            return None
        if b"\n" in frame or b"\r" in frame:
            frame = frame.replace(b"\n", b" ").replace(b"\r", b" ")
        line = b'{"r":%d,"n":%d,"f":%b}\n' % (recv_ns, session, frame)
        if self._fd is None:
            self._open_segment()
        os.write(self._fd, line)  # type: ignore[arg-type]
        if self.fsync == "frame":
            os.fsync(self._fd)  # type: ignore[arg-type]
        self._stats.add_summary(recv_ns, session, events, len(line), summary)
        if self._stats.bytes >= self.max_bytes:
            self.seal()
        return events

    def _quarantine(self, recv_ns: int, session: int, frame: bytes, reason: str) -> None:
        record = {"r": recv_ns, "n": session, "reason": reason, "frame": frame.decode("utf-8", "replace")}
        os.write(self._quarantine_fd, orjson.dumps(record) + b"\n")  # type: ignore[arg-type]
        if self.fsync != "never":
            os.fsync(self._quarantine_fd)  # type: ignore[arg-type]
        self.quarantined_total += 1
        self._seg_quarantined += 1

    # -- sealing ----------------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether the active segment is old enough to seal."""
        first = self._stats.first_frame_monotonic
        return (
            self._fd is not None
            and self._stats.frames > 0
            and first is not None
            and (time.monotonic() - first >= self.max_age_s)
        )

    def seal(self) -> int | None:
        """Seal the active segment if it holds anything; return its seq."""
        if self._fd is None:
            return None
        fd, path, stats = self._fd, self._active_path, self._stats
        self._fd = None
        if stats.frames == 0:
            os.close(fd)
            if path is not None:
                path.unlink(missing_ok=True)
            return None
        if self.fsync != "never":
            os.fsync(fd)
        os.close(fd)
        assert path is not None
        seq = self.next_seq
        self._seal_file(seq, path, stats, self._seg_quarantined)
        self._seg_quarantined = 0
        self._apply_retention()
        return seq

    def _seal_file(self, seq: int, path: Path, stats: SegmentStats, quarantined: int) -> None:
        target = self.segments_dir / _seq_name(seq)
        os.replace(path, target)
        if self.fsync != "never":
            _fsync_dir(self.segments_dir)
        self._append_manifest(stats.manifest_entry(seq, f"segments/{_seq_name(seq)}", quarantined))
        self.next_seq = max(self.next_seq, seq + 1)
        self.segments_sealed += 1
        self._fold(stats, self._sealed_channels)
        self._sealed_last_event_ms = _max_event_ms(stats, self._sealed_last_event_ms)

    @staticmethod
    def _fold(stats: SegmentStats, into: Counter[str]) -> None:
        for channels in stats.days.values():
            for channel, stat in channels.items():
                into[channel] += stat[0]

    def channel_counts(self) -> tuple[dict[str, int], int | None]:
        """Events landed per channel since this writer opened, and the newest market event time."""
        counts = Counter(self._sealed_channels)
        last = self._sealed_last_event_ms
        if self._fd is not None:
            self._fold(self._stats, counts)
            last = _max_event_ms(self._stats, last)
        return dict(sorted(counts.items())), last

    def _append_manifest(self, entry: dict[str, Any]) -> None:
        os.write(self._manifest_fd, orjson.dumps(entry) + b"\n")  # type: ignore[arg-type]
        if self.fsync != "never":
            os.fsync(self._manifest_fd)  # type: ignore[arg-type]

    def _apply_retention(self) -> None:
        if self.retention_days <= 0:
            return
        cutoff = time.time() - self.retention_days * 86_400
        for path in self.segments_dir.glob("*.ndjson"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()


def _max_event_ms(stats: SegmentStats, current: int | None) -> int | None:
    for channels in stats.days.values():
        for channel, stat in channels.items():
            if channel != "status" and (current is None or stat[2] > current):
                current = stat[2]
    return current


def _cut_torn_tail(path: Path) -> int:
    """Cut a partial last line (a write cut short by a crash); return the bytes removed."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        chunk = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


def scan_segment(path: Path) -> SegmentStats:
    """Rebuild a segment's statistics from its lines (crash repair)."""
    stats = SegmentStats()
    for recv_ns, session, frame in iter_lines(path):
        events, _ = validate(frame)
        stats.add(recv_ns, session, events or [], 0)
    stats.bytes = path.stat().st_size
    return stats


# -- readers (the sensor and the assets) -----------------------------------------------------------


def log_id(root: Path) -> str | None:
    """The landing log's identity (a new log after a wiped data directory gets a new one)."""
    path = root / "LOG_ID"
    return path.read_text().strip() if path.exists() else None


def iter_manifest(root: Path, after_seq: int = 0) -> Iterator[dict[str, Any]]:
    """Manifest entries with ``seq > after_seq`` in order; a torn last line is ignored."""
    path = root / "manifest.ndjson"
    if not path.exists():
        return
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            entry = orjson.loads(line)
            if int(entry["seq"]) > after_seq:
                yield entry


def segment_path(root: Path, entry: dict[str, Any]) -> Path:
    return root / entry["file"]


def iter_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """``(recv_ns, session, frame bytes)`` per line: the frame text exactly as landed."""
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            # {"r":123,"n":4,"f":...}\n  -- parse the two integers by position, keep the frame's bytes.
            r_end = line.index(b",", 5)
            n_end = line.index(b",", r_end + 5)
            yield int(line[5:r_end]), int(line[r_end + 5 : n_end]), line[n_end + 5 : -2]
