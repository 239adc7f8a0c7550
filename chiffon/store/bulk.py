"""Writes of many rows at once, inside the caller's transaction.

A burst of work (a commit adding a thousand intents, a relay publishing a
thousand requests) must cost a few statements, not a few per row: each
function here is one ``executemany`` (rendered as multi-row ``INSERT``s by
SQLAlchemy's insertmanyvalues on both backends). They go through the tables
(Core), not the ORM classes: the ORM's bulk path costs several times more
Python per row and these rows need no identity map.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from chiffon.resources import AuditEvent, Run
from chiffon.store import convert
from chiffon.store.records import Dispatch
from chiffon.store.sqlutil import dialect_insert
from chiffon.store.tables import AuditEventRow, OutboxRow, RunRow

AUDIT_EVENTS = cast(Table, AuditEventRow.__table__)
OUTBOX = cast(Table, OutboxRow.__table__)
RUNS = cast(Table, RunRow.__table__)


async def insert_audits(session: AsyncSession, events: Sequence[AuditEvent]) -> None:
    if events:
        await session.execute(insert(AUDIT_EVENTS), [convert.audit_values(event) for event in events])


async def insert_new_runs(session: AsyncSession, runs: Sequence[Run], now: datetime) -> set[str]:
    """Insert runs whose id is not taken yet; returns the ids inserted (a redispatch inserts none)."""
    if not runs:
        return set()
    statement = (await dialect_insert(session, RUNS)).on_conflict_do_nothing(index_elements=["id"])
    result = await session.execute(
        statement.returning(RUNS.c.id), [convert.run_values(run, now) for run in runs]
    )
    return set(result.scalars().all())


async def upsert_runs(session: AsyncSession, runs: Sequence[Run], now: datetime) -> None:
    """Insert or update runs by id; ``created_at`` is kept from the first write."""
    if not runs:
        return
    statement = await dialect_insert(session, RUNS)
    changes = {
        column.name: statement.excluded[column.name]
        for column in RUNS.columns
        if column.name not in ("id", "created_at")
    }
    await session.execute(
        statement.on_conflict_do_update(index_elements=["id"], set_=changes),
        [convert.run_values(run, now) for run in runs],
    )


async def insert_outbox(
    session: AsyncSession, messages: Sequence[tuple[str, str, bytes]], now: datetime
) -> None:
    """Queue ``(message_id, routing_key, body)`` messages; an id already queued is left alone."""
    if not messages:
        return
    statement = (await dialect_insert(session, OUTBOX)).on_conflict_do_nothing(index_elements=["message_id"])
    rows = [
        {
            "message_id": message_id,
            "routing_key": routing_key,
            "body": body,
            "created_at": now,
            "published_at": None,
            "attempts": 0,
        }
        for message_id, routing_key, body in messages
    ]
    await session.execute(statement, rows)


async def dispatch_runs(session: AsyncSession, dispatches: Sequence[Dispatch], now: datetime) -> set[str]:
    """New runs, their outbox messages and dispatch audits; returns the ids of the runs created."""
    created = await insert_new_runs(session, [d.run for d in dispatches], now)
    fresh = [d for d in dispatches if d.run.id in created]
    await insert_outbox(session, [(d.run.id, d.routing_key, d.body) for d in fresh], now)
    await insert_audits(session, [d.audit for d in fresh if d.audit is not None])
    return created
