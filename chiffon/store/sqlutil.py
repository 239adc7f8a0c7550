"""The one SQL statement that differs by dialect: ``INSERT ... ON CONFLICT``.

PostgreSQL and SQLite (3.24+) share the syntax, and SQLAlchemy exposes it on
each dialect's own ``insert()``; pick the one for the connection at hand.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession


async def dialect_insert(session: AsyncSession, entity: Any) -> PostgresInsert | SqliteInsert:
    """``INSERT`` for ``entity`` that supports ``on_conflict_do_*`` on this session's database."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        return postgres_insert(entity)
    return sqlite_insert(entity)
