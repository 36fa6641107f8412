"""How fast a day's raw_trades and minute bars are built from the landing log, next to json + pandas.

The landing log is made here the way the ingester makes it: the simulator's market and schedule
(``crypto_platform.polygon``, the realistic XT/XQ/XA/XAS mix over 5 pairs, at the simulator's
full-speed rate unless ``--trades-per-second`` says otherwise) render the events, 10 to a frame, and
``LandingLog.append`` lands every frame with its receive time (delivery time plus a few ms), sealing a
segment every 5 s of receive time as ``CRYPTO_SEGMENT_MAX_AGE_S`` does at live pace, or at 64 MiB.
One frame in 100 is landed a second time half a second later (a re-sent frame), so the
de-duplication has work to do and its rule (the earliest receipt wins) is checked.

Measured, per repeat, in the same process:

- platform: ``TRADES.build`` (what ``raw_trades`` runs for a rebuild: DuckDB decodes every
  segment of the day into exact decimals, then de-duplicates by (pair, exchange, trade id) and
  sorts), then ``compute_minute_bars`` on the result (the OHLCV/VWAP kernel of ``minute_bars``);
  the Dagster asset wrapper, Parquet writes and the XA comparison of ``build_day`` are not in the
  headline figure: ``--dagster`` times ``dagster.materialize`` of ``raw_trades`` and ``build_day``
  once beside it, to show what they add;
- baseline: the straightforward way, ``json.loads`` per line (``parse_float=Decimal``, exact),
  the day's XT events into a pandas DataFrame, the same de-duplication (sort by receipt,
  ``drop_duplicates`` on the key), then ``groupby(pair, minute)`` for OHLCV and a VWAP from the
  exact sum of price * size.

The platform's repeats run back to back, then the baseline's. The first platform run is the
process's first: it also pays for the first touch of the memory DuckDB and Arrow allocate (a Dagster
run process pays it once per run), so it shows in the list of runs; the median is over them all.

Both results are compared row for row (every raw_trades column, every bar column, as exact
decimals) before any figure is printed, so the speed-up is for the same answer. events/s counts
every landed event of the segments read (all channels: the build reads them all) over wall time;
trades/s counts the XT events decoded.

    python benchmarks/partition_build.py [--events 2000000] [--repeats 3] [--dagster] [--check]

Targets (issue "partition build"): >= 1,000,000 events/s and >= 5x the baseline (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.simulator_rate import PAIRS, START_MS  # noqa: E402

# The benchmark's day is a fixed past day: the partitions (built at import from CRYPTO_START_DATE,
# by default the last 30 days) must reach back to it, here and in every run process started below.
os.environ.setdefault("CRYPTO_START_DATE", time.strftime("%Y-%m-%d", time.gmtime(START_MS // 1000)))
from crypto_platform.assets.raw import TRADES, TRADES_SCHEMA  # noqa: E402
from crypto_platform.days import DAY_MS, MINUTE_MS  # noqa: E402
from crypto_platform.lake.bars import BARS_SCHEMA, compute_minute_bars  # noqa: E402
from crypto_platform.simulator.feed import Renderer, Schedule  # noqa: E402
from crypto_platform.simulator.market import Market  # noqa: E402
from crypto_platform.simulator.server import _FLOOD_TRADES_PER_PAIR_S  # noqa: E402
from crypto_platform.stream.landing_log import LandingLog  # noqa: E402
from crypto_platform.stream.manifest import iter_manifest, segment_path  # noqa: E402
from crypto_platform.stream.session_ledger import SessionLedger  # noqa: E402

TARGET_EVENTS_PER_S = 1_000_000
TARGET_RATIO = 5.0
DAY = time.strftime("%Y-%m-%d", time.gmtime(START_MS // 1000))
EVENTS_PER_FRAME = 10
RESEND_EVERY = 100  # one frame in this many is landed twice
RESEND_DELAY_NS = 500_000_000
LATENCY_NS = 3_000_000  # Polygon's delivery time to our receive time
SEGMENT_AGE_NS = 5_000_000_000  # CRYPTO_SEGMENT_MAX_AGE_S default, in receive time


@dataclass(frozen=True)
class LandedDay:
    landing: Path  # the landing directory (data_dir / "landing")
    entries: list[dict[str, Any]]  # manifest entries of the segments the day's build reads
    events: int  # landed events in those segments, every channel
    frames: int


def land(data_dir: Path, events: int, trades_per_second: float) -> LandedDay:
    """``events`` simulator events landed as the ingester lands them, in one open session of the ledger."""
    landing = data_dir / "landing"
    market = Market(7, tuple(PAIRS.split(",")), trades_per_second=trades_per_second)
    schedule = Schedule(Renderer(market), START_MS)
    schedule.set_topics({(c, "*") for c in ("XT", "XQ", "XA", "XAS")})
    log = LandingLog(landing, fsync="never")
    log.open()
    ledger = SessionLedger(landing / "sessions.ndjson")
    session = ledger.new_session()
    ledger.record(session, "connect", START_MS * 1_000_000, url="ws://127.0.0.1/crypto")
    resend: deque[tuple[int, bytes]] = deque()  # (receive ns, frame) waiting to be landed again
    left, frames, seal_at, last_ns = events, 0, None, START_MS * 1_000_000
    while left > 0:
        due = schedule.advance(schedule.next_second * 1000)[:left]
        left -= len(due)
        for i in range(0, len(due), EVENTS_PER_FRAME):
            chunk = due[i : i + EVENTS_PER_FRAME]
            # Receive times are unique and increasing, as the ingester's clock gives them.
            recv_ns = max(last_ns + 1, chunk[-1].deliver_ms * 1_000_000 + LATENCY_NS)
            while resend and resend[0][0] <= recv_ns:
                last_ns = _land(log, session, last_ns, *resend.popleft())
            if seal_at is None:
                seal_at = recv_ns + SEGMENT_AGE_NS
            elif recv_ns >= seal_at:
                log.seal()
                seal_at = recv_ns + SEGMENT_AGE_NS
            frame = ("[" + ",".join(e.text for e in chunk) + "]").encode()
            last_ns = _land(log, session, last_ns, recv_ns, frame)
            frames += 1
            if frames == 1:
                ledger.record(session, "first_frame", recv_ns)
            if frames % RESEND_EVERY == 0:
                resend.append((recv_ns + RESEND_DELAY_NS, frame))
    for recv_ns, frame in resend:
        last_ns = _land(log, session, last_ns, recv_ns, frame)
    log.close()
    ledger.close()  # the session stays open, as mid-day: a disconnect would leave a gap to midnight
    entries = [e for e in iter_manifest(landing) if "XT" in e["days"].get(DAY, {})]
    landed = sum(e["events"] for e in entries)
    return LandedDay(landing, entries, landed, sum(e["frames"] for e in entries))


def _land(log: LandingLog, session: int, last_ns: int, recv_ns: int, frame: bytes) -> int:
    recv_ns = max(recv_ns, last_ns + 1)
    log.append(recv_ns, session, frame)
    return recv_ns


# -- the platform ----------------------------------------------------------------------------------


def platform_build(day: LandedDay) -> tuple[pa.Table, pa.Table, int]:
    """raw_trades for the day (a rebuild, nothing in the lake yet), its minute bars, and the duplicates dropped."""
    trades, _, dupes = TRADES.build(day.landing, day.entries, DAY, None, incremental=False)
    return trades, compute_minute_bars(trades), dupes


# -- the baseline ----------------------------------------------------------------------------------

_COLUMNS = [*TRADES_SCHEMA.names, "idx"]


def _baseline_rows(day: LandedDay, lo: int, hi: int) -> Iterator[tuple[Any, ...]]:
    for entry in day.entries:
        seq = int(entry["seq"])
        with open(segment_path(day.landing, entry), "rb") as f:
            for line in f:
                record = json.loads(line, parse_float=Decimal)
                for idx, e in enumerate(record["f"]):
                    if e.get("ev") == "XT" and lo <= e["t"] < hi:
                        trade_id = e.get("i")
                        yield (
                            e["pair"],
                            e.get("x") or 0,
                            None if trade_id in (None, "") else str(trade_id),
                            Decimal(e["p"]),
                            Decimal(e["s"]),
                            json.dumps(e.get("c") or []),
                            e["t"],
                            e.get("r"),
                            record["r"],
                            record["n"],
                            seq,
                            "ws",
                            idx,
                        )


def baseline_build(day: LandedDay) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same two tables the straightforward way: json per line, pandas sort/drop_duplicates/groupby."""
    lo = START_MS - START_MS % DAY_MS
    df = pd.DataFrame(_baseline_rows(day, lo, lo + DAY_MS), columns=_COLUMNS)
    # The earliest receipt wins (then the earlier event of the frame), as in raw_trades.
    df = df.sort_values(["received_ns", "segment", "idx"], kind="stable")
    df = df.drop_duplicates(["pair", "exchange", "trade_id"], keep="first")
    trades = df.sort_values(list(TRADES.order), kind="stable").drop(columns="idx").reset_index(drop=True)

    t = trades.assign(minute_ms=trades["event_ms"] - trades["event_ms"] % MINUTE_MS)
    # Open and close: the first and last trade in (event_ms, exchange, trade_id) order.
    t = t.sort_values(["pair", "minute_ms", "event_ms", "exchange", "trade_id"], kind="stable")
    with localcontext(prec=100):  # exact: Decimal's default 28 digits could round a sum
        t["pv"] = [p * s for p, s in zip(t["price"], t["size"], strict=True)]
        bars = (
            t.groupby(["pair", "minute_ms"], sort=True)
            .agg(
                open=("price", "first"),
                high=("price", "max"),
                low=("price", "min"),
                close=("price", "last"),
                volume=("size", "sum"),
                pv=("pv", "sum"),
                trade_count=("price", "size"),
                first_trade_ms=("event_ms", "min"),
                last_trade_ms=("event_ms", "max"),
            )
            .reset_index()
        )
        # VWAP rounded half-even to 18 decimals (round() on a Fraction is half-even), None without volume.
        bars["vwap"] = [
            None if v == 0 else Decimal(round(Fraction(pv) / Fraction(v) * 10**18)).scaleb(-18)
            for pv, v in zip(bars["pv"], bars["volume"], strict=True)
        ]
    return trades, bars.drop(columns="pv")[BARS_SCHEMA.names]


