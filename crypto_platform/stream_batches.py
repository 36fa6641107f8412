"""Turning newly sealed landing segments into Dagster run requests, exactly once.

Kept apart from the sensor so the cursor arithmetic can be tested without Dagster. The rules:

- The cursor is the last sealed segment handed to Dagster, plus the landing log's identity, so a
  wiped or replaced data directory restarts from its first segment instead of being skipped.
- One run request per UTC day the new segments touch, carrying the segment range in a tag so the
  run processes only those segments (a manual materialization or backfill has no tag and rebuilds
  the whole day from every segment).
- The run key is derived from (log identity, day, segment range): a repeated tick, a restarted
  daemon or a re-evaluated cursor produces the same key, and Dagster launches it only once.
- Work per tick is bounded (``max_segments``); the cursor advances by what was handed over.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# Tag on a sensor-launched run: "first-last" sealed segment seqs it covers (inclusive).
SEGMENTS_TAG = "crypto/segments"
# Tag on a round that runs the lake checks: "first-last" segments whose rows they evaluate (every
# segment since the previous checked round, so no row goes unchecked).
CHECK_SEGMENTS_TAG = "crypto/check_segments"
LANDING_LOG_TAG = "crypto/landing_log"


@dataclass(frozen=True)
class StreamCursor:
    """Where the stream sensor stands in the landing log."""

    log_id: str | None = None
    seq: int = 0
    # The lake writer's progress last reported to Dagster as runless materializations, and when.
    reported_seq: int = 0
    reported_at: float = 0.0
    # When the sensor last launched stream_batch runs (CRYPTO_BATCH_INTERVAL_S counts from here).
    launched_at: float = 0.0
    # The last segment whose rows the lake checks evaluated, and when (CRYPTO_CHECK_INTERVAL_S).
    checked_seq: int = 0
    checked_at: float = 0.0
    # When a round last loaded the Snowflake copies (CRYPTO_SNOWFLAKE_INTERVAL_S).
    snowflake_at: float = 0.0
    # When the ingester's health was last recorded on landing_log.
    observed_at: float = 0.0
    # The session ledger's size when the last round was launched (its MySQL copy loads on news).
    ledger_bytes: int = 0

    def encode(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, raw: str | None) -> StreamCursor:
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(
                log_id=data.get("log_id"),
                seq=int(data.get("seq", 0)),
                reported_seq=int(data.get("reported_seq", 0)),
                reported_at=float(data.get("reported_at", 0.0)),
                launched_at=float(data.get("launched_at", 0.0)),
                checked_seq=int(data.get("checked_seq", 0)),
                checked_at=float(data.get("checked_at", 0.0)),
                snowflake_at=float(data.get("snowflake_at", 0.0)),
                observed_at=float(data.get("observed_at", 0.0)),
                ledger_bytes=int(data.get("ledger_bytes", 0)),
            )
        except (ValueError, TypeError, AttributeError):
            # A cursor from another version: start over; run keys keep this from duplicating runs.
            return cls()


@dataclass(frozen=True)
class DayBatch:
    """New sealed segments touching one UTC day."""

    day: str
    first_seq: int
    last_seq: int
    events: int
    channels: frozenset[str] = frozenset()  # the data channels with events of this day

    @property
    def segment_range(self) -> str:
        return f"{self.first_seq}-{self.last_seq}"

    def run_key(self, log_id: str) -> str:
        return f"landing:{log_id}:{self.day}:{self.segment_range}"


def parse_segment_range(tag: str) -> tuple[int, int]:
    """``"12-40"`` -> ``(12, 40)``; raises ``ValueError`` naming the tag on anything else."""
    first, sep, last = tag.partition("-")
    if not sep or not first.isdigit() or not last.isdigit() or int(first) > int(last):
        raise ValueError(f"run tag {SEGMENTS_TAG}={tag!r} is not a segment range FIRST-LAST")
    return int(first), int(last)


class RunTags(Protocol):
    @property
    def tags(self) -> Mapping[str, str]: ...


class RunContext(Protocol):
    """What :meth:`BatchScope.from_context` reads of a Dagster context (an asset's or a check's)."""

    @property
    def run(self) -> RunTags: ...


@dataclass(frozen=True)
class BatchScope:
    """What a run covers: the sealed segments the stream sensor handed it, or every segment of its days.

    The sensor puts the range in :data:`SEGMENTS_TAG`; a manual materialization or a backfill has no
    such tag and rebuilds its days whole from every segment. The tag is read here and nowhere else,
    so every asset and check of a run agrees on whether it is incremental, and a malformed tag fails
    the same way, naming the tag, wherever it is read. Plain typing instead of Dagster's classes
    keeps this module testable without Dagster.
    """

    segments: tuple[int, int] | None = None  # (first, last) seq, inclusive; None: the whole day
    # The segments whose rows the run's lake checks evaluate: every segment since the previous checked
    # round (CHECK_SEGMENTS_TAG) when the round runs them, else the run's own; None: the whole day.
    checked: tuple[int, int] | None = None
    # A round that runs the lake checks (the tag is there): its copies also recount their whole days.
    checks_round: bool = False

    @property
    def incremental(self) -> bool:
        return self.segments is not None

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> BatchScope:
        tag = tags.get(SEGMENTS_TAG)
        segments = parse_segment_range(tag) if tag else None
        check = tags.get(CHECK_SEGMENTS_TAG)
        return cls(segments, parse_segment_range(check) if check and segments else segments, bool(check and segments))

    @classmethod
    def from_context(cls, context: RunContext) -> BatchScope:
        return cls.from_tags(context.run.tags)


def plan_batches(
    entries: Iterable[Mapping[str, Any]], cursor: StreamCursor, log_id: str, max_segments: int
) -> tuple[list[DayBatch], StreamCursor]:
    """Group the manifest entries after ``cursor`` by UTC day; return the batches and the next cursor.

    ``entries`` are manifest lines (docs/architecture.md) in ``seq`` order.
    """
    start_seq = cursor.seq if cursor.log_id == log_id else 0
    taken: list[Mapping[str, Any]] = []
    for entry in entries:
        if int(entry["seq"]) <= start_seq:
            continue
        if len(taken) >= max_segments:
            break
        taken.append(entry)
    if not taken:
        return [], StreamCursor(log_id=log_id, seq=start_seq)

    by_day: dict[str, list[int]] = {}
    events: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    for entry in taken:
        seq = int(entry["seq"])
        for day, channels in (entry.get("days") or {}).items():
            # Days that saw only status frames carry no market data to build.
            data_events = sum(int(c.get("events", 0)) for ch, c in channels.items() if ch != "status")
            if data_events == 0:
                continue
            by_day.setdefault(day, []).append(seq)
            events[day] = events.get(day, 0) + data_events
            seen.setdefault(day, set()).update(ch for ch, c in channels.items() if ch != "status" and c.get("events"))
    batches = [
        DayBatch(day, min(seqs), max(seqs), events[day], frozenset(seen[day])) for day, seqs in sorted(by_day.items())
    ]
    return batches, StreamCursor(log_id=log_id, seq=int(taken[-1]["seq"]))
