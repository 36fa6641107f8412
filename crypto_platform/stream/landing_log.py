"""The landing log: every received frame, durable before anything else happens to it.

Append-only segments of NDJSON lines ``{"r":recv_ns,"n":session,"f":<frame verbatim>}`` (the
contract is in docs/architecture.md). Why this shape:

- **Nothing on the read path but an append**. ``append`` formats one line and
  writes it with one unbuffered ``write``: the frame is in the OS page cache when it returns, so
  killing the process (even SIGKILL) loses nothing received. The frame is not parsed there:
  parsing and statistics cost more than receiving and writing together, and the read path is what
  limits how fast a feed can be landed. ``fsync`` (against power loss) is a policy: per frame, per
  seal (default), or never.
- **Validation and statistics happen at seal time.** A :class:`Sealer` reads a closed segment back,
  checks every frame, sends the malformed ones (not a JSON array of objects with ``ev``) to
  ``quarantine.ndjson`` with the reason, writes the sealed segment without them, and appends the
  manifest line with the per-day, per-channel counts and event-time ranges. The ingester runs the
  sealer in a separate, lower-priority process (``sealer="process"``): beside the reader, not in
  its way (a thread would share the reader's GIL). Everyone else seals in their own process.
- **Sealed segments are immutable and announced by the manifest.** Sealing renames the checked
  file into ``segments/`` and then appends a manifest line; readers (the stream sensor, the
  assets) only ever look at sealed segments, so they never see a half-written or unchecked file.
- **Crash repair is local.** A torn last line is cut back to the last newline and every segment
  left in ``active/`` is checked and sealed like any other; a sealed segment whose manifest line
  never got written has it rebuilt from the segment itself.
- **Lines stay valid JSON.** The frame is embedded verbatim (it is JSON already), with raw CR/LF
  turned into spaces (they can only be whitespace in valid JSON).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from crypto_platform.days import DAY_MS, day_of
from crypto_platform.durable import (
    AppendFile,
    as_disk_full,
    crash_point,
    cut_torn_tail,
    finish_short_write,
    is_disk_full,
    iter_json_lines,
    publish,
    undo_short_write,
)
from crypto_platform.stream.manifest import (
    LOG_ID_FILE,
    MANIFEST_FILE,
    iter_manifest,
    last_manifest_entry,
    parse_entry,
    split_line,
)

log = logging.getLogger("crypto_platform.landing_log")

FSYNC_POLICIES = ("never", "seal", "frame")
SEALERS = ("inline", "process")
# The sealer process yields the CPU to the reader (and the feed's sender) when both want it; it
# catches up whenever the reader waits for the network, which is most of the time on a real feed.
SEALER_NICE = 10


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
    """What the manifest says about a segment; built by the sealer's pass over its lines."""

    frames: int = 0
    events: int = 0
    bytes: int = 0
    recv_first_ns: int | None = None
    recv_last_ns: int | None = None
    sessions: set[int] = field(default_factory=set)
    # day -> channel -> [events, t_min, t_max]
    days: dict[str, dict[str, list[int]]] = field(default_factory=dict)

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


@dataclass
class Checked:
    """One pass over a closed segment: the statistics of its good lines and what is wrong with the rest."""

    stats: SegmentStats
    # (line number, recv_ns, session, frame, reason) of each malformed frame
    bad: list[tuple[int, int, int, bytes, str]]


