"""``minute_bars``: per pair and UTC minute, OHLCV and VWAP built from trades, beside Polygon's XA bar."""
