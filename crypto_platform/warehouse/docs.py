"""docs/tables.md, generated from the table specs (:mod:`.tables`), the migrations and the views.

Why generated: a hand-written table reference goes stale with the first added column. The page is
rendered from the same specs that create the tables, and ``crypto_platform_tests/warehouse/test_docs.py``
fails when the committed page differs from what this module renders, or when the rendered columns and
types differ from what a migrated database really has.

Regenerate after changing a spec::

    .venv/bin/python -m crypto_platform.warehouse.docs          # rewrite docs/tables.md
    .venv/bin/python -m crypto_platform.warehouse.docs --check  # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from crypto_platform.warehouse.migrations import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE, column_type, index_name
from crypto_platform.warehouse.tables import ALL_TABLES, DECIMAL_PRECISION, DECIMAL_SCALE, Column, Table
from crypto_platform.warehouse.views import VIEWS, View

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "tables.md"
REGENERATE = ".venv/bin/python -m crypto_platform.warehouse.docs"


@dataclass(frozen=True)
class DocColumn:
    """One column as the page shows it: loader columns and the generated UTC datetime companions."""

    name: str
    mysql: str
    sqlite: str
    snowflake: str
    nullable: bool
    added_in: int
    meaning: str
    generated: bool = False  # a human datetime companion, computed from ``source``


def doc_columns(t: Table) -> list[DocColumn]:
    """The columns of ``t`` at the current schema version, in table order (companions after their column)."""
    out: list[DocColumn] = []
    for c in t.columns_at(SCHEMA_VERSION):
        out.append(
            DocColumn(
                c.name,
                column_type(c, "mysql"),
                column_type(c, "sqlite"),
                column_type(c, "snowflake"),
                c.nullable,
                max(c.added_in, t.added_in),
                c.doc,
            )
        )
        if c.human:
            out.append(_companion(c, max(c.added_in, t.added_in)))
    return out


def _companion(c: Column, added_in: int) -> DocColumn:
    assert c.human
    return DocColumn(
        c.human,
        "DATETIME(3)",
        "TEXT",
        "TIMESTAMP_NTZ(3)",
        c.nullable,
        added_in,
        f"{c.name} as a UTC datetime (ms precision)",
        generated=True,
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_section(t: Table) -> list[str]:
    where = f"Snowflake `MARKET_DATA.POLYGON.{t.snowflake}`" if t.snowflake else "MySQL/SQLite only (not in Snowflake)"
    lines = [f"### `{t.name}` ({where})", "", t.doc, ""]
    lines.append(f"- Primary key: ({', '.join(t.key)})")
    lines.append(f"- Partition: the UTC day of `{t.partition}`")
    indexes = t.indexes_at(SCHEMA_VERSION)
    if indexes:
        described = []
        for ix in indexes:
            since = f", since v{ix.added_in}" if ix.added_in > t.added_in else ""
            described.append(
                f"`{index_name(t, ix, 'mysql')}` / `{index_name(t, ix, 'sqlite')}` ({', '.join(ix.columns)}{since})"
            )
        lines.append("- Indexes (MySQL / SQLite): " + "; ".join(described) + ". Snowflake has none.")
    else:
        lines.append("- Indexes: none besides the primary key")
    lines.append(f"- Since schema version {t.added_in}")
    lines += [
        "",
        "| column | MySQL | SQLite | Snowflake | null | since | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in doc_columns(t):
        gen = " (generated)" if c.generated else ""
        sf_gen = " (set by the load)" if c.generated else ""
        lines.append(
            f"| `{c.name}` | {c.mysql}{gen} | {c.sqlite}{gen} | {c.snowflake}{sf_gen} | "
            f"{'NULL' if c.nullable else 'NOT NULL'} | v{c.added_in} | {_cell(c.meaning)} |"
        )
    return [*lines, ""]


def _view_section(v: View) -> list[str]:
    lines = [f"### `{v.name}` (Snowflake `MARKET_DATA.POLYGON.{v.snowflake}`)", "", v.doc, ""]
    lines += ["| column | meaning |", "|---|---|"]
    if v.base is not None:
        lines.append(f"| every column of `{v.base.name}` | as in that table, in its order |")
    lines += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in v.columns]
    return [*lines, ""]


def render() -> str:
    """The whole of docs/tables.md."""
    market = [t for t in ALL_TABLES if not t.bookkeeping]
    books = [t for t in ALL_TABLES if t.bookkeeping]
    lines = [
        "# Warehouse tables",
        "",
        f"<!-- Generated from crypto_platform/warehouse/tables.py and views.py by `{REGENERATE}`. "
        "Do not edit by hand: crypto_platform_tests/warehouse/test_docs.py fails when this page and the specs "
        "disagree. -->",
        "",
        "Every lake table has a copy in MySQL/MariaDB (`MYSQL_URL`; the embedded SQLite stand-in "
        "`warehouse.sqlite` when it is unset) and in Snowflake `MARKET_DATA.POLYGON` (the local fakesnow "
        "server by default). The same specs create all three, so names and meanings agree:",
        "",
        "- MySQL and SQLite use the lower-case names below; Snowflake upper-cases table and column names "
        "(`crypto_trades.price` is `MARKET_DATA.POLYGON.TRADES.PRICE`).",
        f"- Prices, sizes and volumes are DECIMAL({DECIMAL_PRECISION},{DECIMAL_SCALE}) / "
        f"NUMBER({DECIMAL_PRECISION},{DECIMAL_SCALE}), never floats; SQLite stores them as text with exactly "
        f"{DECIMAL_SCALE} decimals so nothing is rounded.",
        "- Times are epoch milliseconds (`*_ms`; `received_ns` in ns), each with a UTC datetime companion "
        "(`*_time`): generated by MySQL and SQLite, written by the load in Snowflake.",
        "- Primary keys are the natural keys, so re-loading a day changes nothing. Each table has a "
        "partition column: a row belongs to the UTC day of that column, the unit of every load.",
        f"- The schema is at version {SCHEMA_VERSION} (table `{VERSION_TABLE}`); `since` says which version "
        "added a table, column or index.",
        "",
        "## Tables",
        "",
        "| MySQL / SQLite | Snowflake | primary key | partition | meaning |",
        "|---|---|---|---|---|",
    ]
    for t in ALL_TABLES:
        sf = f"`{t.snowflake}`" if t.snowflake else "-"
        lines.append(f"| `{t.name}` | {sf} | {', '.join(t.key)} | {t.partition} | {_cell(t.doc)} |")
    lines += ["", "## Market data", ""]
    for t in market:
        lines += _table_section(t)
    lines += ["## Bookkeeping", ""]
    for t in books:
        lines += _table_section(t)
    lines += [
        f"### `{VERSION_TABLE}` (Snowflake `{VERSION_TABLE.upper()}`)",
        "",
        "One row per applied migration (version, description, applied_at). A database newer than the "
        "release is refused. The versions:",
        "",
        "| version | what it added |",
        "|---|---|",
        *(f"| {m.version} | {_cell(m.description)} |" for m in MIGRATIONS),
        "",
        "## Views",
        "",
        "Re-created by every migration that reaches the current version, on all three warehouses.",
        "",
    ]
    for v in VIEWS:
        lines += _view_section(v)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write docs/tables.md from the warehouse table specs.")
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/tables.md is stale, write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
