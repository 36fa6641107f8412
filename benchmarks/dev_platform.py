"""A throwaway ``crypto-platform dev`` for the benchmarks that measure the running platform.

The freshness and market-page benchmarks both boot the real ``dev`` on the zero-setup defaults, so
what they measure is what a developer runs. This is how, written once: state, data and Dagster's
home in a temporary directory, every port free (two runs side by side do not collide), no
production credentials (the local stand-ins, never Polygon or Snowflake), and on the way out
``dev`` stopped with every background service it started (the simulator, fakesnow, the page, the
ingester and the lake writer are detached and outlive it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from benchmarks.simulator_rate import free_port
from crypto_platform.settings import Settings, child_environment, load_settings

ROOT = Path(__file__).resolve().parent.parent
# Variables that would switch a part of the stack away from the local defaults.
PRODUCTION_VARIABLES = (
    "POLYGON_API_KEY",
    "POLYGON_WS_URL",
    "POLYGON_REST_URL",
    "SNOWFLAKE_ACCOUNT",
    "MLFLOW_TRACKING_URI",
)
PORTS = ("CRYPTO_DAGSTER_PORT", "CRYPTO_FAKESNOW_PORT", "CRYPTO_SIMULATOR_PORT", "CRYPTO_SIMULATOR_S3_PORT")


def dev_environment(
    tmp: Path, mysql_url: str | None = None, more_ports: Iterable[str] = ()
) -> tuple[dict[str, str], Settings]:
    """The environment of a throwaway ``dev`` in ``tmp`` and the settings it gives.

    MySQL only when ``mysql_url`` is given (else the SQLite stand-in); ``more_ports`` are further
    port settings to give free ports (the page's, when it is measured).
    """
    state = tmp / "state"
    overrides = {
        "CRYPTO_STATE_DIR": str(state),
        "CRYPTO_DATA_DIR": str(state / "data"),
        "DAGSTER_HOME": str(tmp / "dagster_home"),
        **{name: str(free_port()) for name in (*PORTS, *more_ports)},
    }
    if mysql_url:
        overrides["MYSQL_URL"] = mysql_url
    env = child_environment(overrides)
    for name in PRODUCTION_VARIABLES:
        env.pop(name, None)
    if not mysql_url:
        env.pop("MYSQL_URL", None)
    return env, load_settings(env, cwd=ROOT)


@contextlib.contextmanager
def dev_running(
    env: dict[str, str], log_path: Path, then: Callable[[], None] = lambda: None
) -> Iterator[subprocess.Popen[bytes]]:
    """``crypto-platform dev`` in a process group of its own, its output in ``log_path``.

    On the way out: SIGINT to the group (``dev`` stops Dagster), SIGKILL after 120 s, then
    ``services stop`` for the detached services, then ``then`` (e.g. drop a throwaway database).
    """
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "crypto_platform.cli", "dev"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A non-interactive parent may have SIGINT ignored; give dev the default back, as it is stopped by SIGINT.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        yield dev
    finally:
        with contextlib.suppress(ProcessLookupError):  # dev may have ended already (its group with it)
            os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "crypto_platform.cli", "services", "stop"], cwd=ROOT, env=env)
        then()
