"""How fresh the warehouse is under ``crypto-platform dev``: seconds from a trade's event time to its row.

Boots the real ``crypto-platform dev`` on the zero-setup defaults (simulator, fakesnow, the SQL
stand-in, or MariaDB/MySQL with ``--mysql-url``) in a throwaway state directory, lets the stream
sensor drive the pipeline for ``--minutes``, and watches the tables as an analyst would: every
``--poll-s`` seconds it asks MySQL and Snowflake which landing segments have rows, so each segment's
"queryable" time is known to within one poll. Each trade's latency is then split into hops:

    event -> landed      receive time stamped by the ingester (the feed's own delivery latency)
    landed -> sealed     the segment holding it is sealed (CRYPTO_SEGMENT_MAX_AGE_S bounds this)
    sealed -> tick       the stream sensor's run for it is created
    tick -> run start    the run is dequeued and its process starts
    run start -> loaded  the row is queryable (first poll that sees its segment)

Trades from the first ``--warmup-s`` seconds after the first load are left out (start-up: code
server, first sensor tick, ingester start). The baseline printed beside the end-to-end figures is
the first hop, event -> landed, measured in the same run: what the feed itself costs.

    python benchmarks/freshness.py [--minutes 10] [--mysql-url URL] [--check]

Target (issue "MLflow-logged data quality, ... end-to-end freshness"): p95 <= 30 s to MySQL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.simulator_rate import free_port  # noqa: E402
from crypto_platform.local.stack import install_instance_config  # noqa: E402
from crypto_platform.resources.snowflake import build_snowflake_resource  # noqa: E402
from crypto_platform.settings import Settings, child_environment, load_settings  # noqa: E402
from crypto_platform.stream.landing_log import iter_manifest  # noqa: E402
from crypto_platform.stream_batches import SEGMENTS_TAG, parse_segment_range  # noqa: E402
from crypto_platform.warehouse.sql import SqlWarehouse  # noqa: E402

TARGET_P95_MYSQL_S = 30.0
# Variables that would switch a part of the stack away from the local defaults.
PRODUCTION_VARIABLES = (
    "POLYGON_API_KEY",
    "POLYGON_WS_URL",
    "POLYGON_REST_URL",
    "SNOWFLAKE_ACCOUNT",
    "MLFLOW_TRACKING_URI",
)
HOPS = ("event -> landed", "landed -> sealed", "sealed -> tick", "tick -> run start", "run start -> loaded")
RUNS_QUERY = """{ runsOrError(filter: {tags: [{key: "dagster/sensor_name", value: "stream_sensor"}]}) {
    ... on Runs { results { runId status creationTime startTime tags { key value } } } } }"""


def http_json(url: str, payload: dict[str, Any] | None = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(condition: Callable[[], Any], deadline_s: float, what: str, dev: subprocess.Popen[bytes]) -> Any:
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class TableWatch:
    """When each landing segment first became queryable in one warehouse table."""

    def __init__(self, name: str, count_by_segment: Callable[[], list[tuple[Any, ...]]]) -> None:
        self.name = name
        self._query = count_by_segment
        self.first_seen: dict[int, float] = {}
        self.errors = 0

    def poll(self) -> None:
        now = time.time()
        try:
            rows = self._query()
        except Exception:  # the table does not exist before the first load, or a load holds a lock
            self.errors += 1
            return
        for segment, _count in rows:
            if segment is not None:
                self.first_seen.setdefault(int(segment), now)


def sql_watch(settings: Settings) -> tuple[TableWatch, Callable[[], list[tuple[Any, ...]]]]:
    warehouse = SqlWarehouse(settings.mysql_url)
    watch = TableWatch("MySQL", lambda: warehouse.query("SELECT segment, COUNT(*) FROM crypto_trades GROUP BY segment"))
    return watch, lambda: warehouse.query("SELECT segment, event_ms, received_ns FROM crypto_trades")


def snowflake_watch(settings: Settings) -> TableWatch:
    resource = build_snowflake_resource(settings)

    def counts() -> list[tuple[Any, ...]]:
        with resource.get_connection() as conn:
            cur = conn.cursor()
            cur.execute("SELECT segment, COUNT(*) FROM MARKET_DATA.POLYGON.TRADES GROUP BY segment")
            return list(cur.fetchall())

    return TableWatch("Snowflake", counts)


def run_times(base: str) -> dict[int, tuple[float, float]]:
    """Landing segment -> (run created, run started) for the stream sensor's successful runs."""
    runs = http_json(f"{base}/graphql", {"query": RUNS_QUERY})["data"]["runsOrError"]["results"]
    out: dict[int, tuple[float, float]] = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        if run["status"] != "SUCCESS" or SEGMENTS_TAG not in tags or not run["startTime"]:
            continue
        first, last = parse_segment_range(tags[SEGMENTS_TAG])
        for seq in range(first, last + 1):
            # A segment touching two days has two runs; the later start is when it was wholly loaded.
            previous = out.get(seq)
            if previous is None or run["startTime"] > previous[1]:
                out[seq] = (float(run["creationTime"]), float(run["startTime"]))
    return out


