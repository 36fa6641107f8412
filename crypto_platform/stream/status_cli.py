"""``crypto-platform status [--json]``: the ingester's health, from its lock, heartbeat and ledger.

Exit code 0 when an ingester runs with a fresh heartbeat, 1 otherwise, so scripts can check it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from crypto_platform.settings import load_settings
from crypto_platform.stream import supervision
from crypto_platform.stream.manifest import count_manifest
from crypto_platform.stream.session_ledger import gaps, ledger_path, sessions


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def collect() -> dict[str, Any]:
    settings = load_settings()
    status = supervision.read_status(settings)
    beat = status.heartbeat or {}
    all_gaps = gaps(sessions(ledger_path(settings.landing_dir)))
    return {
        "running": status.running,
        "healthy": status.healthy,
        "pid": status.pid,
        "heartbeat_age_s": None if status.heartbeat_age_s is None else round(status.heartbeat_age_s, 1),
        "state": beat.get("state"),
        "session": beat.get("session"),
        "url": beat.get("url"),
        "segments_sealed": count_manifest(settings.landing_dir),
        "events_by_channel": beat.get("events_by_channel", {}),
        "events_per_s": beat.get("events_per_s"),
        "last_event_ms": beat.get("last_event_ms"),
        "reconnects": beat.get("reconnects"),
        "quarantined": beat.get("quarantined"),
        "gaps": len(all_gaps),
        "gap_seconds": round(sum(g.seconds or 0.0 for g in all_gaps), 1),
        "last_error": beat.get("last_error"),
        "disk_full": beat.get("disk_full"),
        "free_bytes": beat.get("free_bytes"),
        "data_dir": str(settings.data_dir),
        "state_dir": str(settings.state_dir),
        "state_dir_exists": settings.state_dir.exists(),
        "project_dir": str(settings.project_dir),
    }


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
        return 0 if info["healthy"] else 1
    # Run from another folder, the default state directory is that folder's ./var: say which was read.
    print(f"state:    {info['state_dir']}" + ("" if info["state_dir_exists"] else " (does not exist)"))
    if not info["state_dir_exists"] or not info["running"]:
        print(
            f"          read for project {info['project_dir']}; run from the project folder, or set "
            "CRYPTO_PROJECT_DIR=/path/to/project (or CRYPTO_STATE_DIR / CRYPTO_DATA_DIR) to read another"
        )
    if info["disk_full"]:
        print(f"DISK FULL: {info['disk_full']}; the ingester stopped reading and resumes once there is room")
    if not info["running"]:
        print(f"ingester: not running (data dir {info['data_dir']})")
    else:
        print(
            f"ingester: pid {info['pid']}, {info['state']}, heartbeat {info['heartbeat_age_s']}s ago"
            + ("" if info["healthy"] else "  <-- STALE")
        )
        print(f"session:  {info['session']} on {info['url']}")
    lag = "never" if info["last_event_ms"] is None else f"{time.time() - info['last_event_ms'] / 1000:.1f}s ago"
    landed = info["events_by_channel"] or "nothing"
    print(f"landed:   {landed} ({info['events_per_s'] or 0} events/s), last event {lag}")
    print(f"segments: {info['segments_sealed']} sealed; quarantined frames: {info['quarantined']}")
    print(f"gaps:     {info['gaps']} ({info['gap_seconds']} s in total); reconnects: {info['reconnects']}")
    if info["last_error"]:
        print(f"last error: {info['last_error']['message']}")
    return 0 if info["healthy"] else 1
