"""The ingester's own failures: recorded with their cause, never a traceback; and status from elsewhere."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crypto_platform.resources.stream import StreamResource
from crypto_platform.settings import child_environment
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream import supervision
from crypto_platform.stream.session_ledger import sessions
from crypto_platform_tests.conftest import local_settings
from crypto_platform_tests.stream.conftest import FAST

FILE_LIMIT = 512 * 1024  # a segment outgrows it within a second; ledger, heartbeat and reserve stay below


def _limit_file_size() -> None:
    # Past RLIMIT_FSIZE a write fails with EFBIG (SIGXFSZ ignored): a write error that is not a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def test_a_write_error_is_recorded_with_its_cause_and_the_supervisor_starts_a_new_ingester(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Simulator(SimulatorConfig(rate=5000, pairs=("BTC-USD", "ETH-USD"))).running_in_thread() as sim:
        env = {**FAST, "CRYPTO_SIMULATOR_PORT": str(sim.port), "CRYPTO_SEGMENT_MAX_AGE_S": "30"}
        for name, value in env.items():  # the ingester the supervisor starts inherits these, as under dagster
            monkeypatch.setenv(name, value)
        settings = local_settings(tmp_path, **env)
        child_env = child_environment(
            {"CRYPTO_PROJECT_DIR": str(settings.project_dir), "CRYPTO_STATE_DIR": str(tmp_path), **env}
        )
        done = subprocess.run(
            [sys.executable, "-m", "crypto_platform.cli", "stream"],
            env=child_env,
            preexec_fn=_limit_file_size,
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        assert "Traceback" not in output
        beat = supervision.read_status(settings).heartbeat
        assert beat is not None and beat["state"] == "failed"
        assert "File too large" in beat["last_error"]["message"] and beat["last_error"]["kind"] == "internal"
        last = sessions(settings.landing_dir / "sessions.ndjson")[-1]
        assert last.reason is not None and last.reason.startswith("ingester failed: LandingWriteFailed")
        assert "File too large" in last.reason

        # The stream sensor's supervisor finds the lock free and starts a fresh ingester.
        stream = StreamResource(
            project_dir=str(settings.project_dir), state_dir=str(settings.state_dir), data_dir=str(settings.data_dir)
        )
        try:
            assert stream.ensure_running().startswith("started")
            wait_until(
                lambda: (supervision.read_status(settings).heartbeat or {}).get("state") == "streaming",
                60,
                "the new ingester streaming",
            )
        finally:
            supervision.stop_ingester(settings)
        assert sessions(settings.landing_dir / "sessions.ndjson")[-1].session == last.session + 1


def test_status_run_from_another_folder_says_what_it_read_and_how_to_point_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v
        for k, v in child_environment().items()
        if not k.startswith(("CRYPTO_", "DAGSTER_", "POLYGON_", "MYSQL_", "SNOWFLAKE_", "MLFLOW_"))
    }
    done = subprocess.run(
        [sys.executable, "-m", "crypto_platform.cli", "status"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1  # no ingester there
    assert f"state:    {elsewhere / 'var'} (does not exist)" in done.stdout
    assert "CRYPTO_PROJECT_DIR=/path/to/project" in done.stdout
