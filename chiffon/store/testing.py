"""Helpers for tests of Chiffon against a real database.

They live here, not under ``tests/``, because only ``chiffon.store`` may
import SQLAlchemy: tests get throwaway PostgreSQL schemas and query plans
without touching it themselves.
"""

from __future__ import annotations

from sqlalchemy import Select, text
from sqlalchemy.ext.asyncio import create_async_engine

from chiffon.store.engine import normalise_url, validate_schema
from chiffon.store.errors import is_connection_failure, store_error
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


async def analyze(store: Store) -> None:
    """Refresh planner statistics, as autovacuum (or a long-lived SQLite file) would."""
    async with store.engine.begin() as connection:
        await connection.execute(text("ANALYZE"))


async def explain(store: Store, statement: Select[tuple[object]]) -> list[str]:
    """The query plan of ``statement``: ``EXPLAIN`` on PostgreSQL, ``EXPLAIN QUERY PLAN`` on SQLite."""
    async with store.engine.connect() as connection:
        sql = str(statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
        if connection.dialect.name == "sqlite":
            rows = (await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")).all()
            return [str(row[-1]) for row in rows]
        rows = (await connection.exec_driver_sql(f"EXPLAIN {sql}")).all()
        return [str(row[0]) for row in rows]
