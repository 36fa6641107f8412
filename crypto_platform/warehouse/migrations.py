"""Schema versions: the ordered migration list and its DDL for MySQL/MariaDB, SQLite and Snowflake.

Why a list of small declarative steps (create table X, add column Y) instead of hand-written DDL per
release: each step renders for all three dialects from :mod:`crypto_platform.warehouse.tables`, so a
fresh database and an upgraded one end up identical, and one test covers every dialect.

Rules:
- A release that adds a column gives it ``added_in=N`` in ``tables.py`` and appends ``Migration(N, …,
  (AddColumn(...),))`` here; likewise ``Index(..., added_in=N)`` with ``AddIndex``. :func:`check_migrations`
  refuses a column, index or table without its step.
- Each step first checks whether its object already exists (MySQL and Snowflake DDL commit on their
  own, so a migration interrupted half-way must be safe to run again); the version row is written
  after the steps.
- The version lives in ``crypto_schema_version`` (one row per applied migration). A database newer
  than this release is refused rather than written with an older layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, cast

from crypto_platform.warehouse.errors import WarehouseSchemaError
from crypto_platform.warehouse.tables import ALL_TABLES, Column, Index, Table, table

Dialect = Literal["mysql", "sqlite", "snowflake"]

VERSION_TABLE = "crypto_schema_version"


@dataclass(frozen=True)
class CreateTable:
    table: str


@dataclass(frozen=True)
class AddColumn:
    table: str
    column: str


@dataclass(frozen=True)
class AddIndex:
    table: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class ExactKeys:
    """MySQL/MariaDB: the table's text compared byte for byte, trailing spaces included.

    ``utf8mb4_bin`` is PAD SPACE on MariaDB (and on MySQL before 8.0): ``'777'`` and ``'777 '`` are
    one key there, so one trade silently replaced another. SQLite and Snowflake compare text exactly
    already, so the step does nothing there.
    """

    table: str


Step = CreateTable | AddColumn | AddIndex | ExactKeys


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    steps: tuple[Step, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "trades, quotes, aggregates, minute bars, daily open/close, stream sessions",
        tuple(CreateTable(t.name) for t in ALL_TABLES if t.added_in == 1),
    ),
    Migration(
        2,
        "minute bars: repaired flag; alerts table",
        (AddColumn("crypto_minute_bars", "repaired"), CreateTable("crypto_alerts")),
    ),
    Migration(
        3,
        "load watermarks; segment indexes for per-batch loads; daily open/close status",
        (
            CreateTable("crypto_load_watermarks"),
            AddIndex("crypto_trades", ("segment",)),
            AddIndex("crypto_quotes", ("segment",)),
            AddIndex("crypto_aggregates", ("segment",)),
            AddColumn("crypto_daily_open_close", "status"),
        ),
    ),
    Migration(
        4,
        "text keys compared exactly on MySQL/MariaDB: a no-pad binary collation ('777' and '777 ' differ)",
        tuple(ExactKeys(t.name) for t in ALL_TABLES),
    ),
)
# From this version on, MySQL/MariaDB text compares without padding (see ExactKeys).
EXACT_KEYS_VERSION = 4
# What releases before EXACT_KEYS_VERSION created tables with (PAD SPACE on MariaDB).
PAD_SPACE_COLLATION = "utf8mb4_bin"
SCHEMA_VERSION = MIGRATIONS[-1].version


def check_migrations() -> None:
    """Every table and every later column or index must be introduced by a step of its own version."""
    steps = {(m.version, s) for m in MIGRATIONS for s in m.steps}
    for t in ALL_TABLES:
        if (t.added_in, CreateTable(t.name)) not in steps:
            raise AssertionError(f"{t.name} (added_in={t.added_in}) has no CreateTable step")
        for c in t.columns:
            if c.added_in > t.added_in and (c.added_in, AddColumn(t.name, c.name)) not in steps:
                raise AssertionError(f"{t.name}.{c.name} (added_in={c.added_in}) has no AddColumn step")
        for ix in t.indexes_at(10**9):
            if ix.added_in > t.added_in and (ix.added_in, AddIndex(t.name, ix.columns)) not in steps:
                raise AssertionError(f"{t.name} index {ix.columns} (added_in={ix.added_in}) has no AddIndex step")
    versions = [m.version for m in MIGRATIONS]
    if versions != list(range(1, len(versions) + 1)):
        raise AssertionError(f"migration versions must be 1..N in order, got {versions}")


check_migrations()


# ------------------------------------------------------------------------------------------------
# rendering

_MYSQL_TYPES = {"text": "TEXT", "int": "BIGINT", "dec": "DECIMAL(38,18)", "bool": "BOOLEAN", "date": "DATE"}
_SQLITE_TYPES = {"str": "TEXT", "text": "TEXT", "int": "INTEGER", "dec": "TEXT", "bool": "INTEGER", "date": "TEXT"}
_SNOWFLAKE_TYPES = {"text": "VARCHAR", "int": "NUMBER(38,0)", "dec": "NUMBER(38,18)", "bool": "BOOLEAN", "date": "DATE"}


def table_name(t: Table, dialect: Dialect) -> str:
    if dialect == "snowflake":
        if t.snowflake is None:
            raise ValueError(f"{t.name} is not a Snowflake table")
        return t.snowflake
    return t.name


def column_name(name: str, dialect: Dialect) -> str:
    return name.upper() if dialect == "snowflake" else name


def column_type(col: Column, dialect: Dialect) -> str:
    if dialect == "sqlite":
        return _SQLITE_TYPES[col.kind]
    if col.kind == "str":
        return f"VARCHAR({col.length})"
    return (_MYSQL_TYPES if dialect == "mysql" else _SNOWFLAKE_TYPES)[col.kind]


def _human_sql(col: Column, dialect: Dialect) -> str:
    """The generated UTC datetime companion of a time column (Snowflake: filled by the MERGE)."""
    assert col.human
    if dialect == "snowflake":
        return f"{col.human.upper()} TIMESTAMP_NTZ(3)"
    if dialect == "mysql":
        micros = f"{col.name} * 1000" if col.unit == "ms" else f"({col.name} DIV 1000000) * 1000"
        # Pure arithmetic on a literal: deterministic and time-zone free, so allowed in a generated column.
        return f"{col.human} DATETIME(3) AS (TIMESTAMP'1970-01-01 00:00:00' + INTERVAL ({micros}) MICROSECOND) VIRTUAL"
    seconds = f"{col.name} / 1000.0" if col.unit == "ms" else f"({col.name} / 1000000) / 1000.0"
    return f"{col.human} TEXT GENERATED ALWAYS AS (strftime('%Y-%m-%d %H:%M:%f', {seconds}, 'unixepoch')) VIRTUAL"


def _column_defs(col: Column, dialect: Dialect) -> list[str]:
    null = "" if col.nullable else " NOT NULL"
    defs = [f"{column_name(col.name, dialect)} {column_type(col, dialect)}{null}"]
    if col.human:
        defs.append(_human_sql(col, dialect))
    return defs


def human_expression(col: Column) -> str:
    """Snowflake expression that the MERGE uses to fill a human time column from the staged value."""
    if col.unit == "ms":
        return f"TO_TIMESTAMP_NTZ(s.{col.name.upper()}, 3)"
    return f"TO_TIMESTAMP_NTZ(FLOOR(s.{col.name.upper()} / 1000000), 3)"


def create_table_sql(t: Table, dialect: Dialect, version: int, collation: str = PAD_SPACE_COLLATION) -> list[str]:
    """The table as at schema ``version``; ``collation``: MySQL/MariaDB's for text (see ExactKeys)."""
    name = table_name(t, dialect)
    defs = [d for c in t.columns_at(version) for d in _column_defs(c, dialect)]
    pk = ", ".join(column_name(k, dialect) for k in t.key)
    defs.append(f"PRIMARY KEY ({pk})")
    if dialect == "mysql":
        for ix in t.indexes_at(version):
            defs.append(f"KEY {ix.name} ({', '.join(ix.columns)})")
        body = ",\n  ".join(defs)
        # A binary collation: 'h:abc' and 'h:ABC' are different trade ids (no-pad from EXACT_KEYS_VERSION).
        options = f"ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}"
        return [f"CREATE TABLE IF NOT EXISTS {name} (\n  {body}\n) {options}"]
    body = ",\n  ".join(defs)
    stmts = [f"CREATE TABLE IF NOT EXISTS {name} (\n  {body}\n)"]
    if dialect == "sqlite":
        stmts += [add_index_sql(t, ix, dialect)[0] for ix in t.indexes_at(version)]
    return stmts


