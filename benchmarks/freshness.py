"""How fresh the lake and the warehouses are under ``crypto-platform dev``: seconds from a trade to its row.

Boots the real ``crypto-platform dev`` on the defaults (simulator at its default rate, fakesnow, and
the SQL stand-in or, with ``--mysql-url``, MariaDB/MySQL) in a throwaway state directory and lets
the stream sensor drive the pipeline. The simulator is started first, by this script, with
``--record-trades`` (``dev`` adopts it as its own), so every trade key it sends is known. After the
first load and ``--warmup-s`` of start-up, a window of ``--minutes`` opens: every trade the simulator
sends in it is counted. While the window runs, and then for up to ``--drain-s`` more while the feed
goes on, the script polls the tables as an analyst would (every ``--poll-s``): which landing segments
have rows in the lake's ``raw_trades``, in MySQL and in Snowflake. A trade's latency in a table is
the first poll that sees its segment there minus its event time. A trade of the window that a table
does not hold by the end is a miss: it is printed, and it counts in the percentiles as an infinitely
late trade (so a p99 above the misses' share reads "missed").

Each figure is labelled with the backend that ran: "SQLite stand-in" or "MariaDB"/"MySQL" for the
SQL tables, "fakesnow" (or "Snowflake") for the Snowflake copy, the lake's files for ``raw_trades``.
The baseline beside the end-to-end figures is the first hop, event -> landed (the feed's own
delivery, including the simulator's deliberately late trades), measured in the same run. For the
trades loaded into MySQL by a sensor run, the latency is split into hops:

    event -> landed      receive time stamped by the ingester
    landed -> sealed     the segment holding it is sealed (CRYPTO_SEGMENT_MAX_AGE_S bounds this)
    sealed -> tick       the stream sensor's run for it is created
    tick -> run start    the run is dequeued and its process starts
    run start -> loaded  the row is queryable (first poll that sees its segment)

    python benchmarks/freshness.py [--minutes 10] [--mysql-url mysql+pymysql://root@127.0.0.1:3306/] [--check]

A ``--mysql-url`` without a database name gets a throwaway database, dropped at the end.
Targets at the default cadence: lake p95 <= 15 s, MySQL (MariaDB) p95 <= 50 s, no trade missed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.dev_platform import dev_environment, dev_running, http_json, wait_for  # noqa: E402
from benchmarks.summary import Summary, percentile  # noqa: E402
from crypto_platform.local import stack as local_stack  # noqa: E402
from crypto_platform.resources.snowflake import build_snowflake_resource  # noqa: E402
from crypto_platform.settings import Settings, load_settings  # noqa: E402
from crypto_platform.stream.manifest import iter_manifest  # noqa: E402
from crypto_platform.stream_batches import BatchScope  # noqa: E402
from crypto_platform.warehouse.sql import SqlWarehouse  # noqa: E402

TARGETS_P95_S = {"lake": 15.0, "MySQL": 50.0}
HOPS = ("event -> landed", "landed -> sealed", "sealed -> tick", "tick -> run start", "run start -> loaded")
RUNS_QUERY = """{ runsOrError(filter: {tags: [{key: "dagster/sensor_name", value: "stream_sensor"}]}) {
    ... on Runs { results { runId status creationTime startTime tags { key value } } } } }"""
MISSED = math.inf


Key = tuple[str, int, str]  # (pair, exchange, trade_id): a trade's natural key


class TableWatch:
    """When each landing segment first became queryable in one table, and (at the end) its trades."""

    def __init__(
        self,
        name: str,
        backend: str,
        segments: Callable[[], Iterable[Any]],
        rows: Callable[[], Iterable[tuple[Any, ...]]],
    ) -> None:
        self.name, self.backend = name, backend
        self._segments, self._rows = segments, rows
        self.first_seen: dict[int, float] = {}
        self.errors = 0
        self.last_error = ""

    def poll(self) -> None:
        now = time.time()
        try:
            found = list(self._segments())
        except Exception as exc:  # the table does not exist before the first load, or a load holds a lock
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            return
        for segment in found:
            if segment is not None:
                self.first_seen.setdefault(int(segment), now)

    def trades(self) -> dict[Key, tuple[int, int, int]]:
        """Key -> (segment, event_ms, received_ns) of every trade the table holds."""
        out: dict[Key, tuple[int, int, int]] = {}
        for pair, exchange, trade_id, segment, event_ms, received_ns in self._rows():
            if segment is not None:
                out[(str(pair), int(exchange), str(trade_id))] = (int(segment), int(event_ms), int(received_ns))
        return out


def sql_watch(settings: Settings, backend: str) -> TableWatch:
    warehouse = SqlWarehouse(settings.mysql_url)
    return TableWatch(
        "MySQL",
        backend,
        lambda: (r[0] for r in warehouse.query("SELECT DISTINCT segment FROM crypto_trades")),
        lambda: warehouse.query("SELECT pair, exchange, trade_id, segment, event_ms, received_ns FROM crypto_trades"),
    )


def snowflake_watch(settings: Settings, backend: str) -> TableWatch:
    resource = build_snowflake_resource(settings)
    table = f"{settings.snowflake.database}.{settings.snowflake.schema}.TRADES"

    def query(sql: str) -> list[tuple[Any, ...]]:
        with resource.get_connection() as conn:
            cur = conn.cursor()
            cur.execute(sql)
            return list(cur.fetchall())

    return TableWatch(
        "Snowflake",
        backend,
        lambda: (r[0] for r in query(f"SELECT DISTINCT segment FROM {table}")),
        lambda: query(f"SELECT pair, exchange, trade_id, segment, event_ms, received_ns FROM {table}"),
    )


def lake_watch(env: dict[str, str], days: Callable[[], list[str]]) -> TableWatch:
    """The lake's ``raw_trades`` of the window's UTC days, read as a run reads it (nothing kept between polls)."""
    from crypto_platform.resources import build_resources

    lake = build_resources(load_settings({**env, "CRYPTO_LAKE_CACHE_MB": "0"}, cwd=ROOT))["lake"]
    columns = ["pair", "exchange", "trade_id", "segment", "event_ms", "received_ns"]

    def tables() -> Iterable[Any]:
        for day in days():
            table = lake.read_partition("raw_trades", day)
            if table is not None:
                yield table

    def segments() -> Iterable[Any]:
        for table in tables():
            yield from set(table.column("segment").to_pylist())

    def rows() -> Iterable[tuple[Any, ...]]:
        for table in tables():
            yield from zip(*(table.column(c).to_pylist() for c in columns), strict=True)

    return TableWatch("lake", "raw_trades table", segments, rows)


def sent_trade_keys(base: str) -> dict[str, list[str]]:
    """Connection id -> keys of the trades the simulator sent on it, in order (``pair|exchange|id``)."""
    counters = http_json(f"{base}/_sim/counters")
    return {cid: c.get("trade_keys", []) for cid, c in counters["connections"].items()}


def window_keys(start: dict[str, list[str]], end: dict[str, list[str]]) -> list[Key]:
    """Trades sent between two snapshots of the counters, over every connection."""
    out = []
    for cid, keys in end.items():
        for text in keys[len(start.get(cid, [])) :]:
            pair, exchange, trade_id = text.split("|", 2)
            out.append((pair, int(exchange), trade_id))
    return out


def run_times(base: str) -> dict[int, tuple[float, float]]:
    """Landing segment -> (run created, run started) for the stream sensor's successful runs."""
    runs = http_json(f"{base}/graphql", {"query": RUNS_QUERY})["data"]["runsOrError"]["results"]
    out: dict[int, tuple[float, float]] = {}
    for run in runs:
        segments = BatchScope.from_tags({t["key"]: t["value"] for t in run["tags"]}).segments
        # STARTED: the run loaded its rows and is still running its checks.
        if run["status"] not in ("SUCCESS", "STARTED") or segments is None or not run["startTime"]:
            continue
        first, last = segments
        for seq in range(first, last + 1):
            # A segment touching two days has two runs; the later start is when it was wholly loaded.
            previous = out.get(seq)
            if previous is None or run["startTime"] > previous[1]:
                out[seq] = (float(run["creationTime"]), float(run["startTime"]))
    return out


