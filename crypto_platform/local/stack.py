"""The zero-setup local stack: the background services behind the defaults, and the Dagster instance notes.

Background services back the defaults, so that a fresh clone needs no account, key or server:
the Polygon-protocol simulator (when no ``POLYGON_API_KEY`` is set), the persistent fakesnow server
(when no ``SNOWFLAKE_ACCOUNT`` is set), and the market page beside ``make dev``. The resource or
sensor that needs one starts it on demand (:func:`ensure_service`); ``crypto-platform services
start|stop|status`` drives them by hand and ``make stop`` ends them. Each runs detached in its own
session so it survives the terminal and ``dagster dev`` itself, and is tracked by a pid file under
``<state>/run`` with its log under ``<state>/log``.

Rules that keep it safe to run from several terminals at once:

- Start and stop hold an ``flock`` on ``<state>/run/<name>.lock``, so two starts never race.
- A pid file counts only if the pid is alive, not a zombie, and its command line is the service's
  own (pids are reused); anything else is stale and removed.
- ``services start`` on a port already served by something that is not our service is an error
  naming the setting to change; we never start a second copy on another port behind the user's
  back. On demand, whatever serves the port is used (the client's own error names it if it is wrong).
- Readiness is a TCP connect polled against a deadline, while also watching the process: a child
  that exits early is reported with the tail of its log.
- Everything binds 127.0.0.1. Secrets reach children only through their environment.

Nothing here runs at import.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from crypto_platform.settings import Settings, child_environment

LOOPBACK = "127.0.0.1"
FAKESNOW_MODULE = "crypto_platform.local.fakesnow_server"
SIMULATOR_CLI_MODULE = "crypto_platform.simulator.cli"

DEFAULT_READY_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 30.0


class LocalStackError(RuntimeError):
    """A local service could not be started, stopped or found; the message says what to do."""


class PortInUseError(LocalStackError):
    """The port a service needs is served by some other process."""


@dataclass(frozen=True)
class StackPaths:
    """Where the local stack keeps its runtime state (all under the state dir, default ./var)."""

    state_dir: Path

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def fakesnow_dir(self) -> Path:
        return self.state_dir / "fakesnow"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def lock_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.lock"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def ensure(self) -> None:
        for d in (self.state_dir, self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Service:
    """One background process of the local stack."""

    name: str
    port: int
    port_setting: str
    argv: tuple[str, ...]
    # Substrings that must all appear in /proc/<pid>/cmdline for a pid to be this service (any port).
    identity: tuple[str, ...]
    available: bool = True
    unavailable_reason: str = ""
    host: str = LOOPBACK


@dataclass(frozen=True)
class ServiceState:
    """What ``services status`` reports for one service."""

    name: str
    running: bool
    pid: int | None
    port: int
    listening: bool
    log: Path
    note: str = ""


@dataclass(frozen=True)
class StartResult:
    service: str
    pid: int
    started: bool  # False: it was already running


def stack_paths(settings: Settings) -> StackPaths:
    return StackPaths(settings.state_dir)


def fakesnow_service(settings: Settings, python: str = sys.executable) -> Service:
    return fakesnow_service_at(settings.state_dir, settings.snowflake.port, python)


def fakesnow_service_at(state_dir: Path, port: int, python: str = sys.executable) -> Service:
    """The persistent fakesnow server on ``port``, its databases under ``<state_dir>/fakesnow``."""
    paths = StackPaths(state_dir)
    return Service(
        name="fakesnow",
        port=port,
        port_setting="CRYPTO_FAKESNOW_PORT",
        argv=(
            python,
            "-m",
            FAKESNOW_MODULE,
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--db-dir",
            str(paths.fakesnow_dir / "db"),
            "--stage-dir",
            str(paths.fakesnow_dir / "stage"),
        ),
        identity=(FAKESNOW_MODULE,),
    )


def simulator_service(settings: Settings, python: str = sys.executable) -> Service:
    return simulator_service_at(settings.simulator_port, python, s3_port=settings.simulator_s3_port)


def simulator_service_at(port: int, python: str = sys.executable, s3_port: int | None = None) -> Service:
    """The simulator, started through the CLI as ``crypto-platform simulate`` would be.

    With ``s3_port`` it also publishes Flat Files there (history for past days).
    """
    # Another part of the project provides it; until it exists `dev` runs without a simulator.
    available = importlib.util.find_spec(SIMULATOR_CLI_MODULE) is not None
    return Service(
        name="simulator",
        port=port,
        port_setting="CRYPTO_SIMULATOR_PORT",
        argv=(
            python,
            "-m",
            "crypto_platform.cli",
            "simulate",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            *(("--s3-port", str(s3_port)) if s3_port is not None else ()),
        ),
        identity=("crypto_platform.cli", "\x00simulate\x00"),
        available=available,
        unavailable_reason="" if available else f"{SIMULATOR_CLI_MODULE} is not installed yet",
    )


def dashboard_service(settings: Settings, python: str = sys.executable) -> Service:
    """The live market page (``crypto-platform dashboard``), beside Dagster under every setting."""
    port = settings.dashboard_port
    return Service(
        name="dashboard",
        port=port,
        port_setting="CRYPTO_DASHBOARD_PORT",
        argv=(python, "-m", "crypto_platform.cli", "dashboard", "--host", LOOPBACK, "--port", str(port)),
        identity=("crypto_platform.cli", "\x00dashboard\x00"),
    )


def required_services(settings: Settings, python: str = sys.executable) -> list[Service]:
    """The services the current settings need: the simulator and/or fakesnow, then the dashboard."""
    services = []
    if settings.uses_simulator:
        services.append(simulator_service(settings, python))
    if settings.snowflake.local:
        services.append(fakesnow_service(settings, python))
    services.append(dashboard_service(settings, python))
    return services


def all_services(settings: Settings, python: str = sys.executable) -> list[Service]:
    """Every background service this stack can run, whether or not the settings need it (for stop/status).

    One line per service: a new background service is one more entry here and in
    :func:`required_services`, plus a ``*_service`` constructor like the ones above.
    """
    return [
        simulator_service(settings, python),
        fakesnow_service(settings, python),
        dashboard_service(settings, python),
    ]


def ensure_service(service: Service, state_dir: Path, *, ready_timeout: float = DEFAULT_READY_TIMEOUT_S) -> str | None:
    """Start ``service`` on demand, for the resource or sensor about to use it; say what was done (None: it serves).

    Cheap when it already runs: one TCP connect. Anything already serving the port is used as it is
    (a server started by ``crypto-platform services start``, another checkout's, a test's), and the
    client's own error says so if it is not the service. Otherwise it starts detached exactly as
    ``services start`` does: one instance (flock), pid file under ``<state>/run``, log under
    ``<state>/log``; it outlives ``dagster dev`` and ``make stop`` ends it.
    """
    if port_open(service.host, service.port):
        return None
    result = start_service(service, StackPaths(state_dir), child_environment(), ready_timeout=ready_timeout)
    log = StackPaths(state_dir).log_file(service.name)
    if not result.started:
        return f"{service.name}: already running, pid {result.pid}, {service.host}:{service.port}"
    return (
        f"{service.name}: started on demand, pid {result.pid}, {service.host}:{service.port}, log {log} "
        "(it keeps running after dagster dev; `make stop` ends it)"
    )


def stack_environment(settings: Settings) -> dict[str, str]:
    """Absolute paths and ports exported to every child, so each resolves the same state.

    Children may run with another cwd (the code server, run workers): relative defaults would then
    point elsewhere. Only non-secret values; secrets stay in the inherited environment.
    """
    return {
        "CRYPTO_PROJECT_DIR": str(settings.project_dir),
        "CRYPTO_STATE_DIR": str(settings.state_dir),
        "CRYPTO_DATA_DIR": str(settings.data_dir),
        "CRYPTO_SIMULATOR_PORT": str(settings.simulator_port),
        "CRYPTO_SIMULATOR_S3_PORT": str(settings.simulator_s3_port),
        "CRYPTO_FAKESNOW_PORT": str(settings.snowflake.port),
        "CRYPTO_DAGSTER_PORT": str(settings.dagster_port),
        "CRYPTO_DASHBOARD_PORT": str(settings.dashboard_port),
    }


# --------------------------------------------------------------------------------------------
# processes and ports


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (reaping it if it is our own exited child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat.rpartition(")")[2].split()[0:1]
    return state != ["Z"]


def process_group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (from /proc; zombies included)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def is_service_process(pid: int, service: Service, *, any_port: bool = False) -> bool:
    """Alive and running this service's command on its port (guards against a reused pid)."""
    if not pid_alive(pid):
        return False
    cmd = _cmdline(pid)
    if not all(part in cmd for part in service.identity):
        return False
    return any_port or f"\x00--port\x00{service.port}\x00" in cmd + "\x00"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """True if nothing listens on host:port and we could bind it now."""
    if port_open(host, port, timeout=0.3):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ensure_port_free(host: str, port: int, setting: str, what: str) -> None:
    if not port_free(host, port):
        raise PortInUseError(
            f"port {port} on {host} is already in use by another process, so {what} cannot listen there: "
            f"stop that process or set {setting} to a free port"
        )


