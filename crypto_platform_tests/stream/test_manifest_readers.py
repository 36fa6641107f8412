"""Reading a long manifest from where it matters, and retention that does not list every segment.

A real landing log of 1,500 segments whose trades move an hour per segment (so entries span about
62 UTC days, some two at once) with a few seqs skipped (segments of only malformed frames): every
``iter_manifest`` query equals the same filter over every parsed line, and lines before the start
are not even read.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from crypto_platform.settings import child_environment
from crypto_platform.stream import manifest
from crypto_platform.stream.landing_log import LandingLog, Retention
from crypto_platform.stream.manifest import count_manifest, iter_manifest, last_manifest_entry
from crypto_platform_tests.stream.test_landing_log import T0, frame, trade

HOUR_MS = 3_600_000
SEGMENTS = 1_500


@pytest.fixture(scope="module")
def long_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("long") / "landing"
    log = LandingLog(root, fsync="never")
    log.open()
    for i in range(SEGMENTS):
        t = T0 + i * HOUR_MS
        if i % 97 == 50:
            log.append(i * 10, 1, b"not a frame")  # this seq holds nothing valid: it is skipped
            log.seal()
        # A segment with a trade an hour later too: around midnight it holds two days.
        log.append(i * 10 + 1, 1 + i // 500, frame(trade(2 * i, t), trade(2 * i + 1, t + HOUR_MS - 1)))
        log.seal()
    log.close()
    return root


def every_entry(root: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (root / "manifest.ndjson").read_bytes().splitlines()]


def naive(entries: list[dict[str, Any]], after: int, through: int | None, day: str | None) -> list[dict[str, Any]]:
    return [
        e
        for e in entries
        if e["seq"] > after and (through is None or e["seq"] <= through) and (day is None or day in e["days"])
    ]


def test_the_fixture_is_long_skips_seqs_and_spans_days(long_log: Path) -> None:
    entries = every_entry(long_log)
    seqs = [e["seq"] for e in entries]
    assert len(entries) == SEGMENTS and seqs == sorted(seqs) and seqs[-1] > SEGMENTS  # skipped seqs
    assert (long_log / "manifest.ndjson").stat().st_size > 6 * 65_536
    assert sum(len(e["days"]) == 2 for e in entries) > 50


@pytest.mark.parametrize("probe_bytes", [65_536, 997, 64])  # smaller: more bisection steps, to single lines
def test_every_query_equals_a_filter_over_every_line(
    long_log: Path, probe_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest, "_PROBE_BYTES", probe_bytes)
    entries = every_entry(long_log)
    seqs = [e["seq"] for e in entries]
    days = sorted({d for e in entries for d in e["days"]})
    skipped = sorted(set(range(1, seqs[-1])) - set(seqs))
    rng = random.Random(7)
    afters = [0, 1, seqs[0], seqs[-1] - 1, seqs[-1], seqs[-1] + 5, *skipped[:3], *rng.sample(seqs, 20)]
    for after in afters:
        for through in (None, after, after + 1, after + 40, seqs[-1], *rng.sample(seqs, 2)):
            for day in (None, days[0], days[-1], rng.choice(days), "2020-01-01"):
                got = list(iter_manifest(long_log, after_seq=after, through_seq=through, day=day))
                assert got == naive(entries, after, through, day), (after, through, day)
    assert last_manifest_entry(long_log) == entries[-1]


def test_lines_before_the_start_are_not_read(long_log: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Damage the first line: a full read skips it saying so, a read of the tail never touches it.
    copy = tmp_path / "landing"
    copy.mkdir()
    lines = (long_log / "manifest.ndjson").read_bytes().splitlines(keepends=True)
    (copy / "manifest.ndjson").write_bytes(b"{damaged\n" + b"".join(lines[1:]))
    entries = every_entry(long_log)
    last = entries[-1]["seq"]
    with caplog.at_level("WARNING"):
        assert list(iter_manifest(copy, after_seq=last - 3)) == naive(entries, last - 3, None, None)
        assert "damaged manifest line" not in caplog.text
        assert len(list(iter_manifest(copy))) == len(entries) - 1
        assert "damaged manifest line" in caplog.text


def test_a_torn_last_line_is_left_out(long_log: Path, tmp_path: Path) -> None:
    copy = tmp_path / "landing"
    copy.mkdir()
    data = (long_log / "manifest.ndjson").read_bytes()
    (copy / "manifest.ndjson").write_bytes(data + b'{"seq":99999,"file":"segm')
    entries = every_entry(long_log)
    assert list(iter_manifest(copy, after_seq=entries[-5]["seq"])) == entries[-4:]
    assert last_manifest_entry(copy) == entries[-1]


def test_entries_written_in_another_key_order_and_lines_longer_than_a_probe(tmp_path: Path) -> None:
    lines = []
    for seq in range(1, 400):
        # Seq not first, and now and then a line far longer than the 64 KiB probe window.
        entry = {"file": f"segments/{seq:012d}.ndjson", "days": {"2025-11-24": {"XT": {}}}, "seq": seq}
        if seq % 50 == 0:
            entry["sessions"] = list(range(20_000))
        lines.append(orjson.dumps(entry) + b"\n")
    (tmp_path / "manifest.ndjson").write_bytes(b"".join(lines))
    for after in (0, 49, 50, 51, 200, 398, 399):
        assert [e["seq"] for e in iter_manifest(tmp_path, after_seq=after)] == list(range(after + 1, 400))
    (tmp_path / "manifest.ndjson").write_bytes(b"".join(lines[:50]))  # the long line last
    assert last_manifest_entry(tmp_path)["seq"] == 50  # type: ignore[index]


def test_last_entry_of_a_missing_empty_or_torn_only_manifest_is_none(tmp_path: Path) -> None:
    assert last_manifest_entry(tmp_path) is None
    (tmp_path / "manifest.ndjson").write_bytes(b"")
    assert last_manifest_entry(tmp_path) is None
    (tmp_path / "manifest.ndjson").write_bytes(b'{"seq":1,"fi')
    assert last_manifest_entry(tmp_path) is None
    assert list(iter_manifest(tmp_path, after_seq=0)) == []


def test_retention_deletes_oldest_first_and_stops_at_the_first_segment_kept(tmp_path: Path) -> None:
    log = LandingLog(tmp_path / "landing", fsync="never", retention_days=1)
    log.open()
    segments = tmp_path / "landing" / "segments"

    def seal(i: int) -> None:
        log.append(i, 1, frame(trade(i, T0)))
        log.seal()

    for i in range(1, 7):
        seal(i)
    old = time.time() - 2 * 86_400
    for seq in (1, 2, 3, 5):  # 4 is young: it holds 5 back (ages follow seq order when untouched)
        os.utime(segments / f"{seq:012d}.ndjson", (old, old))
    seal(7)
    assert sorted(p.name[:12] for p in segments.iterdir()) == [f"{s:012d}" for s in (4, 5, 6, 7)]
    os.utime(segments / f"{4:012d}.ndjson", (old, old))
    seal(8)
    assert sorted(p.name[:12] for p in segments.iterdir()) == [f"{s:012d}" for s in (6, 7, 8)]
    log.close()


def test_retention_lists_the_directory_once_and_skips_missing_seqs(tmp_path: Path) -> None:
    segments = tmp_path / "segments"
    segments.mkdir()
    old = time.time() - 3 * 86_400
    for seq in (3, 4, 6, 9):  # 5, 7 and 8 were never sealed or were removed by hand
        path = segments / f"{seq:012d}.ndjson"
        path.write_bytes(b"")
        os.utime(path, (old, old))
    retention = Retention(segments, days=2)
    assert retention.apply(newest_seq=6) == 3  # 3, 4 and 6; 9 is past the newest seq asked about
    (segments / f"{2:012d}.ndjson").write_bytes(b"")  # appears below the start: no new listing
    assert retention.apply(newest_seq=9) == 1
    assert sorted(p.name for p in segments.iterdir()) == [f"{2:012d}.ndjson"]
    assert Retention(segments, days=0).apply(newest_seq=9) == 0


def test_status_counts_the_sealed_segments_of_a_long_log(long_log: Path, tmp_path: Path) -> None:
    # `crypto-platform status --json` on a data directory whose landing log is the long one.
    data = tmp_path / "data"
    data.mkdir()
    (data / "landing").symlink_to(long_log)
    env = child_environment({"CRYPTO_STATE_DIR": str(tmp_path), "CRYPTO_DATA_DIR": str(data)})
    done = subprocess.run(
        [sys.executable, "-m", "crypto_platform.cli", "status", "--json"], env=env, capture_output=True, timeout=120
    )
    info = orjson.loads(done.stdout)
    assert (done.returncode, info["running"], info["segments_sealed"]) == (1, False, SEGMENTS)
    assert count_manifest(long_log) == SEGMENTS and count_manifest(tmp_path) == 0
