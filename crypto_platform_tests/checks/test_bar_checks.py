"""minute_bars checks through a real Dagster instance: pass on a real build, fail on each planted defect.

Bars are built by the real assets from a real landing log; Polygon's XA bars are landed with values
the test takes from the built bar (agreement) or moves off by a known amount (disagreement), and a
defect is planted by writing one altered bar over the partition.
"""

from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from crypto_platform.assets.bars import minute_bars
from crypto_platform.assets.raw import raw_aggregates, raw_trades
from crypto_platform.checks.bars import COVERAGE, MATCHES_XA, minute_bars_checks
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.polygon import PolygonRestResource
from crypto_platform_tests.checks.conftest import evaluations, run_checks_only
from crypto_platform_tests.conftest import free_port
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

DAY = "2025-11-24"
MINUTE = DAY1_MS - DAY1_MS % 60_000
ASSETS = [raw_trades, raw_aggregates, minute_bars]


def xa(start: int, bar: dict[str, Any], close: Decimal | None = None) -> bytes:
    """Polygon's XA bar for ``start`` with the given values (JSON numbers from the exact decimals)."""
    o, h, lo, c, v = (bar[k] for k in ("open", "high", "low", "close", "volume"))
    c = close if close is not None else c
    return (
        f'[{{"ev":"XA","pair":"BTC-USD","o":{o},"h":{max(h, c)},"l":{min(lo, c)},"c":{c},"v":{v},"vw":{bar["vwap"]},'
        f'"z":0.1,"s":{start},"e":{start + 60_000}}}]'
    ).encode()


class Day:
    def __init__(self, tmp_path: Path, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.landing = Landing(tmp_path)
        self.landing.segment(trades_frame(0, 25, DAY1_MS))
        self.lake = LakeResource(root=str(tmp_path / "lake"))
        # No gap in the ledger, so REST is never called: a closed port proves it.
        rest = PolygonRestResource(base_url=f"http://127.0.0.1:{free_port()}", api_key="k", pairs=["BTC-USD"])
        self.resources = {"lake": self.lake, "stream": self.landing.resource(), "polygon_rest": rest}

    def build(self) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
        result = dg.materialize(
            [*ASSETS, minute_bars_checks],
            partition_key=DAY,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=False,
        )
        return evaluations(result)

    def bar(self) -> dict[str, Any]:
        table = self.lake.read_partition("minute_bars", DAY)
        assert table is not None and table.num_rows == 1
        return table.to_pylist()[0]

    def checks_only(self) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
        return evaluations(run_checks_only(self.instance, ASSETS, [minute_bars_checks], DAY, self.resources))


@pytest.fixture
def day(tmp_path: Path) -> Any:
    with dg.instance_for_test() as instance:
        yield Day(tmp_path, instance)


def test_a_real_build_passes_and_agrees_with_polygons_xa_bar(day: Day) -> None:
    day.build()
    day.landing.segment(xa(MINUTE, day.bar()))  # Polygon's bar for the minute, equal to ours
    found = day.build()
    assert {name: e.passed for (asset, name), e in found.items() if asset == "minute_bars"} == {
        "schema": True,
        "unique_key": True,
        "valid_values": True,
        "in_partition_day": True,
        MATCHES_XA: True,
        COVERAGE: True,
    }
    assert found[("minute_bars", MATCHES_XA)].metadata["bars_compared"].value == 1


def test_a_bar_off_polygons_xa_bar_warns_naming_the_minute(day: Day) -> None:
    day.build()
    built = day.bar()
    day.landing.segment(xa(MINUTE, built, close=built["close"] * Decimal("1.002")))  # 0.2 % off, tolerance 0.1 %
    off = day.build()[("minute_bars", MATCHES_XA)]
    assert not off.passed and off.severity == dg.AssetCheckSeverity.WARN
    assert off.metadata["violations"].value == 1 and f"minute_ms={MINUTE}" in off.metadata["examples"].value
    # A revision back within the tolerance (0.05 %) makes it pass again: the current revision counts.
    day.landing.segment(xa(MINUTE, built, close=built["close"] * Decimal("1.0005")))
    assert day.build()[("minute_bars", MATCHES_XA)].passed


def test_an_xa_minute_without_trades_is_an_unexplained_hole(day: Day) -> None:
    day.build()
    later = MINUTE + 5 * 60_000
    day.landing.segment(xa(later, day.bar()))  # Polygon saw trades in a minute whose trades never came
    hole = day.build()[("minute_bars", COVERAGE)]
    assert not hole.passed and hole.severity == dg.AssetCheckSeverity.WARN
    assert f"minute_ms={later}" in hole.metadata["examples"].value and hole.metadata["xa_minutes"].value == 1


def test_broken_ohlc_invariants_block_naming_the_bar(day: Day) -> None:
    day.build()
    table = day.lake.read_partition("minute_bars", DAY)
    assert table is not None
    (row,) = table.to_pylist()
    row["low"] = row["high"] + 1  # low above open, close, high and the VWAP
    day.lake.write_partition("minute_bars", DAY, pa.Table.from_pylist([row], schema=table.schema))
    found = day.checks_only()[("minute_bars", "valid_values")]
    assert not found.passed and found.severity == dg.AssetCheckSeverity.ERROR
    assert [found.metadata[f"violations.{r}"].value for r in ("low_above_open", "low_above_close")] == [1, 1]
    assert found.metadata["violations.vwap_outside_low_high"].value == 1
    assert found.metadata["violations.volume_negative"].value == 0
    assert f"minute_ms={MINUTE}" in found.metadata["examples"].value
