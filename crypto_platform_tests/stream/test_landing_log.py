"""The landing log on real files: appending, sealing, the manifest, quarantine, crash repair."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from crypto_platform.stream.landing_log import LandingLog, iter_lines, iter_manifest, log_id, validate

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
    assert log.append(111, 7, raw) is not None
    log.seal()
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
    import time

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
    assert log.append(5, 3, raw) is None
    log.append(6, 3, frame(trade(1, T0)))
    log.seal()
    (record,) = [orjson.loads(line) for line in (tmp_path / "landing" / "quarantine.ndjson").read_bytes().splitlines()]
    assert record["frame"] == raw.decode() and reason in record["reason"] and record["n"] == 3
    (entry,) = iter_manifest(tmp_path / "landing")
    assert entry["quarantined"] == 1 and entry["events"] == 1
    assert log.quarantined_total == 1


def test_raw_newlines_in_a_frame_keep_one_line_per_frame(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(1, 1, b'[\n {"ev": "XT", "i": "a"},\r\n {"ev": "XT", "i": "b"}\n]')
    log.seal()
    (entry,) = iter_manifest(tmp_path / "landing")
    ((_, _, f),) = list(iter_lines(tmp_path / "landing" / entry["file"]))
    assert [e["i"] for e in orjson.loads(f)] == ["a", "b"]


def test_a_torn_tail_is_cut_and_the_segment_sealed_on_reopen(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(3):
        log.append(i, 1, frame(trade(i, T0)))
    active = next((tmp_path / "landing" / "active").iterdir())
    with open(active, "ab") as f:  # a write cut short by a crash
        f.write(b'{"r":9,"n":1,"f":[{"ev":"XT","pa')
    reopened = LandingLog(tmp_path / "landing")
    report = reopened.open()
    assert report.torn_bytes > 0 and report.sealed_on_open == [1]
    (entry,) = iter_manifest(tmp_path / "landing")
    assert entry["events"] == 3
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
