"""Minutes only partly observed at the edges of the stream are gap minutes, repaired like any other."""

from __future__ import annotations

from pathlib import Path

import orjson

from crypto_platform.lake.gap_repair import BEFORE_THE_STREAM, ledger_windows, minutes_in_gaps

DAY_LO = 1_763_596_800_000  # 2025-11-20T00:00Z
DAY_HI = DAY_LO + 86_400_000
M = 60_000
T10 = DAY_LO + 10 * 60 * M  # 10:00


def write_ledger(landing: Path, records: list[dict]) -> None:
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "sessions.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def ns(ms: int) -> int:
    return ms * 1_000_000


def test_the_minute_the_first_session_began_in_and_the_one_a_session_ended_in_are_gap_minutes(tmp_path: Path) -> None:
    first, last = T10 + 30_500, T10 + 5 * M + 20_000  # session 1 saw 10:00:30.5 .. 10:05:20
    resumed = T10 + 8 * M + 10_000  # session 2 from 10:08:10
    write_ledger(
        tmp_path,
        [
            {"session": 1, "event": "connect", "ts_ns": ns(first - 500)},
            {"session": 1, "event": "first_frame", "ts_ns": ns(first)},
            {"session": 1, "event": "disconnect", "ts_ns": ns(last + 100), "last_frame_ns": ns(last), "code": 1006},
            {"session": 2, "event": "connect", "ts_ns": ns(resumed - 500)},
            {"session": 2, "event": "first_frame", "ts_ns": ns(resumed)},
        ],
    )
    clock = {1: (first, last), 2: (resumed, T10 + 12 * M)}
    _, windows = ledger_windows(tmp_path, clock, DAY_LO, DAY_HI, now_ms=DAY_HI + M)
    assert [(w.after_session, w.before_session) for w in windows] == [(BEFORE_THE_STREAM, 1), (1, 2)]
    gap_minutes = minutes_in_gaps(windows, DAY_LO, DAY_HI, revision_window_ms=0)
    assert T10 in gap_minutes  # partly before the first session: never settled from part of its trades
    assert T10 + 5 * M in gap_minutes  # the session ended inside it
    assert {T10 + i * M for i in range(1, 5)}.isdisjoint(gap_minutes)  # seen whole
    assert {T10 + i * M for i in range(5, 9)} <= gap_minutes  # the outage and the minute it resumed in
    # Corrections of a minute arrive up to the revision window after its end: the minute before the
    # first session could still have been corrected after the stream began, so it is partial too.
    with_revisions = minutes_in_gaps(windows, DAY_LO, DAY_HI, revision_window_ms=60_000)
    assert T10 - M in with_revisions and T10 - 2 * M not in with_revisions


def test_no_leading_gap_on_a_day_the_stream_had_been_running_through(tmp_path: Path) -> None:
    write_ledger(
        tmp_path,
        [
            {"session": 1, "event": "connect", "ts_ns": ns(DAY_LO - 3_600_000)},
            {"session": 1, "event": "first_frame", "ts_ns": ns(DAY_LO - 3_600_000)},
        ],
    )
    _, windows = ledger_windows(tmp_path, {}, DAY_LO, DAY_HI, now_ms=DAY_HI + M)
    assert windows == []