def check_segment(path: Path) -> Checked:
    """Validate every line of a segment and build the statistics of the good ones (a streaming pass)."""
    stats = SegmentStats()
    bad: list[tuple[int, int, int, bytes, str]] = []
    with open(path, "rb") as f:
        for number, line in enumerate(f):
            if not line.endswith(b"\n"):
                break  # a torn tail is cut before a segment is checked; never count half a line
            try:
                recv_ns, session, frame = split_line(line)
            except ValueError:
                bad.append((number, 0, 0, line.rstrip(b"\n"), "damaged landing line"))
                continue
            try:
                events = orjson.loads(frame)
                summary = summarize(events, recv_ns // 1_000_000) if type(events) is list else None
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                summary = None
            if summary is None:
                # The slow path names the exact reason; only malformed frames take it.
                bad.append((number, recv_ns, session, frame, validate(frame)[1] or "malformed"))
                continue
            stats.add_summary(recv_ns, session, events, len(line), summary)
    return Checked(stats, bad)


def scan_segment(path: Path) -> SegmentStats:
    """Rebuild a sealed segment's statistics from its lines (crash repair of a missing manifest line)."""
    return check_segment(path).stats


class SealCheckFailed(RuntimeError):
    """The file about to be published is not what the check of its segment found; nothing was published."""


class Sealer:
    """Turns closed segments in ``active/`` into sealed, announced ones; the only writer of the manifest.

    ``seal`` is idempotent over a crash at any step, so it is also the repair: quarantine records
    are written before the segment is renamed (a crash in between writes them again on the next
    try, never loses them), and a segment already renamed only gets its missing manifest line.
    What is published is exactly the checked lines: the segment cut back to them (a torn tail), or a
    copy without the malformed ones; its size is checked against the check's count before it is
    flushed and renamed. A failed write (a full disk) abandons the seal and keeps the segment in
    ``active/`` for the next try. The crash points (``seal.written``, ``seal.before_fsync``,
    ``seal.before_rename``, ``seal.after_rename``) are for the fault-injection tests.
    """

    def __init__(self, root: Path, fsync: str = "seal") -> None:
        self.root = root
        self.fsync = fsync
        self.active_dir = root / "active"
        self.segments_dir = root / "segments"
        self._manifest = AppendFile(root / MANIFEST_FILE, fsync=fsync != "never")
        self._quarantine = AppendFile(root / "quarantine.ndjson")
        # Malformed frames of a segment that held nothing else are counted on the next sealed one.
        self._carried_quarantined = 0

    def close(self) -> None:
        self._manifest.close()
        self._quarantine.close()

    def seal(self, seq: int) -> dict[str, Any] | None:
        """Check, clean, publish and announce segment ``seq``; return its manifest entry (None: nothing to seal)."""
        source = self.active_dir / f"{_seq_name(seq)}.open"
        target = self.segments_dir / _seq_name(seq)
        name = f"segments/{_seq_name(seq)}"
        if target.exists():  # published, then a crash before its manifest line
            source.unlink(missing_ok=True)  # the original of a published copy
            quarantined = sum(1 for r in iter_json_lines(self._quarantine.path) if r.get("seq") == seq)
            return self._announce(scan_segment(target).manifest_entry(seq, name, quarantined))
        if not source.exists():
            return None
        checked = check_segment(source)
        stats = checked.stats
        if checked.bad and self._last_quarantined_seq() != seq:  # not written by a try cut short
            # One write for the segment's records: a crash leaves all of them or none.
            records = (
                {"r": recv_ns, "n": session, "seq": seq, "reason": reason, "frame": frame.decode("utf-8", "replace")}
                for _, recv_ns, session, frame, reason in checked.bad
            )
            self._quarantine.append(b"".join(orjson.dumps(r) + b"\n" for r in records))
            if self.fsync != "never":
                self._quarantine.flush_to_disk()
        quarantined = len(checked.bad) + self._carried_quarantined
        if stats.frames == 0:  # only malformed frames (or none): empty segments are never sealed
            source.unlink()
            self._carried_quarantined = quarantined
            return None
        ready = self._write_without(source, {b[0] for b in checked.bad}) if checked.bad else self._cut_to(source, stats)
        crash_point("seal.written")
        size = ready.stat().st_size
        if size != stats.bytes:
            if ready != source:
                ready.unlink()
            raise SealCheckFailed(f"segment {seq}: {ready} holds {size} bytes, its checked lines {stats.bytes}")
        publish(ready, target, self.fsync != "never", "seal")
        source.unlink(missing_ok=True)  # the original, when a copy was published
        self._carried_quarantined = 0
        return self._announce(stats.manifest_entry(seq, name, quarantined))

    def _last_quarantined_seq(self) -> int | None:
        """The segment of the quarantine's last record (its records are written in seq order)."""
        if self._quarantine.size == 0:
            return None
        with open(self._quarantine.path, "rb") as f:
            window = 1 << 16
            while True:
                start = max(0, self._quarantine.size - window)
                f.seek(start)
                data = f.read(self._quarantine.size - start)
                before = data.rfind(b"\n", 0, len(data) - 1)
                if before >= 0 or start == 0:
                    last = orjson.loads(data[before + 1 :])
                    return last.get("seq") if isinstance(last, dict) else None
                window *= 2

    @staticmethod
    def _cut_to(source: Path, stats: SegmentStats) -> Path:
        """The segment itself, cut back to its checked lines (a torn tail left by a crash or a full disk)."""
        if source.stat().st_size > stats.bytes:
            os.truncate(source, stats.bytes)
        return source

    def _write_without(self, source: Path, drop: set[int]) -> Path:
        """A copy of ``source`` without the malformed lines (a failed write leaves no copy behind)."""
        clean = source.with_name(source.name + ".clean")
        try:
            with open(source, "rb") as src, open(clean, "wb") as out:
                out.writelines(line for number, line in enumerate(src) if number not in drop and line.endswith(b"\n"))
        except OSError:
            clean.unlink(missing_ok=True)
            raise
        return clean

    def _announce(self, entry: dict[str, Any]) -> dict[str, Any]:
        self._manifest.append_json(entry)
        return entry


@dataclass
class RepairReport:
    torn_bytes: int = 0
    sealed_on_open: list[int] = field(default_factory=list)
    manifest_rebuilt: list[int] = field(default_factory=list)
    # Sealed segments longer than their manifest line says (a torn tail published by an older
    # version on a full disk), cut back to it; and those that cannot be (named in the log).
    resized: list[int] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)


