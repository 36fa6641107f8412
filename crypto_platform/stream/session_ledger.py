"""The session ledger: one line per connection event, and the sessions and gaps derived from it.

Polygon's crypto events carry no sequence numbers, so loss cannot be seen in the data: the only
evidence of a gap is the connection history. Every connect, status frame, subscription, first
frame and disconnect (with close code and reason) is appended here as it happens, flushed like the
landing log, and the gap windows that drive REST repair are computed from it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from crypto_platform.days import clock_text
from crypto_platform.durable import AppendFile, is_disk_full, iter_json_lines

# The ledger's file, beside the landing log's manifest in the landing directory.
LEDGER_FILE = "sessions.ndjson"


def ledger_path(landing_dir: Path) -> Path:
    return landing_dir / LEDGER_FILE


class SessionLedger:
    """The writer: appends records and hands out increasing session ids (across restarts).

    Opening cuts a torn last line (:class:`~crypto_platform.durable.AppendFile`). A record that does
    not fit on a full disk is kept in memory, in order, and written before the next one once there
    is room (:meth:`flush`); ``pending`` says how many wait. A crash meanwhile loses them, and the
    next start closes the dangling session from the landing log instead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = AppendFile(path)
        self.last_session = max((int(r.get("session", 0)) for r in read_records(path)), default=0)
        self._pending: list[bytes] = []

    def new_session(self) -> int:
        self.last_session += 1
        return self.last_session

    def record(self, session: int, event: str, ts_ns: int, **fields: Any) -> None:
        self._pending.append(orjson.dumps({"session": session, "event": event, "ts_ns": ts_ns, **fields}) + b"\n")
        self.flush()

    def flush(self) -> bool:
        """Write the records that waited for room; False while the disk is still full."""
        while self._pending:
            try:
                self._file.append(self._pending[0])
            except OSError as exc:
                if is_disk_full(exc):
                    return False
                raise
            self._pending.pop(0)
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self.flush()
        self._file.close()


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete, readable record (a damaged line is skipped and reported, never raised)."""
    return iter_json_lines(path)


@dataclass
class Session:
    """One connection, as the ledger saw it."""

    session: int
    connect_ns: int
    url: str | None = None
    authenticated: bool = False
    topics: list[str] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    first_frame_ns: int | None = None
    last_frame_ns: int | None = None
    disconnect_ns: int | None = None
    close_code: int | None = None
    reason: str | None = None
    frames: int = 0
    events: int = 0

    @property
    def open(self) -> bool:
        return self.disconnect_ns is None


@dataclass(frozen=True)
class Gap:
    """A window with no data: ``[start_ns, end_ns)``; ``end_ns`` is None while still disconnected."""

    start_ns: int
    end_ns: int | None
    after_session: int
    before_session: int | None
    close_code: int | None
    reason: str | None

    @property
    def seconds(self) -> float | None:
        return None if self.end_ns is None else (self.end_ns - self.start_ns) / 1e9

    def window(self, now_ms: int) -> GapWindow:
        """The gap on the receive clock, in ms; an open gap (still disconnected) runs to ``now_ms``."""
        end_ms = self.end_ns // 1_000_000 if self.end_ns is not None else now_ms
        return GapWindow(
            self.start_ns // 1_000_000, end_ms, self.after_session, self.before_session, self.reason, self.close_code
        )


def sessions(path: Path) -> list[Session]:
    """Every session in the ledger, oldest first."""
    by_id: dict[int, Session] = {}
    for rec in read_records(path):
        sid, event, ts = int(rec["session"]), rec["event"], int(rec["ts_ns"])
        s = by_id.get(sid)
        if s is None:
            s = by_id[sid] = Session(sid, ts)
        if event == "connect":
            s.connect_ns, s.url = ts, rec.get("url")
        elif event == "status":
            s.statuses.append({k: rec.get(k) for k in ("ts_ns", "status", "message")})
            if rec.get("status") == "auth_success":
                s.authenticated = True
        elif event == "subscribe":
            s.topics = sorted(set(s.topics) | set(rec.get("topics", [])))
        elif event == "unsubscribe":
            s.topics = sorted(set(s.topics) - set(rec.get("topics", [])))
        elif event == "first_frame":
            s.first_frame_ns = ts
        elif event == "disconnect":
            s.disconnect_ns, s.close_code, s.reason = ts, rec.get("code"), rec.get("reason")
            s.frames, s.events = int(rec.get("frames") or 0), int(rec.get("events") or 0)
            s.last_frame_ns = rec.get("last_frame_ns")
    return sorted(by_id.values(), key=lambda s: s.session)


def gaps(all_sessions: list[Session]) -> list[Gap]:
    """Holes between sessions that received data: from one's last frame to the next one's first.

    Sessions that never got a data frame (refused, dropped during the handshake) lie inside the
    gap around them. A closed last session leaves an open-ended gap (still disconnected).
    """
    covered = [s for s in all_sessions if s.first_frame_ns is not None]
    out: list[Gap] = []
    for a, b in itertools.pairwise(covered):
        start = a.last_frame_ns or a.disconnect_ns or b.connect_ns
        out.append(Gap(start, b.first_frame_ns, a.session, b.session, a.close_code, a.reason))
    if covered and not covered[-1].open:
        last = covered[-1]
        out.append(
            Gap(
                last.last_frame_ns or last.disconnect_ns or last.connect_ns,
                None,
                last.session,
                None,
                last.close_code,
                last.reason,
            )
        )
    return out


@dataclass(frozen=True)
class GapWindow:
    """A ledger gap on the event clock: data between ``start_ms`` and ``end_ms`` may be missing.

    Gap repair places each :class:`Gap` on the event times the sessions around it delivered; the
    alerts place it on the receive clock. Both ask the same questions of the result.
    """

    start_ms: int
    end_ms: int
    after_session: int
    before_session: int | None
    reason: str | None
    close_code: int | None = None

    def overlaps(self, lo: int, hi: int) -> bool:
        return self.start_ms < hi and lo < self.end_ms

    @property
    def label(self) -> str:
        """How the window is named where it explains something (a muted alert)."""
        text = f"stream gap {clock_text(self.start_ms)}-{clock_text(self.end_ms)} after session {self.after_session}"
        return text + (f" (close {self.close_code})" if self.close_code else "")
