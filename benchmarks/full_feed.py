"""A day at the whole feed's size, streamed through the platform the way production runs it.

**The day.** Polygon's whole crypto feed is about 4M trades and 17M quotes a day (issue 11), with
busy hours 30-50x the quiet ones. The day built here has ``4M x --scale`` XT and ``17M x --scale``
XQ events over ``300 x --scale`` pairs (at least 5), plus every XAS bar (one per pair and second
with trades) and XA bar (one per pair and minute with trades), consistent with the trades: 23 quiet
hours at a rate b and one busy hour (14:00 UTC) at 30b. The simulator's ``Market``/``Renderer``
land about 30k events/s here (``--measure-simulator``, under load 4): over ten minutes for the
day's 25M events. So the events are drawn with numpy (prices on a slow wave per pair, log-normal
sizes, Poisson arrivals), 6 minutes at a time, and rendered into the Polygon JSON shapes of
``simulator/feed.py`` (the platform's real decode path reads them). They are landed as the
ingester lands them (``partition_build.land``'s loop): 10 events a frame in delivery order,
``LandingLog.append`` with a receive time a few ms after delivery, a seal every 5 s of receive
time (in the ingester's sealer process), one frame in 100 landed again half a second later (a
re-send, so de-duplication has work), one session open in the ledger.
``--work DIR`` keeps the landing log there and ``--reuse`` takes it from there again.

**The drive.** A real Dagster instance (a temporary ``DAGSTER_HOME`` with the project's
``dagster.yaml``), the zero-setup stand-ins (SQLite for MySQL unless ``--mysql-url``, a local
fakesnow server) and a simulator on a free port serving the day's pairs for gap repair. The landing
log's segments are all on disk from the start, but a segment exists for the platform only once its
manifest line is appended (that is how the sealer announces it), so the script releases segments by
appending their lines, with ``sealed_ns`` set to the release time. Four windows are measured: the
first hour, noon, the busy hour and the last hour, each for ``--window-s`` seconds of wall time
from the hour's start, releasing the hour's segments at their real pace (when their receive time
says they sealed). Meanwhile the real lake writer (``crypto-platform lake-writer``, a subprocess)
appends them to the raw Delta tables, and the real ``stream_batch`` job runs at the default cadence
(``CRYPTO_BATCH_INTERVAL_S``, 30 s): at most one run per interval, each taking every segment
sealed since the last (the sensor's ``plan_batches``, its ``batch_selection`` and its tags), each
in a fresh process (``late_day_batch.py``'s ``--run-one``: ``dagster.execute_job`` on the
instance), so whatever the job builds at the time is what is measured. Between windows, the rest
of the day is released at once and caught up as a writer behind the ingester would: a bulk
``write_pass`` (its events/s are reported; ``--catch-up-segments N`` makes it one pass per N
segments, leaving the day in more files, nearer the one file per segment of a live writer), then
the sensor's rounds over it, back to back (at most ``max_segments_per_tick`` segments a run, as the
sensor hands a backlog over), reported apart from the windows.

**Reported.** Segment sealed (released) to lake commit latency over every segment released in the
windows (the commit time is the Delta log's ``commitInfo.timestamp`` of the first commit of each
raw table whose landing watermark covers the segment; segments not in the lake when the writer
stopped count as missing and are listed); per window, each run's wall time including process start
and its peak RSS (its own ``VmHWM``), and late/early (last hour over first hour, medians); runs per day at
the cadence and Dagster storage per run (``DAGSTER_HOME`` growth over the window's runs) and per
day, beside landing-log bytes per day; the writer's backlog at each window's end; the time to
compact the full day (``maintain_table``, as the ``lake_maintenance`` job does, on every table of
the lake); and the baseline, the previous layout's batch on the same data (one Parquet file per
table and day, read, merged with one segment and rewritten, as ``lake_append.old_layout_batch``),
once early (after the first window) and once late (after the last).

    python benchmarks/full_feed.py [--scale 1.0] [--window-s 120] [--work DIR [--reuse]]
                                   [--catch-up-segments N] [--mysql-url URL] [--check]

    a quick try: python benchmarks/full_feed.py --scale 0.01 --window-s 40

Targets (``--check`` exits 1 on a miss), on this 2-core machine at ``--scale 1``: the writer keeps
up in the busy hour (at most 2 segments, 10 s of feed, behind at the window's end); segment to lake
p95 at most 5 s; run late/early at most 1.3x; a late-day run, process start included, at most 10 s
(median of the last hour's runs); peak RSS of a run at most 1.5 GB; Dagster storage at most 1 GB a
day at the default cadence; compaction of the full day at most 3 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import orjson
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.dagster_storage import storage_bytes  # noqa: E402
from benchmarks.partition_build import (  # noqa: E402  (sets CRYPTO_START_DATE so the partitions reach DAY)
    DAY,
    EVENTS_PER_FRAME,
    LATENCY_NS,
    RESEND_DELAY_NS,
    RESEND_EVERY,
    SEGMENT_AGE_NS,
)
from benchmarks.simulator_rate import START_MS, free_port  # noqa: E402
from benchmarks.summary import Summary, median, peak_rss_bytes, percentile, runs  # noqa: E402
from crypto_platform.lake.decode import merge  # noqa: E402
from crypto_platform.lake.maintenance import MaintenancePolicy, maintain_table  # noqa: E402
from crypto_platform.lake.raw import LANDING_APP_ID, QUOTES, RAW_TABLES, TRADES  # noqa: E402
from crypto_platform.lake.tables import DeltaLake  # noqa: E402
from crypto_platform.lake.writer import lake_of, read_heartbeat, table_lock, write_pass  # noqa: E402
from crypto_platform.local import stack as local_stack  # noqa: E402
from crypto_platform.local.stack import install_instance_config  # noqa: E402
from crypto_platform.resources.stream import build_stream_resource  # noqa: E402
from crypto_platform.sensors import CHECK_AFTER_SEGMENTS  # noqa: E402
from crypto_platform.settings import Settings, child_environment, load_settings  # noqa: E402
from crypto_platform.simulator.market import EXCHANGES, pair_spec  # noqa: E402
from crypto_platform.stream.landing_log import LandingLog  # noqa: E402
from crypto_platform.stream.manifest import LOG_ID_FILE, MANIFEST_FILE, iter_manifest, log_id  # noqa: E402
from crypto_platform.stream.session_ledger import SessionLedger  # noqa: E402
from crypto_platform.stream_batches import StreamCursor, plan_batches  # noqa: E402

TRADES_PER_DAY = 4_000_000
QUOTES_PER_DAY = 17_000_000
PAIRS_AT_FULL_SCALE = 300
MIN_PAIRS = 5
BUSY_HOUR = 14
BUSY_FACTOR = 30
QUIET_HOURS = 23
CHUNK_MIN = 6  # minutes generated at once (the busy hour would not fit in memory at once)
WINDOWS = (("first hour", 0), ("noon", 12), ("busy hour", BUSY_HOUR), ("last hour", 23))
HOUR_NS = 3_600_000_000_000
DAY_START_NS = START_MS * 1_000_000
XAS_DELAY_MS = 1_200  # simulator/feed.py's delivery delays
XA_DELAY_MS = 300
STUCK_RUN_S = 1800
SENSOR_TICK_S = 5.0  # the stream sensor's minimum interval
WRITER_GRACE_S = 60.0  # after a window, how long the writer may take to commit what was released
KEEPS_UP_SEGMENTS = 2

TARGET_P95_S = 5.0
TARGET_RATIO = 1.3
TARGET_LATE_RUN_S = 10.0
TARGET_RSS_BYTES = 1.5e9
TARGET_STORAGE_PER_DAY = 1e9
TARGET_COMPACTION_S = 180.0

# -- the day ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairs:
    names: list[str]
    price: np.ndarray  # typical price
    price_dp: np.ndarray
    size_dp: np.ndarray
    weight: np.ndarray  # share of the feed's events (a few pairs trade most)
    phase: np.ndarray


def make_pairs(n: int) -> Pairs:
    names = [f"C{i:03d}-USD" for i in range(n)]
    specs = [pair_spec(p) for p in names]  # the simulator's price and decimals for an unknown pair
    rank = np.arange(1, n + 1, dtype=np.float64)
    weight = 1.0 / rank**0.8
    return Pairs(
        names,
        np.array([s.price for s in specs]),
        np.array([s.price_dp for s in specs], dtype=np.int64),
        np.array([s.size_dp for s in specs], dtype=np.int64),
        weight / weight.sum(),
        np.random.default_rng(1).uniform(0, 2 * math.pi, n),
    )


def _decimal_parts(units: np.ndarray, dp: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    scale = 10**dp
    return (units // scale).tolist(), dp.tolist(), (units % scale).tolist()


def _prices(pairs: Pairs, idx: np.ndarray, t: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Price in ticks: each pair on a slow wave over the day, plus tick noise."""
    wave = 1.0 + 0.03 * np.sin(2 * math.pi * (t - START_MS) / 86_400_000 + pairs.phase[idx])
    price = pairs.price[idx] * wave * (1.0 + 0.0002 * noise)
    return np.maximum(1, np.rint(price * 10.0 ** pairs.price_dp[idx])).astype(np.int64)


