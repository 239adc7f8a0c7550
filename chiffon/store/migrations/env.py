"""Alembic environment: async engines, SQLite batch mode, one shared code path.

Two ways in:

* ``Store.migrate()`` passes an open connection (already in a transaction) in
  ``config.attributes["connection"]``; we migrate on it.
* The ``alembic`` command line passes nothing; we build an engine with the
  store's own factory (same pragmas and ``search_path``), from ``-x url=...``,
  else ``$CHIFFON_DATABASE_URL``, else ``sqlalchemy.url`` in the ini file.

On SQLite, ``render_as_batch`` makes ALTER-style operations copy-and-move the
table, since SQLite cannot alter most things in place.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from chiffon.store.engine import WRITE, make_engine, normalise_url
from chiffon.store.migrate import prepare_connection
from chiffon.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    """-x url=..., else $CHIFFON_DATABASE_URL, else sqlalchemy.url from the ini file."""
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("CHIFFON_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set CHIFFON_DATABASE_URL")
    return url


def _schema() -> str | None:
    """The Store's schema when it calls us; ``-x schema=...`` on the command line."""
    if config.attributes.get("connection") is not None:
        schema = config.attributes.get("schema")
        return schema if isinstance(schema, str) else None
    return context.get_x_argument(as_dictionary=True).get("schema") or None


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        prepare_connection(connection, _schema())
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = make_engine(_url(), schema=_schema())
    try:
        async with engine.connect() as connection:
            # Same serialisation as Store.migrate(): BEGIN IMMEDIATE on SQLite.
            await connection.execution_options(**{WRITE: True})
            async with connection.begin():
                await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the DDL instead of running it."""
    context.configure(
        url=normalise_url(_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    asyncio.run(run_async_migrations())


# Only the command line configures logging; inside Chiffon the application's
# logging setup stays untouched (Store.migrate() builds a Config with no file).
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name)

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
