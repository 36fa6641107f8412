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

    python benchmarks/history_backfill.py [--rows 4000000] [--repeats 3] [--rest-rate 4] [--check]

Targets (issue 15, item 4): Flat File trades >= 1,000,000 rows/s into the lake. The 30-day
minute-bar backfill through Dagster (<= 10 minutes) is measured by the system test
``crypto_platform_tests/test_history_backfill.py`` (its duration is printed by pytest), not here.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.summary import Summary, median, runs

TARGET_ROWS_PER_S = 1_000_000
DAY = date(2025, 11, 20)
DAY_MS = 1_763_596_800_000
PAIRS = {"BTC-USD": (91_000, 2, 8), "ETH-USD": (3_100, 2, 8), "SOL-USD": (140, 3, 6), "XRP-USD": (2, 5, 2)}
HEADER = "ticker,conditions,exchange,id,participant_timestamp,price,size\n"


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4_000_000, help="trades in the day's file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rest-rate", type=float, default=4.0, help="simulator events/s (sets its trade density)")
    parser.add_argument("--skip-rest", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit non-zero when a target is missed")
    args = parser.parse_args()
    summary = Summary("history_backfill", note=f"Flat File of {args.rows:,} trades; each load a fresh process")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / f"{DAY.isoformat()}.csv.gz"
        t0 = time.perf_counter()
        write_trades_file(path, args.rows)
        print(f"wrote {path.stat().st_size / 1e6:.0f} MB gzip in {time.perf_counter() - t0:.0f} s", flush=True)
        arrow, pandas = [], []
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
    if not args.skip_rest:
        r = rest_history(args.rest_rate)
        summary.line(
            f"REST history, one day of BTC-USD ({r['rows']:,.0f} trades): {r['requests']:.0f} requests per pair-day, "
            f"{r['rows'] / r['ours']:,.0f} trades/s through rest_trades (resumable pages) vs the official client's "
            f"list_trades {r['rows'] / r['official']:,.0f} trades/s on the same simulator"
        )
    return summary.finish(args.check)


if __name__ == "__main__":
    sys.exit(main())
