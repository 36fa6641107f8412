"""A full disk under a fast stream, on a real small file system the test mounts itself (tmpfs, 8 MiB).

The data directory lives on the tmpfs; a ballast file takes part of it, so the stream fills the rest
within seconds. Then: every file the platform wrote reads back (each line JSON, each manifest line
matching its file), the ingester says "disk full at <path>" (heartbeat, ``crypto-platform status``,
the stream sensor's ``landing_log`` metadata) and the ledger holds the closed session. The ballast
goes, the stream resumes by itself, the outage is a gap in the ledger, and the day rebuilds from
the landing log and REST with every check passing.

Mounting needs root (CI runs as root): elsewhere the test is skipped saying why, and under
``CI=true`` it fails instead, so it can never be skipped silently where it must run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from crypto_platform.assets.bars import minute_bars
from crypto_platform.assets.raw import raw_aggregates, raw_trades
from crypto_platform.checks import minute_bars_checks, raw_aggregates_checks, raw_trades_checks
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.polygon import PolygonRestResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.sensors import health_metadata
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream import status_cli, supervision
from crypto_platform.stream.manifest import iter_lines, iter_manifest
from crypto_platform.stream.session_ledger import gaps
from crypto_platform_tests.simulator.conftest import HISTORY_START_MS, KEY, wait_for
from crypto_platform_tests.stream.conftest import Running, settings_for

PAIRS = ("BTC-USD", "ETH-USD")
DAY = "2025-11-20"
START_MS = HISTORY_START_MS + 14 * 3_600_000  # 14:00 UTC
SPEED = 60.0  # a simulated minute per second: the disk fills after several complete minutes
RATE = 100.0  # events per simulated second: 6,000 events/s of wall time
BALLAST = 3 * 1024 * 1024


def _cannot(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the full-disk test: {reason}")
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for this test only."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        _cannot("mounting a size-limited tmpfs needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        _cannot(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(autouse=True)
def revision_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # The simulator re-sends a corrected XA bar 2 simulated seconds after the minute.
    monkeypatch.setenv("CRYPTO_BAR_REVISION_WINDOW_S", "5")


def sim_config(**kw: Any) -> SimulatorConfig:
    return SimulatorConfig(**{"rate": RATE, "seed": 17, "pairs": PAIRS, "speed": SPEED, "start_ms": START_MS, **kw})


def assert_every_file_reads_back(data_dir: Path) -> None:
    landing = data_dir / "landing"
    files = [*landing.glob("*.ndjson"), *(landing / "segments").iterdir(), *(landing / "active").iterdir()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path} ends in a torn line"
        for number, line in enumerate(data.splitlines(), 1):
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise AssertionError(f"{path}:{number} is no JSON: {exc}") from None
    for entry in iter_manifest(landing):
        path = landing / entry["file"]
        assert path.stat().st_size == entry["bytes"], f"{path} differs from its manifest line"
        assert sum(1 for _ in iter_lines(path)) == entry["frames"], path
    orjson.loads((data_dir / "ingester" / "heartbeat.json").read_bytes())


def status_text(settings: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in {
        "CRYPTO_PROJECT_DIR": str(settings.project_dir),
        "CRYPTO_STATE_DIR": str(settings.state_dir),
        "CRYPTO_DATA_DIR": str(settings.data_dir),
    }.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status_cli.run(argparse.Namespace(json=False))
    return out.getvalue()


def test_a_full_disk_loses_nothing_says_so_and_resumes_by_itself(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, stream, end_ms = asyncio.run(_fill_free_and_resume(tmp_path, small_disk, monkeypatch))
    assert running.task.result() == 0
    assert_every_file_reads_back(small_disk)
    cut, resumed = running.cut, running.resumed  # type: ignore[attr-defined]
    outage = [g for g in gaps(running.sessions()) if g.after_session == cut]
    assert outage and outage[0].before_session == resumed and outage[0].reason.startswith("disk full at ")

    # The day rebuilds from the landing log and REST with every check passing.
    with Simulator(sim_config(speed=0.0, start_ms=end_ms)).running_in_thread() as rest:
        resources = {
            "stream": stream,
            "lake": LakeResource(root=str(tmp_path / "lake")),
            "polygon_rest": PolygonRestResource(base_url=rest.rest_url, api_key=KEY, pairs=list(PAIRS)),
        }
        result = dg.materialize(
            [raw_trades, raw_aggregates, minute_bars, raw_trades_checks, raw_aggregates_checks, minute_bars_checks],
            partition_key=DAY,
            resources=resources,
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    failed = {
        f"{e.asset_key.to_user_string()}.{e.check_name}": str(e.metadata.get("examples"))
        for e in evaluations
        if not e.passed
    }
    assert len(evaluations) >= 12 and failed == {}
    compared = next(e for e in evaluations if e.check_name == "matches_xa").metadata["bars_compared"].value
    bars = LakeResource(root=str(tmp_path / "lake")).read_partition("minute_bars", DAY)
    assert bars is not None and compared > 0
    assert any(bars["repaired"].to_pylist()), "the outage's minutes are repaired from REST"


async def _fill_free_and_resume(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Running, StreamResource, int]:
    ballast = small_disk / "ballast"
    ballast.write_bytes(os.urandom(BALLAST))
    async with Simulator(sim_config()) as sim:
        settings = settings_for(
            tmp_path / "state",
            sim,
            CRYPTO_DATA_DIR=str(small_disk),
            CRYPTO_PAIRS=",".join(PAIRS),
            CRYPTO_SEGMENT_MAX_AGE_S="0.5",
            CRYPTO_FSYNC="seal",
            CRYPTO_DISK_FULL_RETRY_S="0.3",
        )
        running = Running(settings)
        ingester = running.ingester
        await wait_for(lambda: ingester.disk_full is not None, 90, "the disk to fill")
        assert not running.task.done(), "the ingester must not end on a full disk"

        # It says so: heartbeat, status, the sensor's landing_log metadata; and it stopped reading.
        await wait_for(lambda: (supervision.read_status(settings).heartbeat or {}).get("state") == "disk_full", 10)
        beat = supervision.read_status(settings).heartbeat
        assert beat is not None and beat["disk_full"].startswith("disk full at ") and "free)" in beat["disk_full"]
        assert beat["last_error"]["kind"] == "disk_full"
        assert "DISK FULL: disk full at " in status_text(settings, monkeypatch)
        stream = StreamResource(
            project_dir=str(settings.project_dir),
            state_dir=str(settings.state_dir),
            data_dir=str(settings.data_dir),
            autostart=False,
        )
        assert str(health_metadata(stream, "test")["disk"]).startswith("disk full at ")
        await wait_for(lambda: not running.sessions()[-1].open, 10, "the session closed")
        cut = running.sessions()[-1]
        assert cut.reason is not None and cut.reason.startswith("disk full at ") and cut.first_frame_ns is not None
        await wait_for(lambda: sim.counters()["connections"][str(cut.session)]["closed"], 10, "a clean close")
        assert_every_file_reads_back(small_disk)
        assert ingester.disk_full is not None, "no room was made, so it must still wait"

        # Room again: it resumes by itself, and the outage is a gap in the ledger.
        ballast.unlink()
        await wait_for(
            lambda: running.sessions()[-1].session > cut.session and running.sessions()[-1].first_frame_ns is not None,
            30,
            "the stream to resume",
        )
        resumed = running.sessions()[-1].session
        await wait_for(lambda: ingester.landing.segments_sealed > 0 and ingester.frames > 0, 10)
        await running.finish()
        end_ms = sim.now_ms()
    running.cut, running.resumed = cut.session, resumed  # type: ignore[attr-defined]
    return running, stream, end_ms
