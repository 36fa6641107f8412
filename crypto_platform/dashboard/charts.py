"""The minute-bar chart: built bars as candles, Polygon's XA bar beside them where the two differ,
gap and repaired minutes shaded. Plain plotly, drawn by Streamlit's ``st.plotly_chart``."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import plotly.graph_objects as go

from crypto_platform.days import MINUTE_MS

GAP_COLOUR = "rgba(230, 126, 34, 0.18)"
REPAIRED_COLOUR = "rgba(52, 152, 219, 0.20)"


def spans(minutes: pd.Series) -> Iterator[tuple[int, int]]:
    """Runs of consecutive minutes (epoch ms) as [start, end) spans, so a long gap is one shape."""
    ordered = sorted(int(x) for x in minutes)
    if not ordered:
        return
    start = prev = ordered[0]
    for m in ordered[1:]:
        if m != prev + MINUTE_MS:
            yield start, prev + MINUTE_MS
            start = m
        prev = m
    yield start, prev + MINUTE_MS


def candlestick(bars: pd.DataFrame, pair: str) -> go.Figure:
    """``bars`` as returned by :func:`crypto_platform.dashboard.data.minute_bars`."""
    fig = go.Figure()
    fig.add_trace(
        go.Candlestick(
            x=bars["time"],
            open=bars["open"],
            high=bars["high"],
            low=bars["low"],
            close=bars["close"],
            name="built from trades",
        )
    )
    differs = bars[bars["differs"]]
    if not differs.empty:
        fig.add_trace(
            go.Candlestick(
                x=differs["time"],
                open=differs["xa_open"],
                high=differs["xa_high"],
                low=differs["xa_low"],
                close=differs["xa_close"],
                name="Polygon XA bar (where it differs)",
                increasing={"line": {"color": "#8e44ad"}, "fillcolor": "rgba(142, 68, 173, 0.35)"},
                decreasing={"line": {"color": "#6c3483"}, "fillcolor": "rgba(108, 52, 131, 0.35)"},
            )
        )
    shading = (
        ("in_gap", GAP_COLOUR, "stream gap", "top left"),
        ("repaired", REPAIRED_COLOUR, "repaired", "bottom left"),
    )
    for column, colour, label, corner in shading:
        for i, (lo, hi) in enumerate(spans(bars.loc[bars[column] == 1, "minute_ms"])):
            fig.add_vrect(
                x0=pd.to_datetime(lo, unit="ms", utc=True),
                x1=pd.to_datetime(hi, unit="ms", utc=True),
                fillcolor=colour,
                line_width=0,
                layer="below",
                annotation_text=label if i == 0 else None,
                annotation_position=corner,
            )
    fig.update_layout(
        title=f"{pair} minute bars (UTC)",
        xaxis_rangeslider_visible=False,
        height=420,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.12},
    )
    return fig
