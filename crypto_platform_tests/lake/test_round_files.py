"""After a large write of today's minute bars, a stream round's replace rewrites a few files, not the day.

A round replaces the minutes it recomputed with a Delta predicate overwrite, which rewrites every file
holding a replaced row; the bars copy and the alerts then read the files the round added. A large
write (a rebuild of today, a catch-up round) must therefore leave files of short time ranges, or
every later round would hand the whole day to them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from crypto_platform.lake.schemas import MINUTE_BARS_SCHEMA
from crypto_platform.lake.tables import DeltaLake, in_ranges

DAY = "2025-11-20"
DAY_MS = 1_763_596_800_000
PAIRS = [f"P{i:03d}-USD" for i in range(75)]


def bars(minutes: range, seed: int) -> pa.Table:
    """Every pair's bar for ``minutes`` of the day, with varied values (so files have a realistic size)."""
    rng = np.random.default_rng(seed)
    n = len(minutes) * len(PAIRS)
    columns: dict[str, pa.Array] = {}
    for field in MINUTE_BARS_SCHEMA:
        if field.name == "minute_ms":
            columns[field.name] = pa.array(np.repeat(np.array(minutes, np.int64) * 60_000 + DAY_MS, len(PAIRS)))
        elif field.name == "pair":
            columns[field.name] = pa.array(np.tile(np.array(PAIRS, dtype=object), len(minutes)), field.type)
        elif pa.types.is_boolean(field.type):
            columns[field.name] = pa.array(rng.integers(0, 2, n).astype(bool))
        elif pa.types.is_string(field.type):
            columns[field.name] = pa.array(["ws"] * n, field.type)
        else:
            columns[field.name] = pa.array(rng.integers(1, 10**9, n)).cast(field.type, safe=False)
    return pa.table(columns, schema=MINUTE_BARS_SCHEMA)


def test_a_round_after_a_large_write_hands_the_copy_its_minutes_not_the_day(tmp_path: Path) -> None:
    lake = DeltaLake(str(tmp_path / "lake"))
    lake.replace("minute_bars", DAY, bars(range(0, 1300), seed=1))  # most of the day in one write
    version = lake.version("minute_bars")
    for r in range(3):
        minutes = range(1297 + r, 1301 + r)
        lo, hi = DAY_MS + minutes[0] * 60_000, DAY_MS + minutes[-1] * 60_000
        lake.replace("minute_bars", DAY, bars(minutes, seed=10 + r), where=in_ranges("minute_ms", [(lo, hi)]))
        changed, version = lake.changed_since("minute_bars", DAY, version)
        assert changed is not None
        recomputed = len(minutes) * len(PAIRS)
        # The recomputed bars plus the rest of the one or two files that held them: a few minutes' worth.
        assert recomputed <= changed.num_rows <= 10 * recomputed, (r, changed.num_rows)
    assert lake.count("minute_bars", DAY) == 1303 * len(PAIRS)  # minutes 0-1302, each once