def add_index_sql(t: Table, ix: Index, dialect: Dialect) -> list[str]:
    """A secondary index (Snowflake has none: micro-partition pruning does that job)."""
    name = table_name(t, dialect)
    cols = ", ".join(ix.columns)
    if dialect == "mysql":
        return [f"ALTER TABLE {name} ADD INDEX {ix.name} ({cols})"]
    if dialect == "sqlite":
        return [f"CREATE INDEX IF NOT EXISTS {index_name(t, ix, dialect)} ON {name} ({cols})"]
    return []


def index_name(t: Table, ix: Index, dialect: Dialect) -> str:
    """The index's name in ``dialect`` (SQLite index names are per database, so they carry the table)."""
    return ix.name if dialect == "mysql" else f"ix_{t.name}_{'_'.join(ix.columns)}"


def add_column_sql(t: Table, column: str, dialect: Dialect) -> list[str]:
    name = table_name(t, dialect)
    return [f"ALTER TABLE {name} ADD COLUMN {d}" for d in _column_defs(t.column(column), dialect)]


def version_table_sql(dialect: Dialect) -> str:
    if dialect == "mysql":
        return (
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INT NOT NULL PRIMARY KEY, "
            "description VARCHAR(255) NOT NULL, applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
    if dialect == "sqlite":
        return (
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')))"
        )
    return (
        f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE.upper()} (VERSION NUMBER(38,0) NOT NULL, "
        "DESCRIPTION VARCHAR NOT NULL, APPLIED_AT TIMESTAMP_NTZ(3))"
    )


# ------------------------------------------------------------------------------------------------
# applying


class SchemaTarget(Protocol):
    """What :func:`apply_migrations` needs from a database (implemented by the SQL and Snowflake modules)."""

    dialect: Dialect

    def execute_ddl(self, sql: str) -> None: ...

    def existing_tables(self) -> set[str]: ...  # lower-case names

    def existing_columns(self, table_name: str) -> set[str]: ...  # lower-case names

    def existing_indexes(self, table_name: str) -> set[str]: ...  # lower-case index names

    def applied_versions(self) -> set[int]: ...

    def record_version(self, version: int, description: str) -> None: ...


class MysqlSchemaTarget(SchemaTarget, Protocol):
    """A MySQL/MariaDB schema: also knows its server's no-pad binary collation and each table's collation."""

    def text_collation(self) -> str: ...

    def table_collation(self, table_name: str) -> str | None: ...


def exact_keys_sql(t: Table, collation: str) -> list[str]:
    """Convert a MySQL/MariaDB table's text (default and every column) to ``collation``."""
    return [f"ALTER TABLE {t.name} CONVERT TO CHARACTER SET utf8mb4 COLLATE {collation}"]


def apply_migrations(
    db: SchemaTarget, target: int | None = None, after: Callable[[int], None] | None = None
) -> list[int]:
    """Bring ``db`` to ``target`` (default: this release's version); return the versions applied."""
    target = SCHEMA_VERSION if target is None else target
    if not 0 <= target <= SCHEMA_VERSION:
        raise WarehouseSchemaError(f"schema version {target} is unknown; this release knows 1..{SCHEMA_VERSION}")
    db.execute_ddl(version_table_sql(db.dialect))
    applied = db.applied_versions()
    newest = max(applied, default=0)
    if newest > SCHEMA_VERSION:
        raise WarehouseSchemaError(
            f"the {db.dialect} schema is at version {newest} but this release only knows up to {SCHEMA_VERSION}: "
            "upgrade crypto_platform before writing to it"
        )
    done: list[int] = []
    for m in MIGRATIONS:
        if m.version > target or m.version in applied:
            continue
        for step in m.steps:
            t = table(step.table)
            if db.dialect == "snowflake" and t.snowflake is None:
                continue
            name = table_name(t, db.dialect).lower()
            if isinstance(step, CreateTable):
                if name not in db.existing_tables():
                    collation = PAD_SPACE_COLLATION
                    if db.dialect == "mysql" and m.version >= EXACT_KEYS_VERSION:
                        collation = cast(MysqlSchemaTarget, db).text_collation()
                    for sql in create_table_sql(t, db.dialect, m.version, collation):
                        db.execute_ddl(sql)
            elif isinstance(step, ExactKeys):
                if db.dialect == "mysql":
                    mysql = cast(MysqlSchemaTarget, db)
                    collation = mysql.text_collation()
                    if mysql.table_collation(name) != collation:
                        for sql in exact_keys_sql(t, collation):
                            db.execute_ddl(sql)
            elif isinstance(step, AddIndex):
                ix = next(i for i in t.indexes_at(m.version) if i.columns == step.columns)
                if db.dialect != "snowflake" and index_name(t, ix, db.dialect) not in db.existing_indexes(name):
                    for sql in add_index_sql(t, ix, db.dialect):
                        db.execute_ddl(sql)
            elif step.column.lower() not in db.existing_columns(name):
                for sql in add_column_sql(t, step.column, db.dialect):
                    db.execute_ddl(sql)
        db.record_version(m.version, m.description)
        done.append(m.version)
        if after:
            after(m.version)
    return done
