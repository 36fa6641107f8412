"""What reading the manifest costs once the landing log is long, next to parsing every line.

At the default ``CRYPTO_SEGMENT_MAX_AGE_S`` of 5 s a busy feed seals 17,280 segments a day, so
after a month the manifest holds half a million lines (about 150 MiB). Three readers look at it:

- the stream sensor, every tick: the entries after its cursor (``iter_manifest(after_seq=...)``);
- every raw asset of a stream run: the day's entries after the partition's watermark up to the
  run's last segment (``segments_to_read(root, day, channels, after, upto)``);
- a rebuild of one day (UI run or backfill): every entry of that day (``after`` 0).

The manifest is made here as the sealer writes it: one real sealed segment's entry (XT, XQ, XA and
XAS events of a day) renumbered and moved along in time, 5 s a segment, for ``--days`` days. The
baseline is what those readers did before: parse every line with orjson and filter. Each figure is
the median of ``--repeats`` runs; each length is measured with both ways in the same run.

    python benchmarks/long_landing_log.py [--days 1 30] [--repeats 5] [--check]

Targets (chosen with the change; no issue names them): on the longest log the tick and the stream
run's read cost at most 2x what they cost on the shortest (their cost does not grow with the log),
and a day's rebuild reads the manifest at least 3x faster than the baseline.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crypto_platform.assets.raw import TRADES, segments_to_read  # noqa: E402
from crypto_platform.days import day_of  # noqa: E402
from crypto_platform.stream.landing_log import LandingLog  # noqa: E402
from crypto_platform.stream.manifest import iter_manifest  # noqa: E402

SEGMENT_S = 5
PER_DAY = 86_400 // SEGMENT_S
START_MS = 1_763_596_800_000  # 2025-11-20T00:00Z
TAIL = 3  # segments a tick or a stream run has to read


def template(work: Path) -> dict[str, Any]:
    """The manifest entry of one real sealed segment holding the four stream channels."""
    log = LandingLog(work / "template", fsync="never")
    log.open()
    t = START_MS
    events = [
        {"ev": "XT", "pair": "BTC-USD", "p": 97000.1, "s": 0.01, "t": t, "i": "1", "x": 1, "c": [2], "r": t + 5},
        {"ev": "XQ", "pair": "BTC-USD", "bp": 97000.0, "bs": 1, "ap": 97000.2, "as": 2, "t": t + 1, "x": 1},
        {"ev": "XA", "pair": "BTC-USD", "o": 1, "c": 1, "h": 1, "l": 1, "v": 1, "vw": 1, "s": t, "e": t + 60_000},
        {"ev": "XAS", "pair": "BTC-USD", "o": 1, "c": 1, "h": 1, "l": 1, "v": 1, "vw": 1, "s": t, "e": t + 1_000},
    ]
    log.append(t * 1_000_000, 1, orjson.dumps(events))
    log.seal()
    log.close()
    (entry,) = iter_manifest(work / "template")
    return entry


def write_manifest(root: Path, days: int, entry: dict[str, Any]) -> int:
    """A manifest of ``days`` days of 5 s segments; returns the last seq."""
    root.mkdir(parents=True)
    (stats,) = entry["days"].values()
    seq = 0
    with open(root / "manifest.ndjson", "wb") as f:
        for seq in range(1, days * PER_DAY + 1):
            t = START_MS + (seq - 1) * SEGMENT_S * 1000
            moved = {ch: {**s, "t_min": t, "t_max": t + SEGMENT_S * 1000 - 1} for ch, s in stats.items()}
            line = {
                **entry,
                "seq": seq,
                "file": f"segments/{seq:012d}.ndjson",
                "recv_first_ns": t * 1_000_000,
                "recv_last_ns": (t + SEGMENT_S * 1000) * 1_000_000,
                "sealed_ns": (t + SEGMENT_S * 1000) * 1_000_000 + 1,
                "days": {day_of(t): moved},
            }
            f.write(orjson.dumps(line) + b"\n")
    return seq


def full_scan(root: Path, after: int, through: int, day: str | None) -> list[dict[str, Any]]:
    """The baseline: every line parsed, then filtered (what the readers did before)."""
    out = []
    with open(root / "manifest.ndjson", "rb") as f:
        for line in f:
            e = orjson.loads(line)
            if after < e["seq"] <= through and (day is None or day in e["days"]):
                out.append(e)
    return out


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    runs, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), result


def seqs_to_read(root: Path, day: str, after: int, upto: int) -> list[int]:
    """What a raw asset reads: ``segments_to_read`` (no segment file exists here, so all are 'missing')."""
    entries, missing = segments_to_read(root, day, TRADES.channels, after, upto)
    return sorted([int(e["seq"]) for e in entries] + missing)


def measure(root: Path, last: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Per reader: (platform seconds, baseline seconds), after checking both read the same segments."""
    newest, oldest = day_of(START_MS + (last - 1) * SEGMENT_S * 1000), day_of(START_MS)

    def scan(after: int, day: str | None) -> list[int]:
        return [e["seq"] for e in full_scan(root, after, last, day)]

    cases: dict[str, tuple[Callable[[], list[int]], Callable[[], list[int]]]] = {
        "sensor tick": (
            lambda: [e["seq"] for e in iter_manifest(root, after_seq=last - TAIL)],
            lambda: scan(last - TAIL, None),
        ),
        "stream run (per raw asset)": (
            lambda: seqs_to_read(root, newest, last - TAIL, last),
            lambda: scan(last - TAIL, newest),
        ),
        "rebuild of the first day": (lambda: seqs_to_read(root, oldest, 0, last), lambda: scan(0, oldest)),
    }
    out = {}
    for name, (platform, baseline) in cases.items():
        mine_s, mine = timed(platform, repeats)
        base_s, base = timed(baseline, repeats)
        if mine != base or not mine:
            raise SystemExit(f"{name}: the platform and the baseline read different segments")
        out[name] = (mine_s, base_s)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[1, 30], help="log lengths to measure, in days")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit non-zero when a target is missed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="long-landing-log-"))
    try:
        entry = template(work)
        results: dict[int, dict[str, tuple[float, float]]] = {}
        for days in sorted(args.days):
            root = work / f"log-{days}"
            last = write_manifest(root, days, entry)
            size = (root / "manifest.ndjson").stat().st_size
            print(f"{days} days: {last:,} segments, manifest {size / 2**20:,.0f} MiB")
            results[days] = measure(root, last, args.repeats)
            for name, (mine, base) in results[days].items():
                print(
                    f"  {name:28s} platform {mine * 1000:9.2f} ms  baseline {base * 1000:9.1f} ms  {base / mine:8.1f}x"
                )
            (root / "manifest.ndjson").unlink()
        shortest, longest = results[min(results)], results[max(results)]
        misses = []
        for name in ("sensor tick", "stream run (per raw asset)"):
            growth = longest[name][0] / shortest[name][0]
            print(f"{name}: {max(results)} days cost {growth:.2f}x what {min(results)} day(s) cost")
            if growth > 2.0:
                misses.append(f"{name} grows {growth:.2f}x > 2x")
        rebuild = longest["rebuild of the first day"]
        if rebuild[1] / rebuild[0] < 3.0:
            misses.append(f"rebuild read {rebuild[1] / rebuild[0]:.1f}x < 3x the baseline")
        print("targets: " + ("all met" if not misses else "MISSED " + "; ".join(misses)))
        return 1 if args.check and misses else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
