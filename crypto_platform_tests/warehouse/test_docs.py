"""docs/tables.md never goes stale: it is what the specs render, and what they render is what the databases have."""

from __future__ import annotations

import re
from typing import Any

from crypto_platform.warehouse.docs import DOC_PATH, REGENERATE, doc_columns, render
from crypto_platform.warehouse.migrations import SCHEMA_VERSION, index_name
from crypto_platform.warehouse.snowflake import migrate_snowflake
from crypto_platform.warehouse.sql import SqlWarehouse
from crypto_platform.warehouse.tables import ALL_TABLES
from crypto_platform.warehouse.views import VIEWS


def test_the_committed_page_is_what_the_specs_render() -> None:
    assert DOC_PATH.read_text(encoding="utf-8") == render(), f"docs/tables.md is stale: run {REGENERATE}"


def test_every_table_column_and_view_is_on_the_page_with_a_meaning() -> None:
    page = render()
    for t in ALL_TABLES:
        assert f"### `{t.name}`" in page and (t.snowflake is None or f"`{t.snowflake}`" in page)
        for c in doc_columns(t):
            assert c.meaning, f"{t.name}.{c.name} has no doc in tables.py"
            assert f"| `{c.name}` |" in page
        for ix in t.indexes_at(SCHEMA_VERSION):
            assert f"`{index_name(t, ix, 'mysql')}`" in page
    for v in VIEWS:
        assert f"### `{v.name}` (Snowflake `MARKET_DATA.POLYGON.{v.snowflake}`)" in page
        assert all(meaning and f"| `{name}` |" in page for name, meaning in v.columns)


def _mysql_type(column_type: str) -> str:
    t = column_type.upper()
    return {"TINYINT(1)": "BOOLEAN", "BIGINT(20)": "BIGINT"}.get(t, t)


def _rows(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()]
    finally:
        cur.close()


def test_documented_columns_types_and_nulls_are_the_sql_databases(warehouse: SqlWarehouse) -> None:
    """A migrated MySQL/SQLite database has exactly the documented columns, in order, with those types."""
    warehouse.migrate()
    dialect = warehouse.dialect
    with warehouse.connect() as conn:
        for t in ALL_TABLES:
            if dialect == "sqlite":
                # pragma_table_xinfo: hidden 2/3 = generated column
                found = [
                    (name, type_, not notnull, hidden in (2, 3))
                    for name, type_, notnull, hidden in _rows(
                        conn, f"SELECT name, type, \"notnull\", hidden FROM pragma_table_xinfo('{t.name}') ORDER BY cid"
                    )
                ]
            else:
                found = [
                    (name, _mysql_type(type_), nullable == "YES", "GENERATED" in extra.upper())
                    for name, type_, nullable, extra in _rows(
                        conn,
                        "SELECT column_name, column_type, is_nullable, extra FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                        (warehouse.database, t.name),
                    )
                ]
            documented = [
                (c.name, c.sqlite if dialect == "sqlite" else c.mysql, c.nullable, c.generated) for c in doc_columns(t)
            ]
            # a generated companion has no NOT NULL of its own (the page gives its source's)
            assert [(n, ty, g or nl, g) for n, ty, nl, g in documented] == [
                (n, ty, g or nl, g) for n, ty, nl, g in found
            ], t.name


def _snowflake_type(data_type: str, precision: Any, scale: Any, length: Any) -> str:
    if data_type == "TEXT":
        return "VARCHAR" if length in (None, 16_777_216) else f"VARCHAR({length})"
    if data_type == "NUMBER":
        return f"NUMBER({precision},{scale})"
    return data_type


def test_documented_columns_are_the_snowflake_tables(snowflake_conn: Any, sf_database: str) -> None:
    migrate_snowflake(snowflake_conn, database=sf_database)
    for t in ALL_TABLES:
        if t.snowflake is None:
            continue
        found = [
            (name.lower(), _snowflake_type(dt, p, s, n), nullable == "YES")
            for name, dt, p, s, n, nullable in _rows(
                snowflake_conn,
                "SELECT COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, CHARACTER_MAXIMUM_LENGTH, "
                f"IS_NULLABLE FROM {sf_database}.INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = 'POLYGON' "
                "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                (t.snowflake,),
            )
        ]
        documented = [
            # the information schema shows TIMESTAMP_NTZ without its precision
            (c.name, re.sub(r"^TIMESTAMP_NTZ\(\d\)$", "TIMESTAMP_NTZ", c.snowflake), c.nullable or c.generated)
            for c in doc_columns(t)
        ]
        assert documented == found, t.name
