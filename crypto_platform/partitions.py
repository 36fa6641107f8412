"""Partitions shared by the date-partitioned assets: UTC days.

``end_offset=1`` makes today a partition, so the stream sensor can target it while it is still
filling. Daily keys keep a year at 365 partitions per asset (hourly would be 8,760; the UI slows
past ~30k). The first day comes from ``CRYPTO_START_DATE``.
"""

from __future__ import annotations

import dagster as dg

from crypto_platform.settings import load_settings

DAILY_PARTITIONS = dg.DailyPartitionsDefinition(start_date=load_settings().start_date, end_offset=1, timezone="UTC")
