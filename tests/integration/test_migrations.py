"""Migrations own the schema: they build exactly what the models describe, on both backends.

``Store.schema_drift()`` is Alembic's ``compare_metadata`` between the live
database and ``chiffon.store.tables``; after ``migrate()`` it must be empty.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chiffon.resources import AuditEvent
from chiffon.store import Store
from chiffon.store.testing import execute, holding_migration_lock, migration_lock_waiters
from tests.conftest import Database, SchemaFactory

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = "chiffon/store/migrations/alembic.ini"
ALEMBIC = Path(sys.executable).parent / "alembic"
HEAD = "0002"


async def test_migrate_builds_exactly_the_models(database: Database) -> None:
    store = database.open()
    try:
        assert await store.revision() is None
        await store.migrate()
        assert await store.revision() == HEAD
        assert await store.schema_drift() == []
    finally:
        await store.close()


async def test_migrate_twice_is_a_no_op(store: Store) -> None:
    event_id = await store.record_audit(AuditEvent(time=datetime.now(UTC), actor="test", action="before"))

    await store.migrate()

    assert await store.revision() == HEAD
    assert await store.schema_drift() == []
    assert [e.id for e in await store.list_audit()] == [event_id]


async def test_concurrent_migrations_wait_for_each_other(database: Database) -> None:
    # Two stores in this process and two `alembic` processes, all at once, as
    # when the API and the controller start together.
    stores = [database.open() for _ in range(2)]
    where = ["-x", f"url={database.url}", *(["-x", f"schema={database.schema}"] if database.schema else [])]
    try:
        await asyncio.gather(
            *(s.migrate() for s in stores),
            *(alembic(*where, "upgrade", "head") for _ in range(2)),
        )
        assert await stores[0].revision() == HEAD
        assert await stores[0].schema_drift() == []
    finally:
        for s in stores:
            await s.close()


@pytest.mark.postgres
async def test_migrating_processes_queue_on_the_postgresql_lock(
    postgres_url: str, postgres_schema: SchemaFactory
) -> None:
    async with postgres_schema() as schema:
        where = ["-x", f"url={postgres_url}", "-x", f"schema={schema}"]
        observer = Store.from_url(postgres_url, schema=schema)
        try:
            async with holding_migration_lock(observer):
                upgrades = [asyncio.create_task(alembic(*where, "upgrade", "head")) for _ in range(2)]
                # Polling: the waiters are other processes, nothing here can signal us.
                for _ in range(600):
                    if await migration_lock_waiters(observer) == 2:
                        break
                    await asyncio.sleep(0.05)
                assert await migration_lock_waiters(observer) == 2, "both alembic processes wait on the lock"
                assert not any(task.done() for task in upgrades)
            await asyncio.gather(*upgrades)  # released together, they still succeed one after the other
            assert await observer.revision() == HEAD
            assert await observer.schema_drift() == []
        finally:
            await observer.close()


async def test_drift_is_reported(store: Store) -> None:
    # The check must have teeth: a missing index is a difference.
    await execute(store, "DROP INDEX ix_audit_events_service_time")

    drift = await store.schema_drift()

    assert [(d[0], d[1].name) for d in drift] == [("add_index", "ix_audit_events_service_time")]


async def alembic(*args: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_DATABASE")}
    process = await asyncio.create_subprocess_exec(
        str(ALEMBIC),
        "-c",
        ALEMBIC_INI,
        *args,
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    return text


async def test_alembic_command_line_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"

    await alembic("-x", f"url={url}", "upgrade", "head")
    assert HEAD in await alembic("current", env={"CHIFFON_DATABASE_URL": url})

    store = Store.from_url(url)
    try:
        assert await store.schema_drift() == []
        await store.migrate()  # a no-op after the command line did it
        assert await store.revision() == HEAD
    finally:
        await store.close()

    await alembic("-x", f"url={url}", "downgrade", "base")
    assert HEAD not in await alembic("-x", f"url={url}", "current")


@pytest.mark.postgres
async def test_alembic_command_line_on_postgresql(postgres_url: str, postgres_schema: SchemaFactory) -> None:
    async with postgres_schema() as schema:
        await alembic("-x", f"url={postgres_url}", "-x", f"schema={schema}", "upgrade", "head")

        store = Store.from_url(postgres_url, schema=schema)
        try:
            assert await store.revision() == HEAD
            assert await store.schema_drift() == []
        finally:
            await store.close()


async def test_offline_sql_names_every_table(tmp_path: Path) -> None:
    sql = await alembic("-x", "url=postgresql://chiffon@db/chiffon", "upgrade", "head", "--sql")
    for table in ("resources", "resource_status", "runs", "run_events", "audit_events", "outbox"):
        assert f"CREATE TABLE {table}" in sql
