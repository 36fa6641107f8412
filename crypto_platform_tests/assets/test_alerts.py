"""crypto_alerts: price crossings, volume spikes and whale trades, muted in gaps and repair floods.

The rules run on lake partitions written here with known trades, so every expected alert follows
from the data the test planted; the asset test goes through the real settings (CRYPTO_ALERT_*), the
real lake, the SQLite stand-in's crypto_alerts table and a real Dagster instance.
"""

from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from crypto_platform.assets.alerts import NO_UNMUTED, AlertRules, crypto_alerts, evaluate_day
from crypto_platform.assets.raw import TRADES_SCHEMA
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.settings import load_settings
from crypto_platform.stream.session_ledger import GapWindow
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform_tests.conftest import local_settings

DAY = "2025-11-24"
DAY_MS = 1_763_942_400_000  # 2025-11-24T00:00Z
MINUTE = 60_000
QUIET = AlertRules({}, {}, 0.0, 30, Decimal(0))  # every rule off


def trades(rows: list[tuple[str, int, str, str]], source: str = "ws") -> pa.Table:
    """(pair, event_ms, price, size) -> raw_trades rows, ids in order."""
    return pa.Table.from_pylist(
        [
            {
                "pair": pair,
                "exchange": 1,
                "trade_id": f"{source}-{i}",
                "price": Decimal(price),
                "size": Decimal(size),
                "conditions": "[]",
                "event_ms": ms,
                "polygon_received_ms": ms,
                "received_ns": ms * 1_000_000 + i,
                "session": 1,
                "segment": 1,
                "source": source,
            }
            for i, (pair, ms, price, size) in enumerate(rows)
        ],
        schema=TRADES_SCHEMA,
    )


def rules(**changes: Any) -> AlertRules:
    base = {
        "price_above": {},
        "price_below": {},
        "volume_spike_factor": 0.0,
        "volume_window_min": 30,
        "whale_notional": Decimal(0),
    }
    return AlertRules(**{**base, **changes})


def test_a_price_alerts_once_per_crossing_and_remembers_the_day_before() -> None:
    prices = ["99990", "100010", "100020", "99995", "100001"]
    day = trades([("BTC-USD", DAY_MS + i * 1000, p, "1") for i, p in enumerate(prices)])
    above = rules(price_above={"BTC-USD": Decimal(100000)}, price_below={"BTC-USD": Decimal(99996)})
    found = evaluate_day(DAY, day, None, None, None, above, [])
    assert [(a.rule, a.ts_ms - DAY_MS, a.value) for a in found] == [
        ("price_below", 0, Decimal("99990")),  # no day before: the first trade beyond alerts
        ("price_above", 1000, Decimal("100010")),
        ("price_below", 3000, Decimal("99995")),
        ("price_above", 4000, Decimal("100001")),
    ]
    before = trades([("BTC-USD", DAY_MS - 5000, "99980", "1")])  # already below at midnight
    assert [a.rule for a in evaluate_day(DAY, day, before, None, None, above, [])] == [
        "price_above",
        "price_below",
        "price_above",
    ]


def test_whale_trades_are_exact_at_the_threshold() -> None:
    day = trades(
        [
            ("BTC-USD", DAY_MS + 10, "100000", "10"),  # exactly 1,000,000
            ("BTC-USD", DAY_MS + 20, "99999.99999999", "10"),  # 0.0000001 short
            ("ETH-USD", DAY_MS + 30, "3000", "400"),  # two whales in one millisecond: one alert, summed
            ("ETH-USD", DAY_MS + 30, "3000", "500"),
            ("ETH-USD", DAY_MS + 30, "3000", "0.5"),  # not a whale: not in the sum
        ]
    )
    whales = evaluate_day(DAY, day, None, None, None, rules(whale_notional=Decimal(1_000_000)), [])
    assert [(a.pair, a.ts_ms - DAY_MS, a.value) for a in whales] == [
        ("BTC-USD", 10, Decimal("1000000")),
        ("ETH-USD", 30, Decimal("2700000")),
    ]
    assert "400" in whales[1].reason and "500" in whales[1].reason


def spiky_day(spike_minute: int, spike_size: str) -> list[tuple[str, int, str, str]]:
    rows = [("BTC-USD", DAY_MS + m * MINUTE + 5, "97000", "1") for m in range(40)]
    rows.append(("BTC-USD", DAY_MS + spike_minute * MINUTE + 7, "97000", spike_size))
    return rows


