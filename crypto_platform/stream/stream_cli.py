"""``crypto-platform stream``: run the ingester in the foreground, or ``--stop`` the running one."""

from __future__ import annotations

import argparse
import logging
import sys

from crypto_platform.settings import load_settings
from crypto_platform.stream import supervision


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stop", action="store_true", help="stop the running ingester (clean seal) and exit")
    parser.add_argument("--timeout", type=float, default=30.0, help="with --stop: seconds before SIGKILL")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.stop:
        print(f"ingester: {supervision.stop_ingester(settings, timeout=args.timeout)}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from crypto_platform.stream.ingester import run_foreground

    try:
        return run_foreground(settings)
    except supervision.IngesterAlreadyRunning as exc:
        print(f"crypto-platform stream: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:  # before the ingester could record it (the lock, the event loop): one line
        print(f"crypto-platform stream: stopped by {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
