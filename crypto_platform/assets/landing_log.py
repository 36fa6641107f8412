"""The landing log as an external asset: the ingester process writes it, Dagster only observes it.

The ingester owns the single Polygon connection (Polygon allows one per key) and runs outside
Dagster (it must outlive code-server reloads), so the log
is declared with an ``AssetSpec`` rather than materialized by an asset function. Downstream assets
name it in ``deps`` (``deps=[landing_log]`` or ``deps=["landing_log"]``).
"""

from __future__ import annotations

import dagster as dg

landing_log = dg.AssetSpec(
    "landing_log",
    group_name="ingest",
    kinds={"python"},
    owners=["team:data-platform"],
    description=(
        "Append-only log of every raw Polygon WebSocket frame with its receive time, written by the "
        "ingester process (`crypto-platform stream`) under CRYPTO_DATA_DIR/landing: sealed NDJSON "
        "segments, a manifest and the session ledger (docs/architecture.md). The source of truth from "
        "which every raw_* partition is rebuilt."
    ),
)
