"""How fast the simulator feeds one client on loopback, next to the transport's ceiling.

The simulator runs as ``crypto-platform simulate --rate 0`` (full speed, 10 events a frame, the
realistic XT/XQ/XA/XAS mix) in its own process; a client in this process counts events in the raw
frames. The baseline, measured in the same run, is a bare ``websockets`` server in its own process
sending pre-built frames of the same size: what the transport alone can do on this machine.

    python benchmarks/simulator_rate.py [--events 1000000] [--repeats 3] [--check]

Target (issue "Foundation"): at least 200,000 events/s to one client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.summary import Summary, median, runs

TARGET_EVENTS_PER_S = 200_000
ROOT = Path(__file__).resolve().parent.parent
PAIRS = "BTC-USD,ETH-USD,SOL-USD,XRP-USD,DOGE-USD"
START_MS = 1_763_596_800_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simulator_command(port: int, total_events: int | None = None, prerender: bool = False) -> list[str]:
    """``crypto-platform simulate`` at full speed, 10 events a frame, the benchmark pairs and start."""
    cmd = [sys.executable, "-m", "crypto_platform.cli", "simulate", "--port", str(port), "--rate", "0",
           "--events-per-frame", "10", "--pairs", PAIRS, "--start", str(START_MS)]  # fmt: skip
    if total_events is not None:
        cmd += ["--total-events", str(total_events)]
    return cmd + (["--prerender"] if prerender else [])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


async def receive(url: str, events: int) -> float:
    """Subscribe and count events until ``events`` arrived; return events/s after the first frame."""
    async with connect(url, max_size=None, compression=None, ping_interval=None) as ws:
        await ws.recv()
        await ws.send(orjson.dumps({"action": "auth", "params": "simulator-key"}).decode())
        await ws.recv()
        await ws.send(orjson.dumps({"action": "subscribe", "params": "XT.*,XQ.*,XA.*,XAS.*"}).decode())
        count = 0
        started = 0.0
        while count < events:
            frame = await ws.recv(decode=False)
            if not started:
                started = time.perf_counter()
                continue
            count += frame.count(b'"ev"')
        return count / (time.perf_counter() - started)


async def serve_baseline(port: int) -> None:
    """A bare websockets server that sends one pre-built 10-event frame over and over."""
    from websockets.asyncio.server import serve

    from crypto_platform.simulator.feed import Renderer, Schedule
    from crypto_platform.simulator.market import Market

    market = Market(7, tuple(PAIRS.split(",")), trades_per_second=400)
    schedule = Schedule(Renderer(market), START_MS)
    schedule.set_topics({(c, "*") for c in ("XT", "XQ", "XA", "XAS")})
    texts = [e.text for e in schedule.advance(START_MS + 2_000)][:1000]
    frames = ["[" + ",".join(texts[i : i + 10]) + "]" for i in range(0, len(texts) - 10, 10)]

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        await ws.send('[{"ev":"status","status":"connected"}]')
        await ws.recv()
        await ws.send('[{"ev":"status","status":"auth_success"}]')
        await ws.recv()
        while True:
            for frame in frames:
                await ws.send(frame)

    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None, max_size=None):
        await asyncio.Future()


def measure(kind: str, events: int) -> float:
    port = free_port()
    baseline = [sys.executable, __file__, "--serve-baseline", str(port)]
    cmd = simulator_command(port) if kind == "simulator" else baseline
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_listening(port, proc)
        return asyncio.run(receive(f"ws://127.0.0.1:{port}/crypto", events))
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events counted per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit non-zero when a target is missed")
    parser.add_argument("--serve-baseline", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        asyncio.run(serve_baseline(args.serve_baseline))
        return 0

    summary = Summary(
        "simulator_rate",
        f"{args.events:,} events per measurement, {args.repeats} repeats; one client on loopback, 10 events a frame",
    )
    sim, base = [], []
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits both alike
        base.append(measure("baseline", args.events))
        sim.append(measure("simulator", args.events))
    sim_med, base_med = median(sim), median(base)
    summary.line(f"simulator (full speed, live generation): median {sim_med:,.0f} events/s (runs {runs(sim)})")
    summary.line(
        f"baseline, same run (bare websockets server, pre-built frames): median {base_med:,.0f} events/s "
        f"(runs {runs(base)})"
    )
    summary.line(f"ratio simulator / baseline: {sim_med / base_med:.2f}")
    summary.target(f">= {TARGET_EVENTS_PER_S:,} events/s", sim_med >= TARGET_EVENTS_PER_S, f"{sim_med:,.0f}")
    return summary.finish(args.check)


if __name__ == "__main__":
    sys.exit(main())