def test_a_volume_spike_alerts_and_is_muted_in_a_gap_or_a_repair_flood() -> None:
    spike = rules(volume_spike_factor=5.0, volume_window_min=30)
    found = evaluate_day(DAY, trades(spiky_day(35, "5")), None, None, None, spike, [])
    assert [(a.rule, (a.ts_ms - DAY_MS) // MINUTE, a.value, a.muted) for a in found] == [
        ("volume_spike", 35, Decimal(6), False)
    ]
    assert found[0].threshold == Decimal(5)  # median 1 x factor 5
    # 4 more is not above 5x the median:
    assert evaluate_day(DAY, trades(spiky_day(35, "4")), None, None, None, spike, []) == []
    # The same minute inside a ledger gap: kept, muted, with the gap as the reason.
    gap = GapWindow(DAY_MS + 35 * MINUTE, DAY_MS + 36 * MINUTE, after_session=1, before_session=2, reason=None)
    (muted,) = evaluate_day(DAY, trades(spiky_day(35, "5")), None, None, None, spike, [gap])
    assert muted.muted and muted.reason == "stream gap 2025-11-24 00:35:00-2025-11-24 00:36:00 after session 1"
    # A burst of trades fetched by gap repair is not a spike.
    flood = pa.concat_tables(
        [trades(spiky_day(35, "0.5")), trades([("BTC-USD", DAY_MS + 35 * MINUTE + 9, "97000", "5")], "rest_repair")]
    )
    (repair,) = evaluate_day(DAY, flood, None, None, None, spike, [])
    assert repair.muted and "repair" in repair.reason


@pytest.fixture
def lake_and_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LakeResource, dict[str, Any]]:
    for name, value in {
        "CRYPTO_PAIRS": "BTC-USD,ETH-USD",
        "CRYPTO_ALERT_PRICE_ABOVE": "BTC-USD:100000",
        "CRYPTO_ALERT_WHALE_NOTIONAL": "1000000",
        "CRYPTO_ALERT_VOLUME_SPIKE_FACTOR": "0",
    }.items():
        monkeypatch.setenv(name, value)  # the asset reads its rules from the settings, as in production
    settings = local_settings(tmp_path)
    lake = LakeResource(root=str(settings.lake_dir))
    resources = {
        "lake": lake,
        "stream": StreamResource(
            project_dir=str(settings.project_dir), state_dir=str(settings.state_dir), data_dir=str(settings.data_dir)
        ),
        "sql_tables": SqlTablesResource(url=settings.mysql_url.reveal()),
    }
    return lake, resources


def test_the_asset_writes_the_day_to_crypto_alerts_and_warns_in_the_ui(
    lake_and_rules: tuple[LakeResource, dict[str, Any]],
) -> None:
    lake, resources = lake_and_rules
    lake.write_partition(
        "raw_trades",
        DAY,
        trades([("BTC-USD", DAY_MS + 1000, "99000", "1"), ("BTC-USD", DAY_MS + 2000, "100500", "10")]),
    )
    with dg.instance_for_test() as instance:
        for _ in range(2):  # a re-run replaces the day: the same rows
            result = dg.materialize([crypto_alerts], partition_key=DAY, instance=instance, resources=resources)
            assert result.success
            (check,) = result.get_asset_check_evaluations()
            assert check.check_name == NO_UNMUTED and not check.passed
            assert check.severity == dg.AssetCheckSeverity.WARN
            rows = SqlWarehouse(resources["sql_tables"].url).query(
                "SELECT rule, pair, ts_ms, value, muted FROM crypto_alerts ORDER BY rule"
            )
            assert [(r[0], r[1], int(r[2]) - DAY_MS, Decimal(str(r[3])), bool(r[4])) for r in rows] == [
                ("price_above", "BTC-USD", 2000, Decimal("100500"), False),
                ("whale_trade", "BTC-USD", 2000, Decimal("1005000"), False),
            ]
        (mat,) = result.asset_materializations_for_node("crypto_alerts")
        assert mat.metadata["unmuted"].value == 2 and "price_above" in mat.metadata["alerts"].value


def full_bars(rows: pa.Table) -> pa.Table:
    """minute_bars rows for ``rows`` (the built bar; no XA bar beside it), settled, streamed."""
    from crypto_platform.lake.bars import compute_minute_bars
    from crypto_platform.lake.schemas import MINUTE_BARS_SCHEMA

    built = compute_minute_bars(rows)
    n = built.num_rows
    extra = {
        "settled": pa.array([True] * n),
        "source": pa.array(["ws"] * n),
        "in_gap": pa.array([False] * n),
        "repaired": pa.array([False] * n),
    }
    columns = {
        name: built[name] if name in built.column_names else extra.get(name, pa.nulls(n, field.type))
        for name, field in zip(MINUTE_BARS_SCHEMA.names, MINUTE_BARS_SCHEMA, strict=True)
    }
    return pa.table(columns).cast(MINUTE_BARS_SCHEMA)


