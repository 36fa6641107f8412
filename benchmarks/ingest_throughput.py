"""How fast the ingester makes a full-speed feed durable, next to the official client on the same stream.

Three processes on loopback: the simulator (``crypto-platform simulate --rate 0 --prerender``: the N
events, 10 a frame, the realistic XT/XQ/XA/XAS mix over 5 pairs, generated before it listens so
generation does not pace the measurement), the ingester (``crypto-platform stream``, its own data
directory, its sealer process, ``CRYPTO_FSYNC=seal`` as in production), and this script, which
samples the simulator's counters and the ingester's memory on a wall clock. Then, each on a fresh
simulator with the same stream, the official ``polygon.WebSocketClient`` (polygon-api-client) in its
own process: in raw mode (frames handed over undecoded, its fastest mode; the callback only counts
events in the text) and in parsed mode (its models built, nothing stored).

Reported per repeat and as medians:

- durable rate: events / (the first data frame received, one loopback hop after the simulator sent
  it -> the seal of the segment that completes the manifest's count of every event). This is what a
  user gets: an event counts once it is sealed in the landing log, fsynced and announced.
- receive-only rate beside it: events / (first -> last receive time in the manifest).
- the seal tail: last event received -> everything sealed (bounded by ``--segment-max-age-s``).
- zero loss against the simulator's per-channel, per-pair counters.
- the official client's receive rates (raw and parsed) and the ratios, with no target on them.
- the RSS of the ingester's process tree (ingester and sealer) when 10 %, 50 % and 100 % of the
  events had been sent (sampled every 50 ms on the wall clock; the moments are printed), and after
  the last seal (flat memory over a long run: ``--events 10000000``).

    python benchmarks/ingest_throughput.py [--events 2000000] [--repeats 3] [--check]

Targets: a durable rate >= 400,000 events/s (far above the feed's busiest hour), zero loss, RSS after
the last seal within 1.25x (+32 MiB) of RSS at 10 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.simulator_rate import PAIRS, free_port, simulator_command, wait_listening  # noqa: E402
from benchmarks.summary import Summary, median, runs  # noqa: E402
from crypto_platform.stream.manifest import iter_lines, iter_manifest  # noqa: E402

TARGET_DURABLE_EVENTS_PER_S = 400_000
SAMPLE_EVERY_S = 0.05
RSS_POINTS = (10, 50, 100)


def simulator(port: int, events: int) -> subprocess.Popen[bytes]:
    cmd = simulator_command(port, total_events=events, prerender=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        # It generates the stream before it listens: about 20k events/s on a quiet machine, less when busy.
        wait_listening(port, proc, timeout=max(120.0, events / 2_000))
    except BaseException:
        proc.terminate()
        proc.wait(10)
        raise
    return proc


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the ingester and its sealer process), from /proc."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, ppid in parent.items() if ppid in frontier]
        tree += frontier
    return tree


def rss_mib(pid: int) -> float:
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def sent_events(port: int) -> int:
    """Data events the simulator has sent so far (all connections)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/counters", timeout=10) as resp:
        events = json.load(resp)["totals"]["events"]
    return sum(n for ch, pairs in events.items() if ch != "status" for n in pairs.values())