def _sizes(pairs: Pairs, idx: np.ndarray, ticks: np.ndarray, draw: np.ndarray) -> np.ndarray:
    price = ticks / 10.0 ** pairs.price_dp[idx]
    units = np.exp(1.1 * draw) * 2_000.0 * 10.0 ** pairs.size_dp[idx] / price
    return np.maximum(1, np.rint(units)).astype(np.int64)


def chunk_events(
    pairs: Pairs, start: int, span: int, trades: float, quotes: float, rng: np.random.Generator, next_id: int
) -> tuple[np.ndarray, list[str], int, dict[str, int]]:
    """Events of every channel in ``span`` ms from ``start`` (whole minutes): delivery times (ms), their JSON
    texts (unordered) and counts per channel. ``trades`` and ``quotes`` are the expected counts."""
    names = pairs.names
    out_deliver: list[np.ndarray] = []
    texts: list[str] = []
    counts: dict[str, int] = {}

    # XT: Poisson arrivals per pair, uniform in the hour.
    idx = np.repeat(np.arange(len(names)), rng.poisson(trades * pairs.weight))
    n = counts["XT"] = len(idx)
    t = start + rng.integers(0, span, n)
    order = np.lexsort((t, idx))
    idx, t = idx[order], t[order]
    ticks = _prices(pairs, idx, t, rng.standard_normal(n))
    sizes = _sizes(pairs, idx, ticks, rng.standard_normal(n))
    side = np.where(rng.random(n) < 0.5, 2, 1)
    exchange = np.asarray(EXCHANGES)[rng.choice(len(EXCHANGES), n, p=[0.45, 0.25, 0.2, 0.1])]
    received = t + 5 + rng.integers(0, 36, n)
    ids = range(next_id, next_id + n)
    pq_, pdp, pr = _decimal_parts(ticks, pairs.price_dp[idx])
    sq, sdp, sr = _decimal_parts(sizes, pairs.size_dp[idx])
    fmt = '{"ev":"XT","pair":"%s","p":%d.%0*d,"t":%d,"s":%d.%0*d,"c":[%d],"i":"%d","x":%d,"r":%d}'
    texts += [
        fmt % row
        for row in zip(
            [names[i] for i in idx.tolist()],
            pq_,
            pdp,
            pr,
            t.tolist(),
            sq,
            sdp,
            sr,
            side.tolist(),
            ids,
            exchange.tolist(),
            received.tolist(),
            strict=True,
        )
    ]
    out_deliver.append(t)

    # XAS per pair and second with trades, XA per pair and minute with trades (from the trades above).
    for channel, width, delay in (("XAS", 1_000, XAS_DELAY_MS), ("XA", 60_000, XA_DELAY_MS)):
        key = idx * 10**9 + (t - start) // width
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if n else np.zeros(0, dtype=np.int64)
        if not len(first):
            continue
        last = np.r_[first[1:], n] - 1
        counts[channel] = len(first)
        bar_idx = idx[first]
        bar_start = start + ((t[first] - start) // width) * width
        count = np.diff(np.r_[first, n])
        high = np.maximum.reduceat(ticks, first)
        low = np.minimum.reduceat(ticks, first)
        volume = np.add.reduceat(sizes, first)
        pv = np.add.reduceat(ticks.astype(np.float64) * sizes, first)
        dp = pairs.price_dp[bar_idx]
        vwap = pv / volume / 10.0**dp
        z = np.maximum(1, np.rint(volume / count)).astype(np.int64)
        o_ = _decimal_parts(ticks[first], dp)
        c_ = _decimal_parts(ticks[last], dp)
        h_ = _decimal_parts(high, dp)
        l_ = _decimal_parts(low, dp)
        sdp_ = pairs.size_dp[bar_idx]
        v_ = _decimal_parts(volume, sdp_)
        z_ = _decimal_parts(z, sdp_)
        fmt = (
            '{"ev":"%s","pair":"%s","v":%d.%0*d,"vw":%.*f,"z":%d.%0*d,"o":%d.%0*d,"c":%d.%0*d,'
            '"h":%d.%0*d,"l":%d.%0*d,"s":%d,"e":%d}'
        )
        starts = bar_start.tolist()
        texts += [
            fmt % (channel, names[p], *v, vdp + 4, vw, *zz, *o, *c, *h, *lo, s, s + width)
            for p, *v, vdp, vw, zz, o, c, h, lo, s in zip(
                bar_idx.tolist(),
                v_[0],
                v_[1],
                v_[2],
                dp.tolist(),
                vwap.tolist(),
                zip(*z_, strict=True),
                zip(*o_, strict=True),
                zip(*c_, strict=True),
                zip(*h_, strict=True),
                zip(*l_, strict=True),
                starts,
                strict=True,
            )
        ]
        out_deliver.append(bar_start + width - 1_000 + delay if channel == "XAS" else bar_start + width + delay)

    # XQ: the best bid and offer, updated on its own Poisson arrivals.
    qidx = np.repeat(np.arange(len(names)), rng.poisson(quotes * pairs.weight))
    m = counts["XQ"] = len(qidx)
    qt = start + rng.integers(0, span, m)
    mid = _prices(pairs, qidx, qt, rng.standard_normal(m))
    spread = np.maximum(1, np.rint(mid * 0.00008)).astype(np.int64)
    bid = np.maximum(1, mid - spread // 2)
    ask = bid + spread
    qsize = _sizes(pairs, qidx, mid, rng.standard_normal((2, m)))
    qx = np.asarray(EXCHANGES)[rng.choice(len(EXCHANGES), m, p=[0.45, 0.25, 0.2, 0.1])]
    qr = qt + 5 + rng.integers(0, 36, m)
    dp = pairs.price_dp[qidx]
    sdp = pairs.size_dp[qidx]
    fmt = (
        '{"ev":"XQ","pair":"%s","lp":0,"ls":0,"bp":%d.%0*d,"bs":%d.%0*d,"ap":%d.%0*d,"as":%d.%0*d,"t":%d,"x":%d,"r":%d}'
    )
    texts += [
        fmt % (names[p], *b, *bs, *a, *as_, tt, x, r)
        for p, b, bs, a, as_, tt, x, r in zip(
            qidx.tolist(),
            zip(*_decimal_parts(bid, dp), strict=True),
            zip(*_decimal_parts(qsize[0], sdp), strict=True),
            zip(*_decimal_parts(ask, dp), strict=True),
            zip(*_decimal_parts(qsize[1], sdp), strict=True),
            qt.tolist(),
            qx.tolist(),
            qr.tolist(),
            strict=True,
        )
    ]
    out_deliver.append(qt)
    return np.concatenate(out_deliver), texts, next_id + n, counts


@dataclass
class Day:
    landing: Path
    scale: float
    pairs: int
    events: dict[str, int]
    segments: int
    bytes: int
    generate_s: float

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "landing": str(self.landing)}


def generate(cache: Path, scale: float) -> Day:
    """The day's landing log in ``cache/landing``, landed as the ingester lands frames."""
    started = time.perf_counter()
    landing = cache / "landing"
    shutil.rmtree(cache, ignore_errors=True)
    landing.mkdir(parents=True)
    pairs = make_pairs(max(MIN_PAIRS, round(PAIRS_AT_FULL_SCALE * scale)))
    rng = np.random.default_rng(11)
    per_hour = scale / (QUIET_HOURS + BUSY_FACTOR)  # of the day's events, in a quiet hour
    log = LandingLog(landing, fsync="never", sealer="process")  # as the ingester: sealing beside the reader
    log.open()
    ledger = SessionLedger(landing / "sessions.ndjson")
    session = ledger.new_session()
    ledger.record(session, "connect", DAY_START_NS, url="ws://127.0.0.1/crypto")
    resend: deque[tuple[int, bytes]] = deque()
    counts: dict[str, int] = {}
    frames, seal_at, last_ns, next_id = 0, None, DAY_START_NS, 1
    for chunk in range(24 * 60 // CHUNK_MIN):
        hour = chunk * CHUNK_MIN // 60
        share = per_hour * (BUSY_FACTOR if hour == BUSY_HOUR else 1) * CHUNK_MIN / 60
        start = START_MS + chunk * CHUNK_MIN * 60_000
        deliver, texts, next_id, chunk_counts = chunk_events(
            pairs, start, CHUNK_MIN * 60_000, TRADES_PER_DAY * share, QUOTES_PER_DAY * share, rng, next_id
        )
        for channel, n in chunk_counts.items():
            counts[channel] = counts.get(channel, 0) + n
        order = np.argsort(deliver, kind="stable")
        deliver = deliver[order]
        ordered = [texts[i] for i in order.tolist()]
        del texts
        recv_of_frame = deliver[EVENTS_PER_FRAME - 1 :: EVENTS_PER_FRAME].tolist()
        if len(deliver) % EVENTS_PER_FRAME:
            recv_of_frame.append(int(deliver[-1]))
        for k, i in enumerate(range(0, len(ordered), EVENTS_PER_FRAME)):
            recv_ns = max(last_ns + 1, recv_of_frame[k] * 1_000_000 + LATENCY_NS)
            while resend and resend[0][0] <= recv_ns:
                last_ns = _land(log, session, last_ns, *resend.popleft())
            if seal_at is None:
                seal_at = recv_ns + SEGMENT_AGE_NS
            elif recv_ns >= seal_at:
                log.seal()
                seal_at = recv_ns + SEGMENT_AGE_NS
            frame = ("[" + ",".join(ordered[i : i + EVENTS_PER_FRAME]) + "]").encode()
            last_ns = _land(log, session, last_ns, recv_ns, frame)
            frames += 1
            if frames == 1:
                ledger.record(session, "first_frame", recv_ns)
            if frames % RESEND_EVERY == 0:
                resend.append((recv_ns + RESEND_DELAY_NS, frame))
        if (chunk + 1) * CHUNK_MIN % 60 == 0:
            done = sum(counts.values())
            print(
                f"  landed through hour {hour:2d}: {done:,} events ({time.perf_counter() - started:.0f} s)", flush=True
            )
    for recv_ns, frame in resend:
        last_ns = _land(log, session, last_ns, recv_ns, frame)
    log.close()
    ledger.close()  # the session stays open, as mid-day
    entries = list(iter_manifest(landing))
    day = Day(
        landing,
        scale,
        len(pairs.names),
        counts,
        len(entries),
        sum(int(e["bytes"]) for e in entries),
        time.perf_counter() - started,
    )
    (cache / "day.json").write_text(json.dumps(day.to_json()))
    return day


def _land(log: LandingLog, session: int, last_ns: int, recv_ns: int, frame: bytes) -> int:
    recv_ns = max(recv_ns, last_ns + 1)
    log.append(recv_ns, session, frame)
    return recv_ns


def cached_day(cache: Path, scale: float) -> Day | None:
    try:
        data = json.loads((cache / "day.json").read_text())
    except FileNotFoundError:
        return None
    if data["scale"] != scale:
        return None
    data["landing"] = Path(data["landing"])
    return Day(**data)


def measure_simulator(events: int = 200_000) -> float:
    """Events/s of partition_build.land (the simulator's Market and Renderer) on this machine."""
    from benchmarks.partition_build import land

    with tempfile.TemporaryDirectory(prefix="full-feed-sim-") as tmp:
        started = time.perf_counter()
        landed = land(Path(tmp), events, trades_per_second=50)
        return landed.events / (time.perf_counter() - started)


# -- the drive -------------------------------------------------------------------------------------


@dataclass
class Run:
    segments: str
    events: int
    process_s: float
    run_s: float
    rss_bytes: int
    storage_bytes: int
    started: float
    steps: dict[str, float] = field(default_factory=dict)  # step key -> seconds


def slowest_steps(runs_: list[Run], top: int = 6) -> str:
    """The steps that take longest in these runs, by their median time: where a round's time goes."""
    keys = {k for r in runs_ for k in r.steps}
    medians = {k: median(r.steps.get(k, 0.0) for r in runs_) for k in keys}
    ranked = sorted(medians.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{k} {v:.2f}" for k, v in ranked) or "none"


@dataclass
class Window:
    name: str
    hour: int
    released: dict[int, float] = field(default_factory=dict)  # seq -> wall time of its manifest line
    runs: list[Run] = field(default_factory=list)
    backlog_at_end: int = 0
    latency: dict[int, float] = field(default_factory=dict)  # seq -> seconds (inf: not in the lake)
    writer_rss_bytes: int = 0


class Landing:
    """The drive's landing log: every segment on disk, announced by appending its manifest line."""

    def __init__(self, cache: Path, landing: Path) -> None:
        self.entries = list(iter_manifest(cache))
        self.by_seq = {int(e["seq"]): e for e in self.entries}
        landing.mkdir(parents=True)
        (landing / "segments").mkdir()
        for name in (LOG_ID_FILE, "sessions.ndjson"):
            shutil.copy2(cache / name, landing / name)
        for entry in self.entries:
            src, dst = cache / entry["file"], landing / entry["file"]
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        self.root = landing
        self.manifest = open(landing / MANIFEST_FILE, "ab", buffering=0)  # noqa: SIM115  (closed in close())
        self.released = 0

    def release(self, seqs: list[int]) -> float:
        """Announce these segments (in order) as the sealer does; returns the wall time of the write."""
        now = time.time()
        lines = []
        for seq in seqs:
            entry = dict(self.by_seq[seq])
            entry["sealed_ns"] = int(now * 1e9)
            lines.append(orjson.dumps(entry) + b"\n")
        self.manifest.write(b"".join(lines))
        if seqs:
            self.released = seqs[-1]
        return now

    def seqs_before(self, recv_ns: int) -> list[int]:
        """Unreleased segments whose frames start before ``recv_ns``."""
        return [s for s, e in self.by_seq.items() if s > self.released and int(e["recv_first_ns"]) < recv_ns]

    def close(self) -> None:
        self.manifest.close()


class Cadence:
    """The stream sensor's launching, without its daemon: one run per day touched, at most every interval."""

    def __init__(
        self, env: dict[str, str], landing: Path, interval_s: float, max_segments: int, lake: DeltaLake
    ) -> None:
        self.env = env
        self.landing = landing
        self.lake = lake
        # The lake checks join one round per CHECK_INTERVAL_S, over every segment since the last.
        self.checked_at = float("-inf")
        self.checked_seq = 0
        self.interval_s = interval_s
        self.max_segments = max_segments
        self.log = log_id(landing) or ""
        self.cursor = StreamCursor(self.log, 0)
        self.home = Path(env["DAGSTER_HOME"])
        self.error: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # the run process in flight

    def kill(self) -> None:
        """Stop the run process in flight, if any (clean-up after a failure elsewhere)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def tick(self) -> list[Run]:
        # As the sensor does while the lake writer runs: a round takes the segments the writer appended.
        through = min((self.lake.watermark(name, LANDING_APP_ID) or 0) for name in RAW_TABLES)
        entries = [e for e in iter_manifest(self.landing, after_seq=self.cursor.seq) if int(e["seq"]) <= through]
        batches, self.cursor = plan_batches(entries, self.cursor, self.log, self.max_segments)
        # As the sensor: checks are due by time, or once a round would leave many segments unchecked.
        unchecked = (batches[-1].last_seq if batches else self.checked_seq) - self.checked_seq
        checked = time.monotonic() - self.checked_at >= CHECK_INTERVAL_S or unchecked >= CHECK_AFTER_SEGMENTS
        runs = []
        for b in batches:
            checked_range = f"{min(self.checked_seq + 1, b.first_seq)}-{b.last_seq}" if checked else None
            runs.append(self.run(b.segment_range, b.day, ",".join(sorted(b.channels)), b.events, checked_range))
        if batches and checked:
            self.checked_at, self.checked_seq = time.monotonic(), self.cursor.seq
        return runs

    def run(self, segments: str, day: str, channels: str, events: int, checked: str | None = None) -> Run:
        """One stream_batch round in a fresh process, as late_day_batch's Runner launches it (with the
        lake checks and the Snowflake copies when ``checked`` gives the segments to check)."""
        before = storage_bytes(self.home)
        started_wall = time.time()
        started = time.perf_counter()
        command = [sys.executable, "-m", "benchmarks.late_day_batch", "--run-one", segments, day, channels, self.log]
        if checked:
            command.append(checked)
        with tempfile.TemporaryFile() as out:
            proc = self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            try:
                _, status, _ = os.wait4(proc.pid, 0)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - started
            out.seek(0)
            text = out.read().decode(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith('{"run_id"')]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"the stream_batch run of segments {segments} failed:\n{text[-4000:]}")
        said = json.loads(lines[-1])
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            stats = instance.get_run_stats(said["run_id"])
            steps = {
                s.step_key: (s.end_time or 0) - (s.start_time or 0) for s in instance.get_run_step_stats(said["run_id"])
            }
        return Run(
            segments,
            events,
            wall,
            (stats.end_time or 0) - (stats.start_time or 0),
            said["peak_rss_bytes"],  # the run process's own peak (VmHWM), not ru_maxrss (see peak_rss_bytes)
            storage_bytes(self.home) - before,
            started_wall,
            steps,
        )

    def loop(self, stop: threading.Event, into: list[Run]) -> None:
        """Until ``stop``: a round every interval (a run in flight holds the next round back, as in the sensor;
        the interval counts from a round's launch)."""
        try:
            while not stop.is_set():
                launched = time.monotonic()
                done = self.tick()
                into.extend(done)
                # Nothing new: the sensor looks again at its next tick (every 5 s); else after the interval.
                wait = self.interval_s if done else SENSOR_TICK_S
                stop.wait(max(0.0, launched + wait - time.monotonic()))
        except Exception as exc:  # reported by the main thread
            self.error = str(exc)


class Writer:
    """The real lake writer, ``crypto-platform lake-writer``, in a process of its own."""

    def __init__(self, env: dict[str, str], settings: Settings, log: Path) -> None:
        self.settings = settings
        self.out = open(log, "ab")  # noqa: SIM115  (closed in stop())
        started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crypto_platform.cli", "lake-writer"],
            cwd=ROOT,
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while True:  # ready once it wrote a heartbeat after its start
            beat = read_heartbeat(settings)
            if beat and beat.get("pid") == self.proc.pid and beat.get("ts", 0) >= started:
                break
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the lake writer did not start within 120 s:\n{tail}")
            time.sleep(0.1)

    def rss_bytes(self) -> int:
        return peak_rss_bytes(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it finishes its pass
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


# CRYPTO_CHECK_INTERVAL_S and CRYPTO_SNOWFLAKE_INTERVAL_S defaults: one round in ten at 30 s.
CHECK_INTERVAL_S = 300.0
RAW_OF_DAY = sorted(name for name, spec in RAW_TABLES.items() if spec.channels & {"XT", "XQ", "XA", "XAS"})


def watermark(lake: DeltaLake) -> int:
    """Segments every raw table of the day's channels holds."""
    return min((lake.watermark(name, LANDING_APP_ID) or 0) for name in RAW_OF_DAY)


def commit_times(lake_dir: Path, since: float) -> dict[str, list[tuple[int, float]]]:
    """Per raw table, (landing watermark, commit time) of each commit since ``since``, from the Delta log."""
    out: dict[str, list[tuple[int, float]]] = {}
    for name in RAW_OF_DAY:
        commits = []
        for path in sorted((lake_dir / name / "_delta_log").glob("*.json")):
            if path.stat().st_mtime < since - 5:
                continue
            version, ts = None, None
            for line in path.read_bytes().splitlines():
                action = orjson.loads(line)
                txn = action.get("txn")
                if txn and txn.get("appId") == LANDING_APP_ID:
                    version = int(txn["version"])
                info = action.get("commitInfo")
                if info and "timestamp" in info:
                    ts = info["timestamp"] / 1000
            if version is not None and ts is not None:
                commits.append((version, ts))
        out[name] = sorted(commits, key=lambda c: c[1])
    return out


def latencies(released: dict[int, float], commits: dict[str, list[tuple[int, float]]]) -> dict[int, float]:
    """Seconds from each segment's release to the commit that put it in the last of the raw tables."""
    out = {}
    for seq, at in released.items():
        done = 0.0
        for table in commits.values():
            when = next((ts for version, ts in table if version >= seq), math.inf)
            done = max(done, when)
        out[seq] = done - at
    return out


def old_layout_batch(landing: Path, lake: DeltaLake, entry: dict[str, Any], work: Path) -> float:
    """The previous layout's batch (lake_append.old_layout_batch) with the day in a Parquet file of its own:
    read the day's file, decode the segment, merge, rewrite the file; for raw_trades and raw_quotes."""
    files = {}
    for spec in (TRADES, QUOTES):
        files[spec.name] = work / f"old-{spec.name}.parquet"
        pq.write_table(lake.read(spec.name, DAY), files[spec.name])  # the day as that layout held it
    started = time.perf_counter()
    for spec in (TRADES, QUOTES):
        day = pq.read_table(files[spec.name])
        decoded = spec.decode(landing, [entry], DAY)
        merged, _ = merge(decoded, day, spec.schema, spec.key, spec.order, spec.finish)
        pq.write_table(merged, files[spec.name])
    seconds = time.perf_counter() - started
    for path in files.values():
        path.unlink()
    return seconds


def run_main(args: argparse.Namespace) -> int:
    summary = Summary(
        "full_feed",
        f"scale {args.scale:g} of the whole feed (4M XT + 17M XQ over 300 pairs at 1), one busy hour at "
        f"{BUSY_FACTOR}x; windows of {args.window_s:g} s wall time; stream_batch at the default cadence, "
        "a fresh process per run, on a real instance",
    )
    phases: dict[str, float] = {}
    own_cache = args.work is None
    cache_root = Path(tempfile.mkdtemp(prefix="full-feed-cache-")) if own_cache else args.work
    cache = cache_root / f"landing-scale-{args.scale:g}"
    tmp = Path(tempfile.mkdtemp(prefix="full-feed-"))
    services: list[Any] = []
    writer: Writer | None = None
    landing_handle: Landing | None = None
    cadence: Cadence | None = None
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        started = time.perf_counter()
        day = cached_day(cache, args.scale) if args.reuse else None
        reused = day is not None
        if day is None:
            print(f"generating the day at scale {args.scale:g} in {cache}", flush=True)
            day = generate(cache, args.scale)
        phases["generate" + (" (reused)" if reused else "")] = time.perf_counter() - started
        total_events = sum(day.events.values())

        home = tmp / "dagster_home"
        install_instance_config(load_settings({}, cwd=ROOT), home)
        pairs = make_pairs(day.pairs).names
        overrides = {
            "CRYPTO_PROJECT_DIR": str(ROOT),
            "CRYPTO_STATE_DIR": str(tmp / "state"),
            "CRYPTO_DATA_DIR": str(tmp / "state" / "data"),
            "DAGSTER_HOME": str(home),
            "CRYPTO_FAKESNOW_PORT": str(free_port()),
            "CRYPTO_SIMULATOR_PORT": str(free_port()),
            "CRYPTO_SIMULATOR_S3_PORT": str(free_port()),
            "CRYPTO_PAIRS": ",".join(pairs),  # gap repair asks the simulator for the day's pairs
            "CRYPTO_START_DATE": DAY,
            "CRYPTO_INGESTER_AUTOSTART": "false",
        }
        if args.mysql_url:
            overrides["MYSQL_URL"] = args.mysql_url
        env = child_environment(overrides)
        if not args.mysql_url:
            env.pop("MYSQL_URL", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        settings = load_settings(env, cwd=ROOT)
        paths = local_stack.stack_paths(settings)
        started = time.perf_counter()
        wanted = [local_stack.simulator_service(settings)]
        if settings.snowflake.local:
            wanted.append(local_stack.fakesnow_service(settings))
        for service in wanted:
            local_stack.start_service(service, paths, env, ready_timeout=120)
            services.append(service)
        phases["services"] = time.perf_counter() - started

        landing = settings.landing_dir
        landing_handle = Landing(day.landing, landing)
        lake = lake_of(settings)
        lake_dir = Path(settings.lake_url)
        # The sensor hands at most this many segments to one round (a backlog becomes several runs).
        max_segments = build_stream_resource(settings).max_segments_per_tick
        cadence = Cadence(env, landing, settings.batch_interval_s, max_segments, lake)
        windows: list[Window] = []
        # (segments, events, write_pass s, runs s, runs) per catch-up
        catch_up: list[tuple[int, int, float, float, list[Run]]] = []
        baseline: dict[str, float] = {}

        def bulk(until_ns: int, phase: str) -> None:
            """Release everything sealed before ``until_ns``; the writer's bulk pass, then the runs over it."""
            assert landing_handle is not None
            seqs = landing_handle.seqs_before(until_ns)
            if not seqs:
                return
            step = args.catch_up_segments or len(seqs)
            started = time.perf_counter()
            for i in range(0, len(seqs), step):
                landing_handle.release(seqs[i : i + step])
                write_pass(lake, landing, lambda t: table_lock(settings, t))
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            done: list[Run] = []
            while cadence.cursor.seq < landing_handle.released:  # the sensor's rounds, back to back
                done += cadence.tick()
            run_s = time.perf_counter() - started
            events = sum(int(landing_handle.by_seq[s]["events"]) for s in seqs)
            catch_up.append((len(seqs), events, seconds, run_s, done))
            phases[phase] = phases.get(phase, 0.0) + seconds + run_s

        def baseline_batch(what: str) -> None:
            assert landing_handle is not None
            following = landing_handle.released + 1
            if following in landing_handle.by_seq:
                baseline[what] = old_layout_batch(landing, lake, landing_handle.by_seq[following], tmp)

        for name, hour in WINDOWS:
            hour_ns = DAY_START_NS + hour * HOUR_NS
            bulk(hour_ns, "catch-up (bulk write_pass + runs)")
            window = Window(name, hour)
            started = time.perf_counter()
            writer = Writer(env, settings, tmp / "writer.log")
            stop.clear()
            thread = threading.Thread(target=cadence.loop, args=(stop, window.runs), daemon=True)
            t0 = time.time()
            thread.start()
            end_ns = hour_ns + int(args.window_s * 1e9)
            pending = [s for s in landing_handle.seqs_before(end_ns)]
            for seq in pending:
                entry = landing_handle.by_seq[seq]
                due = t0 + (int(entry["recv_last_ns"]) - hour_ns) / 1e9
                time.sleep(max(0.0, due - time.time()))
                window.released[seq] = landing_handle.release([seq])
            time.sleep(max(0.0, t0 + args.window_s - time.time()))
            window.backlog_at_end = landing_handle.released - watermark(lake)
            stop.set()
            thread.join(timeout=STUCK_RUN_S)
            if cadence.error:
                raise RuntimeError(cadence.error)
            deadline = time.time() + WRITER_GRACE_S
            while watermark(lake) < landing_handle.released and time.time() < deadline:
                time.sleep(0.2)
            window.writer_rss_bytes = writer.rss_bytes()
            writer.stop()
            writer = None
            window.latency = latencies(window.released, commit_times(lake_dir, t0))
            windows.append(window)
            phases[f"window: {name}"] = time.perf_counter() - started
            print(
                f"  {name}: {len(window.released)} segments released, {len(window.runs)} runs, "
                f"backlog at the end {window.backlog_at_end}",
                flush=True,
            )
            if name in ("first hour", "last hour"):  # the next segment, not in the lake yet
                started = time.perf_counter()
                what = "early" if name == "first hour" else "late"
                baseline_batch(what)
                phases[f"baseline {what}"] = time.perf_counter() - started
        bulk(DAY_START_NS + 25 * HOUR_NS, "catch-up (bulk write_pass + runs)")

        started = time.perf_counter()
        policy = MaintenancePolicy(
            settings.lake_target_file_mb, settings.lake_closed_after_s, settings.lake_vacuum_retention_h
        )
        tables = sorted(p.parent.name for p in lake_dir.glob("*/_delta_log"))
        files_before = {t: len(list((lake_dir / t).rglob("*.parquet"))) for t in tables}
        reports = [maintain_table(t, str(lake_dir / t), {}, policy) for t in tables]
        compaction_s = time.perf_counter() - started
        phases["compaction"] = compaction_s
        rows = {t: lake.count(t, DAY) for t in tables}
    finally:
        stop.set()
        if cadence is not None:
            cadence.kill()
        if thread is not None:
            thread.join(timeout=60)
        if writer is not None:
            writer.stop()
        if landing_handle is not None:
            landing_handle.close()
        for service in services:
            with contextlib.suppress(Exception):
                local_stack.stop_service(service, paths)
        shutil.rmtree(tmp, ignore_errors=True)
        if own_cache:
            shutil.rmtree(cache_root, ignore_errors=True)

    # -- the report ----------------------------------------------------------------------------------
    mysql = "MariaDB/MySQL (--mysql-url)" if args.mysql_url else "SQLite stand-in"
    summary.line(
        f"the day {DAY}: {total_events:,} events ({', '.join(f'{c} {n:,}' for c, n in sorted(day.events.items()))}) "
        f"over {day.pairs} pairs in {day.segments:,} segments, {day.bytes / 1e9:.2f} GB of landing log, generated "
        f"in {day.generate_s:.0f} s ({total_events / day.generate_s:,.0f} events/s{', reused' if reused else ''}); "
        f"SQL copies on the {mysql}"
    )
    summary.line(f"lake rows at the end: {rows}")
    if catch_up:
        seg, ev, sec = (sum(x[i] for x in catch_up) for i in range(3))
        step = f"{args.catch_up_segments} segments a pass" if args.catch_up_segments else "one pass each"
        summary.line(
            f"catch-up between windows, bulk write_pass ({step}): {ev:,} events in {seg:,} segments, {sec:.1f} s = "
            f"{ev / sec:,.0f} events/s; then the sensor's rounds over them (at most {max_segments} segments a run)"
        )
        for seg, ev, sec, run_s, done in catch_up:
            summary.line(
                f"  {seg:,} segments, {ev:,} events: write_pass {sec:.1f} s ({ev / sec:,.0f} events/s); "
                f"{len(done)} runs in {run_s:.0f} s, process {runs([r.process_s for r in done], '.0f')} s, "
                f"peak RSS {max((r.rss_bytes for r in done), default=0) / 1e6:.0f} MB"
            )
    every = {seq: lat for w in windows for seq, lat in w.latency.items()}
    missing = sorted(seq for seq, lat in every.items() if math.isinf(lat))
    finite = [lat for lat in every.values() if not math.isinf(lat)]
    p95 = percentile(every.values(), 95)
    summary.line(
        f"segment sealed -> lake commit, {len(every)} segments released in the windows: "
        f"p50 {percentile(every.values(), 50):.2f} s, p95 {p95:.2f} s, "
        f"max {max(every.values(), default=math.nan):.2f} s; "
        f"not in the lake when the writer stopped: {len(missing)}" + (f" (segments {missing[:10]})" if missing else "")
    )
    if finite and missing:
        summary.line(f"  (over the committed ones only: max {max(finite):.2f} s)")
    summary.line(
        "window        segments  p50 s  p95 s  backlog  runs  run process s (median, all)    run s   peak RSS MB"
    )
    for w in windows:
        lat = list(w.latency.values())
        proc = [r.process_s for r in w.runs]
        summary.line(
            f"{w.name:<12} {len(w.released):>9} {percentile(lat, 50):>6.2f} {percentile(lat, 95):>6.2f} "
            f"{w.backlog_at_end:>8} {len(w.runs):>5}  {median(proc) if proc else math.nan:>6.2f} "
            f"({runs(proc, '.1f')})  {median(r.run_s for r in w.runs) if w.runs else math.nan:>6.2f} "
            f"{max((r.rss_bytes for r in w.runs), default=0) / 1e6:>8.0f}"
        )
        summary.line(
            f"{'':13}writer peak RSS {w.writer_rss_bytes / 1e6:.0f} MB; "
            f"events per run {runs([r.events for r in w.runs])}"
        )
        summary.line(f"{'':13}slowest steps (median s): {slowest_steps(w.runs)}")
    by_name = {w.name: w for w in windows}
    first, last, busy = by_name["first hour"], by_name["last hour"], by_name["busy hour"]
    all_runs = [r for w in windows for r in w.runs]
    ratio = (
        median(r.process_s for r in last.runs) / median(r.process_s for r in first.runs)
        if first.runs and last.runs
        else math.nan
    )
    late_run = median(r.process_s for r in last.runs) if last.runs else math.nan
    summary.line(f"run late/early (last hour / first hour, process medians): {ratio:.2f}x")
    per_run = median(r.storage_bytes for r in all_runs[1:] or all_runs) if all_runs else math.nan
    runs_per_day = 86_400 / settings.batch_interval_s if settings.batch_interval_s else math.inf
    storage_day = per_run * runs_per_day
    landing_day = day.bytes
    summary.line(
        f"cadence {settings.batch_interval_s:g} s: {runs_per_day:,.0f} runs a day; "
        f"Dagster storage {per_run / 1e3:,.0f} kB "
        f"a run (median DAGSTER_HOME growth), {storage_day / 1e9:.2f} GB a day, beside {landing_day / 1e9:.2f} GB "
        f"of landing log a day (at this scale; x{1 / args.scale:g} at full scale)"
    )
    summary.line(
        f"compaction of the full day: {compaction_s:.1f} s over {len(tables)} tables "
        f"({sum(files_before.values()):,} files before; live, the writer leaves about one file per table per pass, "
        f"up to {day.segments:,} a day, and the catch-up here fewer; "
        + ", ".join(f"{r.table} {r.files_removed}->{r.files_added}" for r in reports)
        + ")"
    )
    new_late = median(r.process_s for r in last.runs) if last.runs else math.nan
    summary.line(
        "baseline, previous layout (read the day's Parquet file, merge one segment, rewrite it; trades and "
        f"quotes): early {baseline.get('early', math.nan):.2f} s, late {baseline.get('late', math.nan):.2f} s "
        f"(late/early {baseline.get('late', math.nan) / baseline.get('early', math.nan):.1f}x); one batch per segment "
        f"means {86_400 / 5:,.0f} of them a day, against {runs_per_day:,.0f} runs of ~{new_late:.1f} s"
    )
    summary.line("phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    summary.target(
        "writer keeps up in the busy hour",
        busy.backlog_at_end <= KEEPS_UP_SEGMENTS,
        f"{busy.backlog_at_end} segments behind at the window's end, <= {KEEPS_UP_SEGMENTS}",
    )
    summary.target(f"segment -> lake p95 <= {TARGET_P95_S:g} s", p95 <= TARGET_P95_S, f"{p95:.2f} s")
    summary.target(f"run late/early <= {TARGET_RATIO}x", ratio <= TARGET_RATIO, f"{ratio:.2f}x")
    summary.target(
        f"late-day run incl. process start <= {TARGET_LATE_RUN_S:g} s",
        late_run <= TARGET_LATE_RUN_S,
        f"median {late_run:.2f} s, max {max((r.process_s for r in last.runs), default=math.nan):.2f} s",
    )
    peak = max((r.rss_bytes for r in all_runs), default=0)
    summary.target("peak RSS of a run <= 1.5 GB", bool(all_runs) and peak <= TARGET_RSS_BYTES, f"{peak / 1e9:.2f} GB")
    summary.target(
        "Dagster storage <= 1 GB/day at the default cadence",
        storage_day <= TARGET_STORAGE_PER_DAY,
        f"{storage_day / 1e9:.2f} GB/day",
    )
    summary.target(
        f"compaction of a full day <= {TARGET_COMPACTION_S:g} s",
        compaction_s <= TARGET_COMPACTION_S,
        f"{compaction_s:.1f} s",
    )
    if args.scale < 1:
        summary.line(
            f"note: at --scale {args.scale:g} the targets are checked on a day "
            f"{1 / args.scale:g}x smaller than the feed"
        )
    return summary.finish(check=args.check)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="of the whole feed's events (0.01 for a quick try)")
    parser.add_argument("--window-s", type=float, default=120.0, help="wall seconds measured in each window")
    parser.add_argument(
        "--work", type=Path, help="keep the generated landing log here (default: a temporary directory)"
    )
    parser.add_argument("--reuse", action="store_true", help="take the landing log from --work when it is there")
    parser.add_argument(
        "--catch-up-segments",
        type=int,
        default=0,
        help="segments per bulk write_pass between windows (default: all in one; the writer live commits one per "
        "segment, so a smaller number leaves the day in more files for compaction, as production does)",
    )
    parser.add_argument("--mysql-url", help="MariaDB/MySQL URL of a database for this run (default: the SQL stand-in)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--measure-simulator", action="store_true", help="only print the simulator's events/s")
    args = parser.parse_args()
    if args.measure_simulator:
        print(f"simulator (Market + Renderer + LandingLog): {measure_simulator():,.0f} events/s")
        return 0
    if args.reuse and args.work is None:
        parser.error("--reuse needs --work")
    return run_main(args)


if __name__ == "__main__":
    sys.exit(main())
