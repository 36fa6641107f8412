"""The raw lake checks through a real Dagster instance: pass on the real build, fail on each kind of bad data.

Good partitions are built by the real raw assets from a real landing log; bad ones are the same
partitions with one defect written over them, then only the checks are executed (as the UI's
"Execute checks" does). Expected counts come from the defect the test planted, not from the code.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from crypto_platform.assets.raw import raw_aggregates, raw_quotes, raw_trades
from crypto_platform.checks.lake import (
    TABLE_CHECKS,
    evaluate_day,
    raw_aggregates_checks,
    raw_quotes_checks,
    raw_trades_checks,
)
from crypto_platform.resources.lake import LakeResource
from crypto_platform.stream_batches import SEGMENTS_TAG
from crypto_platform_tests.assets.test_raw_tables import DAY, MINUTE, bar, quotes_frame
from crypto_platform_tests.checks.conftest import evaluations, run_checks_only
from crypto_platform_tests.test_stream_sensor import DAY1_MS, Landing, trades_frame

ASSETS = [raw_trades, raw_quotes, raw_aggregates]
CHECKS = [raw_trades_checks, raw_quotes_checks, raw_aggregates_checks]


class Built:
    def __init__(self, tmp_path: Path) -> None:
        self.landing = Landing(tmp_path)
        self.landing.segment(trades_frame(1, 20, DAY1_MS), quotes_frame(DAY1_MS, 6), bar("XA", MINUTE, "97010.5", "12"))
        self.landing.segment(bar("XA", MINUTE, "97011.25", "12.5"), trades_frame(21, 10, DAY1_MS + 100))
        self.lake = LakeResource(root=str(tmp_path / "lake"))
        self.resources = {"lake": self.lake, "stream": self.landing.resource()}

    def table(self, asset: str) -> pa.Table:
        table = self.lake.read_partition(asset, DAY)
        assert table is not None
        return table

    def replace(self, asset: str, table: pa.Table) -> None:
        self.lake.write_partition(asset, DAY, table)


@pytest.fixture
def built(tmp_path: Path) -> Iterator[tuple[Built, dg.DagsterInstance]]:
    b = Built(tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize([*ASSETS, *CHECKS], partition_key=DAY, instance=instance, resources=b.resources)
        assert result.success
        b.first_run = evaluations(result)  # type: ignore[attr-defined]
        yield b, instance


def check(b: Built, instance: dg.DagsterInstance, asset: str, name: str) -> dg.AssetCheckEvaluation:
    checks = [c for c in CHECKS if asset in c.node_def.name]
    return evaluations(run_checks_only(instance, ASSETS, checks, DAY, b.resources))[(asset, name)]


def with_column(table: pa.Table, name: str, values: list) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def meta(evaluation: dg.AssetCheckEvaluation, label: str) -> object:
    return evaluation.metadata[label].value


def test_every_check_passes_on_the_real_build_with_its_figures(built: tuple[Built, dg.DagsterInstance]) -> None:
    b, _ = built
    found = b.first_run  # type: ignore[attr-defined]
    names = {"schema", "unique_key", "valid_values", "in_partition_day", "lake_freshness"}
    expected = {(a.key.to_user_string(), n) for a in ASSETS for n in names}
    expected |= {("raw_quotes", "uncrossed_quotes"), ("raw_aggregates", "one_current_revision")}
    expected |= {("raw_quotes", "stream_coverage")}
    assert set(found) == expected
    # The stream saw a few seconds of the day: the rest of its quotes are a gap, counted (a WARN).
    coverage = found.pop(("raw_quotes", "stream_coverage"))
    assert not coverage.passed and coverage.severity == dg.AssetCheckSeverity.WARN
    assert meta(coverage, "minutes_not_streamed") == meta(coverage, "violations") > 0
    assert all(e.passed for e in found.values()), [k for k, e in found.items() if not e.passed]
    assert meta(found[("raw_trades", "unique_key")], "rows_checked") == 30  # 20 + 10 trades landed
    assert meta(found[("raw_aggregates", "one_current_revision")], "bars") == 1
    fresh = found[("raw_trades", "lake_freshness")]
    assert meta(fresh, "segments_pending") == 0 and meta(fresh, "lake_lag_s") == 0
    # Landing's receive clock counts nanoseconds from 1, so every event lands "before" its time.
    assert "event_to_landed_s_p50" in fresh.metadata


def test_duplicate_trades_fail_unique_key_and_name_the_key(built: tuple[Built, dg.DagsterInstance]) -> None:
    b, instance = built
    table = b.table("raw_trades")
    b.replace("raw_trades", pa.concat_tables([table, table.slice(3, 2)]))
    found = check(b, instance, "raw_trades", "unique_key")
    assert not found.passed and found.severity == dg.AssetCheckSeverity.ERROR
    assert meta(found, "violations") == 2 and meta(found, "rows_checked") == 32
    assert f"trade_id={table['trade_id'][3].as_py()}" in meta(found, "examples")


def test_non_positive_prices_and_sizes_fail_valid_values(built: tuple[Built, dg.DagsterInstance]) -> None:
    b, instance = built
    table = b.table("raw_trades")
    prices = table["price"].to_pylist()
    sizes = table["size"].to_pylist()
    prices[0], sizes[5], sizes[6] = Decimal(0), Decimal("-0.1"), Decimal(0)
    b.replace("raw_trades", with_column(with_column(table, "price", prices), "size", sizes))
    found = check(b, instance, "raw_trades", "valid_values")
    assert not found.passed
    assert (meta(found, "violations"), meta(found, "violations.price_not_positive")) == (3, 1)
    assert meta(found, "violations.size_not_positive") == 2


def test_a_trade_of_another_day_fails_in_partition_day(built: tuple[Built, dg.DagsterInstance]) -> None:
    b, instance = built
    table = b.table("raw_trades")
    times = table["event_ms"].to_pylist()
    times[-1] += 86_400_000
    b.replace("raw_trades", with_column(table, "event_ms", times))
    found = check(b, instance, "raw_trades", "in_partition_day")
    assert not found.passed and meta(found, "violations") == 1
    assert meta(found, "event_ms_max") == times[-1]


def test_a_wrong_column_type_is_refused_by_the_lake_and_fails_the_schema_check(
    built: tuple[Built, dg.DagsterInstance],
) -> None:
    b, _ = built
    table = b.table("raw_trades")
    i = table.schema.get_field_index("price")
    wrong = table.set_column(i, "price", pc.cast(table["price"], pa.float64()))
    with pytest.raises(ValueError, match=r"price is double, expected decimal128\(38, 18\)"):
        b.replace("raw_trades", wrong)
    assert b.table("raw_trades").equals(table)  # nothing written
    # A table read some other way (another writer's files) is still checked column by column.
    found = evaluate_day(TABLE_CHECKS["raw_trades"], wrong, DAY, b.landing.resource().landing_dir, None)
    assert found["schema"].violations and "price is double, expected decimal128(38, 18)" in found["schema"].examples
    assert "schema check failed" in found["unique_key"].examples[0]


def test_crossed_quotes_warn_without_failing_the_run(built: tuple[Built, dg.DagsterInstance]) -> None:
    b, instance = built
    table = b.table("raw_quotes")
    asks = table["ask_price"].to_pylist()
    asks[2] = table["bid_price"][2].as_py() - Decimal("0.01")
    b.replace("raw_quotes", with_column(table, "ask_price", asks))
    result = run_checks_only(instance, ASSETS, [raw_quotes_checks], DAY, b.resources)
    found = evaluations(result)[("raw_quotes", "uncrossed_quotes")]
    assert result.success  # WARN does not fail the run
    assert not found.passed and found.severity == dg.AssetCheckSeverity.WARN and meta(found, "violations") == 1
    assert evaluations(result)[("raw_quotes", "valid_values")].passed


def test_broken_bar_invariants_and_two_current_revisions_fail(built: tuple[Built, dg.DagsterInstance]) -> None:
    b, instance = built
    table = b.table("raw_aggregates")
    highs = table["high"].to_pylist()
    highs[0] = table["close"][0].as_py() - 1  # close above high; open (97000.1) stays below it
    current = [True] * table.num_rows  # the XA bar has two revisions: both current now
    b.replace("raw_aggregates", with_column(with_column(table, "high", highs), "is_current", current))
    found = evaluations(run_checks_only(instance, ASSETS, [raw_aggregates_checks], DAY, b.resources))
    values = found[("raw_aggregates", "valid_values")]
    assert not values.passed and meta(values, "violations") == 1
    assert meta(values, "violations.close_above_high") == 1 and meta(values, "violations.open_above_high") == 0
    current_check = found[("raw_aggregates", "one_current_revision")]
    assert not current_check.passed and meta(current_check, "violations") == 1  # one bar, two current


def test_a_missing_partition_fails_every_check(tmp_path: Path) -> None:
    b = Built(tmp_path)
    with dg.instance_for_test() as instance:
        found = evaluations(run_checks_only(instance, ASSETS, [raw_trades_checks], DAY, b.resources))
    assert found and not any(e.passed for e in found.values())
    assert "materialize the day" in meta(found[("raw_trades", "schema")], "examples")


def test_freshness_warns_when_the_lake_trails_the_landing_log(built: tuple[Built, dg.DagsterInstance]) -> None:
    b, instance = built
    b.landing.segment(trades_frame(40, 2, DAY1_MS + 500))
    assert check(b, instance, "raw_trades", "lake_freshness").passed  # one segment behind, nanoseconds later
    b.landing.recv += 400 * 10**9  # the next frames land 400 s later and are not built
    b.landing.segment(trades_frame(50, 2, DAY1_MS + 900))
    found = check(b, instance, "raw_trades", "lake_freshness")
    assert not found.passed and found.severity == dg.AssetCheckSeverity.WARN
    assert meta(found, "segments_pending") == 2 and meta(found, "lake_lag_s") >= 400


def test_a_blocking_failure_stops_downstream_assets_in_the_run(tmp_path: Path) -> None:
    landing = Landing(tmp_path)
    zero_price = trades_frame(1, 3, DAY1_MS).replace(b'"p":97001.11', b'"p":0', 1)
    assert zero_price != trades_frame(1, 3, DAY1_MS)
    landing.segment(zero_price)
    ran: list[str] = []

    @dg.asset(deps=[raw_trades], partitions_def=raw_trades.partitions_def)
    def downstream() -> None:
        ran.append("downstream")

    resources = {"lake": LakeResource(root=str(tmp_path / "lake")), "stream": landing.resource()}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [raw_trades, raw_trades_checks, downstream],
            partition_key=DAY,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            tags={SEGMENTS_TAG: "1-1"},
        )
    assert not result.success and ran == []
    assert not evaluations(result)[("raw_trades", "valid_values")].passed


def test_duplicate_examples_come_in_key_order_and_the_counts_are_exact() -> None:
    from collections import Counter

    from crypto_platform.checks.figures import MAX_EXAMPLES, duplicate_figures

    ids = [f"{i % 500:03d}" for i in range(20_000)]  # every id 40 times, over many threads' chunks
    pairs = ["ETH-USD" if i % 2 else "BTC-USD" for i in range(20_000)]
    table = pa.table({"pair": pairs, "trade_id": ids})
    figures = duplicate_figures(table, ("pair", "trade_id"))
    counts = Counter(zip(pairs, ids, strict=True))
    groups = sorted(counts)
    assert figures.violations == 20_000 - len(groups) and figures.extra["duplicate_keys"] == len(groups)
    assert figures.examples == [f"pair={p}, trade_id={i} ({counts[p, i]} rows)" for p, i in groups[:MAX_EXAMPLES]]


def test_a_stream_run_checks_its_new_rows_and_their_keys_against_the_table(
    built: tuple[Built, dg.DagsterInstance],
) -> None:
    """With the run's segment tag, the checks read segment 2's rows, not the day: a bad row of segment 1
    is not theirs, while a key of segment 2 that the table already holds elsewhere is a duplicate."""
    b, instance = built
    trades = b.table("raw_trades")
    segment = trades["segment"].to_pylist()
    second = [i for i, s in enumerate(segment) if s == 2]
    first = [i for i, s in enumerate(segment) if s == 1]
    prices = trades["price"].to_pylist()
    prices[first[0]] = Decimal(0)  # a defect outside the run's segments
    bad = with_column(trades, "price", prices)
    # A copy of a segment-2 trade under segment 1: same key, same event time.
    copy = bad.take([second[0]])
    copy = with_column(copy, "segment", [1])
    b.replace("raw_trades", pa.concat_tables([bad, copy]))

    def stream_run() -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
        result = dg.materialize(
            [*ASSETS, *CHECKS],
            selection=dg.AssetSelection.checks(raw_trades_checks),
            tags={"dagster/partition": DAY, SEGMENTS_TAG: "2-2"},
            instance=instance,
            resources=b.resources,
            raise_on_error=False,
        )
        return evaluations(result)

    found = stream_run()
    assert found[("raw_trades", "valid_values")].passed  # segment 1's zero price is not in the run
    assert meta(found[("raw_trades", "valid_values")], "rows_checked") == len(second)  # its rows only
    unique = found[("raw_trades", "unique_key")]
    assert not unique.passed and meta(unique, "duplicate_keys") == 1
    # The whole day (no tag: the UI, a rebuild) sees both defects.
    whole = evaluations(run_checks_only(instance, ASSETS, [raw_trades_checks], DAY, b.resources))
    assert not whole[("raw_trades", "valid_values")].passed and not whole[("raw_trades", "unique_key")].passed
