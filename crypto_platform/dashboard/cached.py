"""The page's reads behind ``st.cache_data``: every viewer of one server shares one set of queries.

A short time to live (:data:`TTL_S`) keeps the page seconds behind the lake while a refresh by
twenty viewers costs the database what one viewer costs. Problems (an unreachable database) are
cached like rows, so a down database is not hammered by every viewer either. Arguments are chosen
to be stable between refreshes: the bars' start is a whole minute, so the key changes once a minute.
"""

from __future__ import annotations

import streamlit as st

from crypto_platform.dashboard import data
from crypto_platform.settings import Settings

# The page refreshes every REFRESH_S; a cached answer lives TTL_S.
REFRESH_S = 2.0
TTL_S = 2.0


@st.cache_resource
def _sources(_settings: Settings, key: str) -> data.Sources:
    return data.sources(_settings)


def sources(settings: Settings) -> data.Sources:
    """One :class:`~crypto_platform.dashboard.data.Sources` per configuration, for the server's life."""
    return _sources(settings, settings_key(settings))


def settings_key(settings: Settings) -> str:
    """What identifies a configuration in cache keys (no secret: the URL's password is masked)."""
    d = settings.describe()
    return f"{d['mysql_url']}|{d['data_dir']}"


@st.cache_data(ttl=TTL_S, show_spinner=False)
def latest_prices(_src: data.Sources, key: str, pairs: tuple[str, ...]) -> data.Panel:
    return data.latest_prices(_src, pairs)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def minute_bars(_src: data.Sources, key: str, pair: str, since_ms: int) -> data.Panel:
    return data.minute_bars(_src, pair, since_ms)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def alerts(_src: data.Sources, key: str, pairs: tuple[str, ...], since_ms: int) -> data.Panel:
    return data.alerts(_src, pairs, since_ms)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def feed_health(_src: data.Sources, key: str) -> data.Panel:
    return data.feed_health(_src)


def clear() -> None:
    """Forget every cached answer (tests switch configurations within one process)."""
    st.cache_data.clear()
    st.cache_resource.clear()
