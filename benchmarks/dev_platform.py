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
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.simulator_rate import free_port
from crypto_platform.local.stack import install_instance_config
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
# What the UI's "Materialize selected" over a partition range sends, and the backfill's state after.
LAUNCH_BACKFILL = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs: runs(limit: 50) { runId status tags { key value } } } } }"""
PORTS = ("CRYPTO_DAGSTER_PORT", "CRYPTO_FAKESNOW_PORT", "CRYPTO_SIMULATOR_PORT", "CRYPTO_SIMULATOR_S3_PORT")


def dev_environment(
    tmp: Path, mysql_url: str | None = None, more_ports: Iterable[str] = ()
) -> tuple[dict[str, str], Settings]:
    """The environment of a throwaway ``dev`` in ``tmp`` (its Dagster home made there) and its settings.

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
    settings = load_settings(env, cwd=ROOT)
    install_instance_config(settings, settings.dagster_home)  # the repo's dagster.yaml, stores in the home
    return env, settings


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


def http_json(url: str, payload: dict[str, Any] | None = None) -> Any:
    """GET ``url`` (POST ``payload`` as JSON when given) and decode the JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(condition: Callable[[], Any], deadline_s: float, what: str, dev: subprocess.Popen[bytes]) -> Any:
    """``condition()``'s first truthy value (errors of a server still starting count as not yet).

    Raises, naming ``what``, when ``dev`` exits first or ``deadline_s`` passes.
    """
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if dev.poll() is not None:
            raise RuntimeError(f"crypto-platform dev exited with {dev.returncode} while waiting for {what}")
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError):
            value = condition()
            if value:
                return value
        time.sleep(0.5)
    raise RuntimeError(f"{what} not reached within {deadline_s:.0f} s")


def graphql(base: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``data`` of a query to the Dagster webserver at ``base``; its errors raised."""
    answer = http_json(f"{base}/graphql", {"query": query, "variables": variables or {}})
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors: {answer['errors']}")
    return dict(answer["data"])
