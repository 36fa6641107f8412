"""``crypto-platform dev`` and ``crypto-platform services start|stop|status``.

``dev`` is the whole local stack in one command: it prepares the project-local Dagster home, starts
(idempotently) the background services the settings need, exports absolute state paths to every
child, runs ``dagster dev`` in the foreground, and on Ctrl-C (or SIGTERM) shuts ``dagster dev`` down
and stops the services *it* started; services that were already running are left running.

``dagster dev`` runs in its own process group so that exactly one interrupt reaches it: a
terminal's Ctrl-C goes to this process, which forwards SIGINT to the whole ``dagster dev`` group
(webserver, daemon, code server), just as a terminal would. It also means a ``dev`` started from a
non-interactive shell (where SIGINT is inherited as ignored) still stops cleanly: our handler is a
real handler, so the exec'd child gets the default disposition back.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from crypto_platform.local import stack as ls
from crypto_platform.settings import Settings, child_environment, load_settings

DAGSTER_STOP_TIMEOUT_S = 60.0


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
        parser.add_argument(
            "--ready-timeout",
            type=float,
            default=ls.DEFAULT_READY_TIMEOUT_S,
            help="seconds to wait for each background service to listen (default %(default)s)",
        )
        parser.add_argument(
            "--no-services", action="store_true", help="do not start background services; only `dagster dev`"
        )
    else:  # pragma: no cover - cli.py only routes dev/services here
        raise ValueError(f"unknown command {name!r}")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        if args.command == "dev":
            return run_dev(settings, ready_timeout=args.ready_timeout, with_services=not args.no_services)
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


def run_dev(
    settings: Settings, *, ready_timeout: float = ls.DEFAULT_READY_TIMEOUT_S, with_services: bool = True
) -> int:
    """The foreground local stack; returns ``dagster dev``'s exit status."""
    paths = ls.stack_paths(settings)
    paths.ensure()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _say(ls.prepare_dagster_home(settings))
    ls.ensure_port_free(ls.LOOPBACK, settings.dagster_port, "CRYPTO_DAGSTER_PORT", "the Dagster UI")

    stop_requested = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested
        stop_requested = True
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)

    proc: subprocess.Popen[bytes] | None = None
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    started: list[ls.Service] = []
    try:
        if with_services:
            started = _start_required(settings, ready_timeout)
        if stop_requested:
            return 130
        argv = ls.dagster_dev_argv(settings)
        _say(f"Dagster UI on http://{ls.LOOPBACK}:{settings.dagster_port} (Ctrl-C stops it)")
        # Dagster then warns that ./dagster.yaml "will not be used": it is in use, as the copy above.
        _say(f"instance config: {settings.dagster_home / 'dagster.yaml'} (copied from ./dagster.yaml)")
        proc = subprocess.Popen(
            argv,
            cwd=str(settings.project_dir),
            env=_child_env(settings),
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # only if a handler was swapped out underneath us
                on_signal(signal.SIGINT, None)
        return 130 if stop_requested and rc in (0, -signal.SIGINT) else rc
    finally:
        if proc is not None:
            _shutdown_dagster(proc)
        _stop(settings, started)
        if started and any(s.name == "simulator" for s in started):
            # Without its simulator an ingester would only reconnect forever.
            _say(ls.stop_ingester(settings))
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _shutdown_dagster(proc: subprocess.Popen[bytes]) -> None:
    """Make sure the ``dagster dev`` process group is gone: SIGINT, then SIGKILL after a deadline."""
    for sig in (signal.SIGINT, signal.SIGKILL):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(DAGSTER_STOP_TIMEOUT_S)
        # Its children (webserver, daemon, code server) share the group; wait for them as well.
        deadline = time.monotonic() + DAGSTER_STOP_TIMEOUT_S
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _group_alive(proc.pid):
            return
    _say(f"warning: processes of the dagster dev group {proc.pid} are still alive")


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in group ``pgid``; zombies may linger unreaped
    in containers whose pid 1 does not reap orphans, so ``killpg(pgid, 0)`` alone would hang us."""
    return any(ls.pid_alive(pid) for pid in ls.process_group_members(pgid))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crypto_platform.local.cli dev|services ...`` without the full CLI."""
    parser = argparse.ArgumentParser(prog="crypto_platform.local.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("dev", "services"):
        add_arguments(name, sub.add_parser(name))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
