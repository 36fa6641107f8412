"""The landing log on real files: appending, sealing, the manifest, quarantine, crash repair."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from crypto_platform.stream.landing_log import LandingLog, validate
from crypto_platform.stream.manifest import iter_lines, iter_manifest, log_id

T0 = 1_764_028_799_000  # 2025-11-24T23:59:59Z: one second before a UTC day boundary


def trade(i: int, t: int, pair: str = "BTC-USD") -> dict:
    return {"ev": "XT", "pair": pair, "p": 97000.12, "s": 0.00001234, "t": t, "i": str(i), "x": 1, "c": [2]}


def frame(*events: dict) -> bytes:
    return orjson.dumps(list(events))


def open_log(tmp_path: Path, **kw: object) -> LandingLog:
    log = LandingLog(tmp_path / "landing", **kw)  # type: ignore[arg-type]
    log.open()
    return log


def test_frames_land_verbatim_with_receive_time_and_session(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    raw = b'[{"ev":"XT","pair":"BTC-USD","p":97000.120000000001,"s":1e-05,"t":1,"i":"a","x":1}]'
    log.append(111, 7, raw)
    assert log.seal() == 1
    (entry,) = iter_manifest(tmp_path / "landing")
    assert list(iter_lines(tmp_path / "landing" / entry["file"])) == [(111, 7, raw)]


def test_manifest_counts_events_per_utc_day_and_channel(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(1, 1, frame(trade(1, T0), trade(2, T0 + 500)))
    log.append(2, 1, frame(trade(3, T0 + 1_500), {"ev": "XA", "pair": "BTC-USD", "s": T0 - 59_000, "e": T0 + 1_000}))
    log.append(3, 2, frame({"ev": "status", "status": "success", "message": "subscribed to: XT.*"}))
    assert log.seal() == 1
    (entry,) = iter_manifest(tmp_path / "landing")
    assert entry["seq"] == 1 and entry["frames"] == 3 and entry["events"] == 5 and entry["sessions"] == [1, 2]
    assert entry["recv_first_ns"] == 1 and entry["recv_last_ns"] == 3
    days = entry["days"]
    assert days["2025-11-24"]["XT"] == {"events": 2, "t_min": T0, "t_max": T0 + 500}
    assert days["2025-11-24"]["XA"]["events"] == 1
    assert days["2025-11-25"]["XT"] == {"events": 1, "t_min": T0 + 1_500, "t_max": T0 + 1_500}
    assert days["1970-01-01"]["status"]["events"] == 1  # status events are dated by receive time


def test_sealing_by_size_starts_a_new_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path, max_bytes=4096)
    for i in range(100):
        log.append(i, 1, frame(trade(i, T0)))
    log.seal()
    entries = list(iter_manifest(tmp_path / "landing"))
    assert len(entries) > 1 and [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert sum(e["events"] for e in entries) == 100
    assert all(e["bytes"] <= 4096 + 200 for e in entries)
    landed = [orjson.loads(f)[0]["i"] for e in entries for _, _, f in iter_lines(tmp_path / "landing" / e["file"])]
    assert landed == [str(i) for i in range(100)]


def test_sealing_by_age(tmp_path: Path) -> None:
    log = open_log(tmp_path, max_age_s=0.05)
    assert not log.due()  # nothing to seal yet
    log.append(1, 1, frame(trade(1, T0)))
    deadline = time.monotonic() + 5
    while not log.due():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert log.seal() == 1
    assert log.seal() is None  # empty segments are never sealed


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"ev":"XT"}', "not a JSON array"),
        (b'[{"pair":"BTC-USD"}]', "not an object with 'ev'"),
        (b"[{ev: XT}]", "invalid JSON"),
        (b'[{"ev":"XT","p":1', "invalid JSON"),
        (b"[1,2]", "not an object with 'ev'"),
    ],
)
def test_malformed_frames_go_to_quarantine_with_their_reason(tmp_path: Path, raw: bytes, reason: str) -> None:
    log = open_log(tmp_path)
    log.append(4, 3, frame(trade(1, T0)))
    log.append(5, 3, raw)  # landed like any frame, checked when its segment is sealed
    log.append(6, 3, frame(trade(2, T0)))
    assert log.seal() == 1
    (record,) = [orjson.loads(line) for line in (tmp_path / "landing" / "quarantine.ndjson").read_bytes().splitlines()]
    assert record["frame"] == raw.decode() and reason in record["reason"] and (record["r"], record["n"]) == (5, 3)
    (entry,) = iter_manifest(tmp_path / "landing")
    assert entry["quarantined"] == 1 and entry["events"] == 2 and entry["frames"] == 2
    assert (entry["recv_first_ns"], entry["recv_last_ns"]) == (4, 6)
    sealed = tmp_path / "landing" / entry["file"]
    assert [r for r, _, _ in iter_lines(sealed)] == [4, 6]  # the sealed segment never holds it
    assert entry["bytes"] == sealed.stat().st_size
    assert log.quarantined_total == 1


def test_a_segment_of_only_malformed_frames_is_not_sealed_and_counted_on_the_next(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(1, 1, b"[{ev: XT}]")
    log.append(2, 1, b"[1]")
    assert log.seal() is None  # empty segments are never sealed
    assert not list((tmp_path / "landing" / "active").iterdir())
    log.append(3, 1, frame(trade(1, T0)))
    assert log.seal() == 2  # its number is skipped, never reused
    (entry,) = iter_manifest(tmp_path / "landing")
    assert entry["quarantined"] == 2 and entry["events"] == 1
    assert len((tmp_path / "landing" / "quarantine.ndjson").read_bytes().splitlines()) == 2
    assert log.quarantined_total == 2


def test_raw_newlines_in_a_frame_keep_one_line_per_frame(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(1, 1, b'[\n {"ev": "XT", "i": "a"},\r\n {"ev": "XT", "i": "b"}\n]')
    log.seal()
    (entry,) = iter_manifest(tmp_path / "landing")
    ((_, _, f),) = list(iter_lines(tmp_path / "landing" / entry["file"]))
    assert [e["i"] for e in orjson.loads(f)] == ["a", "b"]


def test_a_torn_tail_is_cut_and_the_segment_checked_and_sealed_on_reopen(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(3):
        log.append(i, 1, frame(trade(i, T0)))
    log.append(7, 1, b'[{"ev":"XT","p":1')  # malformed, and the crash comes before any seal checked it
    active = next((tmp_path / "landing" / "active").iterdir())
    with open(active, "ab") as f:  # a write cut short by a crash
        f.write(b'{"r":9,"n":1,"f":[{"ev":"XT","pa')
    reopened = LandingLog(tmp_path / "landing")
    report = reopened.open()
    assert report.torn_bytes > 0 and report.sealed_on_open == [1]
    (entry,) = iter_manifest(tmp_path / "landing")
    assert entry["events"] == 3 and entry["quarantined"] == 1
    assert [r for r, _, _ in iter_lines(tmp_path / "landing" / entry["file"])] == [0, 1, 2]
    (record,) = [orjson.loads(line) for line in (tmp_path / "landing" / "quarantine.ndjson").read_bytes().splitlines()]
    assert record["r"] == 7 and "invalid JSON" in record["reason"]
    assert reopened.quarantined_total == 1
    assert not list((tmp_path / "landing" / "active").iterdir())
    reopened.append(10, 2, frame(trade(10, T0)))
    assert reopened.seal() == 2  # numbering continues after the repaired segment


def test_a_sealed_segment_without_manifest_line_gets_it_rebuilt(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(1, 1, frame(trade(1, T0), trade(2, T0)))
    log.seal()
    manifest = tmp_path / "landing" / "manifest.ndjson"
    manifest.write_bytes(b"")  # the crash came between the rename and the manifest append
    report = LandingLog(tmp_path / "landing").open()
    assert report.manifest_rebuilt == [1]
    (entry,) = iter_manifest(tmp_path / "landing")
    assert entry["events"] == 2 and entry["days"]["2025-11-24"]["XT"]["events"] == 2


def test_log_identity_survives_reopen_and_changes_with_a_new_directory(tmp_path: Path) -> None:
    open_log(tmp_path)
    first = log_id(tmp_path / "landing")
    open_log(tmp_path)
    assert log_id(tmp_path / "landing") == first
    other = tmp_path / "other"
    open_log(other)
    assert log_id(other / "landing") not in (None, first)


def test_retention_removes_old_sealed_segments(tmp_path: Path) -> None:
    log = open_log(tmp_path, retention_days=1)
    log.append(1, 1, frame(trade(1, T0)))
    log.seal()
    old = next((tmp_path / "landing" / "segments").iterdir())
    os.utime(old, (0, 0))
    log.append(2, 1, frame(trade(2, T0)))
    log.seal()
    assert [p.name for p in (tmp_path / "landing" / "segments").iterdir()] == ["000000000002.ndjson"]


def test_validate_accepts_only_arrays_of_events() -> None:
    assert validate(b'[{"ev":"XT"}]')[0] == [{"ev": "XT"}]
    assert validate(b"[]")[0] == []
    assert validate(b'"text"')[0] is None


# -- the sealer process (what the ingester uses) ---------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def sealed_by_process(log: LandingLog) -> Callable[[], bool]:
    def done() -> bool:
        log.poll()
        return log.pending == 0

    return done


MIXED = [
    frame(trade(1, T0), trade(2, T0 + 2_000)),  # across midnight
    b'[{"ev":"XT","p":1',
    frame({"ev": "XAS", "pair": "BTC-USD", "s": T0, "e": T0 + 1_000}, trade(3, T0 - 5)),
    b'{"ev":"XT"}',
    frame({"ev": "status", "status": "success", "message": "subscribed to: XT.*"}),
]


def without_sealed_ns(root: Path) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "sealed_ns"} for e in iter_manifest(root)]


def test_the_sealer_process_seals_exactly_what_inline_sealing_does(tmp_path: Path) -> None:
    inline = open_log(tmp_path / "inline")
    background = open_log(tmp_path / "process", sealer="process")
    for log in (inline, background):
        for i, raw in enumerate(MIXED):
            log.append(10 + i, 1, raw)
        log.seal()
        log.append(20, 2, frame(trade(4, T0)))
        log.seal()
    wait_until(sealed_by_process(background), "the sealer process announced both segments")
    a, b = tmp_path / "inline" / "landing", tmp_path / "process" / "landing"
    assert without_sealed_ns(a) == without_sealed_ns(b) and len(without_sealed_ns(b)) == 2
    assert [(a / e["file"]).read_bytes() for e in iter_manifest(a)] == [
        (b / e["file"]).read_bytes() for e in iter_manifest(b)
    ]
    assert (a / "quarantine.ndjson").read_bytes() == (b / "quarantine.ndjson").read_bytes()
    assert background.quarantined_total == inline.quarantined_total == 2
    assert background.channel_counts() == inline.channel_counts()
    assert background.segments_sealed == 2
    background.close()
    assert background.sealer_pid is None


def test_close_waits_until_the_sealer_process_announced_everything(tmp_path: Path) -> None:
    log = open_log(tmp_path, sealer="process")
    for i in range(200):
        log.append(i, 1, frame(trade(i, T0)))
    log.close()  # no wait of our own: close seals the active segment and waits for the sealer
    (entry,) = iter_manifest(tmp_path / "landing")
    assert entry["events"] == 200 and not list((tmp_path / "landing" / "active").iterdir())


def test_a_killed_sealer_process_is_restarted_and_loses_nothing(tmp_path: Path) -> None:
    log = open_log(tmp_path, sealer="process")
    first = log.sealer_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    log.append(1, 1, frame(trade(1, T0)))
    assert log.seal() == 1  # handed to a dead process: kept until a new one takes it
    died: list[str] = []

    def restarted() -> bool:
        try:
            log.poll()
        except RuntimeError as exc:
            died.append(str(exc))
        return log.sealer_pid not in (None, first) and log.pending == 0

    wait_until(restarted, "a new sealer process sealed the segment")
    assert died and "exited with code -9" in died[0]
    assert [e["seq"] for e in iter_manifest(tmp_path / "landing")] == [1]
    log.close()


def test_the_sealer_process_keeps_the_inherited_lock_until_it_has_finished(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    log = open_log(tmp_path, sealer="process", pass_fds=(fd,))
    os.close(fd)  # what the ingester's death does to its own copy

    def lock_is_free() -> bool:
        probe = os.open(lock_path, os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(probe)
        return True

    assert not lock_is_free()  # the sealer still holds it: no second writer can start yet
    log.close()
    assert lock_is_free()
