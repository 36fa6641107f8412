"""Where the SQL tables go: MySQL when ``MYSQL_URL`` is set, else the embedded SQLite stand-in.

Only the plumbing lives here (which URL, an engine for it); the table code comes with the assets.
A ``MYSQL_URL`` carries a password, so it is bound as ``dg.EnvVar("MYSQL_URL")`` and the UI shows
the variable name only; the SQLite stand-in's URL is just a path under the data directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr

from crypto_platform.settings import Settings

if TYPE_CHECKING:
    import sqlalchemy


class SqlTablesResource(dg.ConfigurableResource):
    """An SQLAlchemy engine on the platform's SQL tables (MySQL 8 / MariaDB, or SQLite locally)."""

    url: str

    _engine: sqlalchemy.Engine | None = PrivateAttr(default=None)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def engine(self) -> sqlalchemy.Engine:
        """The engine (created on first use; the SQLite file's directory is created with it)."""
        import sqlalchemy

        if self._engine is None:
            if self.is_sqlite:
                path = self.url.split(":///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._engine = sqlalchemy.create_engine(self.url)
            else:
                # pool_pre_ping: a long-lived code server outlives MySQL's wait_timeout.
                self._engine = sqlalchemy.create_engine(self.url, pool_pre_ping=True, pool_recycle=3600)
        return self._engine

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def build_sql_tables_resource(settings: Settings) -> SqlTablesResource:
    if settings.uses_mysql_server:
        return SqlTablesResource(url=dg.EnvVar("MYSQL_URL"))
    return SqlTablesResource(url=settings.mysql_url.reveal())