def latencies(keys: list[Key], held: dict[Key, tuple[int, int, int]], seen: dict[int, float]) -> list[float]:
    """Seconds from each trade's event time to its segment first seen in the table; MISSED when never."""
    out = []
    for key in keys:
        row = held.get(key)
        out.append(MISSED if row is None or row[0] not in seen else seen[row[0]] - row[1] / 1e3)
    return out


def hop_table(
    keys: list[Key],
    rows: dict[Key, tuple[int, int, int]],
    sealed: dict[int, float],
    runs: dict[int, tuple[float, float]],
    seen: dict[int, float],
) -> dict[str, list[float]]:
    hops: dict[str, list[float]] = {h: [] for h in HOPS}
    for key in keys:
        if key not in rows:
            continue
        segment, event_ms, received_ns = rows[key]
        event_s, landed_s = event_ms / 1e3, received_ns / 1e9
        hops[HOPS[0]].append(landed_s - event_s)
        if segment not in seen or segment not in runs or segment not in sealed:
            continue
        created, started = runs[segment]
        values = (sealed[segment] - landed_s, created - sealed[segment], started - created, seen[segment] - started)
        for hop, value in zip(HOPS[1:], values, strict=True):
            hops[hop].append(value)
    return hops


def seconds(value: float) -> str:
    return "missed" if math.isinf(value) else "n/a" if math.isnan(value) else f"{value:.2f}"


