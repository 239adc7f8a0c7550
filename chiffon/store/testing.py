"""Helpers for tests of Chiffon against a real database.

They live here, not under ``tests/``, because only ``chiffon.store`` may
import SQLAlchemy: tests get throwaway PostgreSQL schemas and query plans
without touching it themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Select, text
from sqlalchemy.ext.asyncio import create_async_engine

from chiffon.store.engine import normalise_url, validate_schema
from chiffon.store.errors import is_connection_failure, store_error
from chiffon.store.migrate import MIGRATION_LOCK_KEY
from chiffon.store.store import Store


async def _execute_admin(url: str, sql: str) -> None:
    parsed = normalise_url(url)
    engine = create_async_engine(parsed, connect_args={"timeout": 10})
    try:
        async with engine.begin() as connection:
            await connection.execute(text(sql))
    except Exception as exc:
        if is_connection_failure(exc):
            raise store_error(exc, parsed) from exc
        raise
    finally:
        await engine.dispose()


async def create_schema(url: str, schema: str) -> None:
    """Create an empty PostgreSQL schema (raises StoreError if the server is unreachable)."""
    await _execute_admin(url, f'CREATE SCHEMA "{validate_schema(schema)}"')


async def drop_schema(url: str, schema: str) -> None:
    """Drop a PostgreSQL schema and everything in it."""
    await _execute_admin(url, f'DROP SCHEMA IF EXISTS "{validate_schema(schema)}" CASCADE')


async def execute(store: Store, sql: str) -> None:
    """Run one raw SQL statement in its own transaction (to break things on purpose)."""
    async with store.engine.begin() as connection:
        await connection.exec_driver_sql(sql)


async def analyze(store: Store) -> None:
    """Refresh planner statistics, as autovacuum (or a long-lived SQLite file) would."""
    await execute(store, "ANALYZE")


async def explain(store: Store, statement: Select[Any]) -> list[str]:
    """The query plan of ``statement``: ``EXPLAIN`` on PostgreSQL, ``EXPLAIN QUERY PLAN`` on SQLite."""
    async with store.engine.connect() as connection:
        sql = str(statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
        if connection.dialect.name == "sqlite":
            rows = (await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")).all()
            return [str(row[-1]) for row in rows]
        rows = (await connection.exec_driver_sql(f"EXPLAIN {sql}")).all()
        return [str(row[0]) for row in rows]


@asynccontextmanager
async def holding_migration_lock(store: Store) -> AsyncIterator[None]:
    """Hold the PostgreSQL migration lock, as a migrating process would, until exit."""
    async with store.engine.connect() as connection, connection.begin():
        await connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        yield


async def migration_lock_waiters(store: Store) -> int:
    """How many sessions are queued on the PostgreSQL migration lock."""
    # A bigint advisory key shows in pg_locks as (classid, objid) = (high, low) 32 bits.
    high, low = MIGRATION_LOCK_KEY >> 32, MIGRATION_LOCK_KEY & 0xFFFFFFFF
    sql = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        f"AND classid = {high} AND objid = {low} AND objsubid = 1"
    )
    async with store.engine.connect() as connection:
        return int((await connection.exec_driver_sql(sql)).scalar_one())
