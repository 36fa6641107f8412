"""The ingester against the simulator's faults: nothing received is lost, every drop is recorded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from crypto_platform.settings import Settings, child_environment
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream import supervision
from crypto_platform.stream.ingester import Backoff
from crypto_platform.stream.manifest import iter_lines, iter_manifest
from crypto_platform.stream.session_ledger import gaps
from crypto_platform_tests.simulator.conftest import wait_for
from crypto_platform_tests.stream.conftest import Running, counts, landed_events, settings_for, wait_landed

RunIngester = Callable[[Settings], Running]


async def test_lands_exactly_what_was_sent_and_heartbeats(tmp_path: Path, run_ingester: RunIngester) -> None:
    async with Simulator(SimulatorConfig(rate=1500, pairs=("BTC-USD", "ETH-USD"))) as sim:
        settings = settings_for(tmp_path, sim, CRYPTO_PAIRS="BTC-USD,ETH-USD")
        running = run_ingester(settings)
        await wait_landed(settings, 1000)
        sim.set_fault("pause")
        await wait_for(lambda: len(landed_events(settings)) == sim.counters()["totals"]["sent"], what="caught up")
        await running.finish()
        sent = sim.counters()["connections"]["1"]["events"]
    assert counts(landed_events(settings, include_active=False)) == sent  # a clean stop seals everything
    beat = supervision.read_status(settings).heartbeat
    assert beat is not None and beat["state"] == "stopped" and beat["events"] > 1000
    assert "simulator-key" not in orjson.dumps(beat).decode()
    (session,) = running.sessions()
    assert session.authenticated and session.close_code == 1000 and session.first_frame_ns is not None
    assert {"XT.BTC-USD", "XQ.ETH-USD", "XAS.BTC-USD"} <= set(session.topics)


async def test_fifty_random_drops_each_reconnect_and_are_in_the_ledger(
    tmp_path: Path, run_ingester: RunIngester
) -> None:
    rng = random.Random(5)
    async with Simulator(SimulatorConfig(rate=2000, pairs=("BTC-USD",))) as sim:
        settings = settings_for(tmp_path, sim, CRYPTO_PAIRS="BTC-USD")
        running = run_ingester(settings)
        for i in range(50):
            conn = str(i + 1)
            await wait_for(
                lambda c=conn: sim.counters()["connections"].get(c, {}).get("sent", 0) > 0,
                what=f"connection {conn} fed",
            )
            sim.set_fault(
                rng.choice(["drop", "close", "slow_consumer", "force_disconnect"]),
                **({"code": rng.choice([1000, 1001, 1011])} if rng.random() < 0.5 else {}),
            )
        await wait_for(lambda: sim.counters()["totals"]["connections"] == 51, what="51st connection")
        await wait_for(lambda: sim.counters()["connections"]["51"]["sent"] > 0, what="last connection fed")
        sim.set_fault("pause")
        await wait_for(lambda: len(landed_events(settings)) == sim.counters()["totals"]["sent"], what="caught up")
        await running.finish()
        sent = sim.counters()["totals"]["events"]
    assert counts(landed_events(settings)) == sent
    ledger = running.sessions()
    assert len(ledger) == 51 and all(s.close_code is not None for s in ledger)
    assert len(gaps(ledger)) == 51  # 50 drops plus the final stop
    assert running.ingester.reconnects == 50


@pytest.mark.parametrize("code", [1000, 1001])
async def test_normal_closes_reconnect_too(tmp_path: Path, run_ingester: RunIngester, code: int) -> None:
    async with Simulator(SimulatorConfig(rate=500)) as sim:
        settings = settings_for(tmp_path, sim)
        run_ingester(settings)
        await wait_for(lambda: sim.counters()["totals"]["sent"] > 0, what="data")
        sim.set_fault("close", code=code)
        await wait_for(lambda: sim.counters()["connections"].get("2", {}).get("sent", 0) > 0, what="reconnected")
        assert sim.counters()["connections"]["1"]["closed"] == code


async def test_every_malformed_kind_is_quarantined_and_the_stream_goes_on(
    tmp_path: Path, run_ingester: RunIngester
) -> None:
    async with Simulator(SimulatorConfig(rate=800)) as sim:
        settings = settings_for(tmp_path, sim)
        running = run_ingester(settings)
        await wait_landed(settings, 50)
        for n, kind in enumerate(("not_array", "no_ev", "invalid_json", "truncated"), start=1):
            sim.set_fault("malformed", kind=kind)
            await wait_for(lambda n=n: running.ingester.landing.quarantined_total == n, what=f"{kind} quarantined")
        before = len(landed_events(settings))
        await wait_landed(settings, before + 50)
        assert sim.counters()["totals"]["connections"] == 1  # no reconnect needed
    lines = (settings.landing_dir / "quarantine.ndjson").read_bytes().splitlines()
    reasons = [orjson.loads(line)["reason"] for line in lines]
    assert len(reasons) == 4 and sum("invalid JSON" in r for r in reasons) == 2


async def test_a_refused_key_stops_retrying_and_says_so(tmp_path: Path, run_ingester: RunIngester) -> None:
    async with Simulator(SimulatorConfig(rate=100, api_keys=frozenset({"the-right-key"}))) as sim:
        settings = settings_for(tmp_path, sim)
        running = run_ingester(settings)
        await wait_for(lambda: running.ingester.state == "auth_failed", what="auth_failed state")
        await wait_for(lambda: (supervision.read_status(settings).heartbeat or {}).get("state") == "auth_failed")
        error = running.ingester.last_error
        assert error is not None and "POLYGON_API_KEY" in error["message"] and "refused" in error["message"]
        assert "simulator-key" not in error["message"]
        assert sim.counters()["totals"]["connections"] == 1  # no fast retries


async def test_max_connections_cools_down_and_names_the_cause(tmp_path: Path, run_ingester: RunIngester) -> None:
    async with Simulator(SimulatorConfig(rate=300)) as sim:
        from crypto_platform_tests.simulator.conftest import RawClient

        other = await RawClient.open(sim)  # someone else is using the key
        await other.login("XT.*")
        settings = settings_for(tmp_path, sim, CRYPTO_MAX_CONNECTIONS_COOLDOWN_S="1.5")
        running = run_ingester(settings)
        await wait_for(lambda: running.ingester.state == "cooldown", what="cooldown")
        assert "another connection is using this API key" in running.ingester.last_error["message"]
        loop = asyncio.get_running_loop()
        cooldown_started = loop.time()
        await wait_for(lambda: sim.counters()["totals"]["connections"] == 3, timeout=10, what="retry after cooldown")
        assert loop.time() - cooldown_started >= 1.5 * 0.9
        await other.close()


async def test_backoff_keeps_connections_bounded_against_a_server_that_drops_everything(
    tmp_path: Path, run_ingester: RunIngester
) -> None:
    async with Simulator(SimulatorConfig(rate=100, faults=(("drop_after_subscribe", {}),))) as sim:
        settings = settings_for(tmp_path, sim, CRYPTO_RECONNECT_INITIAL_S="0.05", CRYPTO_RECONNECT_MAX_S="0.4")
        running = run_ingester(settings)
        await wait_for(lambda: sim.counters()["totals"]["connections"] >= 8, what="8 attempts")
        await running.finish()
    connects = [s.connect_ns for s in running.sessions()]
    waits = [(b - a) / 1e9 for a, b in itertools.pairwise(connects)]
    # Each wait is at least half its backoff step (jitter is in [50%, 100%]): 0.025, 0.05, 0.1, 0.2, 0.2...
    floors = [min(0.4, 0.05 * 2**i) * 0.5 for i in range(len(waits))]
    assert all(w >= f for w, f in zip(waits, floors, strict=True)), (waits, floors)


def test_backoff_steps_cap_and_reset() -> None:
    b = Backoff(initial_s=1.0, max_s=8.0)
    steps = [b.next_delay() for _ in range(6)]
    assert all(lo * 0.5 <= s <= lo for s, lo in zip(steps, [1, 2, 4, 8, 8, 8], strict=True))
    b.reset()
    assert b.next_delay() <= 1.0


async def test_a_subscription_change_survives_a_reconnect(tmp_path: Path, run_ingester: RunIngester) -> None:
    async with Simulator(SimulatorConfig(rate=800, pairs=("BTC-USD", "ETH-USD"))) as sim:
        settings = settings_for(tmp_path, sim, CRYPTO_PAIRS="BTC-USD", CRYPTO_CHANNELS="XT")
        running = run_ingester(settings)
        await wait_landed(settings, 20)
        supervision.request_topics(settings, ["XT.BTC-USD", "XQ.ETH-USD"])
        await wait_for(lambda: any(e["ev"] == "XQ" for e in landed_events(settings)), what="new topic live")
        sim.set_fault("drop")
        await wait_for(lambda: sim.counters()["totals"]["connections"] == 2, what="reconnect")
        await wait_for(
            lambda: sim.counters()["connections"]["2"]["events"].get("XQ", {}).get("ETH-USD", 0) > 0,
            what="new topic on the new session",
        )
        topics = sim.counters()["connections"]["2"]["topics"]
        assert topics == ["XQ.ETH-USD", "XT.BTC-USD"]
        await running.finish()


def _start_stream(settings: Settings) -> subprocess.Popen[bytes]:
    env = child_environment(
        {
            "CRYPTO_STATE_DIR": str(settings.state_dir),
            "CRYPTO_SIMULATOR_PORT": str(settings.simulator_port),
            "CRYPTO_SEGMENT_MAX_AGE_S": "60",
            "CRYPTO_FSYNC": "never",
            "CRYPTO_RECONNECT_INITIAL_S": "0.05",
            "CRYPTO_PAIRS": "BTC-USD,ETH-USD",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_platform.cli", "stream"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the ingester's sealer), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_loses_nothing_received_and_restart_continues(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(rate=1500, pairs=("BTC-USD", "ETH-USD"), record_trades=True))
    with sim.running_in_thread():
        settings = settings_for(tmp_path, sim)
        first = _start_stream(settings)
        second = None
        try:
            asyncio.run(wait_landed(settings, 2000))
            sim.set_fault("pause")  # nothing in flight: what was sent was received
            asyncio.run(
                wait_for(
                    lambda: len(landed_events(settings)) == sim.counters()["totals"]["sent"],
                    what="received everything sent",
                )
            )
            # Segments are 60 s long, so the kill lands in the middle of an unsealed segment.
            assert list((settings.landing_dir / "active").glob("*.open"))
            (sealer,) = child_pids(first.pid)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            # Its sealer process sees the pipe close and exits (nothing was handed to it) ...
            asyncio.run(wait_for(lambda: not alive(sealer), what="the sealer process gone"))
            sim.clear_faults()
            second = _start_stream(settings)
            asyncio.run(
                wait_for(
                    lambda: (
                        sim.counters()["totals"]["connections"] == 2
                        and sim.counters()["connections"]["2"]["sent"] > 500
                    ),
                    what="second session fed",
                )
            )
            sim.set_fault("pause")
            asyncio.run(
                wait_for(
                    lambda: len(landed_events(settings)) == sim.counters()["totals"]["sent"],
                    what="received everything sent after restart",
                )
            )
            assert "stopped" in supervision.stop_ingester(settings)
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        sent = sim.counters()
    landed = landed_events(settings, include_active=False)
    keys = [f"{e['pair']}|{e['x']}|{e['i']}" for e in landed if e["ev"] == "XT"]
    sent_keys = sent["connections"]["1"]["trade_keys"] + sent["connections"]["2"]["trade_keys"]
    assert sorted(keys) == sorted(sent_keys)
    assert len(set(keys)) == len(keys)
    assert counts(landed) == sent["totals"]["events"]
    ledger = __import__("crypto_platform.stream.session_ledger", fromlist=["sessions"]).sessions(
        settings.landing_dir / "sessions.ndjson"
    )
    assert [s.reason for s in ledger] == ["ingester stopped without closing (crash or kill)", "stopped"]
    # The killed session is closed at its last landed frame (taken from the manifest's last entry).
    root = settings.landing_dir
    frames = [(recv, n) for e in iter_manifest(root) for recv, n, _ in iter_lines(root / e["file"])]
    assert ledger[0].last_frame_ns == max(recv for recv, n in frames if n == 1)


def test_a_second_ingester_is_refused(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(rate=100))
    with sim.running_in_thread():
        settings = settings_for(tmp_path, sim)
        pid = supervision.start_detached(settings)
        try:
            with pytest.raises(supervision.IngesterAlreadyRunning, match=f"pid {pid}"):
                supervision.start_detached(settings)
            second = _start_stream(settings)
            assert second.wait(20) == 3
            assert supervision.holder_pid(settings) == pid
        finally:
            assert "stopped" in supervision.stop_ingester(settings)
        assert supervision.holder_pid(settings) is None
