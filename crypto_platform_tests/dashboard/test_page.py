"""The market page through Streamlit's own ``AppTest``: each panel and each bad state, against a
known day in the lake and the warehouse (the SQLite stand-in and MariaDB), with real ingester files.

The page reads its settings from the environment like the served app, so each test sets the
variables and clears the page's caches (one process runs every test).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from crypto_platform.dashboard import cached, data
from crypto_platform.dashboard.app import RANGES_MIN
from crypto_platform.resources.lake import build_lake_resource
from crypto_platform.settings import Settings, load_settings
from crypto_platform.stream import supervision
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform_tests.conftest import free_port
from crypto_platform_tests.dashboard.known_day import (
    BTC_CHANGES,
    BTC_LATEST,
    MINUTE,
    PAIRS,
    KnownDay,
    load_known_day,
)

APP = Path(data.__file__).with_name("app.py")
PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def page_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Sets the page's environment (state under tmp_path); returns the settings the page will load."""

    def configure(**env: str) -> Settings:
        base = {
            "CRYPTO_PROJECT_DIR": str(PROJECT_DIR),
            "CRYPTO_STATE_DIR": str(tmp_path / "state"),
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "CRYPTO_PAIRS": ",".join(PAIRS),
        }
        for name in ("MYSQL_URL", "POLYGON_API_KEY", "SNOWFLAKE_ACCOUNT"):
            monkeypatch.delenv(name, raising=False)
        for name, value in {**base, **env}.items():
            monkeypatch.setenv(name, value)
        cached.clear()
        return load_settings()

    return configure


@pytest.fixture(params=["sqlite", "mysql"])
def empty(request: pytest.FixtureRequest, page_env: Callable[..., Settings]) -> Settings:
    """The page's settings on an empty warehouse: the SQLite stand-in or a throwaway MariaDB database."""
    env = {}
    if request.param == "mysql":
        server = request.getfixturevalue("mysql_server")
        db = request.getfixturevalue("mysql_database")
        env["MYSQL_URL"] = (
            f"mysql+pymysql://{server['user']}:{server['password']}@{server['host']}:{server['port']}/{db}"
        )
    return page_env(**env)


@pytest.fixture
def known(empty: Settings) -> tuple[Settings, KnownDay]:
    """A known day in the lake and in the warehouse (SQLite stand-in or MariaDB)."""
    return empty, load_known_day(build_lake_resource(empty), SqlWarehouse(empty.mysql_url))


def run_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in at.get(kind)]


def utc(value: int | str) -> pd.Timestamp:
    """Epoch ms, or a time as plotly writes it (UTC, without a zone), as a naive UTC timestamp."""
    t = pd.Timestamp(value, unit="ms") if isinstance(value, int) else pd.Timestamp(value)
    return t.tz_convert(None) if t.tzinfo else t


def metric(at: AppTest, label: str) -> str:
    (found,) = [m for m in at.metric if m.label == label]
    return str(found.value)


@pytest.fixture
def live_ingester(page_env: Callable[..., Settings]) -> Iterator[Callable[..., None]]:
    """Makes the page see a running ingester: the real lock held here, and a heartbeat written."""
    holders: list[supervision.IngesterLock] = []

    def start(settings: Settings, *, last_event_age_s: float, last_error: str | None = None) -> None:
        lock = supervision.IngesterLock(settings)
        lock.acquire()
        holders.append(lock)
        now_ms = int(time.time() * 1000)
        supervision.write_heartbeat(
            settings,
            {
                "state": "streaming",
                "session": 2,
                "events_per_s": 123.4,
                "last_event_ms": now_ms - int(last_event_age_s * 1000),
                "reconnects": 1,
                "last_error": {"message": last_error} if last_error else None,
            },
        )

    yield start
    for lock in holders:
        lock.release()


def write_ledger_with_one_gap(settings: Settings, gap_end_ms: int, gap_s: int) -> None:
    """Two sessions in the real ledger file: a gap of ``gap_s`` seconds between them."""
    end_ns = gap_end_ms * 1_000_000
    start_ns = end_ns - gap_s * 1_000_000_000
    records = [
        {"session": 1, "event": "connect", "ts_ns": start_ns - 10**10, "url": "ws://x/crypto"},
        {"session": 1, "event": "first_frame", "ts_ns": start_ns - 9 * 10**9},
        {"session": 1, "event": "disconnect", "ts_ns": start_ns, "code": 1006, "reason": "", "last_frame_ns": start_ns},
        {"session": 2, "event": "connect", "ts_ns": end_ns - 10**8, "url": "ws://x/crypto"},
        {"session": 2, "event": "first_frame", "ts_ns": end_ns},
    ]
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    (settings.landing_dir / "sessions.ndjson").write_text("".join(json.dumps(r) + "\n" for r in records))


