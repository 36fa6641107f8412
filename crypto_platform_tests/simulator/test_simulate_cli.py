"""``crypto-platform simulate`` as a process: what its flags switch on is visible to a real client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from websockets.sync.client import connect

from crypto_platform_tests.conftest import free_port

KEY = "simulator-key"


@contextmanager
def simulate(*flags: str) -> Iterator[int]:
    port = free_port()
    cmd = [sys.executable, "-m", "crypto_platform.cli", "simulate", "--port", str(port), "--rate", "400", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                counters(port)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    said = proc.stderr.read() if proc.stderr else ""
                    raise AssertionError(f"the simulator did not start: {said}") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def counters(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/counters", timeout=5) as resp:
        return json.load(resp)


def receive_trades(port: int, count: int) -> list[dict[str, Any]]:
    """Log in, subscribe to every pair's trades and keep the first ``count`` trades received."""
    trades: list[dict[str, Any]] = []
    with connect(f"ws://127.0.0.1:{port}/crypto") as ws:
        ws.recv(timeout=10)
        ws.send(orjson.dumps({"action": "auth", "params": KEY}).decode())
        ws.recv(timeout=10)
        ws.send(orjson.dumps({"action": "subscribe", "params": "XT.*"}).decode())
        deadline = time.monotonic() + 30
        while len(trades) < count:
            assert time.monotonic() < deadline, f"only {len(trades)} trades in 30 s"
            trades += [e for e in orjson.loads(ws.recv(timeout=10)) if e["ev"] == "XT"]
    return trades


def test_record_trades_lists_every_trade_sent_in_the_counters() -> None:
    with simulate("--record-trades") as port:
        received = receive_trades(port, 20)
        deadline = time.monotonic() + 10
        while (conn := counters(port)["connections"]["1"])["closed"] is None:
            assert time.monotonic() < deadline, "the simulator did not see the connection close"
            time.sleep(0.05)
    keys = [f"{e['pair']}|{e['x']}|{e['i']}" for e in received]
    # The client stopped reading after ``count`` trades; the simulator may have sent a few more.
    assert conn["trade_keys"][: len(keys)] == keys
    assert len(conn["trade_keys"]) == sum(conn["events"]["XT"].values())


def test_trade_keys_are_not_kept_without_the_flag() -> None:
    with simulate() as port:
        receive_trades(port, 5)
        assert "trade_keys" not in counters(port)["connections"]["1"]
