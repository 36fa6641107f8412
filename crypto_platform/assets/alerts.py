"""``crypto_alerts``: price, volume-spike and whale-trade alerts, muted during gaps and repair floods.

Rules (settings ``CRYPTO_ALERT_*``, README "Alerts"):

- ``price_above`` / ``price_below``: a trade crosses a pair's threshold, i.e. its price is above
  (below) the threshold and the pair's previous trade was not. The previous trade of the first trade
  of a day is the last trade of the day before when that partition exists; when it does not, the
  first trade on the far side alerts (the state before it is unknown, and missing an alert is worse
  than one extra).
- ``volume_spike``: a pair's minute volume exceeds ``factor`` x the median minute volume of the
  previous ``window`` minutes. The median, not the mean, so one earlier spike does not lift the
  baseline for the next half hour; minutes observed without trades count as 0, minutes inside a gap
  are left out (not observed), and at least half the window must be observed with a baseline above
  0. Minute volumes come from the lake's ``minute_bars`` partition when it exists, else from trades.
- ``whale_trade``: a trade with ``price * size`` at or above the notional, computed exactly in
  ``Decimal`` (a float prefilter only picks the candidates).

Muting (the alert is kept, with ``muted`` and the reason): the alert's time is inside a gap of the
session ledger (no live data then; what there is came from repair), or its data came from gap repair
(``source = 'rest_repair'`` trades or bars): a repair burst lands a gap's worth of trades in a few
minutes and would otherwise look like a volume spike.

A run without the stream's tag (the UI, a backfill) recomputes the day from the lake and replaces it
in ``crypto_alerts`` (``rebuild_day``), so re-running a day gives the same rows. A stream run
recomputes only the windows that changed: the minute bars rewritten since the version the day's
alerts were computed from (kept as the day's watermark), each window reaching ``window`` minutes
past its last changed minute (a minute's volume is in the next minutes' baseline) and reading each
pair's previous trade before it (from the hour before, else from the bars' closes), and replaces
those windows in the table; the result equals a rebuild, at a cost that does not grow with the day.
The table's key is (rule, pair, ts_ms): two whale trades of one pair in the same millisecond become
one alert with their summed notional.
In the UI: the materialization lists the day's alerts as a table, and the ``no_unmuted_alerts``
check (WARN) fails while the day has alerts nobody muted.
"""

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crypto_platform.assets import bars
from crypto_platform.assets.raw import TRADES_SCHEMA, raw_trades
from crypto_platform.lake.schemas import MINUTE_BARS_SCHEMA
from crypto_platform.lake.tables import between, time_ranges
from crypto_platform.partitions import DAILY_PARTITIONS, MINUTE_MS, clock_text, day_bounds_ms, minute_of
from crypto_platform.resources.lake import LakeResource
from crypto_platform.resources.mysql import SqlTablesResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.settings import Settings
from crypto_platform.stream.session_ledger import GapWindow
from crypto_platform.stream_batches import BatchScope
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.tables import ALERTS

REPAIR = "rest_repair"
NO_UNMUTED = "no_unmuted_alerts"
SHOWN_IN_UI = 50
RULES = ("price_above", "price_below", "volume_spike", "whale_trade")


@dataclass(frozen=True)
class AlertRules:
    """The configured rules (from :class:`Settings`); a zero turns a rule off."""

    price_above: Mapping[str, Decimal]
    price_below: Mapping[str, Decimal]
    volume_spike_factor: float
    volume_window_min: int
    whale_notional: Decimal

    @classmethod
    def from_settings(cls, s: Settings) -> "AlertRules":
        return cls(
            s.alert_price_above,
            s.alert_price_below,
            s.alert_volume_spike_factor,
            s.alert_volume_window_min,
            s.alert_whale_notional,
        )


@dataclass(frozen=True)
class Alert:
    rule: str
    pair: str
    ts_ms: int
    value: Decimal
    threshold: Decimal
    muted: bool
    reason: str


