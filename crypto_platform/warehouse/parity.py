"""Parity between the lake and the warehouses: row count + order-independent checksum per partition.

Why canonicalise through :func:`crypto_platform.warehouse.frames.prepare`: MySQL returns ``Decimal``
with 18 places, SQLite returns text, Snowflake returns ``Decimal`` (sometimes in exponent form) and the
lake holds ``decimal128``; only after the same conversion do equal values hash equally. Each row becomes
the tuple of its columns' canonical text, hashed with pandas' fixed-key row hash; the checksum is the
sum of row hashes mod 2**64, so row order does not matter and a duplicated row does not cancel out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from crypto_platform.warehouse.frames import prepare, sql_values
from crypto_platform.warehouse.tables import Table

NULL = "\\N"


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    checksum: int


@dataclass(frozen=True)
class ParityReport:
    """The two sides' fingerprints and, when they differ, the rows that differ (named by key)."""

    table: str
    left: str
    right: str
    left_fp: Fingerprint
    right_fp: Fingerprint
    differences: list[str] = field(default_factory=list)
    # What was compared: "day" (every row), or "segments A-B" (one per-batch load) plus day row counts.
    scope: str = "day"
    day_rows: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.left_fp == self.right_fp and (self.day_rows is None or self.day_rows[0] == self.day_rows[1])

    def message(self) -> str:
        counts = f"; whole day {self.day_rows[0]} vs {self.day_rows[1]} rows" if self.day_rows else ""
        if self.ok:
            return f"{self.table} ({self.scope}): {self.left} and {self.right} agree ({self.left_fp.rows} rows{counts})"
        head = (
            f"{self.table} ({self.scope}): {self.left} has {self.left_fp.rows} rows, {self.right} has "
            f"{self.right_fp.rows}; checksums {self.left_fp.checksum:016x} vs {self.right_fp.checksum:016x}{counts}"
        )
        return "\n".join([head, *self.differences])


def canonical(t: Table, frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One text column per compared column (NULL as ``\\N``), rows de-duplicated on the key as loaders do."""
    prepared = prepare(t, frame)
    cols = [c for c in prepared.columns if columns is None or c in columns]
    out = {}
    for c in cols:
        values = sql_values(t.column(c), prepared.data.column(c))
        out[c] = [NULL if v is None else str(v) for v in values]
    return pd.DataFrame(out, columns=cols)


def fingerprint_canonical(canon: pd.DataFrame) -> Fingerprint:
    if canon.empty:
        return Fingerprint(0, 0)
    hashes = pd.util.hash_pandas_object(canon, index=False).to_numpy(dtype=np.uint64)
    with np.errstate(over="ignore"):
        total = int(hashes.sum(dtype=np.uint64))
    return Fingerprint(len(canon), total)


def fingerprint(t: Table, frame: pd.DataFrame, columns: Sequence[str] | None = None) -> Fingerprint:
    """Row count and checksum of a partition given as a DataFrame (lake, or read from a warehouse)."""
    return fingerprint_canonical(canonical(t, frame, columns))


def common_columns(t: Table, *frames: pd.DataFrame) -> list[str]:
    return [c for c in t.names if all(c in f.columns for f in frames)]


def diff_rows(
    t: Table,
    left: pd.DataFrame,
    right: pd.DataFrame,
    labels: tuple[str, str] = ("left", "right"),
    limit: int = 20,
) -> list[str]:
    """Describe the rows that differ: missing on one side, or present on both with other values."""
    cols = common_columns(t, left, right)
    a = canonical(t, left, cols)
    b = canonical(t, right, cols)
    key = list(t.key)
    merged = a.merge(b, on=key, how="outer", suffixes=("__l", "__r"), indicator=True)
    out: list[str] = []

    def key_text(row: Any) -> str:
        return ", ".join(f"{k}={row[k]!r}" for k in key)

    for _, row in merged.iterrows():
        if len(out) >= limit:
            out.append("… (more differences not shown)")
            break
        if row["_merge"] == "left_only":
            out.append(f"{t.name} ({key_text(row)}): only in {labels[0]}")
        elif row["_merge"] == "right_only":
            out.append(f"{t.name} ({key_text(row)}): only in {labels[1]}")
        else:
            changed = [
                f"{c} {labels[0]}={row[c + '__l']} {labels[1]}={row[c + '__r']}"
                for c in cols
                if c not in key and row[c + "__l"] != row[c + "__r"]
            ]
            if changed:
                out.append(f"{t.name} ({key_text(row)}): " + "; ".join(changed))
    return out


def compare(
    t: Table, left: pd.DataFrame, right: pd.DataFrame, labels: tuple[str, str] = ("lake", "warehouse")
) -> ParityReport:
    """Fingerprint both sides on their common columns; on a mismatch, name the differing rows."""
    cols = common_columns(t, left, right)
    lf, rf = fingerprint(t, left, cols), fingerprint(t, right, cols)
    diffs = [] if lf == rf else diff_rows(t, left, right, labels)
    return ParityReport(t.name, labels[0], labels[1], lf, rf, diffs)


def compare_sql(warehouse: Any, t: Table, day: date | str, lake: pd.DataFrame) -> ParityReport:
    """Lake partition vs the MySQL/SQLite table (a :class:`~crypto_platform.warehouse.sql.SqlWarehouse`)."""
    return compare(t, lake, warehouse.read_partition(t, day), ("lake", warehouse.dialect))


def compare_snowflake(source: Any, t: Table, day: date | str, lake: pd.DataFrame, **where: Any) -> ParityReport:
    """Lake partition vs the Snowflake table (a connection or ``SnowflakeResource.get_connection``).

    ``where`` may give ``database=`` / ``schema=`` (default MARKET_DATA.POLYGON).
    """
    from crypto_platform.warehouse.snowflake import read_snowflake_partition

    return compare(t, lake, read_snowflake_partition(source, t, day, **where), ("lake", "snowflake"))
