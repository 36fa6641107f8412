"""Warehouse load throughput: the platform's loaders beside pandas ``to_sql`` and row-by-row inserts.

Loads one synthetic day of trades (default 1,000,000) into a throwaway database on the machine's
MariaDB/MySQL and into a fakesnow server started for the run, and prints rows/s (medians of
``--repeats``):

- MySQL upsert (pymysql executemany ODKU, one transaction per partition)        target >= 25,000
- MySQL re-upsert of the same day (every row already exists)
- MySQL whole-day rebuild of the loaded day (LOAD DATA LOCAL INFILE REPLACE,
  then delete what the partition no longer has: nothing here)                   target >= 50,000
- for information: the rebuild into an empty table, and a rebuild whose partition lost 10 % of
  the day's rows (the stale-row path: the partition's keys in a temporary table, the missing ones deleted)
- baselines in the same run: pandas ``to_sql`` (default method) into a plain table, and a row-by-row
  INSERT + COMMIT on a sample, extrapolated (labelled as such)
- Snowflake (fakesnow server) PUT -> COPY -> MERGE, first load and re-run        target >= 100,000

``--check`` exits 1 when a target is missed. ``--rows 100000`` for a quick run.
Example: ``.venv/bin/python benchmarks/warehouse_load.py --rows 1000000 --repeats 3 --check``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

DAY = "2025-11-20"
TARGETS = {"mysql upsert": 25_000, "mysql day rebuild (LOAD DATA)": 50_000, "snowflake merge": 100_000}


def _median_rate(rows: int, runs: list[float]) -> float:
    return rows / statistics.median(runs)


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_mysql(args: argparse.Namespace, df: object, results: dict[str, tuple[float, str]]) -> None:
    import pymysql
    import sqlalchemy

    from crypto_platform.warehouse.sql import SqlWarehouse

    name = f"cp_bench_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host=args.mysql_host, port=args.mysql_port, user=args.mysql_user, autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    url = f"mysql+pymysql://{args.mysql_user}:@{args.mysql_host}:{args.mysql_port}/{name}"
    rows = len(df)  # type: ignore[arg-type]
    try:
        wh = SqlWarehouse(url)
        wh.migrate()
        upserts, reupserts, rebuilds, fresh, stale = [], [], [], [], []
        smaller = df.iloc[: rows - rows // 10]  # type: ignore[attr-defined]
        truncate = f"TRUNCATE TABLE `{name}`.crypto_trades"
        for _ in range(args.repeats):
            admin.cursor().execute(truncate)
            upserts.append(_time(lambda: wh.upsert("trades", df)))
            reupserts.append(_time(lambda: wh.upsert("trades", df)))
            rebuilds.append(_time(lambda: wh.rebuild_day("trades", DAY, df)))
            stale.append(_time(lambda: wh.rebuild_day("trades", DAY, smaller)))
            admin.cursor().execute(truncate)
            fresh.append(_time(lambda: wh.rebuild_day("trades", DAY, df)))
        results["mysql upsert"] = (_median_rate(rows, upserts), "new rows, executemany ODKU, 5k-row statements")
        results["mysql re-upsert"] = (_median_rate(rows, reupserts), "every row already exists")
        results["mysql day rebuild (LOAD DATA)"] = (
            _median_rate(rows, rebuilds),
            "the loaded day again: LOAD DATA REPLACE, no stale rows",
        )
        results["mysql day rebuild, empty table"] = (_median_rate(rows, fresh), "LOAD DATA into an empty day")
        results["mysql day rebuild, 10 % of the day gone"] = (
            _median_rate(len(smaller), stale),
            "LOAD DATA REPLACE; stale keys found via a keys table, deleted by primary key",
        )

        # baseline 1: pandas to_sql (default method = executemany) into a plain table, no upsert possible
        engine = sqlalchemy.create_engine(url)
        plain = df.drop(columns=[]).copy()  # type: ignore[attr-defined]
        for c in ("price", "size"):
            plain[c] = plain[c].astype(str)
        runs = []
        for _ in range(args.repeats):
            runs.append(
                _time(lambda: plain.to_sql("bench_to_sql", engine, if_exists="replace", index=False, chunksize=5000))
            )
        results["pandas to_sql (baseline)"] = (_median_rate(rows, runs), "plain INSERT, cannot upsert")
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
        ]  # type: ignore[index]
        sql = f"INSERT INTO rbr ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"

        def row_by_row() -> None:
            for rec in records:
                cur.execute(sql, rec)
                conn.commit()

        t = _time(row_by_row)
        results[f"row-by-row INSERT+COMMIT (baseline; {sample} rows, extrapolated)"] = (sample / t, "")
        conn.close()
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def bench_snowflake(args: argparse.Namespace, df: object, results: dict[str, tuple[float, str]]) -> None:
    import snowflake.connector

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `benchmarks` importable
    from benchmarks.simulator_rate import free_port
    from crypto_platform.local.stack import fakesnow_service, stack_paths, start_service, stop_service
    from crypto_platform.resources.snowflake import local_connection_args
    from crypto_platform.settings import child_environment, load_settings
    from crypto_platform.warehouse.snowflake import load_snowflake, migrate_snowflake

    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="cp_bench_fakesnow_"))
    env = {"CRYPTO_STATE_DIR": str(state), "CRYPTO_PROJECT_DIR": str(state), "CRYPTO_FAKESNOW_PORT": str(port)}
    settings = load_settings(env)
    service, paths = fakesnow_service(settings), stack_paths(settings)
    start_service(service, paths, child_environment(env), ready_timeout=60)
    rows = len(df)  # type: ignore[arg-type]
    try:
        sf = settings.snowflake
        # A long network timeout: one COPY/MERGE of a million rows takes a while on fakesnow.
        conn = snowflake.connector.connect(
            account=sf.account, user=sf.user, password="snow", network_timeout=60, **local_connection_args(sf)
        )
        firsts, reruns = [], []
        for i in range(args.repeats):
            db = f"BENCH_{i}"
            migrate_snowflake(conn, database=db)
            firsts.append(_time(lambda db=db: load_snowflake(conn, "trades", df, day=DAY, database=db)))
            reruns.append(_time(lambda db=db: load_snowflake(conn, "trades", df, day=DAY, database=db)))
        results["snowflake merge"] = (_median_rate(rows, firsts), "fakesnow server: PUT -> COPY -> MERGE, new rows")
        results["snowflake merge re-run"] = (_median_rate(rows, reruns), "every row already exists")
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
    p.add_argument("--skip-mysql", action="store_true")
    p.add_argument("--skip-snowflake", action="store_true")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)

    from crypto_platform.warehouse import samples

    df = samples.trades(DAY, args.rows, arrow_decimals=True)
    print(f"{args.rows:,} trades of {DAY}, median of {args.repeats} runs", flush=True)
    results: dict[str, tuple[float, str]] = {}
    if not args.skip_mysql:
        bench_mysql(args, df, results)
    if not args.skip_snowflake:
        bench_snowflake(args, df, results)
    missed = []
    for name, (rate, note) in results.items():
        target = TARGETS.get(name)
        flag = ""
        if target:
            ok = rate >= target
            flag = f"target >= {target:,}: {'ok' if ok else 'MISSED'}"
            if not ok:
                missed.append(name)
        print(f"{name:<62} {rate:>12,.0f} rows/s  {flag}  {note}")
    if args.check and missed:
        print(f"missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
