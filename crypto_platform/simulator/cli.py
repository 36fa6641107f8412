"""``crypto-platform simulate``: run the Polygon-protocol simulator in the foreground until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from datetime import UTC, date, datetime
from typing import Any

from crypto_platform.settings import DEFAULT_PAIRS, SIMULATOR_API_KEY, SettingsError, load_settings
from crypto_platform.simulator.server import (
    MALFORMED_KINDS,
    ONE_SHOT_FAULTS,
    PERSISTENT_FAULTS,
    Simulator,
    SimulatorConfig,
)


def _fault(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,key=value`` (values that look like integers become integers)."""
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"fault {text!r}: parameters are key=value (e.g. close:code=1011)")
        params[key] = int(value) if value.lstrip("-").isdigit() else value
    if name in ONE_SHOT_FAULTS:
        # A one-shot fault acts once on the connections open when it fires; at start there are none,
        # so it would be dropped silently. Say how to fire it instead.
        raise argparse.ArgumentTypeError(
            f"fault {name!r} fires once on the open connections, and at start there are none: fire it while "
            f"running with GET /_sim/fault?name={name}, or switch on one of {', '.join(sorted(PERSISTENT_FAULTS))}"
        )
    if name not in PERSISTENT_FAULTS:
        raise argparse.ArgumentTypeError(
            f"unknown fault {name!r}: at start only switches apply: {', '.join(sorted(PERSISTENT_FAULTS))}"
        )
    return name, params


def _start(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--start {text!r}: give epoch ms or an ISO time like 2026-11-24T00:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; keep it on loopback)")
    parser.add_argument("--port", type=int, help="port for WebSocket /crypto and REST (default CRYPTO_SIMULATOR_PORT)")
    parser.add_argument(
        "--s3-port",
        type=int,
        help="also publish Flat Files (S3) on this port (0: any free port; default: none; `dev` uses "
        "CRYPTO_SIMULATOR_S3_PORT)",
    )
    parser.add_argument(
        "--history-start",
        type=date.fromisoformat,
        help="first UTC day the Flat Files publish, YYYY-MM-DD (default: 60 days before --start)",
    )
    parser.add_argument("--seed", type=int, default=7, help="market seed: the same seed gives the same market")
    parser.add_argument("--pairs", help="comma list of pairs (default CRYPTO_PAIRS)")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second over all pairs; 0 = full speed")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--start", type=_start, help="simulated start time (epoch ms or ISO); default now")
    parser.add_argument("--max-connections", type=int, default=1, help="connections allowed per key")
    parser.add_argument("--evict-older", action="store_true", help="over the limit, evict the older connection")
    parser.add_argument("--events-per-frame", type=int, help="events per frame (default: what is due per tick)")
    parser.add_argument("--total-events", type=int, help="stop sending after this many events per connection")
    parser.add_argument(
        "--prerender",
        action="store_true",
        help="with --rate 0 and --total-events: generate the stream before listening (benchmark replay mode)",
    )
    parser.add_argument(
        "--record-trades",
        action="store_true",
        help="keep every sent trade's key per connection, listed as trade_keys by GET /_sim/counters "
        "(memory grows with the trades sent: for tests)",
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        help=f"switch a fault on at start, NAME[:k=v,...]; NAME one of {', '.join(sorted(PERSISTENT_FAULTS))}. "
        f"One-shot faults ({', '.join(sorted(ONE_SHOT_FAULTS))}; malformed kinds {', '.join(MALFORMED_KINDS)}) "
        "are fired while running via GET /_sim/fault?name=NAME&k=v",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    pairs = tuple(p.strip().upper() for p in args.pairs.split(",")) if args.pairs else settings.pairs
    if "*" in pairs:
        pairs = DEFAULT_PAIRS
    if args.rate < 0 or args.speed <= 0:
        raise SettingsError("--rate must be >= 0 and --speed > 0")
    config = SimulatorConfig(
        host=args.host or settings.simulator_host,
        port=settings.simulator_port if args.port is None else args.port,
        seed=args.seed,
        pairs=pairs,
        rate=args.rate or None,
        api_keys=frozenset({SIMULATOR_API_KEY}),
        max_connections=args.max_connections,
        evict_older=args.evict_older,
        speed=args.speed,
        start_ms=args.start,
        events_per_frame=args.events_per_frame,
        total_events=args.total_events,
        prerender=args.prerender,
        record_trades=args.record_trades,
        faults=tuple(args.fault),
        s3_port=args.s3_port,
        history_start=args.history_start,
    )
    try:
        asyncio.run(_serve(config))
    except OSError as exc:
        print(
            f"crypto-platform simulate: cannot listen on {config.host}:{config.port} or {config.s3_port} "
            f"({exc.strerror}); set CRYPTO_SIMULATOR_PORT / CRYPTO_SIMULATOR_S3_PORT (or --port / --s3-port) to free "
            "ports",
            file=sys.stderr,
        )
        return 1
    return 0


async def _serve(config: SimulatorConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Simulator(config) as sim:
        print(
            f"simulator: WebSocket {sim.ws_url}, REST {sim.rest_url}, pairs {','.join(config.pairs)}, "
            f"seed {config.seed}, {'full speed' if config.full_speed else f'{config.rate:g} events/s'}"
            + (f", Flat Files {sim.s3_url} (bucket flatfiles)" if config.s3_port is not None else ""),
            flush=True,
        )
        await stop.wait()