# ------------------------------------------------------------------------------------------------
# the panels


def test_latest_prices_come_from_the_lake_with_their_changes(known: tuple[Settings, KnownDay]) -> None:
    at = run_page()
    assert metric(at, "BTC-USD") == BTC_LATEST
    assert metric(at, "ETH-USD") == "3512.75"
    (btc_delta,) = [m.delta for m in at.metric if m.label == "BTC-USD"]
    assert btc_delta == "+1.04 % (1 min)"  # 1000.5 / 96000
    (btc,) = [c for c in texts(at, "caption") if "1 min 1000.5" in c]
    for label, change in (("1 h", BTC_CHANGES["1h"]), ("24 h", BTC_CHANGES["24h"])):
        assert f"{label} {change} " in btc, btc
    assert "24 h n/a" in next(c for c in texts(at, "caption") if "1 min 12.5" in c)  # ETH: no trade a day back


def test_the_chart_draws_built_and_xa_bars_and_shades_gaps_and_repairs(known: tuple[Settings, KnownDay]) -> None:
    _, day = known
    at = run_page()
    (chart,) = at.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    built, xa = spec["data"]
    assert built["name"] == "built from trades" and len(built["x"]) == 89  # 90 minutes, one without trades
    assert xa["name"].startswith("Polygon XA bar") and len(xa["x"]) == 1  # only where it differs
    assert utc(xa["x"][0]) == utc(day.differing_minute_ms)
    shapes = sorted((s["fillcolor"], utc(s["x0"]), utc(s["x1"])) for s in spec["layout"]["shapes"])
    ts = utc

    gap, repaired = day.gap_minutes_ms, day.repaired_minutes_ms
    assert {(s[1], s[2]) for s in shapes} == {
        (ts(gap[0]), ts(gap[-1] + MINUTE)),
        (ts(repaired[0]), ts(repaired[-1] + MINUTE)),
    }
    (summary,) = [c for c in texts(at, "caption") if c.startswith("89 bars")]
    assert "1 differ" in summary and "1 have no XA bar" in summary and "3 lie in a stream gap" in summary
    assert "2 were repaired" in summary and "1 follow minutes without trades" in summary


def test_alerts_are_listed_newest_first_with_muting(known: tuple[Settings, KnownDay]) -> None:
    at = run_page()
    (table,) = at.table
    rows = table.value.reset_index()
    assert list(rows["rule"]) == ["whale_trade", "volume_spike"]
    assert list(rows["value"]) == ["1164006", "40"] and list(rows["muted"]) == ["no", "yes"]
    assert "repair flood" in rows["reason"].iloc[1]
    # Only the chosen pairs: without ETH-USD its alert goes.
    at.multiselect(key="pairs").set_value(["BTC-USD"]).run()
    assert list(at.table[0].value.reset_index()["rule"]) == ["whale_trade"]


def test_feed_health_shows_the_ingester_and_gaps_of_the_last_day(
    known: tuple[Settings, KnownDay], live_ingester: Callable[..., None]
) -> None:
    settings, _ = known
    now_ms = int(time.time() * 1000)
    write_ledger_with_one_gap(settings, gap_end_ms=now_ms - 3_600_000, gap_s=42)
    live_ingester(settings, last_event_age_s=2.0, last_error="connection reset by peer")
    at = run_page()
    assert not texts(at, "warning"), texts(at, "warning")
    assert metric(at, "events/s") == "123.4"
    assert metric(at, "reconnects") == "1"
    assert metric(at, "gaps in 24 h") == "1"
    assert metric(at, "ingester").startswith("pid ")
    assert float(metric(at, "lag").removesuffix(" s")) < 30
    assert any("last error: connection reset by peer; gap time in 24 h: 42.0 s" in c for c in texts(at, "caption"))


def test_selectors_switch_the_chart_pair_and_the_range(known: tuple[Settings, KnownDay]) -> None:
    at = run_page()
    at.selectbox(key="chart_pair").set_value("ETH-USD").run()
    (chart,) = at.get("plotly_chart")
    assert json.loads(chart.proto.spec)["layout"]["title"]["text"].startswith("ETH-USD")
    at.selectbox(key="range").set_value("Last hour").run()
    (chart,) = at.get("plotly_chart")
    assert len(json.loads(chart.proto.spec)["data"][0]["x"]) <= RANGES_MIN["Last hour"] + 1


# ------------------------------------------------------------------------------------------------
# bad states


