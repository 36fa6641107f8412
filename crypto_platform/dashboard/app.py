"""The market page (``streamlit run`` this file, or ``crypto-platform dashboard``): layout only.

Selectors sit in the sidebar; everything that moves lives in one fragment that Streamlit re-runs
every :data:`~crypto_platform.dashboard.cached.REFRESH_S` seconds without reloading the page. Data
comes from :mod:`crypto_platform.dashboard.cached`; a panel without data says why in words.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st

from crypto_platform.dashboard import cached, charts, data
from crypto_platform.days import MINUTE_MS, minute_of
from crypto_platform.settings import Settings, SettingsError, load_settings

RANGES_MIN = {"Last hour": 60, "Last 6 hours": 360, "Last 24 hours": 1440, "Last 7 days": 7 * 1440}


def _clock(ms: int | None) -> str:
    return "" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3] + " UTC"


def _since_ms(range_min: int) -> int:
    """The range's start as a whole minute, so cache keys stay put within a minute."""
    now_minute = minute_of(int(time.time() * 1000))
    return now_minute - range_min * MINUTE_MS


def _change(row: dict[str, Any], label: str) -> str:
    change = row.get(f"change_{label}")
    if change is None or pd.isna(change):
        return "n/a"
    return f"{data.price_text(change)} ({row[f'pct_{label}']:+.2f} %)"


def show_prices(panel: data.Panel) -> None:
    st.subheader("Latest price")
    if not panel.ok and panel.frame.empty:
        st.info(panel.problem)
        return
    if not panel.ok:
        st.info(panel.problem)
    rows = panel.frame.to_dict("records")
    for column, row in zip(st.columns(max(1, len(rows))), rows, strict=False):
        with column:
            if row["price"] is None or pd.isna(row["price"]):
                st.metric(row["pair"], "no data")
                st.caption(f"No trades of {row['pair']} in the lake today or yesterday.")
                continue
            pct = row.get("pct_1m")
            delta = None if pct is None or pd.isna(pct) else f"{pct:+.2f} % (1 min)"
            st.metric(row["pair"], data.price_text(row["price"]), delta)
            st.caption(
                f"last trade {_clock(row['event_ms'])} ({row['age_s']} s ago)  \n"
                f"1 min {_change(row, '1m')} · 1 h {_change(row, '1h')} · 24 h {_change(row, '24h')}"
            )


def show_bars(panel: data.Panel, pair: str) -> None:
    st.subheader(f"Minute bars: {pair}")
    if not panel.ok:
        st.info(panel.problem)
        return
    bars = panel.frame
    st.plotly_chart(charts.candlestick(bars, pair), width="stretch", key="bars")
    st.caption(
        f"{len(bars)} bars; {int(bars['differs'].sum())} differ from Polygon's XA bar (purple), "
        f"{int(bars['xa_missing'].sum())} have no XA bar, {int(bars['in_gap'].sum())} lie in a stream gap "
        f"(orange), {int(bars['repaired'].sum())} were repaired from REST (blue), "
        f"{int(bars['follows_hole'].sum())} follow minutes without trades."
    )


def show_alerts(panel: data.Panel) -> None:
    st.subheader("Alerts (newest first)")
    if not panel.ok:
        st.info(panel.problem)
        return
    if panel.frame.empty:
        st.caption("No alerts for these pairs in this range.")
        return
    shown = panel.frame.assign(
        time=panel.frame["time"].dt.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3],
        muted=panel.frame["muted"].map({True: "yes", False: "no"}),
    )
    st.table(shown.set_index("time"))


def show_health(panel: data.Panel) -> None:
    st.subheader("Feed health")
    info = panel.info
    cols = st.columns(5)
    cols[0].metric("events/s", "n/a" if info.get("events_per_s") is None else f"{info['events_per_s']:,.1f}")
    cols[1].metric("lag", "n/a" if info.get("lag_s") is None else f"{info['lag_s']} s")
    cols[2].metric("reconnects", info.get("reconnects") or 0)
    cols[3].metric("gaps in 24 h", info.get("gaps_24h", 0))
    cols[4].metric("ingester", f"pid {info['pid']}" if info.get("running") else "not running")
    st.caption(f"last error: {info.get('last_error') or 'none'}; gap time in 24 h: {info.get('gap_seconds_24h')} s")


def page(settings: Settings) -> None:
    src = cached.sources(settings)
    key = cached.settings_key(settings)
    with st.sidebar:
        st.header("crypto_platform")
        pairs = tuple(
            st.multiselect("Pairs", options=list(settings.pairs), default=list(settings.pairs), key="pairs")
            or settings.pairs
        )
        pair = st.selectbox("Chart", options=list(pairs), key="chart_pair")
        range_label = st.selectbox("Time range", options=list(RANGES_MIN), index=1, key="range")
        st.caption(f"Warehouse: {src.database}  \nLake: {settings.lake_dir}")

    @st.fragment(run_every=cached.REFRESH_S)
    def live() -> None:
        since = _since_ms(RANGES_MIN[range_label])
        health = cached.feed_health(src, key)
        if health.problem:
            st.warning(health.problem)
        bars = cached.minute_bars(src, key, pair, since)
        alerts = cached.alerts(src, key, pairs, since)
        down = next((p for p in (bars, alerts) if p.kind == "db_down"), None)
        if down is not None:
            st.error(down.problem)
        show_prices(cached.latest_prices(src, key, pairs))
        if down is None:
            show_bars(bars, pair)
            show_alerts(alerts)
        show_health(health)
        st.caption(f"updated {_clock(int(time.time() * 1000))}; refreshes every {cached.REFRESH_S:g} s")

    live()


def main() -> None:
    st.set_page_config(page_title="crypto_platform: live market", layout="wide")
    st.title("Live market")
    try:
        settings = load_settings()
    except SettingsError as exc:
        st.error(f"The settings are invalid: {exc}")
        return
    page(settings)


main()
