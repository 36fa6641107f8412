"""The persistent local Snowflake: fakesnow's HTTP server with one shared, file-backed instance.

Why a launcher of our own: ``fakesnow -s`` ignores ``-d`` and keeps
everything in memory, and the per-session ``FAKESNOW_DB_PATH`` parameter gives every login its own
DuckDB handle, so a second session fails with "Unique file handle conflict". Replacing the server's
module-level ``shared_fs`` with one ``FakeSnow(db_path=...)`` makes every session share one
instance whose databases are files under ``db_dir``: concurrent sessions see each other's writes and
the data survives restarts. This relies on a fakesnow internal, which is why fakesnow is pinned.

After a restart the database files exist but are not attached; a session would then find
``MARKET_DATA.POLYGON.T`` missing. The launcher re-attaches every ``<NAME>.db`` at start with
``CREATE DATABASE IF NOT EXISTS`` (the same statement a client would run), so the first session
needs no special step. On shutdown (SIGINT/SIGTERM, handled by uvicorn) each database is
checkpointed so its write-ahead log is folded into the file.

Run as ``python -m crypto_platform.local.fakesnow_server --host 127.0.0.1 --port 8766 --db-dir var/fakesnow/db``;
the local stack (``crypto-platform dev`` / ``services start``) and the test fixtures do exactly that.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("crypto_platform.local.fakesnow_server")


def _database_files(db_dir: Path) -> list[Path]:
    """The database files fakesnow created (``<NAME>.db``), skipping anything that cannot be a name."""
    return sorted(p for p in db_dir.glob("*.db") if p.is_file() and '"' not in p.stem and p.stem)


def prepare_shared_instance(db_dir: Path, stage_dir: Path | None = None) -> Any:
    """Install a persistent shared ``FakeSnow`` into ``fakesnow.server`` and re-attach existing databases.

    Returns the instance. Separate from :func:`serve` so it can be exercised without a socket.
    """
    import fakesnow.server as fss
    from fakesnow.instance import FakeSnow
    from fakesnow.transforms import stage

    db_dir.mkdir(parents=True, exist_ok=True)
    if stage_dir is not None:
        # Files PUT to internal stages would otherwise go to a fresh /tmp/fakesnow_bucket_* per start.
        stage_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            Path(stage.LOCAL_BUCKET_PATH).rmdir()  # the empty temp dir fakesnow made at import
        stage.LOCAL_BUCKET_PATH = str(stage_dir.resolve())

    instance = FakeSnow(db_path=db_dir)
    fss.shared_fs = instance
    cur = instance.connect().cursor()
    try:
        for path in _database_files(db_dir):
            cur.execute(f'CREATE DATABASE IF NOT EXISTS "{path.stem}"')
            log.info("re-attached %s", path.name)
    finally:
        cur.close()
    return instance


def checkpoint_and_close(instance: Any) -> None:
    """Fold every attached file database's WAL into its file, then close DuckDB."""
    duck = instance.duck_conn
    with contextlib.suppress(Exception):
        rows = duck.execute(
            "SELECT database_name FROM duckdb_databases() WHERE path IS NOT NULL AND NOT internal"
        ).fetchall()
        for (name,) in rows:
            with contextlib.suppress(Exception):
                duck.execute(f'CHECKPOINT "{name}"')
    with contextlib.suppress(Exception):
        duck.close()


def serve(host: str, port: int, db_dir: Path, stage_dir: Path | None = None) -> None:
    """Serve the Snowflake HTTP API on ``host:port`` until SIGINT/SIGTERM."""
    import fakesnow.server as fss
    import uvicorn

    instance = prepare_shared_instance(db_dir, stage_dir)
    server = uvicorn.Server(uvicorn.Config(fss.app, host=host, port=port, log_level="warning", lifespan="off"))
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler
    # that was installed before it; make that a no-op so the checkpoint below still runs.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    finally:
        checkpoint_and_close(instance)
    if not server.started:
        # uvicorn logs the bind error itself; exit non-zero so the launcher reports it.
        raise SystemExit(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Persistent local fakesnow server (loopback only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db-dir", type=Path, required=True, help="directory holding <DATABASE>.db files")
    parser.add_argument("--stage-dir", type=Path, default=None, help="backing directory of internal stages")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the local Snowflake stand-in listens on loopback only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("fakesnow.server").propagate = False  # it already logs through uvicorn's handlers
    serve(args.host, args.port, args.db_dir.resolve(), args.stage_dir.resolve() if args.stage_dir else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