# -- comparison --------------------------------------------------------------------------------------


def differences(platform: tuple[pa.Table, pa.Table, int], baseline: tuple[pd.DataFrame, pd.DataFrame]) -> list[str]:
    """Where the platform's tables differ from the baseline's (empty: the same rows, the same exact values)."""
    out = []
    for name, got, frame, schema in (
        ("raw_trades", platform[0], baseline[0], TRADES_SCHEMA),
        ("minute bars", platform[1], baseline[1], BARS_SCHEMA),
    ):
        # from_pandas converts each Decimal to decimal128(38, 18) exactly or raises: nothing is rounded.
        want = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        if got.num_rows != want.num_rows:
            out.append(f"{name}: {got.num_rows:,} rows, the baseline has {want.num_rows:,}")
            continue
        for column in schema.names:
            if not got[column].equals(want[column]):
                out.append(f"{name}: column {column} differs")
    return out


# -- optional: what the Dagster asset and build_day add ----------------------------------------------


def dagster_figures(data_dir: Path, day: LandedDay) -> list[str]:
    """``dagster.materialize`` of raw_trades (rebuild, Parquet write) and ``build_day``, each timed once."""
    import dagster as dg

    from crypto_platform.assets.bars import BarSettings, build_day
    from crypto_platform.assets.raw import AGGREGATES, raw_trades
    from crypto_platform.resources.lake import LakeResource
    from crypto_platform.resources.stream import StreamResource

    lake = LakeResource(root=str(data_dir / "lake"))
    stream = StreamResource(
        project_dir=str(ROOT), state_dir=str(data_dir.parent), data_dir=str(data_dir), autostart=False
    )
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        result = dg.materialize(
            [raw_trades], partition_key=DAY, resources={"stream": stream, "lake": lake}, instance=instance
        )
        materialize_s = time.perf_counter() - started
    assert result.success
    started = time.perf_counter()
    trades, _, _ = TRADES.build(day.landing, day.entries, DAY, None, incremental=False)
    build_s = time.perf_counter() - started
    aggregates, _, _ = AGGREGATES.build(day.landing, day.entries, DAY, None, incremental=False)
    started = time.perf_counter()
    bars = build_day(DAY, trades, aggregates, day.landing, BarSettings(10_000, False), None, list(PAIRS.split(",")))
    build_day_s = time.perf_counter() - started
    started = time.perf_counter()
    compute_minute_bars(trades)
    kernel_s = time.perf_counter() - started
    return [
        f"dagster.materialize(raw_trades), rebuild incl. Parquet write: {materialize_s:.2f} s "
        f"vs TRADES.build alone {build_s:.2f} s",
        f"build_day (bars + XA comparison + coverage, {bars.table.num_rows:,} bars): {build_day_s:.2f} s "
        f"vs compute_minute_bars alone {kernel_s:.2f} s",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="simulator events to land (before re-sends)")
    parser.add_argument(
        "--trades-per-second",
        type=float,
        default=_FLOOD_TRADES_PER_PAIR_S,
        help="per pair; the default is the simulator's full-speed rate, lower spreads the events over more minutes",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dagster", action="store_true", help="also time dagster.materialize and build_day once")
    parser.add_argument("--check", action="store_true", help="exit non-zero when a target is missed")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="partition-build-"))
    try:
        started = time.perf_counter()
        day = land(work / "data", args.events, args.trades_per_second)
        size = sum(e["bytes"] for e in day.entries)
        print(
            f"landed {day.events:,} events in {day.frames:,} frames, {len(day.entries)} segments, "
            f"{size / 2**20:,.0f} MiB, day {DAY} ({time.perf_counter() - started:.0f} s to generate)"
        )
        platform_s, baseline_s = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            platform = platform_build(day)
            platform_s.append(time.perf_counter() - started)
        for _ in range(args.repeats):
            started = time.perf_counter()
            baseline = baseline_build(day)
            baseline_s.append(time.perf_counter() - started)
        diffs = differences(platform, baseline)
        trades, bars, dupes = platform
        extra = dagster_figures(work / "data", day) if args.dagster else []
    finally:
        shutil.rmtree(work, ignore_errors=True)

    plat, base = statistics.median(platform_s), statistics.median(baseline_s)
    ratio = base / plat
    rate = day.events / plat
    same = not diffs
    print(
        f"raw_trades: {trades.num_rows:,} trades ({dupes:,} re-sent duplicates dropped); "
        f"minute bars: {bars.num_rows:,}; repeats: {args.repeats}"
    )
    print(
        f"platform (TRADES.build + compute_minute_bars): median {plat:.2f} s = {rate:>11,.0f} events/s, "
        f"{trades.num_rows / plat:>10,.0f} trades/s; runs {[round(s, 2) for s in platform_s]}"
    )
    print(
        f"baseline (json per line + pandas groupby):     median {base:.2f} s = {day.events / base:>11,.0f} events/s, "
        f"{trades.num_rows / base:>10,.0f} trades/s; runs {[round(s, 2) for s in baseline_s]}"
    )
    print(f"ratio platform/baseline: {ratio:.2f}")
    print(f"same trades and bars as the baseline, exact decimals: {same}" + "".join(f"\n  {d}" for d in diffs))
    for line in extra:
        print(line)
    misses = [
        name
        for name, ok in [
            (f"events/s >= {TARGET_EVENTS_PER_S:,}", rate >= TARGET_EVENTS_PER_S),
            (f"ratio >= {TARGET_RATIO:g}", ratio >= TARGET_RATIO),
            ("same results", same),
        ]
        if not ok
    ]
    print(f"targets: {'all met' if not misses else 'MISSED ' + ', '.join(misses)}")
    return 1 if misses and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