def wait_until(
    condition: Callable[[], bool], timeout: float, *, interval: float = 0.05, abort: Callable[[], str | None]
) -> None:
    """Poll ``condition`` until it holds; raise if ``abort`` returns a reason or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        reason = abort()
        if reason:
            raise LocalStackError(reason)
        if time.monotonic() >= deadline:
            raise LocalStackError(f"gave up after {timeout:.0f} s")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_pid_file(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _write_pid_file(path: Path, record: Mapping[str, object]) -> None:
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(json.dumps(dict(record), sort_keys=True) + "\n")
    os.replace(tmp, path)


def running_pid(service: Service, paths: StackPaths) -> int | None:
    """The pid of the running service per its pid file, or None (a stale pid file is removed)."""
    record = _read_pid_file(paths.pid_file(service.name))
    if record is None:
        return None
    pid = int(record["pid"])  # type: ignore[call-overload]
    # Any port: the pid file may belong to a copy started with other settings; report it, not lose it.
    if is_service_process(pid, service, any_port=True):
        return pid
    with contextlib.suppress(FileNotFoundError):
        paths.pid_file(service.name).unlink()
    return None


def start_service(
    service: Service, paths: StackPaths, env: Mapping[str, str], *, ready_timeout: float = DEFAULT_READY_TIMEOUT_S
) -> StartResult:
    """Start ``service`` detached unless it already runs; return once it accepts connections."""
    if not service.available:
        raise LocalStackError(f"cannot start {service.name}: {service.unavailable_reason}")
    paths.ensure()
    with _locked(paths.lock_file(service.name)):
        pid = running_pid(service, paths)
        if pid is not None:
            if not is_service_process(pid, service):
                record = _read_pid_file(paths.pid_file(service.name)) or {}
                raise LocalStackError(
                    f"{service.name} is already running (pid {pid}) on port {record.get('port')}, not on "
                    f"{service.port} as {service.port_setting} asks: run `crypto-platform services stop` first"
                )
            _wait_ready(service, pid, paths, ready_timeout)
            return StartResult(service.name, pid, started=False)

        ensure_port_free(service.host, service.port, service.port_setting, f"the {service.name}")
        log_path = paths.log_file(service.name)
        with open(log_path, "ab") as log:
            log.write(f"\n--- starting {service.name} on {service.host}:{service.port} ---\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(service.argv),
                cwd=str(paths.state_dir),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session: no terminal Ctrl-C, survives its parent
                close_fds=True,
            )
        _write_pid_file(
            paths.pid_file(service.name),
            {"pid": proc.pid, "port": service.port, "host": service.host, "started_at": time.time()},
        )
        try:
            _wait_ready(service, proc.pid, paths, ready_timeout)
        except BaseException:
            _terminate(proc.pid, DEFAULT_STOP_TIMEOUT_S)
            with contextlib.suppress(FileNotFoundError):
                paths.pid_file(service.name).unlink()
            raise
        return StartResult(service.name, proc.pid, started=True)


def _wait_ready(service: Service, pid: int, paths: StackPaths, timeout: float) -> None:
    def abort() -> str | None:
        if pid_alive(pid):
            return None
        return (
            f"{service.name} (pid {pid}) exited before listening on {service.host}:{service.port}; "
            f"last lines of {paths.log_file(service.name)}:\n{log_tail(paths.log_file(service.name))}"
        )

    try:
        wait_until(lambda: port_open(service.host, service.port), timeout, abort=abort)
    except LocalStackError as exc:
        if "gave up" in str(exc):
            raise LocalStackError(
                f"{service.name} (pid {pid}) did not listen on {service.host}:{service.port} within {timeout:.0f} s; "
                f"see {paths.log_file(service.name)}"
            ) from None
        raise


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM the service's process group, then SIGKILL it if it outlives ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def stop_service(service: Service, paths: StackPaths, *, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
    """Stop the service if it runs; return the pid that was stopped (None: it was not running)."""
    with _locked(paths.lock_file(service.name)):
        pid = running_pid(service, paths)
        if pid is not None:
            _terminate(pid, timeout)
            if pid_alive(pid):
                raise LocalStackError(f"{service.name} (pid {pid}) did not stop; kill it by hand")
        with contextlib.suppress(FileNotFoundError):
            paths.pid_file(service.name).unlink()
        return pid


def service_state(service: Service, paths: StackPaths) -> ServiceState:
    pid = running_pid(service, paths)
    note = ""
    if not service.available:
        note = service.unavailable_reason
    elif pid is None and port_open(service.host, service.port):
        note = f"port {service.port} is taken by another process (change {service.port_setting})"
    return ServiceState(
        name=service.name,
        running=pid is not None,
        pid=pid,
        port=service.port,
        listening=port_open(service.host, service.port),
        log=paths.log_file(service.name),
        note=note,
    )


# --------------------------------------------------------------------------------------------
# the ingester (owned by crypto_platform.stream.supervision)


def stop_ingester(settings: Settings) -> str:
    """Stop a running ingester; a failure is reported, never raised (the services must still stop)."""
    from crypto_platform.stream import supervision

    try:
        return f"ingester: {supervision.stop_ingester(settings)}"
    except Exception as exc:
        return f"ingester: stop failed ({type(exc).__name__}: {exc})"


def stop_lake_writer(settings: Settings) -> str:
    """Stop a running lake writer; a failure is reported, never raised (the services must still stop)."""
    from crypto_platform.lake import writer

    try:
        return f"lake writer: {writer.stop_writer(settings)}"
    except Exception as exc:
        return f"lake writer: stop failed ({type(exc).__name__}: {exc})"


# --------------------------------------------------------------------------------------------
# the Dagster instance


def temporary_home_notice(settings: Settings) -> str | None:
    """The line to print where Dagster runs on a temporary home, or None where it does not.

    Without DAGSTER_HOME, `dagster dev`, `dg dev`, `dagster-webserver` and the one-shot commands
    read ./dagster.yaml but put the instance in a `.tmp_dagster_home_*` directory that they delete on
    exit, and say "set DAGSTER_HOME to persist". That advice is not needed here: the repo's
    dagster.yaml places every store under `.dagster_home/`, so this line says so.
    """
    if settings.dagster_home_set:
        return None
    root = settings.project_dir
    return (
        f"crypto_platform: nothing is lost with Dagster's temporary directory: runs, event logs, sensor "
        f"cursors and run logs persist in {root / '.dagster_home'} (./dagster.yaml), the platform's data "
        f"in {settings.state_dir}. To run without a temporary directory (and for `dagster-daemon run`, "
        f"which needs a home), put DAGSTER_HOME={root} in {root / '.env'}: `make env` does it."
    )


def install_instance_config(settings: Settings, home: Path) -> Path:
    """Write the repo's ``dagster.yaml`` into ``home`` with its stores under ``home`` (absolute paths).

    For a throwaway instance (a benchmark's DAGSTER_HOME): the repo's file keeps its stores in the
    project's ``.dagster_home/``, relative to the folder Dagster runs in.
    """
    text = (settings.project_dir / "dagster.yaml").read_text()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    target.write_text(re.sub(r"(base_dir: )\.dagster_home", lambda m: m.group(1) + str(home), text))
    return target


def dagster_dev_argv(settings: Settings, python: str = sys.executable) -> list[str]:
    """Plain ``dagster dev`` on loopback (it finds the code location through pyproject.toml's [tool.dg])."""
    return [python, "-m", "dagster", "dev", "-h", LOOPBACK, "-p", str(settings.dagster_port)]
