"""The lake writer: sealed segments reach the raw Delta tables outside Dagster, exactly once across crashes.

The two crash points of a pass: before its commit (nothing of it is in the table, the watermark
says so, the restart applies it) and after its commit (the watermark says it is in, the restart
neither reads nor commits it again). Then the real process: started, killed with SIGKILL at an
arbitrary moment, restarted; the table equals a rebuild from the landing log, and a second writer
refuses to start.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crypto_platform.lake import writer
from crypto_platform.lake.raw import LANDING_APP_ID, RAW_TABLES, rebuild_day
from crypto_platform.lake.tables import DeltaLake
from crypto_platform.settings import child_environment
from crypto_platform_tests.assets.test_raw_tables import MINUTE, bar, quotes_frame
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

DAY = "2025-11-24"
TABLES = ("raw_trades", "raw_quotes", "raw_aggregates")


def no_lock(_: str) -> writer.contextlib.AbstractContextManager[None]:
    return writer.contextlib.nullcontext()


def land_some(landing: Landing, start: int) -> int:
    landing.segment(trades_frame(start, 20, DAY1_MS + start), quotes_frame(DAY1_MS + start, 4))
    return landing.segment(trades_frame(start + 10, 20, DAY1_MS + start), bar("XA", MINUTE, "1", "2"))


def rebuilt(landing: Landing, root: Path, upto: int) -> DeltaLake:
    lake = DeltaLake(str(root))
    for name in TABLES:
        rebuild_day(lake, RAW_TABLES[name], landing.settings.landing_dir, DAY, upto)
    return lake


def assert_equal_to_rebuild(lake: DeltaLake, landing: Landing, tmp_path: Path, upto: int) -> None:
    full = rebuilt(landing, tmp_path / "rebuilt", upto)
    for name in TABLES:
        assert lake.read(name, DAY).equals(full.read(name, DAY)), name


def test_a_pass_that_dies_before_its_commit_is_applied_on_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    landing = Landing(tmp_path)
    lake = DeltaLake(str(tmp_path / "lake"))
    writer.write_pass(lake, landing.settings.landing_dir, no_lock, TABLES)
    last = land_some(landing, 0)
    real_append: Callable[..., None] = DeltaLake.append

    def dies(self: DeltaLake, name: str, *args: object, **kwargs: object) -> None:
        if name == "raw_quotes":
            raise SystemExit("killed before the commit")
        real_append(self, name, *args, **kwargs)

    monkeypatch.setattr(DeltaLake, "append", dies)
    with pytest.raises(SystemExit):
        writer.write_pass(lake, landing.settings.landing_dir, no_lock, TABLES)
    assert lake.watermark("raw_trades", LANDING_APP_ID) == last  # committed before the crash
    assert lake.watermark("raw_quotes", LANDING_APP_ID) is None and lake.read("raw_quotes", DAY) is None
    monkeypatch.setattr(DeltaLake, "append", real_append)
    applied = writer.write_pass(lake, landing.settings.landing_dir, no_lock, TABLES)  # the restart
    assert applied["raw_trades"].segments == 0 and applied["raw_quotes"].segments == 1  # the one with quotes
    assert all(lake.watermark(n, LANDING_APP_ID) == last for n in TABLES)
    assert_equal_to_rebuild(lake, landing, tmp_path, last)


def test_a_pass_that_dies_after_its_commit_is_not_applied_twice(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    lake = DeltaLake(str(tmp_path / "lake"))
    last = land_some(landing, 0)
    writer.write_pass(lake, landing.settings.landing_dir, no_lock, TABLES)  # commits, then "dies"
    versions = {n: lake.open(n).version() for n in TABLES}  # type: ignore[union-attr]
    applied = writer.write_pass(lake, landing.settings.landing_dir, no_lock, TABLES)  # the restart
    assert all(a.segments == 0 and a.rows_read == 0 for a in applied.values())
    assert {n: lake.open(n).version() for n in TABLES} == versions  # type: ignore[union-attr]
    assert_equal_to_rebuild(lake, landing, tmp_path, last)


def wait_for(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_writer_process_appends_within_seconds_survives_sigkill_and_runs_alone(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    settings = landing.settings
    lake = writer.lake_of(settings)
    env = child_environment({"CRYPTO_PROJECT_DIR": str(settings.project_dir), "CRYPTO_STATE_DIR": str(tmp_path)})
    command = [sys.executable, "-m", "crypto_platform.cli", "lake-writer", "--poll", "0.1"]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def through(upto: int) -> Callable[[], bool]:
        return lambda: all(lake.watermark(n, LANDING_APP_ID) == upto for n in TABLES)

    proc = start()
    try:
        first = land_some(landing, 0)
        wait_for(through(first), 60, f"segment {first} in the lake")
        second = start()  # a second writer refuses: the lock decides
        assert second.wait(60) == 3 and b"already runs" in (second.stderr.read() if second.stderr else b"")
        last = land_some(landing, 100)
        proc.send_signal(signal.SIGKILL)  # wherever it is: between passes, reading, committing
        proc.wait(30)
        proc = start()
        wait_for(through(last), 60, f"segment {last} after the restart")

        def beat_of_restart() -> bool:
            beat = writer.read_heartbeat(settings)
            return beat is not None and beat["pid"] == proc.pid

        wait_for(beat_of_restart, 60, "the restarted writer's heartbeat")
        beat = writer.read_heartbeat(settings)
        assert beat is not None and beat["last_error"] is None and beat["watermarks"]["raw_trades"] == last
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert_equal_to_rebuild(lake, landing, tmp_path, last)
