"""``crypto-platform dashboard`` on its own: the foreground server and its refusals."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from crypto_platform.settings import child_environment

PROJECT_DIR = Path(__file__).resolve().parents[2]


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"CRYPTO_PROJECT_DIR": str(PROJECT_DIR), "CRYPTO_STATE_DIR": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "crypto_platform.cli", "dashboard", *args],
        env=child_environment(base),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_taken_port_is_named_with_its_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(tmp_path, CRYPTO_DASHBOARD_PORT=str(port))
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in done.stdout and "CRYPTO_DASHBOARD_PORT" in done.stdout


def test_bad_settings_stop_the_command_with_the_settings_message(tmp_path: Path) -> None:
    done = run_cli(tmp_path, CRYPTO_DASHBOARD_PORT="0")
    assert done.returncode == 2
    assert "CRYPTO_DASHBOARD_PORT=0 is below the minimum 1" in done.stderr
