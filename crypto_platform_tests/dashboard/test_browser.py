"""End to end in a real browser: simulator -> ingester -> stream runs -> lake and MariaDB -> the page.

The page is the served app (``crypto-platform dashboard`` started as the local stack's background
service, as ``make dev`` does), read by headless Chromium from Debian's ``chromium`` package through
Playwright (no browser download). The pipeline is the platform's own: the stream sensor starts the
detached ingester, and the runs it requests execute with the platform's Definitions against MariaDB,
the fakesnow server and an MLflow store, as in ``test_end_to_end.py``. A whale trade planted through
the simulator's feed must come out as an alert on the page.

A screenshot of the page is saved under ``test-artifacts/`` (git-ignored); the test prints its path.
Without /usr/bin/chromium the test skips, except in CI (``CI=true``), where it fails naming the package.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from crypto_platform.definitions import build_definitions
from crypto_platform.lake import writer
from crypto_platform.local import stack as ls
from crypto_platform.settings import Settings, child_environment
from crypto_platform.simulator.server import Simulator, SimulatorConfig
from crypto_platform.stream import supervision
from crypto_platform.stream.manifest import count_manifest
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform_tests.conftest import execute_request, free_port, local_settings

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PAIRS = ("BTC-USD", "ETH-USD")
DEADLINE_S = 300.0  # generous: a stream run takes ~40 s on a machine shared with a dozen others
WHALE_SIZE = "25"  # at the market's BTC-USD price (~100,000): a notional far above the default 1,000,000


def chromium_or_skip() -> Path:
    if CHROMIUM.is_file():
        return CHROMIUM
    message = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def wait_for(what: str, condition: Callable[[], Any], deadline_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def pipeline(
    tmp_path: Path,
    mysql_server: dict[str, object],
    mysql_database: str,
    fakesnow_server: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Settings, Simulator]]:
    sim = Simulator(SimulatorConfig(rate=60, pairs=PAIRS))
    with sim.running_in_thread():
        env = {
            "CRYPTO_SIMULATOR_PORT": str(sim.port),
            "CRYPTO_PAIRS": ",".join(PAIRS),
            "CRYPTO_SEGMENT_MAX_AGE_S": "0.5",
            "CRYPTO_BATCH_INTERVAL_S": "0",  # a run per tick: these tests drive micro-batches themselves
            "MYSQL_URL": f"mysql+pymysql://{mysql_server['user']}@{mysql_server['host']}:{mysql_server['port']}/"
            f"{mysql_database}",
            "CRYPTO_FAKESNOW_PORT": str(fakesnow_server.snowflake.port),
            "SNOWFLAKE_DATABASE": f"DASH_{uuid.uuid4().hex[:8].upper()}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "CRYPTO_DASHBOARD_PORT": str(free_port()),
        }
        # The detached ingester and the dashboard read these from the environment they inherit.
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = local_settings(tmp_path, **env)
        try:
            yield settings, sim
        finally:
            supervision.stop_ingester(settings)
            writer.stop_writer(settings)  # the stream sensor started it beside the ingester


@pytest.fixture
def dashboard(pipeline: tuple[Settings, Simulator]) -> Iterator[str]:
    """The page as `make dev` serves it: the local stack's dashboard service; yields its URL."""
    settings, _ = pipeline
    service = ls.dashboard_service(settings)
    paths = ls.stack_paths(settings)
    ls.start_service(service, paths, child_environment(ls.stack_environment(settings)), ready_timeout=120)
    try:
        yield f"http://127.0.0.1:{service.port}"
    finally:
        ls.stop_service(service, paths)
        assert not ls.port_open("127.0.0.1", service.port), "the dashboard stopped with its service"


