"""Running the Alembic migrations from code, and checking the result.

``Store.migrate()`` calls :func:`upgrade_to_head` inside ``run_sync`` on a
connection that is already in a transaction; ``migrations/env.py`` sees that
connection in ``config.attributes`` and migrates on it instead of opening its
own. This is Alembic's documented "connection sharing" recipe; it keeps the
migration inside the store's engine (same pragmas, same ``search_path``) and
needs no ``alembic.ini`` in the working directory.

Several processes may start at once (``chiffon api`` and ``chiffon controller``
both migrate on start). :func:`prepare_connection` therefore serialises them:
a transaction-scoped advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite
(see :mod:`chiffon.store.engine`). The second process waits, then finds the
schema at head and does nothing.

Within one process that is not enough: Alembic installs ``alembic.context`` and
``alembic.op`` as process-wide proxies for the duration of a command, so two
upgrades interleaving on one event loop (each awaiting its database) would
overwrite each other's. :func:`in_process_lock` runs them one at a time.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from chiffon.store.engine import validate_schema
from chiffon.store.tables import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Key of the advisory lock held while migrating ("chiffon" + 0x01). Leader
#: election uses a different key, so a migration never waits on the leader.
MIGRATION_LOCK_KEY = int.from_bytes(b"chiffon\x01", "big")

# One lock per event loop: an asyncio.Lock must not be shared between loops.
_IN_PROCESS_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def in_process_lock() -> asyncio.Lock:
    """The lock that keeps this event loop's Alembic commands from interleaving."""
    loop = asyncio.get_running_loop()
    lock = _IN_PROCESS_LOCKS.get(loop)
    if lock is None:
        lock = _IN_PROCESS_LOCKS[loop] = asyncio.Lock()
    return lock


def alembic_config(*, connection: Connection | None = None, schema: str | None = None) -> Config:
    """An Alembic Config built in code, pointing at the packaged migrations."""
    config = Config()
    # ConfigParser interpolates '%'; a path may contain one.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    return config


def prepare_connection(connection: Connection, schema: str | None) -> None:
    """Take the migration lock and make sure the target schema exists."""
    if connection.dialect.name != "postgresql":
        return
    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
    if schema is not None:
        connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{validate_schema(schema)}"')


def upgrade_to_head(connection: Connection, schema: str | None) -> None:
    """``alembic upgrade head`` on ``connection`` (which must be in a transaction)."""
    command.upgrade(alembic_config(connection=connection, schema=schema), "head")


def schema_diff(connection: Connection) -> list[Any]:
    """Differences between the database and :mod:`chiffon.store.tables`; empty when in step."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at, or None before the first migration."""
    return MigrationContext.configure(connection).get_current_revision()
