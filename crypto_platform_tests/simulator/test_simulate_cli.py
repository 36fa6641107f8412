"""``crypto-platform simulate`` as an outside test runs it: a process of its own, asked over HTTP."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from types import SimpleNamespace
from typing import Any

import orjson

from crypto_platform.settings import child_environment
from crypto_platform_tests.conftest import free_port
from crypto_platform_tests.simulator.conftest import RawClient, wait_for


def counters(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/counters", timeout=5) as answer:
        return orjson.loads(answer.read())


async def test_record_trades_lists_every_sent_trade_key_in_the_counters() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "crypto_platform.cli", "simulate", "--port", str(port), "--rate", "300"]
    proc = subprocess.Popen([*cmd, "--record-trades"], env=child_environment(), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert b"simulator:" in proc.stdout.readline()  # printed once it listens
        client = await RawClient.open(SimpleNamespace(ws_url=f"ws://127.0.0.1:{port}/crypto"))  # type: ignore[arg-type]
        await client.login("XT.*")
        await wait_for(lambda: len(client.events("XT")) >= 20, what="trades")
        await client.close()
        await wait_for(lambda: counters(port)["connections"]["1"]["closed"] is not None, what="closed")
        keys = [f"{e['pair']}|{e['x']}|{e['i']}" for e in client.events("XT")]
        assert keys == counters(port)["connections"]["1"]["trade_keys"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_without_the_flag_no_trade_keys_are_kept() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "crypto_platform.cli", "simulate", "--port", str(port), "--rate", "300"]
    proc = subprocess.Popen(cmd, env=child_environment(), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert b"simulator:" in proc.stdout.readline()
        client = await RawClient.open(SimpleNamespace(ws_url=f"ws://127.0.0.1:{port}/crypto"))  # type: ignore[arg-type]
        await client.login("XT.*")
        await wait_for(lambda: len(client.events("XT")) >= 5, what="trades")
        await client.close()
        assert "trade_keys" not in counters(port)["connections"]["1"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
