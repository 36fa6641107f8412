"""UTC days and minutes in epoch ms (crypto_platform/days.py), and the processes that must not load Dagster."""

import subprocess
import sys
from datetime import date

import pytest

from crypto_platform import partitions
from crypto_platform.days import DAY_MS, MINUTE_MS, clock_text, day_bounds_ms, day_of, minute_of

DAY = "2025-11-24"
START = 1_763_942_400_000  # 2025-11-24T00:00Z


def test_a_day_s_bounds_are_half_open_utc_midnights_whatever_the_day_is_given_as() -> None:
    assert day_bounds_ms(DAY) == day_bounds_ms(date(2025, 11, 24)) == (START, START + DAY_MS)
    assert day_bounds_ms("2025-11-25")[0] == day_bounds_ms(DAY)[1]
    with pytest.raises(ValueError):
        day_bounds_ms("2025-13-01")


def test_a_time_s_day_minute_and_clock_text() -> None:
    assert (day_of(START), day_of(START - 1), day_of(START + DAY_MS - 1)) == (DAY, "2025-11-23", DAY)
    assert (minute_of(START + MINUTE_MS + 59_999), minute_of(START)) == (START + MINUTE_MS, START)
    assert clock_text(START + 61_500) == "2025-11-24 00:01:01"


def test_the_partitions_give_the_same_days_as_dagster_s_partition_windows() -> None:
    assert partitions.day_bounds_ms is day_bounds_ms and partitions.MINUTE_MS == MINUTE_MS
    window = partitions.DAILY_PARTITIONS.time_window_for_partition_key(DAY)
    assert day_bounds_ms(DAY) == (int(window.start.timestamp() * 1000), int(window.end.timestamp() * 1000))


@pytest.mark.parametrize("module", ["crypto_platform.stream.ingester", "crypto_platform.lake.writer"])
def test_the_ingester_and_the_lake_writer_start_without_loading_dagster(module: str) -> None:
    code = f"import sys, {module}; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
