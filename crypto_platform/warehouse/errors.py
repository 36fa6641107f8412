"""Warehouse errors: each message says what failed and what to change, and never carries a secret.

Connection errors name host, port and the setting (``MYSQL_URL`` / ``SNOWFLAKE_*``) and show URLs only
through :func:`crypto_platform.settings.mask_url_password`. Load errors name the offending row by its
natural key, so an operator can find it in the lake partition.
"""

from __future__ import annotations


class WarehouseError(RuntimeError):
    """Base class of every warehouse failure."""


class WarehouseConnectionError(WarehouseError):
    """The database cannot be reached (host, port, setting named)."""


class WarehouseAuthError(WarehouseConnectionError):
    """The database answered but refused the credentials."""


class WarehouseSchemaError(WarehouseError):
    """The database schema is newer than this release, or a migration failed."""


class WarehouseLoadError(WarehouseError):
    """A partition could not be loaded; nothing of it was written."""


class LockConflictError(WarehouseLoadError):
    """The database ended the load's transaction to break a lock conflict (a deadlock or a lock wait
    timeout with a concurrent load); nothing was written and the load can be run again as it was."""


class RowRejectedError(WarehouseLoadError):
    """A value does not fit its column; ``row`` holds the row's natural key."""

    def __init__(self, message: str, *, table: str, row: dict[str, object], column: str | None = None) -> None:
        super().__init__(message)
        self.table = table
        self.row = row
        self.column = column
