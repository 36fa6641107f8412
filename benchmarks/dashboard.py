"""The market page's speed: how fresh its prices are, how long it takes to draw, what viewers cost.

Three measurements, each beside a baseline from the same run:

1. **event -> page** (``--minutes``; 0 skips it): boots the real ``crypto-platform dev`` on the
   zero-setup defaults in a throwaway state directory (simulator, fakesnow, the SQL stand-in or
   ``--mysql-url``; the page is its background service), opens the page in headless Chromium
   (Debian's ``chromium`` via Playwright) and reads each pair's price and last-trade time every
   ``--poll-s``. A trade's latency is the first time the page showed it minus its event time.
   Baseline: the same for the page's source, the lake's ``raw_trades`` partition, polled as often.
   Trades of the first ``--warmup-s`` after the first price are left out (start-up).
2. **render**: one run of the page script (Streamlit's ``AppTest``, queries included: caches
   cleared) with a day (1,440) of minute bars of one pair on the chart, against one hour (60).
3. **viewers**: ``--viewers`` threads each fetch the page's data (the cached reads its fragment
   makes) every refresh interval for ``--viewer-s`` seconds, as the sessions of one server do;
   warehouse queries and lake reads per refresh interval, against one viewer doing the same.

    python benchmarks/dashboard.py [--minutes 5] [--mysql-url URL] [--check]

Targets (issue 16): event -> page p95 <= 20 s at the defaults; 20 viewers cost the database less
than 20x one viewer (checked here as at most 2x).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.dev_platform import PRODUCTION_VARIABLES, dev_environment, dev_running  # noqa: E402
from benchmarks.summary import percentile  # noqa: E402
from crypto_platform.dashboard.cached import REFRESH_S  # noqa: E402
from crypto_platform.resources.lake import build_lake_resource  # noqa: E402
from crypto_platform.settings import Settings, load_settings  # noqa: E402

TARGET_PAGE_P95_S = 20.0
TARGET_VIEWER_RATIO = 2.0
CHROMIUM = "/usr/bin/chromium"
_COLUMN = re.compile(
    r"^(?P<pair>[A-Z0-9]+-[A-Z0-9]+)\s+(?P<price>[0-9.]+)\s.*?last trade (?P<clock>\d\d:\d\d:\d\d\.\d{3}) UTC", re.S
)


def _clock_ms(clock: str, now: datetime) -> int:
    """``HH:MM:SS.mmm`` (UTC) of the latest trade -> epoch ms, on the day that puts it at or before now."""
    t = datetime.strptime(clock, "%H:%M:%S.%f").time()
    at = datetime.combine(now.date(), t, tzinfo=UTC)
    if at > now + timedelta(minutes=5):
        at -= timedelta(days=1)
    return int(at.timestamp() * 1000)


def _summary(values: list[float]) -> str:
    return f"p50 {percentile(values, 50):6.2f} s   p95 {percentile(values, 95):6.2f} s   ({len(values)} trades)"


# ------------------------------------------------------------------------------------------------
# 1. event -> page, under crypto-platform dev


def _watch_lake(settings: Settings, stop: threading.Event, poll_s: float, seen: dict[tuple[str, int], float]) -> None:
    """First wall time each pair's latest lake trade was readable (the page's source, as it reads it)."""
    from crypto_platform.dashboard.data import REACH_MS, lake_trades

    lake = build_lake_resource(settings)
    while not stop.is_set():
        now = time.time()
        # The page's first read for the latest prices: the last minutes of trades (REACH_MS[0]).
        now_ms = int(now * 1000)
        table = lake_trades(lake, now_ms - (REACH_MS[0] or 0), now_ms + 60_000)
        if table is not None and table.num_rows:
            frame = table.select(["pair", "event_ms"]).group_by("pair").aggregate([("event_ms", "max")])
            for pair, event_ms in zip(frame["pair"].to_pylist(), frame["event_ms_max"].to_pylist(), strict=True):
                seen.setdefault((pair, int(event_ms)), now)
        stop.wait(poll_s)


def event_to_page(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="crypto-dashboard-") as tmp:
        env, settings = dev_environment(Path(tmp), args.mysql_url, more_ports=("CRYPTO_DASHBOARD_PORT",))
        state = settings.state_dir
        url = f"http://127.0.0.1:{settings.dashboard_port}"
        log_path = Path(tmp) / "dev.log"
        page_seen: dict[tuple[str, int], float] = {}
        lake_seen: dict[tuple[str, int], float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_lake, args=(settings, stop, args.poll_s, lake_seen), daemon=True)
        # dev_running stops dev and every service it started (the ingester and lake writer too).
        with dev_running(env, log_path, then=stop.set) as dev:
            print(f"crypto-platform dev with the page on {url}, state in {state}", flush=True)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 1400})
                deadline = time.monotonic() + 300
                while True:
                    if dev.poll() is not None:
                        tail = log_path.read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"crypto-platform dev exited ({dev.returncode}):\n{tail}")
                    with contextlib.suppress(Exception):
                        page.goto(url, timeout=5_000)
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("the page did not answer within 300 s")
                    time.sleep(1)
                watcher.start()
                started = None
                deadline = time.monotonic() + 600
                while started is None or time.time() - started < args.minutes * 60:
                    if dev.poll() is not None:
                        tail = log_path.read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"crypto-platform dev exited ({dev.returncode}):\n{tail}")
                    now = datetime.now(UTC)
                    texts = page.eval_on_selector_all('[data-testid="stColumn"]', "els => els.map(e => e.innerText)")
                    for text in texts:
                        found = _COLUMN.search(text)
                        if found:
                            page_seen.setdefault((found["pair"], _clock_ms(found["clock"], now)), now.timestamp())
                    if started is None and page_seen:
                        started = time.time()
                        print(f"first price on the page; watching for {args.minutes:g} min", flush=True)
                    if started is None and time.monotonic() > deadline:
                        raise RuntimeError("no price reached the page within 600 s")
                    time.sleep(args.poll_s)
                if args.screenshot:
                    page.screenshot(path=args.screenshot, full_page=True)
                    print(f"screenshot: {args.screenshot}")
                browser.close()
    after = (started or 0) + args.warmup_s
    page_lat = [seen - ms / 1000 for (_, ms), seen in page_seen.items() if ms / 1000 >= after]
    lake_lat = [seen - ms / 1000 for (_, ms), seen in lake_seen.items() if ms / 1000 >= after]
    return page_lat, lake_lat


# ------------------------------------------------------------------------------------------------
# 2. render time and 3. viewers, in this process, on a known day (SQLite stand-in or --mysql-url)


def _known_settings(tmp: Path, args: argparse.Namespace, minutes: int) -> Settings:
    from crypto_platform.warehouse.sql import SqlWarehouse
    from crypto_platform_tests.dashboard.known_day import PAIRS, load_known_day

    env = {
        "CRYPTO_PROJECT_DIR": str(ROOT),
        "CRYPTO_STATE_DIR": str(tmp / f"state-{minutes}"),
        "DAGSTER_HOME": str(tmp / "dagster_home"),
        "CRYPTO_PAIRS": ",".join(PAIRS),
    }
    for name in ("MYSQL_URL", *PRODUCTION_VARIABLES):
        os.environ.pop(name, None)
    os.environ.update(env)
    settings = load_settings()
    load_known_day(build_lake_resource(settings), SqlWarehouse(settings.mysql_url), minutes=minutes)
    return settings


def render_times(tmp: Path, args: argparse.Namespace, minutes: int) -> list[float]:
    from streamlit.testing.v1 import AppTest

    from crypto_platform.dashboard import cached
    from crypto_platform.dashboard.data import __file__ as data_file

    _known_settings(tmp, args, minutes)
    app = str(Path(data_file).with_name("app.py"))
    times = []
    for _ in range(args.repeats):
        cached.clear()
        at = AppTest.from_file(app, default_timeout=120)
        at.session_state["range"] = "Last 24 hours"
        started = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - started)
        charts = at.get("plotly_chart")
        if at.exception or len(charts) != 1:
            raise RuntimeError(f"the page did not draw its chart: {[e.value for e in at.exception]}")
        drawn = len(json.loads(charts[0].proto.spec)["data"][0]["x"])
        if drawn < minutes - 1:  # one minute of the known day has no trades
            raise RuntimeError(f"the chart drew {drawn} bars, not the {minutes - 1} loaded")
    return times


def viewer_queries(tmp: Path, args: argparse.Namespace, viewers: int) -> tuple[float, float, float]:
    """Warehouse queries and lake reads per refresh interval with ``viewers`` concurrent viewers."""
    from crypto_platform.dashboard import cached, data

    settings = load_settings()
    src = cached.sources(settings)
    key = cached.settings_key(settings)
    since = (int(time.time() * 1000) // 60_000 - 360) * 60_000
    cached.clear()
    data.COUNTS.clear()
    stop = threading.Event()
    refreshes = []

    def viewer() -> None:
        n = 0
        while not stop.is_set():
            cached.feed_health(src, key)
            cached.minute_bars(src, key, "BTC-USD", since)
            cached.alerts(src, key, settings.pairs, since)
            cached.latest_prices(src, key, settings.pairs)
            n += 1
            stop.wait(cached.REFRESH_S)
        refreshes.append(n)

    threads = [threading.Thread(target=viewer) for _ in range(viewers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.viewer_s)
    stop.set()
    for t in threads:
        t.join()
    intervals = (time.monotonic() - started) / cached.REFRESH_S
    return (
        data.COUNTS["warehouse_queries"] / intervals,
        data.COUNTS["lake_reads"] / intervals,
        sum(refreshes) / intervals,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="event -> page watch (default 5; 0 skips it)")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="start-up seconds left out (default 60)")
    parser.add_argument("--poll-s", type=float, default=0.25, help="page and lake poll interval (default 0.25)")
    parser.add_argument("--mysql-url", help="a MySQL/MariaDB URL instead of the SQL stand-in (event -> page)")
    parser.add_argument("--repeats", type=int, default=5, help="render repeats (default 5)")
    parser.add_argument("--viewers", type=int, default=20, help="simulated viewers (default 20)")
    parser.add_argument("--viewer-s", type=float, default=20.0, help="seconds the viewers refresh (default 20)")
    parser.add_argument("--screenshot", help="save a screenshot of the page at the end of the watch here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    missed = []

    if args.minutes > 0:
        page_lat, lake_lat = event_to_page(args)
        print("\nevent -> shown (trades that were the latest of their pair when shown)")
        print(f"  page (Chromium)           {_summary(page_lat)}")
        print(f"  baseline: lake raw_trades {_summary(lake_lat)}")
        if not page_lat:
            missed.append("no trade reached the page after the warm-up")
        else:
            p95 = percentile(page_lat, 95)
            ok = p95 <= TARGET_PAGE_P95_S
            print(f"  target page p95 <= {TARGET_PAGE_P95_S:.0f} s: {'met' if ok else 'MISSED'} ({p95:.2f} s)")
            if not ok:
                missed.append("event -> page p95")

    with tempfile.TemporaryDirectory(prefix="crypto-dashboard-render-") as tmp_dir:
        tmp = Path(tmp_dir)
        hour = render_times(tmp, args, 60)
        day = render_times(tmp, args, 1440)
        day_s, hour_s = statistics.median(day), statistics.median(hour)
        print(f"\npage script run, caches cleared (queries included), median of {args.repeats}")
        print(f"  a day of bars (1,440)      {day_s:6.3f} s   runs {', '.join(f'{t:.3f}' for t in day)}")
        print(f"  baseline: an hour (60)     {hour_s:6.3f} s   ratio {day_s / hour_s:.2f}x")

        one = viewer_queries(tmp, args, 1)
        many = viewer_queries(tmp, args, args.viewers)
        print(f"\nper refresh interval ({args.viewer_s:g} s of refreshes every {REFRESH_S:g} s)")
        print(f"  {'':<24}{'queries':>10}{'lake reads':>12}{'refreshes':>12}")
        for label, (queries, reads, refreshes) in ((f"{args.viewers} viewers", many), ("baseline: 1 viewer", one)):
            print(f"  {label:<24}{queries:>10.2f}{reads:>12.2f}{refreshes:>12.1f}")
        ratio = many[0] / max(one[0], 1e-9)
        ok = ratio <= TARGET_VIEWER_RATIO
        verdict = "met" if ok else "MISSED"
        print(f"  target: {args.viewers} viewers <= {TARGET_VIEWER_RATIO:g}x of one: {verdict} ({ratio:.2f}x)")
        if not ok:
            missed.append("viewer queries")

    if missed:
        print(f"\nmissed: {', '.join(missed)}")
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