def _mute(ts_lo: int, ts_hi: int, repaired: bool, windows: Sequence[GapWindow]) -> tuple[bool, str]:
    hit = next((w for w in windows if w.overlaps(ts_lo, ts_hi)), None)
    if hit is not None:
        return True, hit.label
    if repaired:
        return True, "repair flood: data from gap repair (source=rest_repair)"
    return False, ""


def _sorted_trades(table: pa.Table) -> pa.Table:
    return table.sort_by([("pair", "ascending"), ("event_ms", "ascending"), ("received_ns", "ascending")])


def crossing_alerts(
    trades: pa.Table, previous: pa.Table | None, rules: AlertRules, windows: Sequence[GapWindow]
) -> list[Alert]:
    out: list[Alert] = []
    for rule, thresholds, compare in (
        ("price_above", rules.price_above, pc.greater),
        ("price_below", rules.price_below, pc.less),
    ):
        for pair, threshold in thresholds.items():
            day = _sorted_trades(trades.filter(pc.equal(trades["pair"], pair)))
            if day.num_rows == 0:
                continue
            level = pa.scalar(threshold, type=day["price"].type)
            beyond = compare(day["price"], level).to_numpy(zero_copy_only=False)
            before = False
            if previous is not None:
                prev = _sorted_trades(previous.filter(pc.equal(previous["pair"], pair)))
                if prev.num_rows:
                    before = bool(compare(prev["price"][-1], level).as_py())
            earlier = np.concatenate([[before], beyond[:-1]])
            for i in np.nonzero(beyond & ~earlier)[0].tolist():
                ts = day["event_ms"][i].as_py()
                muted, reason = _mute(ts, ts + 1, day["source"][i].as_py() == REPAIR, windows)
                why = f"trade {day['trade_id'][i].as_py()} at {day['price'][i].as_py()} crossed {threshold}"
                out.append(Alert(rule, pair, ts, day["price"][i].as_py(), threshold, muted, reason or why))
    return out


def whale_alerts(trades: pa.Table, rules: AlertRules, windows: Sequence[GapWindow]) -> list[Alert]:
    if rules.whale_notional <= 0 or trades.num_rows == 0:
        return []
    approx = pc.multiply(pc.cast(trades["price"], pa.float64()), pc.cast(trades["size"], pa.float64()))
    # float64 is within 1e-15 relative: a 1e-6 margin cannot drop a real whale; exact check below.
    candidates = trades.filter(pc.greater_equal(approx, float(rules.whale_notional) * (1 - 1e-6)))
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for t in candidates.to_pylist():
        if t["price"] * t["size"] >= rules.whale_notional:
            by_key.setdefault((t["pair"], t["event_ms"]), []).append(t)
    out = []
    for (pair, ts), found in sorted(by_key.items()):
        notional = sum((t["price"] * t["size"] for t in found), Decimal(0))
        muted, reason = _mute(ts, ts + 1, any(t["source"] == REPAIR for t in found), windows)
        ids = ", ".join(f"{t['trade_id']} ({t['price']} x {t['size']})" for t in found)
        out.append(Alert("whale_trade", pair, ts, notional, rules.whale_notional, muted, reason or f"trade {ids}"))
    return out


@dataclass
class Minute:
    volume: Decimal
    repaired: bool = False
    in_gap: bool = False


def minute_volumes(trades: pa.Table | None, minute_bars: pa.Table | None) -> dict[str, dict[int, Minute]]:
    """pair -> minute_ms -> volume: from the minute_bars partition when there is one, else from trades."""
    out: dict[str, dict[int, Minute]] = {}
    if minute_bars is not None:
        cols = [c for c in ("pair", "minute_ms", "volume", "source", "in_gap") if c in minute_bars.column_names]
        for b in minute_bars.select(cols).to_pylist():
            out.setdefault(b["pair"], {})[b["minute_ms"]] = Minute(
                b["volume"] or Decimal(0), b.get("source") == REPAIR, bool(b.get("in_gap"))
            )
        return out
    if trades is None:
        return out
    for t in trades.select(["pair", "event_ms", "size", "source"]).to_pylist():
        m = out.setdefault(t["pair"], {}).setdefault(minute_of(t["event_ms"]), Minute(Decimal(0)))
        m.volume += t["size"]
        m.repaired = m.repaired or t["source"] == REPAIR
    return out


