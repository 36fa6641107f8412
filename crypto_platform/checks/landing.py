"""Freshness of the ``landing_log`` (an external asset): is data still arriving and being sealed?

The figures come from the files the ingester keeps: the manifest's last sealed segment
(``sealed_ns``), the heartbeat's newest event time (``last_event_ms``) and the session ledger's gaps
over the last 24 hours (completeness = share of that window not inside a gap).

The check fails (WARN; an external asset cannot be blocked) when either age passes
``max(60 s, 12 x CRYPTO_SEGMENT_MAX_AGE_S)``: a healthy feed seals a segment every
``CRYPTO_SEGMENT_MAX_AGE_S`` (5 s) and Polygon's crypto channels are never quiet for a minute (XA
bars alone arrive every minute per pair).

It can be executed from the UI like any check, and ``landing_freshness_sensor`` evaluates it every
minute without launching a run: it reports the evaluation as an asset event whenever the outcome
changes and at least every 15 minutes (not every tick, which would flood the event log), and logs
each reported evaluation to MLflow, since no run exists for ``mlflow_sensor`` to pick it up from.
"""

import time

import dagster as dg
import orjson

from crypto_platform.assets.landing_log import landing_log
from crypto_platform.checks.figures import Figures
from crypto_platform.checks.mlflow_events import log_runless_check
from crypto_platform.resources.mlflow import MlflowTrackingResource
from crypto_platform.resources.stream import StreamResource
from crypto_platform.stream.manifest import last_manifest_entry
from crypto_platform.stream.session_ledger import Gap, gaps

CHECK_NAME = "landing_freshness"
WINDOW_S = 86_400.0
REPORT_EVERY_S = 900.0


def gap_seconds(ledger_gaps: list[Gap], start_ns: int, end_ns: int) -> float:
    """Seconds of ``[start_ns, end_ns)`` inside session-ledger gaps (an open gap runs to ``end_ns``)."""
    total = 0
    for gap in ledger_gaps:
        lo, hi = max(gap.start_ns, start_ns), min(gap.end_ns or end_ns, end_ns)
        total += max(0, hi - lo)
    return total / 1e9


def landing_freshness(stream: StreamResource, now_ns: int | None = None) -> Figures:
    """The freshness figures and verdict (see the module docstring)."""
    now_ns = now_ns or time.time_ns()
    limit = max(60.0, 12 * stream.settings().segment_max_age_s)
    landing = stream.landing_dir
    entry = last_manifest_entry(landing)
    beat = stream.status().heartbeat or {}
    sealed_age = (now_ns - int(entry["sealed_ns"])) / 1e9 if entry and entry.get("sealed_ns") else None
    event_age = (now_ns / 1e6 - int(beat["last_event_ms"])) / 1e3 if beat.get("last_event_ms") else None
    first = stream.sessions()
    window_start = max(now_ns - int(WINDOW_S * 1e9), first[0].connect_ns if first else now_ns)
    window_s = (now_ns - window_start) / 1e9
    gap_s = gap_seconds(gaps(first), window_start, now_ns) if window_s > 0 else 0.0
    problems = []
    for what, age in (("sealed segment", sealed_age), ("event", event_age)):
        if age is None:
            problems.append(f"no {what} yet")
        elif age > limit:
            problems.append(f"last {what} {age:.0f}s ago (limit {limit:.0f}s)")
    return Figures(
        int(entry["seq"]) if entry else 0,
        len(problems),
        problems,
        {
            "seconds_since_sealed": round(sealed_age, 3) if sealed_age is not None else -1.0,
            "seconds_since_event": round(event_age, 3) if event_age is not None else -1.0,
            "limit_s": limit,
            "gap_seconds_24h": round(gap_s, 3),
            "completeness_24h": round(1 - gap_s / window_s, 6) if window_s > 0 else 1.0,
            "ingester_running": int(stream.status().running),
        },
    )


def _evaluation(figures: Figures) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=landing_log.key,
        check_name=CHECK_NAME,
        passed=figures.passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=figures.metadata(),
    )


@dg.asset_check(
    asset=landing_log.key,
    name=CHECK_NAME,
    blocking=False,
    description="Seconds since the last sealed segment and since the last event, gaps and completeness over 24 h.",
)
def landing_freshness_check(stream: StreamResource) -> dg.AssetCheckResult:
    figures = landing_freshness(stream)
    return dg.AssetCheckResult(passed=figures.passed, severity=dg.AssetCheckSeverity.WARN, metadata=figures.metadata())


@dg.sensor(
    name="landing_freshness_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates landing_log's freshness every minute without a run; reports changes and every 15 min.",
)
def landing_freshness_sensor(
    context: dg.SensorEvaluationContext, stream: StreamResource, mlflow: MlflowTrackingResource
) -> dg.SensorResult:
    previous = orjson.loads(context.cursor) if context.cursor else {}
    figures = landing_freshness(stream)
    now = time.time()
    changed = previous.get("passed") is not figures.passed
    if not changed and now - float(previous.get("at", 0)) < REPORT_EVERY_S:
        return dg.SensorResult(skip_reason=f"landing log {'fresh' if figures.passed else 'stale'}; unchanged")
    evaluation = _evaluation(figures)
    log_runless_check(mlflow, evaluation, reporter="landing_freshness_sensor")
    return dg.SensorResult(
        asset_events=[evaluation],
        cursor=orjson.dumps({"passed": figures.passed, "at": now}).decode(),
        skip_reason=None,
    )
