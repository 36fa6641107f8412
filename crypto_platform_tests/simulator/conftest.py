"""Simulator fixtures and a minimal raw WebSocket client for observing exactly what is on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from crypto_platform.simulator.server import Simulator, SimulatorConfig

KEY = "simulator-key"
# A fixed past minute, so history-based tests are reproducible.
HISTORY_START_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A fast real-time simulator (about 400 events/s over two pairs)."""
    async with Simulator(SimulatorConfig(rate=400, pairs=("BTC-USD", "ETH-USD"), record_trades=True)) as sim:
        yield sim


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class RawClient:
    """Speaks the protocol by hand and keeps every frame, so tests see exactly what was sent."""

    ws: ClientConnection
    frames: list[Any] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, sim: Simulator, **kwargs: Any) -> RawClient:
        ws = await connect(sim.ws_url, max_size=None, **kwargs)
        client = cls(ws)
        client._reader = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._read_all()

    async def _read_all(self) -> None:
        async for message in self.ws:
            text = message if isinstance(message, str) else message.decode()
            self.texts.append(text)
            try:
                self.frames.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                self.frames.append(None)

    def events(self, ev: str | None = None) -> list[dict[str, Any]]:
        out = [e for f in self.frames if isinstance(f, list) for e in f if isinstance(e, dict)]
        return [e for e in out if ev is None or e.get("ev") == ev]

    def statuses(self) -> list[str]:
        return [e["status"] for e in self.events("status")]

    async def send(self, action: str, params: str) -> None:
        await self.ws.send(orjson.dumps({"action": action, "params": params}).decode())

    async def login(self, topics: str, key: str = KEY) -> None:
        await wait_for(lambda: "connected" in self.statuses(), what="greeting")
        await self.send("auth", key)
        await wait_for(lambda: "auth_success" in self.statuses(), what="auth_success")
        await self.send("subscribe", topics)

    async def closed(self, timeout: float = 10.0) -> int | None:
        assert self._reader is not None
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
