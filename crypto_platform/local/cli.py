"""``crypto-platform dev`` and ``crypto-platform services start|stop|status``.

``dev`` is plain ``dagster dev`` on loopback (``make dev`` runs it after creating the venv): the
platform starts what it needs on demand, from the resource or sensor that needs it (the simulator
before the ingester starts, the fakesnow server before a Snowflake connection), so there is nothing
to prepare around Dagster. ``services`` starts, stops (``make stop``, the ingester too) or shows those
background services by hand.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from crypto_platform.local import stack as ls
from crypto_platform.settings import Settings, child_environment, load_settings


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "services":
        parser.add_argument("action", choices=("start", "stop", "status"), help="what to do with the services")
        parser.add_argument(
            "--ready-timeout",
            type=float,
            default=ls.DEFAULT_READY_TIMEOUT_S,
            help="seconds to wait for each service to listen (default %(default)s)",
        )
    elif name == "dev":
        pass
    else:  # pragma: no cover - cli.py only routes dev/services here
        raise ValueError(f"unknown command {name!r}")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        if args.command == "dev":
            return run_dev(settings)
        if args.action == "start":
            return services_start(settings, ready_timeout=args.ready_timeout)
        if args.action == "stop":
            return services_stop(settings)
        return services_status(settings)
    except ls.LocalStackError as exc:
        print(f"crypto-platform {args.command}: {exc}", file=sys.stderr)
        return 1


def _say(message: str) -> None:
    print(f"[crypto-platform] {message}", flush=True)


def _child_env(settings: Settings) -> dict[str, str]:
    return child_environment(ls.stack_environment(settings))


def _start_required(settings: Settings, ready_timeout: float) -> list[ls.Service]:
    """Start every service the settings need; return the ones this call started."""
    paths = ls.stack_paths(settings)
    env = _child_env(settings)
    started: list[ls.Service] = []
    try:
        for service in ls.required_services(settings):
            if not service.available:
                _say(f"{service.name}: skipped, {service.unavailable_reason}")
                continue
            result = ls.start_service(service, paths, env, ready_timeout=ready_timeout)
            if result.started:
                started.append(service)
                _say(f"{service.name}: started, pid {result.pid}, {service.host}:{service.port}")
            else:
                _say(f"{service.name}: already running, pid {result.pid}, {service.host}:{service.port}")
    except BaseException:
        _stop(settings, started)
        raise
    return started


def _stop(settings: Settings, services: Sequence[ls.Service]) -> None:
    paths = ls.stack_paths(settings)
    for service in reversed(services):
        try:
            pid = ls.stop_service(service, paths)
        except ls.LocalStackError as exc:
            _say(str(exc))
            continue
        _say(f"{service.name}: stopped (pid {pid})" if pid else f"{service.name}: was not running")


def services_start(settings: Settings, *, ready_timeout: float = ls.DEFAULT_READY_TIMEOUT_S) -> int:
    ls.stack_paths(settings).ensure()
    _start_required(settings, ready_timeout)
    return 0


def services_stop(settings: Settings) -> int:
    # The ingester first: it reads from the simulator, which is about to go away.
    _say(ls.stop_ingester(settings))
    _stop(settings, ls.all_services(settings))
    return 0


def services_status(settings: Settings) -> int:
    paths = ls.stack_paths(settings)
    needed = {s.name for s in ls.required_services(settings)}
    for service in ls.all_services(settings):
        st = ls.service_state(service, paths)
        state = f"running, pid {st.pid}" if st.running else "stopped"
        extra = "" if service.name in needed else " (not needed by the current settings)"
        note = f"; {st.note}" if st.note else ""
        print(f"{st.name:10} {state:22} {service.host}:{st.port} listening={st.listening}{extra}{note}  log {st.log}")
    return 0


def run_dev(settings: Settings) -> int:
    """Replace this process with ``dagster dev`` on 127.0.0.1:CRYPTO_DAGSTER_PORT, run from the project root."""
    ls.ensure_port_free(ls.LOOPBACK, settings.dagster_port, "CRYPTO_DAGSTER_PORT", "the Dagster UI")
    argv = ls.dagster_dev_argv(settings)
    # The market page is for people, not for a resource: `make dev` starts it beside Dagster.
    _say(ls.ensure_service(ls.dashboard_service(settings), settings.state_dir) or "dashboard: already serving")
    _say(f"Dashboard on http://{ls.LOOPBACK}:{settings.dashboard_port}")
    _say(f"Dagster UI on http://{ls.LOOPBACK}:{settings.dagster_port} (Ctrl-C stops it; `make stop` the services)")
    os.chdir(settings.project_dir)
    sys.stdout.flush()
    # Started from a non-interactive shell (`make dev &`), SIGINT is inherited as ignored and an ignored
    # signal stays ignored across exec: Ctrl-C (or a SIGINT to the group) would not stop dagster dev.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(argv[0], argv)
    return 0  # pragma: no cover - execv does not return


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crypto_platform.local.cli dev|services ...`` without the full CLI."""
    parser = argparse.ArgumentParser(prog="crypto_platform.local.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("dev", "services"):
        add_arguments(name, sub.add_parser(name))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