class Pipeline:
    """Sensor ticks and the runs they request, in this process, on a real Dagster instance."""

    def __init__(self, settings: Settings, instance: dg.DagsterInstance) -> None:
        self.settings = settings
        self.defs = build_definitions(settings)
        self.sensor = self.defs.resolve_sensor_def("stream_sensor")
        self.job = self.defs.resolve_job_def(self.sensor.job_name)
        self.resources: dict[str, Any] = {"stream": self.defs.resources["stream"]}  # type: ignore[index]
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> int:
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources) as ctx:
            result = self.sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor or self.cursor
        for request in result.run_requests or []:
            outcome = execute_request(self.job, self.instance, request)
            assert outcome.success, request.tags
        return len(result.run_requests or [])

    def drain(self) -> None:
        """Run until every sealed segment is loaded and no new one arrives (the feed is paused).

        Runs may be slow on a busy machine (the test's timeout bounds them); segments sealed long
        after the pause would mean the feed did not stop.
        """
        started = time.monotonic()
        sealed = -1
        while True:
            now_sealed = count_manifest(self.settings.landing_dir)
            if now_sealed != sealed and sealed >= 0:
                assert time.monotonic() - started < DEADLINE_S, "segments kept arriving while the feed was paused"
            if self.tick() == 0 and now_sealed == sealed:
                return
            sealed = now_sealed
            # A paused feed seals its last segment within CRYPTO_SEGMENT_MAX_AGE_S; wait that long.
            time.sleep(self.settings.segment_max_age_s * 2)


def latest_in_table(warehouse: SqlWarehouse, pair: str) -> Decimal:
    ((price,),) = warehouse.query("SELECT price FROM crypto_latest_price WHERE pair = %s", (pair,))
    return Decimal(str(price))


def text(value: Decimal) -> str:
    return format(value.normalize(), "f")


@pytest.mark.slow
@pytest.mark.timeout(900)  # several stream runs on a busy machine: bounded by the waits' deadlines
def test_the_page_shows_live_prices_and_a_planted_whale_alert_in_chromium(
    pipeline: tuple[Settings, Simulator], dashboard: str
) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium_or_skip()
    settings, sim = pipeline
    warehouse = SqlWarehouse(settings.mysql_url)
    with dg.instance_for_test() as instance, sync_playwright() as pw:
        runs = Pipeline(settings, instance)
        wait_for("a first stream run", runs.tick)  # the sensor starts the ingester, then loads its segments
        wait_for(
            "BTC-USD trades in the table",
            lambda: runs.tick() >= 0 and warehouse.query("SELECT 1 FROM crypto_latest_price WHERE pair = 'BTC-USD'"),
        )
        whale_price = latest_in_table(warehouse, "BTC-USD")
        sim.plant_trade("BTC-USD", text(whale_price), WHALE_SIZE)
        sim.set_fault("pause")
        runs.drain()
        first = latest_in_table(warehouse, "BTC-USD")
        ((whale_value,),) = warehouse.query(
            "SELECT value FROM crypto_alerts WHERE rule = 'whale_trade' AND pair = 'BTC-USD'"
        )
        assert Decimal(str(whale_value)) == whale_price * Decimal(WHALE_SIZE)

        browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1500})
        page.goto(dashboard)
        btc = page.locator('[data-testid="stMetric"]', has_text="BTC-USD").first
        expect(btc.locator('[data-testid="stMetricValue"]')).to_have_text(text(first), timeout=60_000)
        alerts = page.locator('[data-testid="stTable"]')
        whale_row = alerts.locator("tr", has_text="whale_trade")
        expect(whale_row).to_contain_text("BTC-USD", timeout=30_000)
        expect(whale_row).to_contain_text(text(Decimal(str(whale_value))))

        # New trades land: the open page follows without a reload.
        sim.clear_faults()
        wait_for(
            "new BTC-USD trades in the table",
            lambda: runs.tick() >= 0 and latest_in_table(warehouse, "BTC-USD") != first,
        )
        sim.set_fault("pause")
        runs.drain()
        second = latest_in_table(warehouse, "BTC-USD")
        assert second != first
        expect(btc.locator('[data-testid="stMetricValue"]')).to_have_text(text(second), timeout=60_000)

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard-e2e.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the page: {shot}")
        browser.close()
