"""History into the lake: a day of Flat File trades at the whole market's size, and REST history.

1. **Flat File trades -> lake.** A gzip CSV in Flat Files' trades format with ``--rows`` trades
   (default 4,000,000, about the whole crypto market's day), five pairs, Polygon-like prices and
   sizes. Each repeat runs in a fresh process (as a Dagster run does): parse the file into
   ``raw_trades`` rows and write the day's lake partition. The platform's path, as ``raw_trades``
   runs it for a day the stream never saw (:func:`crypto_platform.lake.history.read_trades_csv`:
   Arrow's CSV reader straight to decimals, the order by one packed integer sort;
   :func:`~crypto_platform.lake.history.merge_history`; the day's replace, Parquet files written
   side by side and one Delta commit), against the baseline measured in the same run: pandas
   ``read_csv`` with the numbers read as text and converted to ``Decimal`` (the exact way in pandas;
   floats would not be exact), then the same Arrow table and the same write. Figures are rows/s from
   the start of the read to the written partition.
2. **REST history.** One simulated day of one pair from the simulator's ``/v3/trades`` (pages of
   50,000), through :func:`crypto_platform.lake.history.rest_trades` (resumable pages), against the
   official client's ``list_trades`` over the same day in the same run; requests per day printed.
3. **Every pair's minute bars for 30 days, through the Dagster backfill** (``--only bars``). The
   ``--bar-days`` days before today (UTC; ``CRYPTO_START_DATE`` the first) as Flat Files
   ``minute_aggs_v1`` files of ``--bar-pairs`` pairs (default 300), every pair a bar every minute:
   432,000 bars a day, about 13M in 30 days, prices and volumes as exact decimal text as Polygon
   writes them. That is about the whole market's day, more likely above it than below: crypto
   tickers number in the hundreds, and ``minute_aggs`` holds only the minutes with trades, so a
   real pair has fewer than 1,440 bars a day (a thin one far fewer). The files are served by moto's
   S3 server (already a test dependency) on loopback, which the platform's
   :class:`~crypto_platform.polygon.flat_files.FlatFilesClient` reads as it reads Massive's endpoint
   (``POLYGON_S3_*`` point at it, ``CRYPTO_HISTORY_SOURCE=flat_files``, ``CRYPTO_PAIRS=*``): the
   simulator's Flat Files render each day from its own market, far too slowly for 300 pairs, and
   cannot serve files prepared beforehand. A throwaway ``crypto-platform dev`` (what ``make dev``
   runs; ``CRYPTO_INGESTER_AUTOSTART=false``, the SQLite stand-ins, no MySQL: the warehouse copies
   are not selected) gets the backfill of ``raw_trades`` and ``minute_bars`` over those days as the
   UI's "Materialize selected" sends it (``launchPartitionBackfill``). Both are selected because
   ``minute_bars`` reads the day's ``raw_trades`` partition and fails on a lake without that table;
   here each day's is empty: the bucket has no trades file, which the runs log, and with ``*``
   pairs there is no REST history either, also logged (``POLYGON_REST_URL`` points where nothing
   listens, so a REST call would fail the run). ``minute_bars`` then takes Polygon's bars from the
   day's ``minute_aggs`` file. Measured: launch to the backfill's end as Dagster records it (its
   daemon notices the last run's end on its next 30 s loop; the last run's end is printed beside);
   the runs (count, per-run durations), each step's time summed over the runs, bars in the lake per
   day against the rows of each file (a mismatch is printed and fails), the runs' log lines saying
   there was no trades file. The baseline, in the same run, is the floor without Dagster, S3 or a
   run's process start: one fresh process reading the same 30 local files with pandas (numbers as
   text converted to ``Decimal``, the exact way in pandas) into the platform's minute_bars columns,
   and the same lake write per day; printed as a ratio of times.

    python benchmarks/history_backfill.py [--rows 4000000] [--repeats 3] [--rest-rate 4]
        [--bar-days 30] [--bar-pairs 300] [--only trades|rest|bars ...] [--check]

Targets (issue 15, item 4): Flat File trades >= 1,000,000 rows/s into the lake; the 30-day
backfill of every pair's minute bars from ``minute_aggs``, end to end through the Dagster backfill,
in <= 10 minutes (``--check`` also fails when a run fails or a day's count differs).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.summary import Summary, median, runs

TARGET_ROWS_PER_S = 1_000_000
DAY = date(2025, 11, 20)
DAY_MS = 1_763_596_800_000
PAIRS = {"BTC-USD": (91_000, 2, 8), "ETH-USD": (3_100, 2, 8), "SOL-USD": (140, 3, 6), "XRP-USD": (2, 5, 2)}
HEADER = "ticker,conditions,exchange,id,participant_timestamp,price,size\n"
BARS_TARGET_S = 600.0
PARTS = ("trades", "rest", "bars")
ROOT = Path(__file__).resolve().parent.parent
S3_KEY = "benchmark"  # moto takes any key; the platform signs its requests with it as with Massive's
AGGS_HEADER = "ticker,volume,open,close,high,low,window_start,transactions\n"
MINUTES = 1440
# The backfill's selection: the day's trades first (no trades file: nothing to add), then the bars.
BARS_ASSETS = ("raw_trades", "minute_bars")
BACKFILL_RUNS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status timestamp endTimestamp runs: runs(limit: 500) { runId status startTime endTime
        stepStats { stepKey status startTime endTime } } } } }"""