def throwaway_database(url: str) -> tuple[str, Callable[[], None]]:
    """``url`` with a fresh database when it names none, and how to drop it again."""
    import pymysql
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.database:
        return url, lambda: None
    name = f"crypto_freshness_{uuid.uuid4().hex[:8]}"
    connect = {"host": parsed.host or "127.0.0.1", "port": parsed.port or 3306, "user": parsed.username or "root"}
    if parsed.password:
        connect["password"] = parsed.password
    with contextlib.closing(pymysql.connect(**connect, autocommit=True)) as admin:
        admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")

    def drop() -> None:
        with contextlib.closing(pymysql.connect(**connect, autocommit=True)) as admin:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")

    return parsed.set(database=name).render_as_string(hide_password=False), drop


def sql_backend(settings: Settings, given: bool) -> str:
    if not given:
        return "SQLite stand-in"
    version = str(SqlWarehouse(settings.mysql_url).query("SELECT VERSION()")[0][0])
    return f"{'MariaDB' if 'mariadb' in version.lower() else 'MySQL'} {version.split('-')[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="the window of trades counted (default 10)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="start-up seconds left out (default 60)")
    parser.add_argument("--drain-s", type=float, default=180.0, help="longest wait after the window (default 180)")
    parser.add_argument("--poll-s", type=float, default=0.5, help="table poll interval (default 0.5)")
    parser.add_argument("--mysql-url", help="a MySQL/MariaDB URL instead of the SQL stand-in (no database: throwaway)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    summary = Summary("freshness", f"crypto-platform dev on the defaults; window {args.minutes:g} min")

    drop_database: Callable[[], None] = lambda: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="crypto-freshness-", ignore_cleanup_errors=True) as tmp:
        mysql_url = None
        if args.mysql_url:
            mysql_url, drop_database = throwaway_database(args.mysql_url)
        env, settings = dev_environment(Path(tmp), mysql_url)
        state = settings.state_dir
        base = f"http://127.0.0.1:{settings.dagster_port}"
        sim_base = f"http://127.0.0.1:{settings.simulator_port}"
        paths = local_stack.stack_paths(settings)
        simulator = local_stack.simulator_service(settings)
        # The simulator `dev` would start, plus the trade record; `dev` finds it running and adopts it.
        simulator = dataclasses.replace(simulator, argv=(*simulator.argv, "--record-trades"))
        local_stack.start_service(simulator, paths, env, ready_timeout=60)
        # dev_running stops dev and every service, the simulator above included, then drops the database.
        with dev_running(env, Path(tmp) / "dev.log", then=drop_database) as dev:
            print(f"crypto-platform dev on {base}, state in {state}", flush=True)
            wait_for(lambda: http_json(f"{base}/server_info"), 240, "the webserver", dev)
            sql_label = sql_backend(settings, bool(args.mysql_url))
            sf_label = "fakesnow" if settings.snowflake.local else "Snowflake"
            window_days: list[str] = []
            watches = [
                lake_watch(env, lambda: window_days),
                sql_watch(settings, sql_label),
                snowflake_watch(settings, sf_label),
            ]
            mysql = watches[1]
            wait_for(lambda: (mysql.poll(), mysql.first_seen)[1], 300, "the first trades in MySQL", dev)
            started = time.time()
            open_at, close_at = started + args.warmup_s, started + args.warmup_s + args.minutes * 60
            print(f"first load seen; window opens in {args.warmup_s:g} s for {args.minutes:g} min", flush=True)
            snapshots: dict[str, dict[str, list[str]]] = {}
            keys: list[Key] = []
            drain_until = close_at + args.drain_s
            next_full_check = close_at
            while True:
                now = time.time()
                if dev.poll() is not None:
                    raise RuntimeError(f"crypto-platform dev exited with {dev.returncode}")
                window_days[:] = sorted({time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (open_at - 60, now)})
                if "open" not in snapshots and now >= open_at:
                    snapshots["open"] = sent_trade_keys(sim_base)
                if "close" not in snapshots and now >= close_at:
                    snapshots["close"] = sent_trade_keys(sim_base)
                    keys = window_keys(snapshots["open"], snapshots["close"])
                    print(f"window closed: {len(keys):,} trades sent; draining", flush=True)
                for watch in watches:
                    watch.poll()
                if keys and (now >= drain_until or (now >= next_full_check and all_loaded(keys, watches))):
                    break
                if keys and now >= next_full_check:
                    next_full_check = now + 5  # reading every table's keys is heavier than a poll
                time.sleep(args.poll_s)
            drained = time.time() - close_at
            runs = run_times(base)
            sealed = {int(e["seq"]): int(e["sealed_ns"]) / 1e9 for e in iter_manifest(settings.landing_dir)}
            held = {w.name: w.trades() for w in watches}

    summary.note += (
        f" (+{args.warmup_s:g} s warm-up left out); {len(keys):,} trades sent in the window, all counted; "
        f"tables polled every {args.poll_s:g} s; drain after the window: {drained:.0f} s; "
        f"{len(runs)} segments loaded by stream_sensor runs"
    )
    hops = hop_table(keys, held["MySQL"], sealed, runs, watches[1].first_seen)
    # The floor of any load from the landing log: nothing is loaded before its segment is sealed.
    floor = [sealed[row[0]] - row[1] / 1e3 for row in (held["MySQL"].get(k) for k in keys) if row and row[0] in sealed]
    summary.line(f"{'event -> queryable, s':<44}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'missed':>8}")
    results: dict[str, float] = {}
    for watch in watches:
        values = latencies(keys, held[watch.name], watch.first_seen)
        missed = [k for k, v in zip(keys, values, strict=True) if math.isinf(v)]
        p = [percentile(values, q) for q in (50, 95, 99, 100)]
        results[watch.name] = p[1]
        label = f"{watch.name} ({watch.backend})"
        summary.line(f"{label:<44}" + "".join(f"{seconds(v):>9}" for v in p) + f"{len(missed):>8,}")
        if missed:
            shown = ", ".join("|".join(map(str, k)) for k in missed[:10])
            summary.line(f"  missed in {watch.name}: {shown}{' ...' if len(missed) > 10 else ''}")
        if watch.errors and not watch.first_seen:
            summary.line(f"  {watch.name} was never readable: {watch.last_error}")
    floor_p95 = percentile(floor, 95)
    summary.line(
        f"{'baseline, same run: event -> sealed':<44}{seconds(percentile(floor, 50)):>9}{seconds(floor_p95):>9}"
        f"{seconds(percentile(floor, 99)):>9}{seconds(percentile(floor, 100)):>9}"
    )
    summary.line(
        "ratios p95 / baseline p95 (1.0: a trade is queryable the moment its segment is sealed): "
        + ", ".join(f"{name} {p95 / max(floor_p95, 1e-3):.1f}" for name, p95 in results.items() if math.isfinite(p95))
    )
    summary.line(f"MySQL hops ({len(hops[HOPS[1]]):,} trades loaded by a sensor run), p50 / p95 s:")
    for hop in HOPS:
        summary.line(f"  {hop:<22}{seconds(percentile(hops[hop], 50)):>9}{seconds(percentile(hops[hop], 95)):>9}")
    for name, target in TARGETS_P95_S.items():
        label = f"{name} ({next(w.backend for w in watches if w.name == name)})"
        summary.target(f"{label} p95 <= {target:g} s", results[name] <= target, f"{seconds(results[name])} s")
    summary.target(
        "every trade of the window sent reached every table",
        bool(keys) and not any(math.isinf(v) for w in watches for v in latencies(keys, held[w.name], w.first_seen)),
        f"{len(keys):,} trades sent",
    )
    return summary.finish(args.check)


def all_loaded(keys: list[Key], watches: list[TableWatch]) -> bool:
    """Whether every table holds every trade of the window."""
    try:
        return all(set(keys) <= set(w.trades()) for w in watches)
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
