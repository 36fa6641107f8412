"""The stream as a Dagster resource: the sensor's handle on the ingester and the landing log.

Fields are paths and limits, taken from the settings in one place; the ingester itself reads its
connection settings (and the key) from the environment it inherits, never from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from crypto_platform.settings import Settings, child_environment, load_settings
from crypto_platform.stream import supervision
from crypto_platform.stream.manifest import iter_manifest, log_id
from crypto_platform.stream.session_ledger import Gap, Session, gaps, ledger_path, sessions


class StreamResource(dg.ConfigurableResource):
    """Keeps the ingester running and lists sealed landing segments."""

    project_dir: str
    state_dir: str
    data_dir: str
    # The sensor starts the ingester when none runs; off for deployments that run it as a service.
    autostart: bool = True
    # Start the local simulator (when the settings use it and nothing serves its port) before the ingester.
    start_simulator: bool = False
    max_segments_per_tick: int = 500
    # CRYPTO_BATCH_INTERVAL_S: at most one round of stream_batch runs per this many seconds (0: every tick).
    batch_interval_s: float = 0.0
    # CRYPTO_CHECK_INTERVAL_S / CRYPTO_SNOWFLAKE_INTERVAL_S: how often a round also runs the lake checks /
    # the Snowflake copies (0: every round).
    check_interval_s: float = 0.0
    snowflake_interval_s: float = 0.0
    _settings: Settings | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        """The platform's settings for these folders, read once per resource instance."""
        if self._settings is None:
            self._settings = load_settings(
                child_environment(
                    {
                        "CRYPTO_PROJECT_DIR": self.project_dir,
                        "CRYPTO_STATE_DIR": self.state_dir,
                        "CRYPTO_DATA_DIR": self.data_dir,
                    }
                )
            )
        return self._settings

    @property
    def landing_dir(self) -> Path:
        return Path(self.data_dir) / "landing"

    @property
    def ledger_path(self) -> Path:
        return ledger_path(self.landing_dir)

    def sessions(self) -> list[Session]:
        """Every session of the stream's ledger, oldest first."""
        return sessions(self.ledger_path)

    def gaps(self) -> list[Gap]:
        """The ledger's gaps between sessions that received data (the last one open while disconnected)."""
        return gaps(self.sessions())

    def log_id(self) -> str | None:
        return log_id(self.landing_dir)

    def sealed_after(self, seq: int) -> list[dict[str, Any]]:
        out = []
        for entry in iter_manifest(self.landing_dir, after_seq=seq):
            out.append(entry)
            if len(out) > self.max_segments_per_tick:
                break
        return out

    def status(self) -> supervision.IngesterStatus:
        return supervision.read_status(self.settings())

    def ensure_running(self) -> str:
        """Start the ingester when none holds the lock (and the local simulator first); say what was done."""
        settings = self.settings()
        simulator = ""
        if self.autostart and self.start_simulator and settings.uses_simulator:
            # Every tick, not only before a start: an ingester whose simulator went away only reconnects.
            from crypto_platform.local.stack import ensure_service, simulator_service

            said = ensure_service(simulator_service(settings), settings.state_dir)
            simulator = f"; {said}" if said else ""
        status = supervision.read_status(settings)
        if status.running:
            state = "running" if not status.stale else f"running (pid {status.pid}) but its heartbeat is stale"
            return state + simulator
        if not self.autostart:
            return "not running (autostart is off)"
        pid = supervision.start_detached(settings)
        return f"started (pid {pid}){simulator}"

    def ensure_writer(self) -> str:
        """Start the lake writer (raw tables appended as segments seal) when none runs; say what was done."""
        from crypto_platform.lake import writer

        settings = self.settings()
        pid = writer.running_pid(settings)
        if pid is not None:
            return "running"
        if not self.autostart:
            return "not running (autostart is off)"
        return f"started (pid {writer.start_detached(settings)})"


def build_stream_resource(settings: Settings) -> StreamResource:
    return StreamResource(
        project_dir=str(settings.project_dir),
        state_dir=str(settings.state_dir),
        data_dir=str(settings.data_dir),
        autostart=settings.ingester_autostart,
        start_simulator=settings.uses_simulator,
        batch_interval_s=settings.batch_interval_s,
        check_interval_s=settings.check_interval_s,
        snowflake_interval_s=settings.snowflake_interval_s,
    )