RUN_MESSAGES = """query($id: ID!, $after: String) { logsForRun(runId: $id, afterCursor: $after) {
    ... on EventConnection { cursor hasMore events { __typename ... on MessageEvent { message level } } } } }"""


def write_trades_file(path: Path, rows: int, seed: int = 7) -> None:
    """A Flat Files trades day: pairs in blocks (the file's order), times rising within each pair."""
    rng = np.random.default_rng(seed)
    names = list(PAIRS)
    per_pair = np.full(len(names), rows // len(names))
    per_pair[0] += rows - per_pair.sum()
    next_id = 1_000_000_000
    with gzip.open(path, "wt", compresslevel=1, newline="") as out:
        out.write(HEADER)
        for name, n in zip(names, per_pair, strict=True):
            price0, price_dp, size_dp = PAIRS[name]
            ns = np.sort(rng.integers(0, 86_400_000, n)) * 1_000_000 + DAY_MS * 1_000_000
            price = np.round(price0 * (1 + 0.01 * rng.standard_normal(n)) * 10**price_dp).astype(np.int64)
            size = np.maximum(1, (rng.lognormal(0, 1.1, n) * 2000 / price0 * 10**size_dp)).astype(np.int64)
            exch = rng.choice([1, 2, 6, 10, 23], n)
            side = rng.integers(1, 3, n)
            pf, sf = f"%d.%0{price_dp}d", f"%d.%0{size_dp}d"
            pq, sq = 10**price_dp, 10**size_dp
            step = 200_000
            for i in range(0, n, step):
                lines = [
                    f"X:{name},{c},{x},{next_id + i + j},{t},{pf % divmod(p, pq)},{sf % divmod(s, sq)}\n"
                    for j, (c, x, t, p, s) in enumerate(
                        zip(
                            side[i : i + step].tolist(),
                            exch[i : i + step].tolist(),
                            ns[i : i + step].tolist(),
                            price[i : i + step].tolist(),
                            size[i : i + step].tolist(),
                            strict=True,
                        )
                    )
                ]
                out.write("".join(lines))
            next_id += n


def decimal_text(units: np.ndarray, scale: np.ndarray | int) -> Any:
    """Exact decimal texts (``123.4500``) of integer ``units`` of 1/``scale``, as an Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    whole = pc.cast(pa.array(units // scale), pa.string())
    # units % scale + scale is "1" followed by the fraction's digits, zero-padded: drop the "1".
    fraction = pc.utf8_slice_codeunits(pc.cast(pa.array(units % scale + scale), pa.string()), 1)
    return pc.binary_join_element_wise(whole, fraction, ".")


def write_minute_aggs_file(path: Path, day: date, pairs: int, seed: int) -> int:
    """A Flat Files ``minute_aggs_v1`` day: every pair a bar every minute, tickers in blocks. Returns the rows.

    Each pair has a price level between 0.001 and 100,000 (log-uniform, the same every day) with
    as many decimals as Polygon gives such a price (2 for BTC, 9 for a sub-cent coin), a random walk
    through the day, high/low around open/close, volumes with 8 decimals. Written with Arrow's CSV
    writer and ISA-L's gzip: a day of 300 pairs takes about a second.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pv
    from isal import igzip

    rng = np.random.default_rng(seed)
    level = 10 ** np.random.default_rng(3).uniform(-3, 5, pairs)
    decimals = np.clip(6 - np.floor(np.log10(level)).astype(np.int64), 2, 10)
    n = pairs * MINUTES
    scale = np.repeat(10**decimals, MINUTES)
    walk = np.exp(np.cumsum(rng.normal(0, 0.0008, (pairs, MINUTES)), axis=1)).ravel()
    open_ = np.maximum(1, np.round(np.repeat(level, MINUTES) * walk * scale)).astype(np.int64)
    close = np.maximum(1, np.round(open_ * (1 + 0.001 * rng.standard_normal(n)))).astype(np.int64)
    high = np.maximum(open_, close) + np.round(np.abs(rng.standard_normal(n)) * 0.0005 * open_).astype(np.int64)
    low = np.minimum(open_, close) - np.round(np.abs(rng.standard_normal(n)) * 0.0005 * open_).astype(np.int64)
    volume_scale = 10**8
    volume = np.maximum(1, rng.lognormal(0, 1.2, n) * (2000 / np.repeat(level, MINUTES)) * volume_scale)
    day_ns = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000_000
    names = pa.array([f"X:C{i:04d}-USD" for i in range(pairs)])
    table = pa.table(
        {
            "ticker": pc.take(names, pa.array(np.repeat(np.arange(pairs), MINUTES))),
            "volume": decimal_text(volume.astype(np.int64), volume_scale),
            "open": decimal_text(open_, scale),
            "close": decimal_text(close, scale),
            "high": decimal_text(high, scale),
            "low": decimal_text(np.maximum(1, low), scale),
            "window_start": pa.array(day_ns + np.tile(np.arange(MINUTES, dtype=np.int64) * 60_000_000_000, pairs)),
            "transactions": pa.array(rng.integers(1, 60, n)),
        }
    )
    text = io.BytesIO()
    text.write(AGGS_HEADER.encode())
    pv.write_csv(table, text, pv.WriteOptions(include_header=False, quoting_style="none"))
    path.write_bytes(igzip.compress(text.getbuffer(), compresslevel=1))
    return n


def one_load(mode: str, path: str, lake: str) -> dict[str, float]:
    """In a fresh process: the file into the lake's raw_trades partition (``arrow`` or ``pandas``)."""
    started = time.perf_counter()
    import pyarrow as pa

    from crypto_platform.assets.raw import TRADES, TRADES_SCHEMA
    from crypto_platform.lake.history import merge_history, read_trades_csv
    from crypto_platform.resources.lake import LakeResource

    imported = time.perf_counter()
    if mode == "arrow":
        table, _ = read_trades_csv(Path(path), Path(path).name, DAY)
        table, _ = merge_history(table, TRADES_SCHEMA.empty_table())  # what raw_trades does for a day never streamed
    else:
        from decimal import Decimal

        import pandas as pd
        import pyarrow.compute as pc

        df = pd.read_csv(path, dtype={"ticker": str, "conditions": str, "id": str, "price": str, "size": str})
        n = len(df)
        table = pa.table(
            {
                "pair": pa.array(df["ticker"].str.removeprefix("X:"), pa.string()),
                "exchange": pa.array(df["exchange"], pa.int32()),
                "trade_id": pa.array(df["id"], pa.string()),
                "price": pa.array(df["price"].map(Decimal), TRADES_SCHEMA.field("price").type),
                "size": pa.array(df["size"].map(Decimal), TRADES_SCHEMA.field("size").type),
                "conditions": pa.array("[" + df["conditions"] + "]", pa.string()),
                "event_ms": pa.array(df["participant_timestamp"] // 1_000_000, pa.int64()),
                "polygon_received_ms": pa.nulls(n, pa.int64()),
                "received_ns": pa.array(np.full(n, time.time_ns(), np.int64)),
                "session": pa.nulls(n, pa.int64()),
                "segment": pa.nulls(n, pa.int64()),
                "source": pa.array(np.full(n, "flat_file", object), pa.string()),
            },
            schema=TRADES_SCHEMA,
        )
        table = table.take(pc.sort_indices(table, [(k, "ascending") for k in TRADES.order]))
    parsed = time.perf_counter()
    LakeResource(root=lake, cache_mb=0).write_partition("raw_trades", DAY.isoformat(), table)
    done = time.perf_counter()
    return {"rows": table.num_rows, "seconds": done - imported, "parse": parsed - imported, "write": done - parsed,
            "imports": imported - started}  # fmt: skip


def measure(mode: str, path: Path, work: Path) -> dict[str, float]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[4]); from benchmarks.history_backfill import one_load; "
        "print(json.dumps(one_load(sys.argv[1], sys.argv[2], sys.argv[3])))"
    )
    root = str(Path(__file__).resolve().parent.parent)
    lake = tempfile.mkdtemp(dir=work)
    out = subprocess.run(
        [sys.executable, "-c", code, mode, str(path), lake, root], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def one_bars_baseline(files: dict[str, str], lake: str) -> dict[str, float]:
    """In a fresh process: each day's minute_aggs file read by pandas and written as the day's minute_bars.

    The numbers are read as text and converted to ``Decimal`` (exact, as the platform's are); the
    table has the platform's minute_bars columns (bars from ``minute_aggs``: no VWAP, no XA bar,
    repaired) in its order, written by the same lake call per day.
    """
    started = time.perf_counter()
    from decimal import Decimal

    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from crypto_platform.lake.schemas import MINUTE_BARS_SCHEMA
    from crypto_platform.resources.lake import LakeResource

    imported = time.perf_counter()
    target = LakeResource(root=lake, cache_mb=0)
    texts = ("ticker", "volume", "open", "close", "high", "low")
    rows, parse, write = 0, 0.0, 0.0
    for day, path in files.items():
        t0 = time.perf_counter()
        df = pd.read_csv(path, dtype=dict.fromkeys(texts, str))
        n = len(df)
        given = {
            "pair": pa.array(df["ticker"].str.removeprefix("X:"), pa.string()),
            "minute_ms": pa.array(df["window_start"] // 1_000_000, pa.int64()),
            **{c: pa.array(df[c].map(Decimal), MINUTE_BARS_SCHEMA.field(c).type) for c in texts[1:]},
            "trade_count": pa.array(df["transactions"], MINUTE_BARS_SCHEMA.field("trade_count").type),
            "settled": pa.array(np.ones(n, np.bool_)),
            "source": pa.array(np.full(n, "minute_aggs", object), pa.string()),
            "in_gap": pa.array(np.zeros(n, np.bool_)),
            "repaired": pa.array(np.ones(n, np.bool_)),
        }
        table = pa.table(
            {f.name: given.get(f.name, pa.nulls(n, f.type)) for f in MINUTE_BARS_SCHEMA}, schema=MINUTE_BARS_SCHEMA
        )
        table = table.take(pc.sort_indices(table, [("minute_ms", "ascending"), ("pair", "ascending")]))
        t1 = time.perf_counter()
        target.write_partition("minute_bars", day, table)
        t2 = time.perf_counter()
        rows, parse, write = rows + n, parse + t1 - t0, write + t2 - t1
    return {"rows": rows, "seconds": time.perf_counter() - imported, "parse": parse, "write": write,
            "imports": imported - started}  # fmt: skip


def measure_bars_baseline(files: dict[str, Path], work: Path) -> dict[str, float]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[3]); from benchmarks.history_backfill import "
        "one_bars_baseline; print(json.dumps(one_bars_baseline(json.loads(sys.argv[1]), sys.argv[2])))"
    )
    root = str(Path(__file__).resolve().parent.parent)
    lake = tempfile.mkdtemp(dir=work)
    listing = json.dumps({day: str(path) for day, path in files.items()})
    out = subprocess.run([sys.executable, "-c", code, listing, lake, root], check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@contextlib.contextmanager
def flat_files_endpoint(objects: dict[str, Path]) -> Iterator[str]:
    """moto's S3 server on loopback holding ``objects`` (key -> file) in the Flat Files bucket; yields its URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    from benchmarks.simulator_rate import free_port
    from crypto_platform.settings import POLYGON_S3_BUCKET

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        s3 = boto3.client(
            "s3", endpoint_url=url, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY, region_name="us-east-1"
        )
        s3.create_bucket(Bucket=POLYGON_S3_BUCKET)
        for key, path in objects.items():
            s3.put_object(Bucket=POLYGON_S3_BUCKET, Key=key, Body=path.read_bytes())
        yield url
    finally:
        server.stop()


def run_messages(base: str, run_id: str) -> list[tuple[str, str]]:
    """(level, message) of every log message of a run, from the webserver."""
    from benchmarks.dev_platform import graphql

    out: list[tuple[str, str]] = []
    after = None
    while True:
        page = graphql(base, RUN_MESSAGES, {"id": run_id, "after": after})["logsForRun"]
        out += [(e.get("level") or "", e.get("message") or "") for e in page["events"]]
        if not page["hasMore"]:
            return out
        after = page["cursor"]


def backfill_bars(days: list[str], endpoint: str, work: Path, deadline_s: float) -> dict[str, Any]:
    """The backfill of ``days`` launched over GraphQL on a throwaway ``crypto-platform dev``; its runs and lake."""
    from benchmarks.dev_platform import (
        BACKFILL_STATUS,
        LAUNCH_BACKFILL,
        dev_environment,
        dev_running,
        graphql,
        http_json,
        wait_for,
    )
    from benchmarks.simulator_rate import free_port
    from crypto_platform.resources.lake import LakeResource
    from crypto_platform.settings import load_settings

    env, _ = dev_environment(work)
    env.update(
        {
            "CRYPTO_PAIRS": "*",
            "CRYPTO_START_DATE": days[0],
            "CRYPTO_INGESTER_AUTOSTART": "false",
            "CRYPTO_HISTORY_SOURCE": "flat_files",
            "POLYGON_S3_ENDPOINT": endpoint,
            "POLYGON_S3_ACCESS_KEY_ID": S3_KEY,
            "POLYGON_S3_SECRET_ACCESS_KEY": S3_KEY,
            # Nothing listens here: a run that asked REST for history would fail, not start a simulator.
            "POLYGON_REST_URL": f"http://127.0.0.1:{free_port()}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    settings = load_settings(env, cwd=ROOT)
    base = f"http://127.0.0.1:{settings.dagster_port}"
    result: dict[str, Any] = {}
    with dev_running(env, work / "dev.log") as dev:
        query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"

        def location_loaded() -> bool:
            entries = http_json(f"{base}/graphql", {"query": query})["data"]["workspaceOrError"]["locationEntries"]
            return [e["loadStatus"] for e in entries] == ["LOADED"]

        wait_for(location_loaded, 300, "the code location to load", dev)
        params = {
            "assetSelection": [{"path": [name]} for name in BARS_ASSETS],
            "partitionNames": days,
            "title": "history backfill (benchmark)",
        }
        launched = time.time()
        answer = graphql(base, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if answer["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"the backfill was not launched: {answer}")
        status = "REQUESTED"
        while status in ("REQUESTED", "CANCELING", "FAILING") and time.time() - launched < deadline_s:
            time.sleep(2)
            with contextlib.suppress(OSError):  # the webserver is busy: ask again
                status = graphql(base, BACKFILL_STATUS, {"id": answer["backfillId"]})["partitionBackfillOrError"][
                    "status"
                ]
        seen = time.time()
        backfill = graphql(base, BACKFILL_RUNS, {"id": answer["backfillId"]})["partitionBackfillOrError"]
        result.update(status=status, launched=launched, seen=seen, runs=backfill["runs"])
        result.update(created=backfill["timestamp"], ended=backfill["endTimestamp"])
        result["messages"] = {r["runId"]: run_messages(base, r["runId"]) for r in backfill["runs"]}
    lake = LakeResource(root=str(settings.lake_dir))
    tables = lake.tables()
    result["bars"] = {day: tables.count("minute_bars", day) for day in days}
    result["trades"] = {day: tables.count("raw_trades", day) for day in days}
    sources: set[str] = set()
    for day in days:
        read = lake.read_partition("minute_bars", day, columns=["source"])
        sources |= set(read["source"].unique().to_pylist()) if read is not None else set()
    result["sources"] = sorted(sources)
    return result


def rest_history(rate: float) -> dict[str, float]:
    """One day of one pair through rest_trades and through the official client, same simulator."""
    from polygon import RESTClient

    from crypto_platform.lake.history import DayWork, rest_trades
    from crypto_platform.polygon.rest_client import PolygonRest
    from crypto_platform.settings import SIMULATOR_API_KEY
    from crypto_platform.simulator.server import Simulator, SimulatorConfig

    cfg = SimulatorConfig(rate=rate, pairs=("BTC-USD",), start_ms=DAY_MS + 2 * 86_400_000)
    with Simulator(cfg).running_in_thread() as sim, tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        table, figures = rest_trades(
            PolygonRest(sim.rest_url, SIMULATOR_API_KEY), DayWork.open(Path(tmp), DAY), ["BTC-USD"]
        )
        ours = time.perf_counter() - started
        client = RESTClient(api_key=SIMULATOR_API_KEY, base=sim.rest_url)
        started = time.perf_counter()
        n = sum(
            1
            for _ in client.list_trades(
                "X:BTC-USD", timestamp_gte=DAY_MS * 1_000_000, timestamp_lt=(DAY_MS + 86_400_000) * 1_000_000,
                order="asc", limit=50_000,
            )
        )  # fmt: skip
        official = time.perf_counter() - started
    assert n == table.num_rows, (n, table.num_rows)
    return {"rows": table.num_rows, "requests": figures["requests"], "ours": ours, "official": official}


def trades_into_lake(args: argparse.Namespace, summary: Summary) -> None:
    """Part 1: a whole market's day of Flat File trades into the lake, against pandas."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / f"{DAY.isoformat()}.csv.gz"
        t0 = time.perf_counter()
        write_trades_file(path, args.rows)
        print(f"wrote {path.stat().st_size / 1e6:.0f} MB gzip in {time.perf_counter() - t0:.0f} s", flush=True)
        arrow: list[dict[str, float]] = []
        pandas: list[dict[str, float]] = []
        for i in range(args.repeats):
            for mode, into in (("arrow", arrow), ("pandas", pandas)):
                fig = measure(mode, path, work)
                into.append(fig)
                print(f"run {i + 1} {mode}: {fig['rows'] / fig['seconds']:,.0f} rows/s ({fig})", flush=True)
    a = median(f["rows"] / f["seconds"] for f in arrow)
    p = median(f["rows"] / f["seconds"] for f in pandas)
    arrow_runs = runs(f["rows"] / f["seconds"] for f in arrow)
    parse, write = median(f["parse"] for f in arrow), median(f["write"] for f in arrow)
    summary.line(
        f"Flat File -> lake (Arrow CSV to decimals): median {a:,.0f} rows/s (runs {arrow_runs}), "
        f"parse {parse:.2f} s, write {write:.2f} s"
    )
    summary.line(f"baseline pandas read_csv + Decimal + the same write: median {p:,.0f} rows/s "
                 f"(runs {runs(f['rows'] / f['seconds'] for f in pandas)})")  # fmt: skip
    summary.line(f"ratio Arrow / pandas: {a / p:.2f}")
    summary.target(
        f">= {TARGET_ROWS_PER_S:,} rows/s Flat File trades into the lake", a >= TARGET_ROWS_PER_S, f"{a:,.0f}"
    )


def bars_backfill(args: argparse.Namespace, summary: Summary) -> None:
    """Part 3: the every-pair 30-day minute-bar backfill through Dagster, and its baseline."""
    from crypto_platform.polygon.flat_files import MINUTE_AGGS, object_key

    today = datetime.now(UTC).date()
    first = today - timedelta(days=args.bar_days)
    days = [first + timedelta(days=i) for i in range(args.bar_days)]
    with tempfile.TemporaryDirectory(prefix="crypto-backfill-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        files = {d.isoformat(): work / f"minute_aggs-{d.isoformat()}.csv.gz" for d in days}
        rows = {d.isoformat(): write_minute_aggs_file(files[d.isoformat()], d, args.bar_pairs, seed=i)
                for i, d in enumerate(days)}  # fmt: skip
        size = sum(p.stat().st_size for p in files.values())
        total = sum(rows.values())
        print(f"wrote {len(files)} minute_aggs files, {total:,} bars, {size / 1e6:.0f} MB gzip, "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        base = measure_bars_baseline(files, work)
        print(f"baseline: {base}", flush=True)
        objects = {object_key(MINUTE_AGGS, date.fromisoformat(d)): p for d, p in files.items()}
        with flat_files_endpoint(objects) as endpoint:
            print(f"Flat Files on {endpoint} (moto); starting crypto-platform dev", flush=True)
            got = backfill_bars([d.isoformat() for d in days], endpoint, work / "platform", args.bar_deadline)
    runs_ = got["runs"]
    ended = [r["endTime"] for r in runs_ if r["endTime"]]
    finished = got["status"] in ("COMPLETED", "COMPLETED_SUCCESS")
    failed = [r for r in runs_ if r["status"] != "SUCCESS"]
    # Launch to completion as Dagster records the backfill (created, ended); unfinished: until given up.
    took = got["ended"] - got["created"] if finished and got["ended"] else got["seen"] - got["launched"]
    last_run_end = max(ended) - got["launched"] if ended else float("nan")
    durations = [r["endTime"] - r["startTime"] for r in runs_ if r["endTime"] and r["startTime"]]
    starts = sorted(r["startTime"] for r in runs_ if r["startTime"])
    steps: dict[str, list[float]] = {}
    for r in runs_:
        for st in r["stepStats"]:
            if st["startTime"] and st["endTime"]:
                steps.setdefault(st["stepKey"], []).append(st["endTime"] - st["startTime"])
    said = [m for messages in got["messages"].values() for m in messages]
    no_trades_file = sum("no Flat File of trades is published" in m for _, m in said)
    no_rest = sum("REST history needs the pairs named" in m for _, m in said)
    errors = [m for level, m in said if level in ("ERROR", "CRITICAL")]
    mismatched = {d: (got["bars"].get(d), n) for d, n in rows.items() if got["bars"].get(d) != n}
    lake_bars = sum(n or 0 for n in got["bars"].values())
    summary.line(
        f"{args.bar_days}-day minute-bar backfill from minute_aggs ({args.bar_days} days x {args.bar_pairs} pairs, "
        f"every pair a bar every minute: {total:,} bars, {size / 1e6:.0f} MB gzip, from moto's S3 server), "
        f"{' + '.join(BARS_ASSETS)} launched over GraphQL on crypto-platform dev: {took:.0f} s from launch to "
        f"the backfill's end ({got['status']}; the last run ended at {last_run_end:.0f} s); "
        f"{lake_bars / took:,.0f} bars/s"
    )
    summary.line(
        f"  runs: {len(runs_)} ({', '.join(sorted({r['status'] for r in runs_}))}), per run median "
        f"{median(durations) if durations else float('nan'):.0f} s, max {max(durations, default=float('nan')):.0f} s; "
        f"first run started {starts[0] - got['launched'] if starts else float('nan'):.0f} s after the launch"
    )
    summary.line(
        "  steps (sum over runs, per run median): "
        + "; ".join(f"{k} {sum(v):.0f} s, {median(v):.0f} s" for k, v in sorted(steps.items()))
    )
    summary.line(
        f"  lake: {lake_bars:,} minute_bars (files: {total:,}; days mismatched: {len(mismatched)}), sources "
        f"{got['sources']}; raw_trades rows {sum(n or 0 for n in got['trades'].values())}; days logged without a "
        f"trades file {no_trades_file}, without REST history ({'*'} pairs) {no_rest}; error messages {len(errors)}"
    )
    summary.line(
        f"baseline in one process, no Dagster: pandas read_csv + Decimal of the same {len(files)} files and the same "
        f"lake write per day: {base['seconds']:.0f} s (parse {base['parse']:.0f} s, write {base['write']:.0f} s), "
        f"{base['rows'] / base['seconds']:,.0f} bars/s; ratio backfill / baseline time: {took / base['seconds']:.2f}"
    )
    for day, (have, want) in sorted(mismatched.items()):
        summary.line(f"  MISMATCH {day}: {have} bars in the lake, {want} rows in the file")
    for message in errors[:5]:
        summary.line(f"  error logged: {message[:300]}")
    what = f"<= {BARS_TARGET_S:.0f} s {args.bar_days}-day every-pair minute-bar backfill"
    summary.target(what, finished and took <= BARS_TARGET_S, f"{took:.0f} s" + ("" if finished else ", not finished"))
    summary.target("every run of the backfill SUCCESS", finished and not failed and bool(runs_),
                   f"{len(runs_) - len(failed)} of {len(runs_)}, backfill {got['status']}")  # fmt: skip
    counted = not mismatched and got["sources"] == ["minute_aggs"]
    summary.target("bars in the lake = rows in the files, every day", counted,
                   f"{lake_bars:,} of {total:,}, {len(mismatched)} days mismatched")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4_000_000, help="trades in the day's file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rest-rate", type=float, default=4.0, help="simulator events/s (sets its trade density)")
    parser.add_argument("--skip-rest", action="store_true")
    parser.add_argument("--bar-days", type=int, default=30, help="days of the minute-bar backfill (before today)")
    parser.add_argument("--bar-pairs", type=int, default=300, help="pairs in each minute_aggs file")
    parser.add_argument(
        "--bar-deadline", type=float, default=3 * BARS_TARGET_S, help="seconds to wait for the backfill"
    )
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable); default all")
    parser.add_argument("--check", action="store_true", help="exit non-zero when a target is missed")
    args = parser.parse_args()
    parts = set(args.only or PARTS) - ({"rest"} if args.skip_rest else set())
    notes = []
    if "trades" in parts:
        notes.append(f"Flat File of {args.rows:,} trades; each load a fresh process")
    if "bars" in parts:
        notes.append(f"minute_aggs of {args.bar_days} days x {args.bar_pairs} pairs through Dagster")
    summary = Summary("history_backfill", note="; ".join(notes))
    if "trades" in parts:
        trades_into_lake(args, summary)
    if "rest" in parts:
        r = rest_history(args.rest_rate)
        summary.line(
            f"REST history, one day of BTC-USD ({r['rows']:,.0f} trades): {r['requests']:.0f} requests per pair-day, "
            f"{r['rows'] / r['ours']:,.0f} trades/s through rest_trades (resumable pages) vs the official client's "
            f"list_trades {r['rows'] / r['official']:,.0f} trades/s on the same simulator"
        )
    if "bars" in parts:
        bars_backfill(args, summary)
    return summary.finish(args.check)


if __name__ == "__main__":
    sys.exit(main())
