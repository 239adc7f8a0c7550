"""Engines for the two supported backends, configured once, here.

* **PostgreSQL** (``postgresql+asyncpg://``) for the distributed mode. An
  optional *schema* is put first on ``search_path`` for every connection, so
  the tables need no schema in their names and tests can isolate themselves in
  a throwaway schema.
* **SQLite** (``sqlite+aiosqlite:///path``) for the embedded mode. Every
  connection gets WAL (readers never block the writer), ``foreign_keys`` (so
  ``ON DELETE CASCADE`` works), ``busy_timeout`` (wait for the writer instead of
  failing) and ``synchronous=NORMAL`` (durable enough with WAL, much faster).

SQLite's default ``BEGIN`` is *deferred*: two connections may both read, then
both try to write, and the later one fails with "database is locked" no matter
how long it is willing to wait. Write transactions therefore begin with
``BEGIN IMMEDIATE``, which takes the write lock up front and queues writers
behind ``busy_timeout``. A transaction asks for it with the execution option
:data:`WRITE`; read-only ones keep the cheap deferred ``BEGIN``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

#: Execution option that makes a SQLite transaction begin IMMEDIATE.
WRITE = "chiffon_write"

SQLITE_BUSY_TIMEOUT_MS = 15_000
CONNECT_TIMEOUT_S = 10.0

# Drivers people type, mapped to the async driver the store actually uses.
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def normalise_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the async driver; anything else is refused by name."""
    parsed = make_url(url)
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use postgresql+asyncpg://user@host/db or sqlite+aiosqlite:///path/to/file.db"
        )
    return parsed.set(drivername=driver)


def validate_schema(schema: str) -> str:
    # The name goes into search_path and DDL; allow plain identifiers only.
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema {schema!r} must be a lower-case identifier (letters, digits, '_')")
    return schema


def make_engine(url: str | URL, *, schema: str | None = None, echo: bool = False) -> AsyncEngine:
    """An AsyncEngine for ``url`` with the per-backend settings described above."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        if schema is not None:
            raise ValueError("a schema can only be chosen on PostgreSQL")
        return _sqlite_engine(parsed, echo=echo)
    return _postgres_engine(parsed, schema=schema, echo=echo)


def _postgres_engine(url: URL, *, schema: str | None, echo: bool) -> AsyncEngine:
    server_settings = {"application_name": "chiffon"}
    if schema is not None:
        server_settings["search_path"] = validate_schema(schema)
    return create_async_engine(
        url,
        echo=echo,
        # A restarted PostgreSQL leaves dead pooled connections behind; test
        # each one before use so a restart costs a reconnect, not an error.
        pool_pre_ping=True,
        connect_args={"timeout": CONNECT_TIMEOUT_S, "server_settings": server_settings},
    )


def _sqlite_engine(url: URL, *, echo: bool) -> AsyncEngine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        echo=echo,
        # Hand transaction control to SQLAlchemy's "begin" event below instead
        # of the sqlite3 module, which would issue a deferred BEGIN by itself.
        connect_args={"isolation_level": None, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
            "PRAGMA synchronous=NORMAL",
        ):
            cursor.execute(pragma)
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
