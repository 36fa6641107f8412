"""The warehouse data layer: tables, schema versions, loaders and parity (the Dagster assets stay thin).

- :mod:`.tables`      the table definitions, once, for MySQL/MariaDB, SQLite and Snowflake
- :mod:`.migrations`  the migration list and the ``crypto_schema_version`` bookkeeping
- :mod:`.sql`         MySQL 8 / MariaDB (pymysql) and the SQLite stand-in: upsert, day rebuild
- :mod:`.snowflake`   MARKET_DATA.POLYGON through Parquet PUT -> COPY INTO staging -> MERGE
- :mod:`.parity`      row count + order-independent checksum per partition, and the differing rows
- :mod:`.views`       analyst views (latest price, flagged minute bars, daily summary) on all three
- :mod:`.docs`        docs/tables.md, generated from the specs above
"""

from crypto_platform.warehouse.errors import (
    RowRejectedError,
    WarehouseAuthError,
    WarehouseConnectionError,
    WarehouseError,
    WarehouseLoadError,
    WarehouseSchemaError,
)
from crypto_platform.warehouse.migrations import SCHEMA_VERSION
from crypto_platform.warehouse.sql import LoadResult, SqlWarehouse, sql_warehouse
from crypto_platform.warehouse.tables import TABLES, table

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "LoadResult",
    "RowRejectedError",
    "SqlWarehouse",
    "WarehouseAuthError",
    "WarehouseConnectionError",
    "WarehouseError",
    "WarehouseLoadError",
    "WarehouseSchemaError",
    "sql_warehouse",
    "table",
]
