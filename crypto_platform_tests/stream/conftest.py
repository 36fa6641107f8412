"""Ingester fixtures: a simulator on loopback and settings whose data lives in a temp directory."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from crypto_platform.settings import Settings
from crypto_platform.simulator.server import Simulator
from crypto_platform.stream.ingester import Ingester
from crypto_platform.stream.landing_log import validate
from crypto_platform.stream.manifest import iter_lines, iter_manifest
from crypto_platform.stream.session_ledger import Session, sessions
from crypto_platform_tests.conftest import local_settings
from crypto_platform_tests.simulator.conftest import wait_for

FAST = {
    "CRYPTO_SEGMENT_MAX_AGE_S": "0.2",
    "CRYPTO_RECONNECT_INITIAL_S": "0.02",
    "CRYPTO_RECONNECT_MAX_S": "0.2",
    "CRYPTO_HANDSHAKE_TIMEOUT_S": "2",
    "CRYPTO_FSYNC": "never",
}


def settings_for(tmp_path: Path, sim: Simulator, **env: str) -> Settings:
    return local_settings(tmp_path, CRYPTO_SIMULATOR_PORT=str(sim.port), **{**FAST, **env})


class Running:
    """An ingester running as a task in the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ingester = Ingester(settings)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.ingester.run(self.stop))

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)

    def sessions(self) -> list[Session]:
        return sessions(self.settings.landing_dir / "sessions.ndjson")


@pytest.fixture
async def run_ingester() -> AsyncIterator[Callable[[Settings], Running]]:
    started: list[Running] = []

    def start(settings: Settings) -> Running:
        running = Running(settings)
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.finish()


def landed_events(settings: Settings, include_active: bool = True) -> list[dict[str, Any]]:
    """Every data event in the landing log: the sealed segments (the manifest's), or everything written.

    With ``include_active`` it also counts segments not sealed yet (skipping the malformed frames the
    sealer has not taken out yet), while the ingester's sealer process moves them from ``active/`` to
    ``segments/``: a listing of ``active/`` that did not change while ``segments/`` was listed, and
    whose files could all be read, holds every segment exactly once.
    """
    root = settings.landing_dir
    if not include_active:
        return _data_events([root / e["file"] for e in iter_manifest(root)])
    while True:
        active = sorted((root / "active").glob("*.open"))
        sealed = sorted((root / "segments").glob("*.ndjson"))
        if sorted((root / "active").glob("*.open")) != active:
            continue
        try:
            return _data_events(sealed) + _data_events(active, unchecked=True)
        except FileNotFoundError:  # sealed while being read: look again
            continue


def _data_events(paths: list[Path], unchecked: bool = False) -> list[dict[str, Any]]:
    frames = [f for path in paths for _, _, f in iter_lines(path)]
    parsed = [validate(f)[0] or [] for f in frames] if unchecked else [orjson.loads(f) for f in frames]
    return [e for events in parsed for e in events if e["ev"] != "status"]


def counts(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for e in events:
        out.setdefault(e["ev"], Counter())[e["pair"]] += 1
    return {ch: dict(c) for ch, c in out.items()}


async def wait_landed(settings: Settings, n: int, timeout: float = 15.0) -> None:
    await wait_for(lambda: len(landed_events(settings)) >= n, timeout, f"{n} events landed")
