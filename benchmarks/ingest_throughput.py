"""How fast the ingester lands a full-speed feed, next to the official client on the same stream.

Three processes on loopback: the simulator (``crypto-platform simulate --rate 0 --prerender``: the N
events, 10 a frame, the realistic XT/XQ/XA/XAS mix over 5 pairs, generated before it listens so
generation does not pace the measurement), the ingester
(``crypto-platform stream``, its own data directory, with its sealer process), and this script,
which watches the landing log and the ingester's memory. Then, on a fresh simulator with the same stream, the official
``polygon.WebSocketClient`` in parsed mode (the models built, nothing stored) in its own process.

Reported per repeat and as medians: events/s landed (first to last receive time in the manifest;
a run ends once every event is in a sealed segment, which may be after the last frame arrived),
zero loss against the simulator's counters, the official client's rate and the ratio, and the
ingester's RSS (with its sealer process) at 10%, 50% and 100% of the run (flat memory over a long
run: ``--events 10000000``).

    python benchmarks/ingest_throughput.py [--events 2000000] [--repeats 3] [--check]

Targets (issue "Stream ingestion"): >= 250,000 events/s landed, >= 3.5x the official client's parsed
rate, RSS at the end within 1.25x (+32 MiB) of RSS at 10%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.simulator_rate import PAIRS, free_port, simulator_command, wait_listening  # noqa: E402
from crypto_platform.stream.landing_log import iter_lines, iter_manifest  # noqa: E402

TARGET_EVENTS_PER_S = 250_000
TARGET_RATIO = 3.5


def simulator(port: int, events: int) -> subprocess.Popen[bytes]:
    cmd = simulator_command(port, total_events=events, prerender=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_listening(port, proc, timeout=max(60.0, events / 20_000))  # it generates the stream first
    return proc


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (the ingester's sealer), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def rss_mib(pid: int) -> float:
    """RSS of the ingester and its sealer process together."""
    total = 0.0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def landed(landing: Path) -> tuple[int, int | None, int | None]:
    """Data events in sealed segments, and the first and last receive times."""
    total, first, last = 0, None, None
    for entry in iter_manifest(landing):
        for day in entry["days"].values():
            total += sum(v["events"] for ch, v in day.items() if ch != "status")
        first = entry["recv_first_ns"] if first is None else min(first, entry["recv_first_ns"])
        last = entry["recv_last_ns"] if last is None else max(last, entry["recv_last_ns"])
    return total, first, last


def run_ingester(events: int) -> dict[str, object]:
    port = free_port()
    sim = simulator(port, events)
    state = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    env = {
        **os.environ,
        "CRYPTO_STATE_DIR": str(state),
        "CRYPTO_SIMULATOR_PORT": str(port),
        "CRYPTO_PAIRS": PAIRS,
        "CRYPTO_SEGMENT_MAX_AGE_S": "1",
        "CRYPTO_FSYNC": "seal",
    }
    ing = subprocess.Popen(
        [sys.executable, "-m", "crypto_platform.cli", "stream"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    landing = state / "data" / "landing"
    rss: dict[int, float] = {}
    try:
        deadline = time.monotonic() + max(120, events / 20_000)
        while True:
            n, _, _ = landed(landing) if (landing / "manifest.ndjson").exists() else (0, None, None)
            for pct in (10, 50):
                if pct not in rss and n >= events * pct / 100:
                    rss[pct] = rss_mib(ing.pid)
            if n >= events:
                break
            if time.monotonic() > deadline or ing.poll() is not None:
                raise RuntimeError(f"only {n:,} of {events:,} events landed")
            time.sleep(0.2)
        rss[100] = rss_mib(ing.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/counters", timeout=10) as resp:
            sent = json.load(resp)["totals"]["events"]
    finally:
        ing.terminate()
        ing.wait(30)
        sim.terminate()
        sim.wait(10)
    n, first, last = landed(landing)
    by_channel: Counter[tuple[str, str]] = Counter()
    for entry in iter_manifest(landing):
        for _, _, frame in iter_lines(landing / entry["file"]):
            for e in json.loads(frame):
                if e["ev"] != "status":
                    by_channel[(e["ev"], e["pair"])] += 1
    sent_counts = Counter({(ch, p): k for ch, pairs in sent.items() for p, k in pairs.items()})
    shutil.rmtree(state, ignore_errors=True)
    assert first is not None and last is not None
    return {"rate": n / ((last - first) / 1e9), "loss_free": by_channel == sent_counts, "landed": n, "rss": rss}


OFFICIAL_CLIENT = """
import asyncio, sys, time
from polygon import WebSocketClient
n_target = int(sys.argv[2]); count = 0; t0 = None; done = asyncio.Event()
async def handle(msgs):
    global count, t0
    if t0 is None:
        t0 = time.perf_counter()
    count += len(msgs)
    if count >= n_target:
        done.set()
async def main():
    c = WebSocketClient(api_key="simulator-key", feed=sys.argv[1], market="crypto", secure=False,
                        subscriptions=["XT.*", "XQ.*", "XA.*", "XAS.*"])
    task = asyncio.create_task(c.connect(handle, max_size=None))
    await done.wait()
    print(count / (time.perf_counter() - t0))
    task.cancel()
asyncio.run(main())
"""


def run_official(events: int) -> float:
    port = free_port()
    sim = simulator(port, events)
    try:
        out = subprocess.run(
            [sys.executable, "-c", OFFICIAL_CLIENT, f"127.0.0.1:{port}", str(int(events * 0.95))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=max(300, events / 5_000),
            check=True,
        )
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        sim.terminate()
        sim.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit non-zero when a target is missed")
    args = parser.parse_args()

    results, official = [], []
    for _ in range(args.repeats):
        results.append(run_ingester(args.events))
        official.append(run_official(min(args.events, 1_000_000)))
    rates = [float(r["rate"]) for r in results]  # type: ignore[arg-type]
    rate, base = statistics.median(rates), statistics.median(official)
    ratio = rate / base
    rss = results[-1]["rss"]
    assert isinstance(rss, dict)
    flat = rss[100] <= rss[10] * 1.25 + 32
    loss_free = all(r["loss_free"] for r in results)
    print(f"events per run: {args.events:,}; repeats: {args.repeats}")
    print(f"ingester landed: median {rate:>10,.0f} events/s, runs {[round(r) for r in rates]}")
    print(f"official client (parsed): median {base:>10,.0f} events/s, runs {[round(r) for r in official]}")
    print(f"ratio ingester/official: {ratio:.2f}")
    print(f"zero loss against the simulator's counters: {loss_free}")
    print(f"ingester RSS MiB at 10%/50%/100%: {rss[10]:.0f} / {rss[50]:.0f} / {rss[100]:.0f} (flat: {flat})")
    misses = [
        name
        for name, ok in [
            ("events/s", rate >= TARGET_EVENTS_PER_S),
            ("ratio", ratio >= TARGET_RATIO),
            ("zero loss", loss_free),
            ("flat memory", flat),
        ]
        if not ok
    ]
    print(f"targets: {'all met' if not misses else 'MISSED ' + ', '.join(misses)}")
    return 1 if misses and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
