"""Storage faults: a crash at every write step of a seal, torn tails in every append-only file.

The crash tests run the landing log's real sealer process with a crash point armed
(``CRYPTO_CRASH_AT``): it SIGKILLs itself at that step, as an OOM kill or a power cut would. A
restart (``LandingLog.open``) must then leave exactly what a seal without a crash leaves: the same
manifest lines, the same sealed bytes, each quarantined frame once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from crypto_platform.durable import AppendFile, iter_json_lines
from crypto_platform.settings import child_environment
from crypto_platform.stream import landing_log
from crypto_platform.stream.landing_log import LandingLog
from crypto_platform.stream.manifest import iter_lines, iter_manifest, last_manifest_entry
from crypto_platform.stream.session_ledger import SessionLedger, read_records, sessions

T0 = 1_764_028_800_000
SEAL_STEPS = ["seal.written", "seal.before_fsync", "seal.before_rename", "seal.after_rename"]


def trade_frame(i: int) -> bytes:
    return orjson.dumps([{"ev": "XT", "pair": "BTC-USD", "p": 97000.5, "s": 0.01, "t": T0 + i, "i": str(i), "x": 1}])


def write_segments(root: Path, malformed: bool) -> None:
    """Segment 1 sealed; segment 2 closed in ``active/`` with a torn tail (and a malformed frame)."""
    log = LandingLog(root, fsync="seal", sealer="inline")
    log.open()
    for i in range(20):
        log.append(1_000 + i, 1, trade_frame(i))
    assert log.seal() == 1
    for i in range(20, 60):
        log.append(1_000 + i, 2, trade_frame(i) if not (malformed and i % 10 == 5) else b'[{"ev":"XT",')
    os.close(log._fd)  # type: ignore[arg-type]  # closed, not sealed: what the ingester hands the sealer
    with open(root / "active" / "000000000002.ndjson.open", "ab") as f:
        f.write(b'{"r":9999,"n":2,"f":[{"ev":"XT","pa')  # the write a crash cut short


def run_sealer(root: Path, seq: int, crash_at: str | None) -> int:
    env = {k: v for k, v in child_environment().items() if k != "CRYPTO_CRASH_AT"}
    if crash_at is not None:
        env["CRYPTO_CRASH_AT"] = crash_at
    proc = subprocess.run(
        [sys.executable, landing_log.__file__, str(root), "seal", "0"],
        input=b"%d\n" % seq,
        env=env,
        capture_output=True,
        timeout=60,
    )
    return proc.returncode


def state(root: Path) -> dict[str, Any]:
    """Everything a reader sees, without the seal times."""
    entries = [{k: v for k, v in e.items() if k != "sealed_ns"} for e in iter_manifest(root)]
    return {
        "manifest": entries,
        "segments": {e["file"]: (root / e["file"]).read_bytes() for e in entries},
        "files": sorted(p.name for p in (root / "segments").iterdir()),
        "active": sorted(p.name for p in (root / "active").iterdir()),
        "quarantine": list(iter_json_lines(root / "quarantine.ndjson")),
    }


def assert_readable(root: Path) -> None:
    """Every line of every file is whole JSON, and every manifest line matches its file."""
    for path in [*root.glob("*.ndjson"), *(root / "segments").iterdir(), *(root / "active").iterdir()]:
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path} ends in a torn line"
        for number, line in enumerate(data.splitlines(), 1):
            orjson.loads(line)  # raises, naming nothing, if a line is damaged
            assert line, f"{path}:{number} is empty"
    for entry in iter_manifest(root):
        path = root / entry["file"]
        assert path.stat().st_size == entry["bytes"], path
        assert sum(1 for _ in iter_lines(path)) == entry["frames"], path


@pytest.mark.parametrize("malformed", [False, True], ids=["clean", "with_malformed"])
def test_a_crash_at_every_step_of_a_seal_loses_and_repeats_nothing(tmp_path: Path, malformed: bool) -> None:
    reference = tmp_path / "reference" / "landing"
    write_segments(reference, malformed)
    assert run_sealer(reference, 2, None) == 0
    want = state(reference)
    assert [e["seq"] for e in want["manifest"]] == [1, 2] and want["active"] == []
    assert len(want["quarantine"]) == (4 if malformed else 0)
    assert want["manifest"][1]["frames"] == (36 if malformed else 40)
    assert_readable(reference)

    for step in SEAL_STEPS:
        root = tmp_path / step / "landing"
        write_segments(root, malformed)
        assert run_sealer(root, 2, step) == -signal.SIGKILL, f"the sealer did not stop at {step}"
        assert_readable_or_unannounced(root)
        report = LandingLog(root, fsync="seal", sealer="inline").open()  # the restart
        got = state(root)
        assert got == want, step
        assert_readable(root)
        assert report.sealed_on_open + report.manifest_rebuilt == [2], step  # sealed once, on the restart


def assert_readable_or_unannounced(root: Path) -> None:
    """Right after the crash, what the manifest announces is already whole (a reader may look now)."""
    for entry in iter_manifest(root):
        assert (root / entry["file"]).stat().st_size == entry["bytes"]


def test_a_sealed_segment_longer_than_its_manifest_line_is_cut_back_on_restart(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    log = LandingLog(root, sealer="inline")
    log.open()
    for i in range(10):
        log.append(1_000 + i, 1, trade_frame(i))
    log.seal()
    log.close()
    (entry,) = iter_manifest(root)
    sealed = root / entry["file"]
    whole = sealed.read_bytes()
    with open(sealed, "ab") as f:  # what an older version published after a full disk
        f.write(b'{"r":5,"n":1,"f":[{"ev":"XT"')
    report = LandingLog(root, sealer="inline").open()
    assert report.resized == [1] and sealed.read_bytes() == whole
    assert_readable(root)


def test_every_append_only_file_cuts_a_torn_tail_before_appending(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    log = LandingLog(root, sealer="inline")
    log.open()
    log.append(1, 1, trade_frame(1))
    log.append(2, 1, b"not json")
    log.seal()
    log.close()
    ledger = SessionLedger(root / "sessions.ndjson")
    ledger.record(ledger.new_session(), "connect", 1, url="ws://x")
    ledger.close()
    for name in ("manifest.ndjson", "quarantine.ndjson", "sessions.ndjson"):
        with open(root / name, "ab") as f:
            f.write(b'{"torn":')
    # Restart: the writers of all three open, then append.
    log = LandingLog(root, sealer="inline")
    log.open()
    log.append(3, 2, trade_frame(3))
    log.append(4, 2, b"[1]")
    log.seal()
    log.close()
    ledger = SessionLedger(root / "sessions.ndjson")
    assert ledger.new_session() == 2
    ledger.record(2, "connect", 5, url="ws://x")
    ledger.close()
    assert_readable(root)
    assert [e["seq"] for e in iter_manifest(root)] == [1, 2]
    assert [r["seq"] for r in iter_json_lines(root / "quarantine.ndjson")] == [1, 2]
    assert [s.session for s in sessions(root / "sessions.ndjson")] == [1, 2]


def test_readers_skip_a_damaged_line_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "sessions.ndjson"
    # A ledger an older version damaged on a full disk: a record appended onto a cut one.
    path.write_bytes(
        b'{"session":1,"event":"connect","ts_ns":1}\n'
        b'{"session":1,"event":"first_fr{"session":1,"event":"disconnect","ts_ns":3,"code":1006}\n'
        b'{"session":2,"event":"connect","ts_ns":4}\n'
    )
    assert [r["session"] for r in read_records(path)] == [1, 2]
    assert [s.session for s in sessions(path)] == [1, 2]
    ledger = SessionLedger(path)
    assert ledger.new_session() == 3
    ledger.close()


def test_an_append_that_does_not_fit_is_undone_whole(tmp_path: Path) -> None:
    """A write past the file-size limit fails like a full disk does (EFBIG): the file keeps whole records."""
    path = tmp_path / "log.ndjson"
    out = AppendFile(path)
    out.append_json({"a": 1})
    size = out.size
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
    try:
        with pytest.raises(OSError):
            out.append_json({"b": "x" * 100})  # the kernel writes 10 bytes, then refuses
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    out.append_json({"c": 3})
    out.close()
    assert list(iter_json_lines(path)) == [{"a": 1}, {"c": 3}]


def test_manifest_readers_skip_a_line_an_older_version_damaged(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    log = LandingLog(root, sealer="inline")
    log.open()
    for seq in range(1, 4):
        log.append(seq, 1, trade_frame(seq))
        log.seal()
    log.close()
    lines = (root / "manifest.ndjson").read_bytes().splitlines(keepends=True)
    # Line 2 cut short and line 3 appended onto it: what a full disk left before torn tails were cut.
    (root / "manifest.ndjson").write_bytes(lines[0] + lines[1][:40] + lines[2])
    assert [e["seq"] for e in iter_manifest(root)] == [1]
    assert last_manifest_entry(root)["seq"] == 1  # type: ignore[index]
    assert [e["seq"] for e in iter_manifest(root, day="2025-11-25")] == [1]


def test_a_seal_that_cannot_write_its_copy_keeps_the_segment_and_succeeds_later(tmp_path: Path) -> None:
    """The copy without the malformed frames does not fit (EFBIG, as a full disk would): nothing is published."""
    import resource

    root = tmp_path / "landing"
    log = LandingLog(root, sealer="inline")
    log.open()
    for i in range(40):
        log.append(1_000 + i, 1, trade_frame(i) if i != 7 else b"[oops")
    active = root / "active" / "000000000001.ndjson.open"
    original = active.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(original) // 2, hard))
    try:
        with pytest.raises(OSError):
            log.seal()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert active.read_bytes() == original and list((root / "segments").iterdir()) == []
    assert list(iter_manifest(root)) == [] and not list((root / "active").glob("*.clean"))
    log.close()  # the next try (here: the clean stop) seals it, quarantining the bad frame once
    (entry,) = iter_manifest(root)
    assert entry["frames"] == 39 and entry["quarantined"] == 1 and not active.exists()
    assert [r["seq"] for r in iter_json_lines(root / "quarantine.ndjson")] == [1]
    assert_readable(root)
