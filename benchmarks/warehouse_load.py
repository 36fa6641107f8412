"""Warehouse load throughput: the platform's loaders beside pandas ``to_sql`` and row-by-row inserts.

Loads one synthetic day of trades (default 1,000,000) into a throwaway database on the machine's
MariaDB/MySQL and into a fakesnow server started for the run, and prints rows/s (medians of
``--repeats``), each figure with the load path that actually ran (what the loader reports: ``LOAD
DATA LOCAL INFILE`` or, when the server or client refuses local files, the batched-insert fallback):

- MySQL upsert (pymysql executemany ODKU, one transaction per partition)        target >= 25,000
- MySQL re-upsert of the same day (every row already exists)
- MySQL whole-day rebuild of the loaded day (LOAD DATA LOCAL INFILE REPLACE, or the insert
  fallback; then delete what the partition no longer has: nothing here)         target >= 50,000
- for information: the rebuild into an empty table, and a rebuild whose partition lost 10 % of
  the day's rows (the stale-row path: the partition's keys in a temporary table, the missing ones deleted)
- baselines in the same run: pandas ``to_sql`` (default method) into a plain table, and a row-by-row
  INSERT + COMMIT on a sample, extrapolated (labelled as such)
- Snowflake (fakesnow server) PUT -> COPY -> MERGE, first load and re-run        target >= 100,000

After every load the table's rows of the day are counted and compared with what was loaded; a
mismatch is a missed target. ``--check`` exits 1 when a target is missed or a part was skipped
(``--skip-mysql``, ``--skip-snowflake``, or a server that could not be reached).
``--rebuild-method insert`` measures the insert fallback on purpose. ``--rows 100000`` for a quick run.
Example: ``.venv/bin/python benchmarks/warehouse_load.py --rows 1000000 --repeats 3 --check``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable

from benchmarks.summary import Summary, median, runs

DAY = "2025-11-20"
TARGETS = {"mysql upsert": 25_000, "mysql day rebuild": 50_000, "snowflake merge": 100_000}
# What LoadResult.method names, as a reader knows it.
PATHS = {
    "upsert": "INSERT ... ON DUPLICATE KEY UPDATE (executemany)",
    "load_data": "LOAD DATA LOCAL INFILE ... REPLACE",
    "insert": "batched INSERT ... ON DUPLICATE KEY UPDATE (the path without LOAD DATA)",
    "merge": "PUT -> COPY -> MERGE",
}


@dataclass
class Figure:
    """One measured load: seconds per repeat, rows each loaded, the load paths taken, count checks."""

    name: str
    rows: int
    backend: str
    note: str = ""
    seconds: list[float] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)
    fallback_reasons: set[str] = field(default_factory=set)
    count_errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows / median(self.seconds)

    def path_text(self) -> str:
        text = " + ".join(PATHS.get(p, p) for p in sorted(self.paths)) or "n/a"
        if self.fallback_reasons:
            text += f" (fell back: {'; '.join(sorted(self.fallback_reasons))})"
        return text


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def load(figure: Figure, fn: Callable[[], Any], count: Callable[[], int], expected: int) -> None:
    """Run one load, record its time and load path, then verify the table holds ``expected`` rows."""
    seconds, result = timed(fn)
    figure.seconds.append(seconds)
    if result is not None and hasattr(result, "method"):
        figure.paths.add(result.method)
        if getattr(result, "fallback_reason", None):
            figure.fallback_reasons.add(str(result.fallback_reason))
        if result.rows != expected:
            figure.count_errors.append(f"the loader reported {result.rows:,} rows, {expected:,} expected")
    held = count()
    if held != expected:
        figure.count_errors.append(f"the table holds {held:,} rows of the day after the load, {expected:,} expected")


def bench_mysql(args: argparse.Namespace, df: Any, figures: list[Figure]) -> None:
    import pymysql
    import sqlalchemy

    from crypto_platform.warehouse.sql import SqlWarehouse
    from crypto_platform.warehouse.tables import TRADES

    name = f"cp_bench_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host=args.mysql_host, port=args.mysql_port, user=args.mysql_user, autocommit=True)
    version = admin.get_server_info()
    admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    url = f"mysql+pymysql://{args.mysql_user}:@{args.mysql_host}:{args.mysql_port}/{name}"
    rows = len(df)
    backend = f"MariaDB/MySQL {version} at {args.mysql_host}:{args.mysql_port}"

    def count_table(table: str) -> Callable[[], int]:
        def count() -> int:
            cur = admin.cursor()
            cur.execute(f"SELECT COUNT(*) FROM `{name}`.`{table}`")
            return int(cur.fetchone()[0])

        return count

    try:
        wh = SqlWarehouse(url)
        wh.migrate()

        def day_count() -> int:
            return wh.count_partition(TRADES, DAY)

        smaller = df.iloc[: rows - rows // 10]
        method = args.rebuild_method
        upsert = Figure("mysql upsert", rows, backend, "new rows, one transaction, 5k-row statements")
        reupsert = Figure("mysql re-upsert", rows, backend, "every row already exists")
        rebuild = Figure("mysql day rebuild", rows, backend, "the loaded day again, no stale rows")
        fresh = Figure("mysql day rebuild, empty table", rows, backend, "")
        stale = Figure(
            "mysql day rebuild, 10 % of the day gone", len(smaller), backend, "stale keys found via a keys table"
        )
        truncate = f"TRUNCATE TABLE `{name}`.crypto_trades"
        for _ in range(args.repeats):
            admin.cursor().execute(truncate)
            load(upsert, lambda: wh.upsert(TRADES, df), day_count, rows)
            load(reupsert, lambda: wh.upsert(TRADES, df), day_count, rows)
            load(rebuild, lambda: wh.rebuild_day(TRADES, DAY, df, method=method), day_count, rows)
            load(stale, lambda: wh.rebuild_day(TRADES, DAY, smaller, method=method), day_count, len(smaller))
            admin.cursor().execute(truncate)
            load(fresh, lambda: wh.rebuild_day(TRADES, DAY, df, method=method), day_count, rows)
        figures += [upsert, reupsert, rebuild, fresh, stale]

        # baseline 1: pandas to_sql (default method = executemany) into a plain table, no upsert possible
        engine = sqlalchemy.create_engine(url)
        plain = df.copy()
        for c in ("price", "size"):
            plain[c] = plain[c].astype(str)
        to_sql = Figure("pandas to_sql (baseline)", rows, backend, "plain INSERT into a table without keys")
        for _ in range(args.repeats):
            load(
                to_sql,
                lambda: plain.to_sql("bench_to_sql", engine, if_exists="replace", index=False, chunksize=5000),
                count_table("bench_to_sql"),
                rows,
            )
        to_sql.paths.add("pandas to_sql, executemany INSERT")
        figures.append(to_sql)
        engine.dispose()

        # baseline 2: row-by-row INSERT + COMMIT on a sample, extrapolated
        sample = min(args.row_sample, rows)
        conn = pymysql.connect(host=args.mysql_host, port=args.mysql_port, user=args.mysql_user, database=name)
        cur = conn.cursor()
        cur.execute("CREATE TABLE rbr LIKE crypto_trades")
        cols = ["pair", "exchange", "trade_id", "price", "size", "event_ms", "received_ns", "source"]
        records = [
            tuple(str(v) if hasattr(v, "as_tuple") else v for v in r)
            for r in df[cols].head(sample).itertuples(index=False)
        ]
        sql = f"INSERT INTO rbr ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"

        def row_by_row() -> None:
            for rec in records:
                cur.execute(sql, rec)
                conn.commit()

        rbr = Figure(f"row-by-row INSERT+COMMIT (baseline, {sample:,}-row sample)", sample, backend)
        load(rbr, row_by_row, count_table("rbr"), sample)
        rbr.paths.add("one INSERT and COMMIT per row")
        figures.append(rbr)
        conn.close()
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def bench_snowflake(args: argparse.Namespace, df: Any, figures: list[Figure]) -> None:
    import snowflake.connector

    from benchmarks.simulator_rate import free_port
    from crypto_platform.local.stack import fakesnow_service, stack_paths, start_service, stop_service
    from crypto_platform.resources.snowflake import local_connection_args
    from crypto_platform.settings import child_environment, load_settings
    from crypto_platform.warehouse.snowflake import count_snowflake_partition, load_snowflake, migrate_snowflake
    from crypto_platform.warehouse.tables import TRADES

    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="cp_bench_fakesnow_"))
    env = {"CRYPTO_STATE_DIR": str(state), "CRYPTO_PROJECT_DIR": str(state), "CRYPTO_FAKESNOW_PORT": str(port)}
    settings = load_settings(env)
    service, paths = fakesnow_service(settings), stack_paths(settings)
    start_service(service, paths, child_environment(env), ready_timeout=60)
    rows = len(df)
    backend = "fakesnow server (local stand-in for Snowflake), through the Snowflake connector"
    try:
        sf = settings.snowflake
        # A long network timeout: one COPY/MERGE of a million rows takes a while on fakesnow.
        conn = snowflake.connector.connect(
            account=sf.account, user=sf.user, password="snow", network_timeout=60, **local_connection_args(sf)
        )
        first = Figure("snowflake merge", rows, backend, "new rows")
        rerun = Figure("snowflake merge re-run", rows, backend, "every row already exists")
        for i in range(args.repeats):
            db = f"BENCH_{i}"
            migrate_snowflake(conn, database=db)

            def count(db: str = db) -> int:
                return count_snowflake_partition(conn, TRADES, DAY, database=db)

            load(first, lambda db=db: load_snowflake(conn, TRADES, df, day=DAY, database=db), count, rows)
            load(rerun, lambda db=db: load_snowflake(conn, TRADES, df, day=DAY, database=db), count, rows)
        figures += [first, rerun]
        conn.close()
    finally:
        stop_service(service, paths)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--row-sample", type=int, default=2_000, help="rows for the row-by-row baseline")
    p.add_argument("--mysql-host", default="127.0.0.1")
    p.add_argument("--mysql-port", type=int, default=3306)
    p.add_argument("--mysql-user", default="root")
    p.add_argument(
        "--rebuild-method",
        choices=("auto", "load_data", "insert"),
        default="auto",
        help="the day rebuild's load path: auto (LOAD DATA, the insert fallback if refused, as production), "
        "load_data (no fallback) or insert (measure the fallback)",
    )
    p.add_argument("--skip-mysql", action="store_true", help="leave MySQL out (a skipped part fails --check)")
    p.add_argument("--skip-snowflake", action="store_true", help="leave Snowflake out (a skipped part fails --check)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed or a part was skipped")
    args = p.parse_args(argv)

    from crypto_platform.warehouse import samples

    summary = Summary(
        "warehouse_load",
        f"{args.rows:,} synthetic trades of {DAY}, median of {args.repeats} repeats; rows/s = rows / load seconds",
    )
    df = samples.trades(DAY, args.rows, arrow_decimals=True)
    figures: list[Figure] = []
    parts: dict[str, str] = {}
    for part, skip, bench in (
        ("MySQL", args.skip_mysql, bench_mysql),
        ("Snowflake", args.skip_snowflake, bench_snowflake),
    ):
        if skip:
            parts[part] = "skipped (--skip-" + part.lower() + ")"
            continue
        try:
            bench(args, df, figures)
            parts[part] = "ran"
        except Exception as exc:  # a server that is down: reported as a skipped part, not a crash
            parts[part] = f"skipped: {type(exc).__name__}: {exc}"
            print(f"{part} part failed: {exc}", file=sys.stderr)

    backends = {}
    for f in figures:
        backends.setdefault(f.backend, []).append(f)
    for backend, group in backends.items():
        summary.line(f"{backend}:")
        for f in group:
            note = f"; {f.note}" if f.note else ""
            summary.line(
                f"  {f.name:<52} {f.rate:>10,.0f} rows/s (runs {runs(f.rows / s for s in f.seconds)}) "
                f"via {f.path_text()}{note}"
            )
    by_name = {f.name: f for f in figures}
    base = by_name.get("pandas to_sql (baseline)")
    if base is not None:
        for name in ("mysql upsert", "mysql day rebuild"):
            if name in by_name:
                summary.line(f"ratio {name} / pandas to_sql: {by_name[name].rate / base.rate:.2f}")
    for part, state in parts.items():
        summary.target(f"{part} part ran", state == "ran", state)
    for name, target in TARGETS.items():
        if name in by_name:
            f = by_name[name]
            summary.target(f"{name} >= {target:,} rows/s", f.rate >= target, f"{f.rate:,.0f} via {f.path_text()}")
    errors = [f"{f.name}: {e}" for f in figures for e in f.count_errors]
    summary.target(
        "row count verified after every load",
        not errors and bool(figures),
        "; ".join(errors) if errors else f"{sum(len(f.seconds) for f in figures)} loads checked",
    )
    return summary.finish(args.check)


if __name__ == "__main__":
    sys.exit(main())