def hop_table(
    trades: list[tuple[Any, ...]],
    sealed: dict[int, float],
    runs: dict[int, tuple[float, float]],
    seen: dict[int, float],
    after_s: float,
) -> tuple[dict[str, list[float]], list[float]]:
    hops: dict[str, list[float]] = {h: [] for h in HOPS}
    totals: list[float] = []
    for segment, event_ms, received_ns in trades:
        segment = int(segment)
        event_s, landed_s = int(event_ms) / 1e3, int(received_ns) / 1e9
        if segment not in seen or segment not in runs or segment not in sealed or event_s < after_s:
            continue
        created, started = runs[segment]
        loaded = seen[segment]
        seal = sealed[segment]
        values = (landed_s - event_s, seal - landed_s, created - seal, started - created, loaded - started)
        for hop, value in zip(HOPS, values, strict=True):
            hops[hop].append(value)
        totals.append(loaded - event_s)
    return hops, totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to watch (default 10)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="start-up seconds left out (default 60)")
    parser.add_argument("--poll-s", type=float, default=0.5, help="table poll interval (default 0.5)")
    parser.add_argument("--mysql-url", help="a MySQL/MariaDB URL instead of the SQL stand-in")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless MySQL p95 <= {TARGET_P95_MYSQL_S:.0f} s")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="crypto-freshness-") as tmp:
        state = Path(tmp) / "state"
        overrides = {
            "CRYPTO_STATE_DIR": str(state),
            "CRYPTO_DATA_DIR": str(state / "data"),
            "DAGSTER_HOME": str(Path(tmp) / "dagster_home"),
            "CRYPTO_DAGSTER_PORT": str(free_port()),
            "CRYPTO_FAKESNOW_PORT": str(free_port()),
            "CRYPTO_SIMULATOR_PORT": str(free_port()),
        }
        if args.mysql_url:
            overrides["MYSQL_URL"] = args.mysql_url
        env = child_environment(overrides)
        for name in PRODUCTION_VARIABLES:
            env.pop(name, None)
        if not args.mysql_url:
            env.pop("MYSQL_URL", None)
        settings = load_settings(env, cwd=ROOT)
        # A throwaway instance: the repo's config, its stores in the temporary DAGSTER_HOME.
        install_instance_config(settings, Path(overrides["DAGSTER_HOME"]))
        base = f"http://127.0.0.1:{settings.dagster_port}"
        log_path = Path(tmp) / "dev.log"
        with open(log_path, "wb") as log:
            dev = subprocess.Popen(
                [sys.executable, "-m", "crypto_platform.cli", "dev"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            print(f"crypto-platform dev on {base}, state in {state}", flush=True)
            wait_for(lambda: http_json(f"{base}/server_info"), 240, "the webserver", dev)
            mysql, mysql_rows = sql_watch(settings)
            snowflake = snowflake_watch(settings)
            wait_for(lambda: (mysql.poll(), mysql.first_seen)[1], 300, "the first trades in MySQL", dev)
            started = time.time()
            print(f"first load seen; watching for {args.minutes:g} min (warm-up {args.warmup_s:g} s)", flush=True)
            while time.time() - started < args.minutes * 60:
                if dev.poll() is not None:
                    raise RuntimeError(f"crypto-platform dev exited with {dev.returncode}")
                mysql.poll()
                snowflake.poll()
                time.sleep(args.poll_s)
            runs = run_times(base)
            sealed = {int(e["seq"]): int(e["sealed_ns"]) / 1e9 for e in iter_manifest(settings.landing_dir)}
            trades = mysql_rows()
        finally:
            os.killpg(dev.pid, signal.SIGINT)
            try:
                dev.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
            # The simulator, fakesnow and the ingester were started on demand and outlive dagster dev.
            subprocess.run([sys.executable, "-m", "crypto_platform.cli", "services", "stop"], cwd=ROOT, env=env)

    after = started + args.warmup_s
    print(f"{len(trades):,} trades in MySQL; {len(runs)} segments loaded by sensor runs; poll every {args.poll_s} s")
    print(f"{'hop':<24}{'p50 s':>10}{'p95 s':>10}")
    hops, totals = hop_table(trades, sealed, runs, mysql.first_seen, after)
    if not totals:
        print("no trade was seen after the warm-up: nothing to report", file=sys.stderr)
        return 1
    for hop in HOPS:
        print(f"{hop:<24}{percentile(hops[hop], 50):>10.2f}{percentile(hops[hop], 95):>10.2f}")
    results: dict[str, tuple[float, float, int]] = {}
    for watch in (mysql, snowflake):
        _, total = hop_table(trades, sealed, runs, watch.first_seen, after)
        results[watch.name] = (percentile(total, 50), percentile(total, 95), len(total))
    baseline = percentile(hops["event -> landed"], 95)
    print(f"\n{'event -> queryable':<24}{'p50 s':>10}{'p95 s':>10}{'trades':>12}{'p95 / feed p95':>16}")
    for name, (p50, p95, n) in results.items():
        print(f"{name:<24}{p50:>10.2f}{p95:>10.2f}{n:>12,}{p95 / max(baseline, 1e-3):>16.1f}")
    print(f"{'baseline: event -> landed':<24}{percentile(hops['event -> landed'], 50):>10.2f}{baseline:>10.2f}")
    mysql_p95 = results["MySQL"][1]
    ok = mysql_p95 <= TARGET_P95_MYSQL_S
    print(f"\ntarget MySQL p95 <= {TARGET_P95_MYSQL_S:.0f} s: {'met' if ok else 'MISSED'} ({mysql_p95:.2f} s)")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