def test_a_pair_without_data_says_so(known: tuple[Settings, KnownDay]) -> None:
    at = run_page()
    assert metric(at, "SOL-USD") == "no data"
    assert "No trades of SOL-USD in the lake today or yesterday." in texts(at, "caption")
    at.selectbox(key="chart_pair").set_value("SOL-USD").run()
    (said,) = [i for i in texts(at, "info") if "SOL-USD" in i]
    assert said.startswith("No minute bars for SOL-USD since") and "no data" in said
    assert not at.get("plotly_chart")


def test_stale_feed_and_stopped_ingester_raise_a_banner(
    known: tuple[Settings, KnownDay], live_ingester: Callable[..., None]
) -> None:
    settings, _ = known
    (stopped,) = texts(run_page(), "warning")
    assert stopped.startswith("The ingester is not running") and "make dev" in stopped
    live_ingester(settings, last_event_age_s=600)
    cached.clear()
    (stale,) = texts(run_page(), "warning")
    said = re.match(r"The feed is stale: the last event arrived (\d+) s ago", stale)
    assert said and 600 <= int(said[1]) < 660, stale


def test_an_empty_platform_says_how_to_start_the_stream(empty: Settings) -> None:
    at = run_page()
    infos = texts(at, "info")
    assert any(i.startswith("No trades in the lake") and "make dev" in i for i in infos), infos
    assert any(i.startswith("The warehouse tables do not exist yet") and "make dev" in i for i in infos), infos
    assert not at.error


def test_empty_tables_say_how_to_start_the_stream(empty: Settings) -> None:
    SqlWarehouse(empty.mysql_url).migrate()
    infos = texts(run_page(), "info")
    assert any(i.startswith("The minute-bar table is empty") and "crypto-platform stream" in i for i in infos), infos


def test_an_unreachable_database_is_named_without_its_password(page_env: Callable[..., Settings]) -> None:
    port = free_port()  # nothing listens there
    settings = page_env(MYSQL_URL=f"mysql+pymysql://analyst:pw-s3cret@127.0.0.1:{port}/market")
    load_known_day(build_lake_resource(settings), SqlWarehouse(f"sqlite:///{settings.data_dir / 'unused.sqlite'}"))
    at = run_page()
    (banner,) = texts(at, "error")
    assert f"127.0.0.1:{port}" in banner and "MYSQL_URL" in banner, banner
    assert "pw-s3cret" not in repr([e.proto for e in at.main]) + repr([e.proto for e in at.sidebar])
    assert metric(at, "BTC-USD") == BTC_LATEST  # the lake still answers


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("CRYPTO_PAIRS", "BTCUSD", "CRYPTO_PAIRS has 'BTCUSD': each pair is FROM-TO"),
        ("CRYPTO_DASHBOARD_PORT", "eighty", "CRYPTO_DASHBOARD_PORT='eighty' is not a whole number"),
        ("MYSQL_URL", "postgres://u:pw@h/db", "MYSQL_URL has scheme 'postgres'"),
    ],
)
def test_bad_settings_show_the_settings_own_message(
    page_env: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    page_env()
    monkeypatch.setenv(variable, value)
    at = run_page()
    (error,) = texts(at, "error")
    assert error.startswith("The settings are invalid: ") and said in error, error
    assert not at.metric


def test_many_viewers_share_one_set_of_queries(known: tuple[Settings, KnownDay]) -> None:
    data.COUNTS.clear()
    run_page()
    one = dict(data.COUNTS)
    # bars + alerts; the lake: one pruned read for the latest prices and one per change window, more
    # only for a pair without a trade in the minutes before one of those times
    assert one["warehouse_queries"] == 2
    reads_at_most = len(data.REACH_MS) * (1 + len(data.CHANGE_WINDOWS_MS))
    assert 1 + len(data.CHANGE_WINDOWS_MS) <= one["lake_reads"] <= reads_at_most, one
    viewers = 10
    data.COUNTS.clear()
    started = time.monotonic()
    for _ in range(viewers):
        run_page()
    # Each cache lifetime costs one set of reads, however many viewers refresh within it.
    lifetimes = int((time.monotonic() - started) / cached.TTL_S) + 1
    assert data.COUNTS["warehouse_queries"] <= one["warehouse_queries"] * lifetimes, (dict(data.COUNTS), lifetimes)
    assert data.COUNTS["lake_reads"] <= one["lake_reads"] * lifetimes


def test_shaded_minutes_are_merged_into_runs() -> None:
    from crypto_platform.dashboard.charts import spans

    minutes = pd.Series([5 * MINUTE, 0, MINUTE, 2 * MINUTE, 6 * MINUTE, 9 * MINUTE])
    assert list(spans(minutes)) == [(0, 3 * MINUTE), (5 * MINUTE, 7 * MINUTE), (9 * MINUTE, 10 * MINUTE)]
    assert list(spans(pd.Series([], dtype="int64"))) == []