class LandingLog:
    """The writer. One per data directory at a time (the ingester's lock guarantees it).

    ``sealer="inline"`` seals in the caller (``seal`` returns once the segment is announced);
    ``sealer="process"`` hands closed segments to a sealer process and ``poll`` picks up what it
    announced (``close`` waits for all of it). ``pass_fds`` are inherited by the sealer process: the
    ingester passes its lock, so a new ingester cannot start while an old sealer is still finishing.
    """

    def __init__(
        self,
        root: Path,
        fsync: str = "seal",
        max_bytes: int = 64 * 1024 * 1024,
        max_age_s: float = 5.0,
        retention_days: int = 0,
        sealer: str = "inline",
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r}: choose one of {', '.join(FSYNC_POLICIES)}")
        if sealer not in SEALERS:
            raise ValueError(f"sealer {sealer!r}: choose one of {', '.join(SEALERS)}")
        self.root = root
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.retention_days = retention_days
        self.sealer_mode = sealer
        self.pass_fds = pass_fds
        self.active_dir = root / "active"
        self.segments_dir = root / "segments"
        self._retention = Retention(self.segments_dir, retention_days)
        self.manifest_path = root / MANIFEST_FILE
        self.quarantine_path = root / "quarantine.ndjson"
        self.next_seq = 1
        self.segments_sealed = 0
        self.quarantined_total = 0
        self._fd: int | None = None
        self._active_bytes = 0
        self._active_frames = 0
        self._active_opened: float | None = None
        self._sealer: Sealer | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._restart_after = 0.0
        self._handed: list[int] = []  # handed to the sealer process, not yet in the manifest
        self._manifest_offset = 0
        self._sealed_channels: Counter[str] = Counter()
        self._sealed_last_event_ms: int | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> RepairReport:
        """Create the layout, repair what a crash left (sealing it here), and get ready to append."""
        for d in (self.root, self.active_dir, self.segments_dir):
            d.mkdir(parents=True, exist_ok=True)
        log_id_path = self.root / LOG_ID_FILE
        if not log_id_path.exists():
            tmp = log_id_path.with_suffix(".tmp")
            tmp.write_text(uuid.uuid4().hex)
            os.replace(tmp, log_id_path)
        sealer = Sealer(self.root, self.fsync)
        report = RepairReport()
        newest = last_manifest_entry(self.root)
        # The manifest is in seq order, so only segments after its last line can lack theirs.
        announced = int(newest["seq"]) if newest else 0
        self._check_sealed_sizes(announced, report)
        sealed = sorted(int(p.name.split(".")[0]) for p in self.segments_dir.glob("*.ndjson"))
        active = sorted(int(p.name.split(".")[0]) for p in self.active_dir.glob("*.ndjson.open"))
        for leftover in self.active_dir.glob("*.ndjson.open.clean"):  # a copy cut short by a crash
            if int(leftover.name.split(".")[0]) not in sealed:
                leftover.unlink()
        self.next_seq = max([announced, *sealed, *active]) + 1
        for seq in sorted({s for s in sealed if s > announced} | set(active)):
            if seq in active:
                report.torn_bytes += cut_torn_tail(self.active_dir / f"{_seq_name(seq)}.open")
            try:
                entry = sealer.seal(seq)
            except OSError as exc:  # a full disk: the sealer process (or the next seal) tries again
                log.warning(f"landing log: segment {seq} stays in active/ for now: {exc}")
                self._handed.append(seq)
                continue
            if entry is None:
                continue
            self._fold(entry)
            (report.sealed_on_open if seq in active else report.manifest_rebuilt).append(seq)
        self._manifest_offset = self.manifest_path.stat().st_size
        if self.sealer_mode == "inline":
            self._sealer = sealer
        else:
            sealer.close()
            self._start_sealer()
            for seq in self._handed:
                self._send(seq)
        return report

    # The newest sealed segments whose sizes are compared with their manifest lines at each open:
    # sealing is in order and a crash or full disk can only hit the newest seals, and this open
    # runs after every one of them.
    SIZE_CHECKED = 1000

    def _check_sealed_sizes(self, announced: int, report: RepairReport) -> None:
        """Cut a sealed segment longer than its manifest line back to it (its end is a torn tail)."""
        for entry in iter_manifest(self.root, after_seq=max(0, announced - self.SIZE_CHECKED)):
            path = self.root / entry["file"]
            want = int(entry["bytes"])
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue  # removed by retention
            if size == want:
                continue
            if size > want and _byte_at(path, want - 1) == b"\n":
                os.truncate(path, want)
                report.resized.append(int(entry["seq"]))
            else:
                log.error(f"landing log: {path} holds {size} bytes, its manifest line says {want}; not repairable")
                report.damaged.append(int(entry["seq"]))

    def close(self) -> None:
        """Seal what is pending and release the files (a clean stop: waits for the sealer process)."""
        self.seal()
        if self._sealer is not None:
            try:
                self._seal_handed_inline()
            finally:
                self._sealer.close()
                self._sealer = None
        if self.sealer_mode == "process":
            if self._proc is not None:
                proc, self._proc = self._proc, None
                assert proc.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()  # end of work: the sealer finishes what it was given and exits
                proc.wait()
            self._read_manifest()
            if self._handed:  # the sealer process died with work left: a clean stop still seals it all
                sealer = Sealer(self.root, self.fsync)
                try:
                    for seq in self._handed:
                        if (entry := sealer.seal(seq)) is not None:
                            self._fold(entry)
                finally:
                    sealer.close()
                self._handed.clear()

    # -- appending --------------------------------------------------------------------------------

    def append(self, recv_ns: int, session: int, frame: bytes) -> None:
        """Land one frame: one line, one ``write``. Nothing else: the sealer checks it later."""
        if b"\n" in frame or b"\r" in frame:
            frame = frame.replace(b"\n", b" ").replace(b"\r", b" ")
        line = b'{"r":%d,"n":%d,"f":%b}\n' % (recv_ns, session, frame)
        fd = self._fd
        if fd is None:
            fd = self._open_segment()
        try:
            written = os.write(fd, line)
        except OSError as exc:
            raise self._undo_append(exc) from None
        if written != len(line):
            self._finish_append(line, written)
        if self.fsync == "frame":
            os.fsync(fd)
        self._active_frames += 1
        self._active_bytes += len(line)
        if self._active_bytes >= self.max_bytes:
            self.seal()

    def _open_segment(self) -> int:
        path = self._active_path()
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise as_disk_full(exc, path) from None
        self._active_opened = time.monotonic()
        return self._fd

    def _active_path(self) -> Path:
        return self.active_dir / f"{_seq_name(self.next_seq)}.open"

    def _undo_append(self, cause: OSError) -> OSError:
        """A frame that did not fit: the segment is cut back to its last whole line (never half a frame)."""
        assert self._fd is not None
        return undo_short_write(self._fd, self._active_bytes, self._active_path(), cause)

    def _finish_append(self, line: bytes, written: int) -> None:
        assert self._fd is not None
        finish_short_write(self._fd, line, written, self._active_bytes, self._active_path())

    # -- sealing ----------------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether the active segment is old enough to seal."""
        return (
            self._fd is not None
            and self._active_frames > 0
            and self._active_opened is not None
            and time.monotonic() - self._active_opened >= self.max_age_s
        )

    def seal(self) -> int | None:
        """Close the active segment if it holds anything and seal it (inline) or hand it over; return its seq.

        Inline, ``None`` also means the segment held only malformed frames (they are in quarantine).
        """
        if self._fd is None:
            return None
        fd, frames = self._fd, self._active_frames
        self._fd = None
        self._active_frames = self._active_bytes = 0
        # fsync (if the policy asks) is the sealer's job: the reader never waits for the disk.
        os.close(fd)
        seq = self.next_seq
        if frames == 0:
            (self.active_dir / f"{_seq_name(seq)}.open").unlink(missing_ok=True)
            return None
        self.next_seq += 1
        self._handed.append(seq)
        if self._sealer is not None:
            return seq if self._seal_handed_inline() else None
        self._send(seq)
        return seq

    def _seal_handed_inline(self) -> bool:
        """Seal what is pending, in order; False when the newest held only malformed frames.

        A failure (a full disk) raises and keeps the rest pending for the next seal or ``close``.
        """
        assert self._sealer is not None
        entry = None
        while self._handed:
            entry = self._sealer.seal(self._handed[0])
            seq = self._handed.pop(0)
            if entry is not None:
                self._fold(entry)
                self._retention.apply(seq)
        return entry is not None

    def poll(self) -> None:
        """Take in what the sealer process announced; restart it if it died (raising to say so)."""
        if self.sealer_mode != "process":
            return
        self._read_manifest()
        if self._proc is None:
            if time.monotonic() >= self._restart_after:
                self._start_sealer()
                for seq in self._handed:  # what it never announced (sealing is idempotent)
                    self._send(seq)
            return
        code = self._proc.poll()
        if code is not None:
            self._proc = None
            self._restart_after = time.monotonic() + 1.0  # never a hot loop of failing starts
            raise RuntimeError(f"the landing log's sealer process exited with code {code}; restarting it")

    @property
    def pending(self) -> int:
        """Segments handed to the sealer process and not yet announced."""
        return len(self._handed)

    @property
    def sealer_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start_sealer(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(self.root), self.fsync, str(self.retention_days)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            bufsize=0,
            pass_fds=self.pass_fds,
        )

    def _send(self, seq: int) -> None:
        if self._proc is None or self._proc.stdin is None:
            return  # poll restarts the sealer and hands it everything not yet announced
        # A dead sealer must not stop the reader: poll notices, restarts it and hands this over again.
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.write(b"%d\n" % seq)

    def _read_manifest(self) -> None:
        """Fold the manifest lines appended since the last look (only complete lines)."""
        if self.manifest_path.stat().st_size <= self._manifest_offset:
            return
        with open(self.manifest_path, "rb") as f:
            f.seek(self._manifest_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._manifest_offset += end
        for line in data[:end].splitlines():
            entry = parse_entry(line, self.manifest_path)
            if entry is None:
                continue
            self._fold(entry)
            with contextlib.suppress(ValueError):
                self._handed.remove(int(entry["seq"]))

    def _fold(self, entry: dict[str, Any]) -> None:
        self.segments_sealed += 1
        self.quarantined_total += int(entry["quarantined"])
        for channels in entry["days"].values():
            for channel, stat in channels.items():
                self._sealed_channels[channel] += stat["events"]
                last = self._sealed_last_event_ms
                if channel != "status" and (last is None or stat["t_max"] > last):
                    self._sealed_last_event_ms = stat["t_max"]

    def channel_counts(self) -> tuple[dict[str, int], int | None]:
        """Events sealed per channel since this writer opened, and the newest market event time in them."""
        return dict(sorted(self._sealed_channels.items())), self._sealed_last_event_ms


class Retention:
    """Deletes sealed segments older than ``days`` days (0: keeps them all), oldest first.

    Segments are sealed in seq order, so their ages are in that order too: a pass starts at the
    oldest segment still kept and stops at the first one young enough to keep. A pass after a seal
    so costs a stat or two, not a stat of every file (half a million after 30 days of 5 s
    segments). The directory is listed once, on the first pass, to find the oldest. A segment
    touched after its seal holds back the younger ones until it expires itself.
    """

    def __init__(self, segments_dir: Path, days: int) -> None:
        self.segments_dir = segments_dir
        self.days = days
        self._next: int | None = None  # the oldest seq that may still be on disk

    def apply(self, newest_seq: int, now: float | None = None) -> int:
        """Delete the expired segments up to ``newest_seq``; return how many."""
        if self.days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - self.days * 86_400
        if self._next is None:
            names = (n.split(".")[0] for n in os.listdir(self.segments_dir) if n.endswith(".ndjson"))
            self._next = min((int(n) for n in names if n.isdigit()), default=newest_seq + 1)
        removed = 0
        while self._next <= newest_seq:
            path = self.segments_dir / _seq_name(self._next)
            try:
                if path.stat().st_mtime >= cutoff:
                    break
                path.unlink()
                removed += 1
            except FileNotFoundError:  # a seq with only malformed frames, or removed by hand
                pass
            self._next += 1
        return removed


def _sealer_main(argv: list[str]) -> int:
    """The sealer process: seal each seq read from stdin, in order, until stdin closes.

    It runs at a lower priority than the reader; a failure is retried (a full disk must not lose a
    segment), and whatever was handed over before the ingester died is still sealed before exit.
    """
    root, fsync, retention_days = Path(argv[0]), argv[1], int(argv[2])
    os.nice(SEALER_NICE)
    # Its life is the pipe from the ingester: a Ctrl-C or a service manager's SIGTERM to the whole
    # group stops the ingester, which closes the pipe; the sealer then finishes and exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        sealer = Sealer(root, fsync)
        retention = Retention(root / "segments", retention_days)
        for raw in sys.stdin.buffer:
            _seal_until_done(sealer, retention, int(raw))
        sealer.close()
    except Exception as exc:  # one line for the ingester's log, no traceback; the ingester restarts it
        print(f"landing log sealer: stopped by {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


SEAL_RETRY_MAX_S = 10.0


def _seal_until_done(sealer: Sealer, retention: Retention, seq: int) -> None:
    """Seal ``seq``, retrying a failed seal (a full disk must not lose a segment) at a bounded, slowing rate.

    A failure is reported once, and again when it changes or clears, not at every try.
    """
    delay, reported = 0.5, ""
    while True:
        try:
            sealer.seal(seq)
            retention.apply(seq)
        except (OSError, SealCheckFailed) as exc:
            text = str(exc) if is_disk_full(exc) else f"{type(exc).__name__}: {exc}"
            if text != reported:
                print(f"landing log sealer: segment {seq} not sealed yet ({text}); retrying", file=sys.stderr)
                reported = text
            time.sleep(delay)
            delay = min(SEAL_RETRY_MAX_S, delay * 2)
            continue
        if reported:
            print(f"landing log sealer: segment {seq} sealed", file=sys.stderr)
        return


def _byte_at(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(max(0, offset))
        return f.read(1)


if __name__ == "__main__":
    sys.exit(_sealer_main(sys.argv[1:]))