def spike_alerts(
    day: str, volumes: Mapping[str, Mapping[int, Minute]], rules: AlertRules, windows: Sequence[GapWindow]
) -> list[Alert]:
    if rules.volume_spike_factor <= 0:
        return []
    lo, hi = day_bounds_ms(day)
    n = rules.volume_window_min
    factor = Decimal(str(rules.volume_spike_factor))
    out = []
    for pair, by_minute in sorted(volumes.items()):
        for minute in sorted(m for m in by_minute if lo <= m < hi):
            baseline_minutes = [
                by_minute.get(m, Minute(Decimal(0))).volume
                for m in range(minute - n * MINUTE_MS, minute, MINUTE_MS)
                if not any(w.overlaps(m, m + MINUTE_MS) for w in windows)
                and not (m in by_minute and by_minute[m].in_gap)
            ]
            if len(baseline_minutes) < max(3, n // 2):
                continue
            baseline = statistics.median(baseline_minutes)
            threshold = baseline * factor
            this = by_minute[minute]
            if baseline <= 0 or this.volume <= threshold:
                continue
            muted, reason = _mute(minute, minute + MINUTE_MS, this.repaired, windows)
            if this.in_gap and not muted:
                muted, reason = True, "minute marked in_gap by minute_bars"
            why = f"volume {this.volume} vs median {baseline} of {len(baseline_minutes)} minutes x {factor}"
            out.append(Alert("volume_spike", pair, minute, this.volume, threshold, muted, reason or why))
    return out


def evaluate_day(
    day: str,
    trades: pa.Table | None,
    previous: pa.Table | None,
    minute_bars: pa.Table | None,
    previous_bars: pa.Table | None,
    rules: AlertRules,
    windows: Sequence[GapWindow],
) -> list[Alert]:
    """Every alert of one UTC day, muted or not, one per (rule, pair, ts_ms)."""
    trades = trades if trades is not None else TRADES_SCHEMA.empty_table()
    volumes = minute_volumes(trades, minute_bars)
    # The baseline of the day's first minutes reaches into the day before.
    for pair, by_minute in minute_volumes(previous, previous_bars).items():
        for m, v in by_minute.items():
            volumes.setdefault(pair, {}).setdefault(m, v)  # type: ignore[union-attr]
    found = [
        *crossing_alerts(trades, previous, rules, windows),
        *spike_alerts(day, volumes, rules, windows),
        *whale_alerts(trades, rules, windows),
    ]
    unique: dict[tuple[str, str, int], Alert] = {}
    for a in found:
        unique.setdefault((a.rule, a.pair, a.ts_ms), a)
    return sorted(unique.values(), key=lambda a: (a.ts_ms, a.rule, a.pair))


# A window's first trades find their pair's previous trade this far back first (then in the bars).
PRIOR_MS = 3_600_000


def _previous_trades(lake: LakeResource, day: str, lo: int, pairs: list[str]) -> pa.Table:
    """Each pair's trades just before ``lo`` (for a crossing's previous price), as trades rows.

    The hour before ``lo`` first; a pair without a trade there takes its last bar's close before
    ``lo`` (a bar's close is its last trade's price), else the day before's last close.
    """
    d_lo, _ = day_bounds_ms(day)
    columns = ["pair", "event_ms", "received_ns", "price"]
    prior = lake.read_partition("raw_trades", day, where=between("event_ms", max(d_lo, lo - PRIOR_MS), lo - 1))
    parts: list[pa.Table] = []
    have: set[str] = set()
    if prior is not None and prior.num_rows:
        parts.append(prior.select(columns))
        have = set(pc.unique(prior["pair"]).to_pylist())
    missing = [p for p in pairs if p not in have]
    for source_day, upto in ((day, lo - 1), (_previous_day(day), d_lo - 1)):
        if not missing:
            break
        found = lake.read_partition(
            "minute_bars", source_day, where=between("minute_ms", 0, upto), columns=["pair", "minute_ms", "close"]
        )
        if found is None or not found.num_rows:
            continue
        found = found.filter(pc.is_in(found["pair"], value_set=pa.array(missing, pa.string())))
        last = found.group_by("pair").aggregate([("minute_ms", "max")])
        closes = found.join(last, ["pair", "minute_ms"], right_keys=["pair", "minute_ms_max"], join_type="inner")
        if closes.num_rows:
            parts.append(
                pa.table(
                    {
                        "pair": closes["pair"],
                        "event_ms": pc.add(closes["minute_ms"], MINUTE_MS - 1),
                        "received_ns": pa.array([0] * closes.num_rows, pa.int64()),
                        "price": closes["close"],
                    }
                ).cast(pa.schema([TRADES_SCHEMA.field(c) for c in columns]))
            )
            missing = [p for p in missing if p not in set(closes["pair"].to_pylist())]
    if not parts:
        return TRADES_SCHEMA.empty_table()
    rows = pa.concat_tables(parts)
    empty = {c: pa.nulls(rows.num_rows, TRADES_SCHEMA.field(c).type) for c in TRADES_SCHEMA.names if c not in columns}
    return pa.table({**{c: rows[c] for c in columns}, **empty}).select(TRADES_SCHEMA.names).cast(TRADES_SCHEMA)


def window_alerts(
    lake: LakeResource, day: str, span: tuple[int, int], rules: AlertRules, windows: Sequence[GapWindow]
) -> tuple[tuple[int, int], list[Alert]]:
    """The alerts whose time falls in the window a change of minutes ``span`` (inclusive) can affect.

    A changed minute moves its own alerts, the volume baseline of the next ``window`` minutes and the
    previous price of the next trades: the window runs from the first changed minute to ``window``
    minutes past the last. Only that window's trades and bars are read (plus the baseline minutes
    before it and each pair's previous trade), so a stream run's cost does not grow with the day.
    Returns the window ``[lo, hi)`` and its alerts, equal to the day's alerts in it.
    """
    d_lo, d_hi = day_bounds_ms(day)
    reach = rules.volume_window_min * MINUTE_MS
    lo, hi = max(d_lo, span[0]), min(d_hi, span[1] + MINUTE_MS + reach)
    trades = lake.read_partition("raw_trades", day, where=between("event_ms", lo, hi - 1))
    trades = trades if trades is not None else TRADES_SCHEMA.empty_table()
    previous = _previous_trades(lake, day, lo, sorted(set(pc.unique(trades["pair"]).to_pylist())))
    minute_bars = lake.read_partition("minute_bars", day, where=between("minute_ms", max(d_lo, lo - reach), hi - 1))
    # The previous day's bars for a baseline reaching back past midnight; never volumes from ``previous``
    # (each pair's last trades before the window, some made up from a bar's close).
    previous_bars: pa.Table | None = MINUTE_BARS_SCHEMA.empty_table()
    if lo - reach < d_lo:
        before = between("minute_ms", lo - reach, d_lo - 1)
        previous_bars = lake.read_partition("minute_bars", _previous_day(day), where=before)
    if minute_bars is None:
        # No bars yet: volumes come from trades, which must then cover the baseline minutes too.
        trades_before = lake.read_partition("raw_trades", day, where=between("event_ms", max(d_lo, lo - reach), lo - 1))
        if trades_before is not None and trades_before.num_rows:
            trades = pa.concat_tables([trades_before, trades])
    found = evaluate_day(day, trades, previous, minute_bars, previous_bars, rules, windows)
    return (lo, hi), [a for a in found if lo <= a.ts_ms < hi]


def stored_alerts(warehouse: SqlWarehouse, day: str) -> list[Alert]:
    """The day's alerts as the table holds them (what the check and the run's metadata describe)."""
    rows = warehouse.read_partition(ALERTS, day).to_dict("records")
    alerts = [
        Alert(
            r["rule"],
            r["pair"],
            int(r["ts_ms"]),
            Decimal(r["value"]),
            Decimal(r["threshold"]),
            bool(r["muted"]),
            r["reason"] or "",
        )
        for r in rows
    ]
    return sorted(alerts, key=lambda a: (a.ts_ms, a.rule, a.pair))


def alerts_frame(alerts: Sequence[Alert]) -> pd.DataFrame:
    columns = ["rule", "pair", "ts_ms", "value", "threshold", "muted", "reason"]
    return pd.DataFrame([{c: getattr(a, c) for c in columns} for a in alerts], columns=columns)


def alerts_markdown(alerts: Sequence[Alert]) -> str:
    if not alerts:
        return "no alerts"
    lines = ["| time (UTC) | rule | pair | value | threshold | muted | reason |", "|---|---|---|---|---|---|---|"]
    for a in alerts[:SHOWN_IN_UI]:
        reason = a.reason.replace("|", "/")
        lines.append(
            f"| {clock_text(a.ts_ms)} | {a.rule} | {a.pair} | {a.value.normalize()} | {a.threshold.normalize()} "
            f"| {'yes' if a.muted else 'no'} | {reason} |"
        )
    if len(alerts) > SHOWN_IN_UI:
        lines.append(f"\n{len(alerts) - SHOWN_IN_UI} more in table crypto_alerts")
    return "\n".join(lines)


def _previous_day(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


@dg.asset(
    partitions_def=DAILY_PARTITIONS,
    deps=[raw_trades, bars.minute_bars],
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=7),
    check_specs=[dg.AssetCheckSpec(NO_UNMUTED, asset="crypto_alerts", blocking=False)],
    group_name="quality",
    kinds={"python", "sql"},
    owners=["team:data-platform"],
    code_version="1",
    description=(
        "Price crossings, minute volume spikes and whale trades of the UTC day (rules: CRYPTO_ALERT_*), muted "
        "during session-ledger gaps and gap-repair floods with the reason kept; table crypto_alerts."
    ),
)
def crypto_alerts(
    context: dg.AssetExecutionContext, lake: LakeResource, stream: StreamResource, sql_tables: SqlTablesResource
) -> dg.MaterializeResult:
    rules = AlertRules.from_settings(stream.settings())
    now_ms = int(time.time() * 1000)
    windows = [gap.window(now_ms) for gap in stream.gaps()]
    warehouse = SqlWarehouse(sql_tables.url)
    warehouse.migrate()
    scope = BatchScope.from_context(context)
    tables = lake.tables()
    every: list[Alert] = []
    recomputed: list[tuple[int, int]] = []
    for day in context.partition_keys:
        mark = warehouse.watermark(ALERTS, day) if scope.incremental else None
        if mark is not None:
            # A stream run: the alerts of the windows that the minute bars changed since the version
            # the day's alerts were computed from (the watermark), each window replaced in the table.
            changed, version = tables.changed_since("minute_bars", day, mark)
            minutes = changed["minute_ms"] if changed is not None else pa.array([], pa.int64())
            for span in time_ranges(minutes, gap=rules.volume_window_min * MINUTE_MS):
                window, alerts = window_alerts(lake, day, span, rules, windows)
                warehouse.replace_range(ALERTS, day, window, alerts_frame(alerts), version or mark)
                recomputed.append(window)
            every += stored_alerts(warehouse, day)
            continue
        version = tables.version("minute_bars")
        before = _previous_day(day)
        alerts = evaluate_day(
            day,
            lake.read_partition("raw_trades", day),
            lake.read_partition("raw_trades", before),
            lake.read_partition("minute_bars", day),
            lake.read_partition("minute_bars", before),
            rules,
            windows,
        )
        warehouse.rebuild_day(ALERTS, day, alerts_frame(alerts), watermark=version)
        every += alerts
    loud = [a for a in every if not a.muted]
    counts = {f"{rule}.{kind}": 0 for rule in RULES for kind in ("fired", "muted")}
    for a in every:
        counts[f"{a.rule}.{'muted' if a.muted else 'fired'}"] += 1
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(every),
            "windows_recomputed": len(recomputed),
            "unmuted": len(loud),
            "muted": len(every) - len(loud),
            **counts,
            "alerts": dg.MetadataValue.md(alerts_markdown(every)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=NO_UNMUTED,
                passed=not loud,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"unmuted": len(loud), "alerts": dg.MetadataValue.md(alerts_markdown(loud))},
            )
        ],
    )
