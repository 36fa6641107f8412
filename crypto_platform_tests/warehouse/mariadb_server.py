"""A throwaway MariaDB server of a test's own: its own datadir, socket and port, stopped and started at will.

Why not the machine's server: an outage test has to stop the database under a running platform and
start it again on the same data, which must never happen to the server other tests (and other
people) use. Starting one costs about 1 s (``mariadb-install-db``) plus 0.1-0.3 s per start
(measured on the test machine).

Run as OS root it passes ``--user=root`` (mariadbd refuses root otherwise, and pytest's private temp
directories are not readable by the ``mysql`` user); as anyone else it runs as that user. Root gets
in over TCP without a password (``--auth-root-authentication-method=normal``); the server listens on
127.0.0.1 only and lives as long as the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

SERVER_NAMES = ("mariadbd", "mysqld")
INSTALL_NAMES = ("mariadb-install-db", "mysql_install_db")


def _find(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or next(
            (str(p) for d in ("/usr/sbin", "/usr/bin") if (p := Path(d) / name).exists()), None
        )
        if found:
            return found
    return None


def unavailable_reason() -> str | None:
    """Why no throwaway server can be started here (None: it can)."""
    missing = [names[0] for names in (SERVER_NAMES, INSTALL_NAMES) if _find(names) is None]
    return f"{' and '.join(missing)} not installed (apt-get install mariadb-server)" if missing else None


class ThrowawayMariaDB:
    """One MariaDB server under ``base`` (datadir, socket, logs) on ``port`` of 127.0.0.1."""

    def __init__(self, base: Path, port: int) -> None:
        self.base = base
        self.port = port
        self.host = "127.0.0.1"
        self.datadir = base / "data"
        self.log = base / "mariadbd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = ["--user=root"] if os.geteuid() == 0 else []

    # -- lifecycle ------------------------------------------------------------------------------

    def install(self, timeout: float = 120) -> None:
        """Initialise the datadir (system tables, root without a password)."""
        installer = _find(INSTALL_NAMES)
        assert installer, unavailable_reason()
        done = subprocess.run(
            [
                installer,
                "--no-defaults",
                *self._user,
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=8M",  # a 100 MB redo log is the default: not for a test
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{installer} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]!r}")

    def start(self, timeout: float = 60) -> None:
        """Start mariadbd on the datadir and wait (with a deadline) until it accepts connections."""
        server = _find(SERVER_NAMES)
        assert server, unavailable_reason()
        assert self._proc is None, "already running"
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    server,
                    "--no-defaults",  # must come first: nothing from /etc/mysql
                    *self._user,
                    f"--datadir={self.datadir}",
                    f"--port={self.port}",
                    f"--bind-address={self.host}",
                    f"--socket={self.base / 'mysqld.sock'}",
                    f"--pid-file={self.base / 'mysqld.pid'}",
                    f"--log-error={self.log}",
                    "--skip-name-resolve",
                    "--innodb-log-file-size=8M",
                    "--innodb-buffer-pool-size=64M",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C on the test run does not reach it before stop()
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise RuntimeError(f"mariadbd exited with {code} while starting: {self.log_tail()}")
            try:
                self.admin().close()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"mariadbd not accepting connections after {timeout} s ({exc}): {self.log_tail()}"
                    ) from None
            time.sleep(0.05)  # the poll interval of the readiness condition above, not a synchronisation

    def stop(self, timeout: float = 60) -> None:
        """Shut the server down (SIGTERM: a clean InnoDB shutdown), killing it if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return "(no log)"

    # -- use ------------------------------------------------------------------------------------

    def admin(self, **kwargs: Any) -> Any:
        """A root connection over TCP (autocommit)."""
        import pymysql

        return pymysql.connect(
            host=self.host, port=self.port, user="root", password="", connect_timeout=2, autocommit=True, **kwargs
        )

    def execute(self, *statements: str) -> None:
        conn = self.admin()
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
        finally:
            conn.close()

    def url(self, user: str, password: str, database: str) -> str:
        return f"mysql+pymysql://{user}:{password}@{self.host}:{self.port}/{database}"