class Sampler(threading.Thread):
    """Every ``SAMPLE_EVERY_S`` on the wall clock: (time, events sent so far, RSS of the ingester's tree)."""

    def __init__(self, pid: int, port: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.port = pid, port
        self.samples: list[tuple[float, int, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY_S):
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.samples.append((time.time(), sent_events(self.port), rss_mib(self.pid)))

    def at(self, events: int) -> tuple[float, float] | None:
        """(time, RSS) of the first sample by which ``events`` had been sent."""
        return next(((t, rss) for t, n, rss in self.samples if n >= events), None)


def landed(landing: Path) -> tuple[int, int]:
    """Data events in sealed segments, and the latest seal time (ns)."""
    total, sealed = 0, 0
    for entry in iter_manifest(landing):
        for day in entry["days"].values():
            total += sum(v["events"] for ch, v in day.items() if ch != "status")
        sealed = max(sealed, entry["sealed_ns"])
    return total, sealed


def first_data_frame_ns(landing: Path) -> int:
    """Receive time of the first frame holding data (the session's status frames come before it)."""
    for entry in iter_manifest(landing):
        for recv_ns, _, frame in iter_lines(landing / entry["file"]):
            if any(e["ev"] != "status" for e in json.loads(frame)):
                return recv_ns
    raise RuntimeError("no data frame landed")


def run_ingester(events: int, max_age_s: float) -> dict[str, object]:
    port = free_port()
    sim = simulator(port, events)
    state = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    env = {
        **os.environ,
        "CRYPTO_STATE_DIR": str(state),
        "CRYPTO_SIMULATOR_PORT": str(port),
        "CRYPTO_PAIRS": PAIRS,
        "CRYPTO_SEGMENT_MAX_AGE_S": str(max_age_s),
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
    sampler = Sampler(ing.pid, port)
    sampler.start()
    try:
        deadline = time.monotonic() + max(120, events / 20_000)
        while True:
            n, _ = landed(landing) if (landing / "manifest.ndjson").exists() else (0, 0)
            if n >= events:
                break
            if time.monotonic() > deadline or ing.poll() is not None:
                raise RuntimeError(f"only {n:,} of {events:,} events landed")
            time.sleep(0.05)
        rss_after_seal = rss_mib(ing.pid)
        sampler.stop.set()
        sampler.join()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/counters", timeout=10) as resp:
            sent = json.load(resp)["totals"]["events"]
    finally:
        sampler.stop.set()
        ing.terminate()
        ing.wait(30)
        sim.terminate()
        sim.wait(10)
    n, sealed_ns = landed(landing)
    first_ns = first_data_frame_ns(landing)
    last_recv_ns = max(e["recv_last_ns"] for e in iter_manifest(landing))
    by_channel: Counter[tuple[str, str]] = Counter()
    for entry in iter_manifest(landing):
        for _, _, frame in iter_lines(landing / entry["file"]):
            for e in json.loads(frame):
                if e["ev"] != "status":
                    by_channel[(e["ev"], e["pair"])] += 1
    sent_counts = Counter({(ch, p): k for ch, pairs in sent.items() if ch != "status" for p, k in pairs.items()})
    shutil.rmtree(state, ignore_errors=True)
    rss: dict[str, tuple[float, float]] = {}
    for pct in RSS_POINTS:
        point = sampler.at(events * pct // 100)
        if point is not None:
            rss[f"{pct}% sent"] = (point[0] - first_ns / 1e9, point[1])
    rss["after the last seal"] = (sealed_ns / 1e9 - first_ns / 1e9, rss_after_seal)
    return {
        "durable": n / ((sealed_ns - first_ns) / 1e9),
        "receive": n / ((last_recv_ns - first_ns) / 1e9),
        "seal_tail_s": (sealed_ns - last_recv_ns) / 1e9,
        "loss_free": by_channel == sent_counts,
        "landed": n,
        "rss": rss,
        "peak_rss": max((r for _, _, r in sampler.samples), default=float("nan")),
    }


OFFICIAL_CLIENT = """
import asyncio, sys, time
from polygon import WebSocketClient
feed, n_target, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "raw"
count = 0; t0 = None; done = asyncio.Event()
async def handle(msgs):
    global count, t0
    if raw:  # the frame text: count its events, leave out the status acks (raw mode passes them)
        n = msgs.count('"ev":') - msgs.count('"ev":"status"')
    else:  # parsed models; the client drops status messages itself
        n = len(msgs)
    if n and t0 is None:
        t0 = time.perf_counter()
    count += n
    if count >= n_target:
        done.set()
async def main():
    c = WebSocketClient(api_key="simulator-key", feed=feed, market="crypto", secure=False, raw=raw,
                        subscriptions=["XT.*", "XQ.*", "XA.*", "XAS.*"])
    task = asyncio.create_task(c.connect(handle, max_size=None))
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if not done.is_set():  # the client task ended: say why instead of waiting for the timeout
        raise SystemExit(f"client stopped after {count} events: {task.exception()!r}")
    print(count / (time.perf_counter() - t0))
    task.cancel()
asyncio.run(main())
"""


def run_official(events: int, mode: str) -> float:
    """The official client's receive rate (first data frame -> the last event) on the same stream."""
    port = free_port()
    sim = simulator(port, events)
    try:
        out = subprocess.run(
            [sys.executable, "-c", OFFICIAL_CLIENT, f"127.0.0.1:{port}", str(events), mode],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=max(300, events / 5_000),
        )
        if out.returncode != 0:
            raise RuntimeError(f"official client ({mode}) failed: {out.stderr.strip()[-500:]}")
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        sim.terminate()
        sim.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--segment-max-age-s",
        type=float,
        default=1.0,
        help="CRYPTO_SEGMENT_MAX_AGE_S for the ingester (default 1; production's default is 5): it bounds the "
        "seal tail, which a short run pays once",
    )
    parser.add_argument("--check", action="store_true", help="exit non-zero when a target is missed")
    args = parser.parse_args()
    summary = Summary(
        "ingest_throughput",
        f"{args.events:,} events a run (10 a frame, XT/XQ/XA/XAS over 5 pairs, prerendered), {args.repeats} "
        f"repeats, interleaved; ingester with CRYPTO_FSYNC=seal, CRYPTO_SEGMENT_MAX_AGE_S={args.segment_max_age_s:g}",
    )

    results: list[dict[str, object]] = []
    raw: list[float] = []
    parsed: list[float] = []
    for _ in range(args.repeats):
        results.append(run_ingester(args.events, args.segment_max_age_s))
        raw.append(run_official(args.events, "raw"))
        parsed.append(run_official(args.events, "parsed"))
    durable = [float(r["durable"]) for r in results]  # type: ignore[arg-type]
    receive = [float(r["receive"]) for r in results]  # type: ignore[arg-type]
    tails = [float(r["seal_tail_s"]) for r in results]  # type: ignore[arg-type]
    d, rc, rw, pa = median(durable), median(receive), median(raw), median(parsed)
    loss_free = all(r["loss_free"] for r in results)
    for label, value, values in (
        ("ingester, durable (first data frame -> all sealed)", d, durable),
        ("ingester, receive only (first -> last receive)", rc, receive),
        ("official client, raw mode (baseline)", rw, raw),
        ("official client, parsed mode (baseline)", pa, parsed),
    ):
        summary.line(f"{label:<52} median {value:>10,.0f} events/s (runs {runs(values)})")
    summary.line(f"seal tail (last receive -> all sealed): median {median(tails):.2f} s (runs {runs(tails, '.2f')})")
    summary.line(
        f"ratios (no target): durable / raw {d / rw:.2f}, durable / parsed {d / pa:.2f}; "
        f"receive / raw {rc / rw:.2f}, receive / parsed {rc / pa:.2f}"
    )
    summary.line(f"zero loss against the simulator's counters: {loss_free} (every run)")
    rss = results[-1]["rss"]
    assert isinstance(rss, dict)
    summary.line(
        "ingester + sealer RSS, last run (seconds after the first data frame: MiB): "
        + ", ".join(f"{name} {t:.2f} s: {mib:.0f}" for name, (t, mib) in rss.items())
        + f"; peak {results[-1]['peak_rss']:.0f}"
    )
    first = rss.get("10% sent")
    end = rss["after the last seal"][1]
    flat = first is not None and end <= first[1] * 1.25 + 32
    summary.target(
        f"durable >= {TARGET_DURABLE_EVENTS_PER_S:,} events/s", d >= TARGET_DURABLE_EVENTS_PER_S, f"{d:,.0f}"
    )
    summary.target("zero loss", loss_free, "every event counted by the simulator landed once per channel and pair")
    summary.target(
        "flat memory (after the last seal <= 1.25 x RSS at 10 % + 32 MiB)",
        flat,
        f"{first[1]:.0f} -> {end:.0f} MiB" if first else "no sample at 10 %",
    )
    return summary.finish(args.check)


if __name__ == "__main__":
    sys.exit(main())
