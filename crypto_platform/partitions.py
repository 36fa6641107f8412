"""Partitions shared by the date-partitioned assets: UTC days.

``end_offset=1`` makes today a partition, so the stream sensor can target it while it is still
filling. Daily keys keep a year at 365 partitions per asset (hourly would be 8,760; the UI slows
past ~30k). The first day comes from ``CRYPTO_START_DATE``.

A partition key is a UTC day, so its bounds in epoch ms are ``day_bounds_ms(key)``. That arithmetic
(with ``MINUTE_MS`` and ``DAY_MS``) lives in :mod:`crypto_platform.days`, not here, because this
module imports Dagster and the ingester and the lake writer must not; it is re-exported here so the
assets and checks take their days from one place.
"""

from __future__ import annotations

import dagster as dg

from crypto_platform.days import DAY_MS, MINUTE_MS, clock_text, day_bounds_ms, day_of, minute_of
from crypto_platform.settings import load_settings

DAILY_PARTITIONS = dg.DailyPartitionsDefinition(start_date=load_settings().start_date, end_offset=1, timezone="UTC")

__all__ = ["DAILY_PARTITIONS", "DAY_MS", "MINUTE_MS", "clock_text", "day_bounds_ms", "day_of", "minute_of"]
