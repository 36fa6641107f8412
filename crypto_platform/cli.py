"""The ``crypto-platform`` command: one entry point, one sub-command per job.

Each sub-command lives beside the code it drives and is imported only when used, so
``crypto-platform status`` does not pay for importing Dagster or the simulator.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from crypto_platform.settings import SettingsError

# name -> (module, function that adds arguments, function that runs); the module is imported lazily.
_COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("crypto_platform.simulator.cli", "Run the Polygon-protocol market simulator."),
    "stream": ("crypto_platform.stream.stream_cli", "Run the ingester in the foreground (--stop stops it)."),
    "status": ("crypto_platform.stream.status_cli", "Show the ingester's health (--json for machines)."),
    "lake-writer": ("crypto_platform.lake.writer", "Append sealed landing segments to the raw Delta tables."),
    "lake": (
        "crypto_platform.lake.migrate",
        "Lake upkeep: `lake migrate` turns an old Parquet lake into Delta tables.",
    ),
    "dev": ("crypto_platform.local.cli", "Run `dagster dev` on loopback; local services start on demand."),
    "services": ("crypto_platform.local.cli", "Start, stop or show the background local services."),
    "dashboard": ("crypto_platform.dashboard.cli", "Serve the live market page (Streamlit) in the foreground."),
}


def _load(module: str) -> Any:
    return importlib.import_module(module)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (all of them when ``command`` is None)."""
    parser = argparse.ArgumentParser(prog="crypto-platform", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            add_arguments: Callable[[str, argparse.ArgumentParser], None] = _load(module).add_arguments
            add_arguments(name, cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command if command in _COMMANDS else "").parse_args(argv)
    module, _ = _COMMANDS[args.command]
    run: Callable[[argparse.Namespace], int] = _load(module).run
    try:
        return int(run(args) or 0)
    except SettingsError as exc:
        print(f"crypto-platform {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
