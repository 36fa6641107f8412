"""``crypto-platform dashboard``: the market page in the foreground (``make dev`` runs it as a service).

Streamlit runs in this process (``streamlit run`` through its own command-line entry), so the pid
the local stack records is the server's. It binds 127.0.0.1 unless told otherwise, never watches
files, and sends no usage statistics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crypto_platform.settings import load_settings

APP = Path(__file__).with_name("app.py")


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=None, help="port (default CRYPTO_DASHBOARD_PORT, 8501)")


def streamlit_args(host: str, port: int) -> list[str]:
    return [
        "run",
        str(APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def run(args: argparse.Namespace) -> int:
    from crypto_platform.local import stack as ls

    settings = load_settings()  # bad settings stop here, named; the page would say the same
    port = args.port or settings.dashboard_port
    try:
        ls.ensure_port_free(args.host, port, "CRYPTO_DASHBOARD_PORT", "the dashboard")
    except ls.PortInUseError as exc:
        print(f"crypto-platform dashboard: {exc}")
        return 1
    from streamlit.web import cli as streamlit_cli

    print(f"[crypto-platform] market page on http://{args.host}:{port} (Ctrl-C stops it)", flush=True)
    streamlit_cli.main(args=streamlit_args(args.host, port), prog_name="streamlit", standalone_mode=False)
    return 0