def test_stream_runs_recompute_only_the_changed_windows_and_equal_a_rebuild(
    lake_and_rules: tuple[LakeResource, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three batches land as the stream lands them (trades appended, the touched minutes' bars replaced);
    each run recomputes only the windows the changed bars reach. The table then equals a rebuild's,
    including a crossing whose previous trade is two hours back (found through the bars), a spike whose
    baseline lies in an earlier batch, and a late trade that lands in an old minute and turns a later
    minute's spike off."""
    from crypto_platform.lake.tables import in_ranges, time_ranges, with_date
    from crypto_platform.stream_batches import SEGMENTS_TAG

    monkeypatch.setenv("CRYPTO_ALERT_VOLUME_SPIKE_FACTOR", "5")
    monkeypatch.setenv("CRYPTO_ALERT_VOLUME_WINDOW_MIN", "10")
    monkeypatch.setenv("CRYPTO_ALERT_PRICE_ABOVE", "BTC-USD:100000,ETH-USD:3000.5")
    lake, resources = lake_and_rules
    tables = lake.tables()
    eth_early = [("ETH-USD", DAY_MS + 5 * MINUTE, "3002", "1")]  # ETH's previous trade, two hours before
    calm = [("BTC-USD", DAY_MS + m * MINUTE + 5, "99000", "1") for m in range(0, 130)]
    batch1 = calm + eth_early
    # Batch 2: a BTC spike at minute 135 (baseline: batch 1), a crossing above 100000, ETH again.
    batch2 = [("BTC-USD", DAY_MS + m * MINUTE + 5, "99000", "1") for m in range(130, 140)]
    batch2 += [
        ("BTC-USD", DAY_MS + 135 * MINUTE + 9, "99000", "9"),
        ("BTC-USD", DAY_MS + 138 * MINUTE + 9, "100100", "1"),
    ]
    batch2 += [("ETH-USD", DAY_MS + 137 * MINUTE, "3001", "1")]
    # Batch 3: a whale, and late trades in minutes 126-134 that lift the baseline: 135 is no spike now.
    batch3 = [("BTC-USD", DAY_MS + 141 * MINUTE + 5, "99500", "20")]
    batch3 += [("BTC-USD", DAY_MS + m * MINUTE + 30, "99000", "9") for m in range(126, 135)]
    batch3 += [("BTC-USD", DAY_MS + m * MINUTE + 5, "99000", "1") for m in range(142, 150)]

    every = TRADES_SCHEMA.empty_table()
    counter = 0
    warehouse = SqlWarehouse(resources["sql_tables"].url)
    query = "SELECT rule, pair, ts_ms, value, threshold, muted, reason FROM crypto_alerts ORDER BY ts_ms, rule, pair"
    spiked: list[set[int]] = []
    day_rules = AlertRules.from_settings(load_settings())
    with dg.instance_for_test() as instance:
        for segment, batch in enumerate((batch1, batch2, batch3), start=1):
            rows = trades(batch).to_pylist()
            for r in rows:
                counter += 1
                r["trade_id"], r["segment"] = f"t{counter}", segment
            new = pa.Table.from_pylist(rows, schema=TRADES_SCHEMA)
            tables.append("raw_trades", with_date(new, DAY))
            every = pa.concat_tables([every, new])
            touched = time_ranges(pa.array(sorted({r["event_ms"] - r["event_ms"] % MINUTE for r in rows}), pa.int64()))
            minutes = in_ranges("minute_ms", touched)
            redo = full_bars(every).filter(minutes.arrow)
            tables.replace("minute_bars", DAY, redo, where=minutes)
            result = dg.materialize(
                [crypto_alerts],
                partition_key=DAY,
                instance=instance,
                resources=resources,
                tags={SEGMENTS_TAG: f"{segment}-{segment}"},
            )
            assert result.success
            (mat,) = result.asset_materializations_for_node("crypto_alerts")
            assert mat.metadata["windows_recomputed"].value == (0 if segment == 1 else 1)
            spikes = warehouse.query("SELECT ts_ms FROM crypto_alerts WHERE rule = 'volume_spike'")
            spiked.append({(int(r[0]) - DAY_MS) // MINUTE for r in spikes})
            # After every batch, the table holds what the whole day's rules give at that point.
            whole = evaluate_day(
                DAY,
                lake.read_partition("raw_trades", DAY),
                None,
                lake.read_partition("minute_bars", DAY),
                None,
                day_rules,
                [],
            )
            stored = warehouse.query("SELECT rule, pair, ts_ms FROM crypto_alerts ORDER BY ts_ms, rule, pair")
            assert [(r[0], r[1], int(r[2])) for r in stored] == [(a.rule, a.pair, a.ts_ms) for a in whole], segment
        streamed = warehouse.query(query)
        assert dg.materialize([crypto_alerts], partition_key=DAY, instance=instance, resources=resources).success
        rebuilt = warehouse.query(query)
    assert streamed == rebuilt
    fired = [(r[0], r[1], (int(r[2]) - DAY_MS) // MINUTE) for r in rebuilt]
    assert ("price_above", "BTC-USD", 138) in fired and ("whale_trade", "BTC-USD", 141) in fired
    assert 135 in spiked[1] and 135 not in spiked[2]  # the late trades lifted its baseline
    assert ("volume_spike", "BTC-USD", 126) in fired  # and spiked their own first minute
    # ETH was above its threshold two hours before (the bars said so): 137 is no new crossing.
    assert [m for rule, pair, m in fired if pair == "ETH-USD"] == [5]
