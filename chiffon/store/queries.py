"""SELECT statements that are worth seeing on their own.

Built by pure functions so tests can ``EXPLAIN`` exactly the statement the
store runs (see ``test_store.py``, which checks that audit queries by service
use ``ix_audit_events_service_time``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import aliased

from chiffon.resources import Outcome
from chiffon.store.tables import AuditEventRow, RunRow


def audit_select(
    *,
    since: datetime | None = None,
    service: str | None = None,
    actor: str | None = None,
    outcome: Outcome | None = None,
    resource: str | None = None,
    action: str | None = None,
    limit: int = 100,
) -> Select[tuple[AuditEventRow]]:
    """Audit events matching every filter given, newest first.

    Each equality filter has an index that starts with that column and ends
    with ``time``, so "the latest N for this service" reads N index entries.
    """
    statement = select(AuditEventRow)
    if since is not None:
        statement = statement.where(AuditEventRow.time >= since)
    for column, value in (
        (AuditEventRow.service, service),
        (AuditEventRow.actor, actor),
        (AuditEventRow.outcome, outcome.value if outcome is not None else None),
        (AuditEventRow.resource, resource),
        (AuditEventRow.action, action),
    ):
        if value is not None:
            statement = statement.where(column == value)
    # id breaks ties between events recorded in the same microsecond.
    return statement.order_by(AuditEventRow.time.desc(), AuditEventRow.id.desc()).limit(limit)


def runs_select(*, intent: str | None = None, limit: int = 50) -> Select[tuple[RunRow]]:
    """Runs, newest first, optionally of one intent (served by ix_runs_intent_created_at)."""
    statement = select(RunRow)
    if intent is not None:
        statement = statement.where(RunRow.intent == intent)
    return statement.order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(limit)


def runs_of_select(intents: Sequence[str], *, limit: int = 50) -> Select[tuple[RunRow]]:
    """Each named intent's latest ``limit`` runs, newest first: one query for many intents."""
    newest_first = (RunRow.created_at.desc(), RunRow.id.desc())
    ranked = (
        select(
            RunRow, func.row_number().over(partition_by=RunRow.intent, order_by=newest_first).label("rank")
        )
        .where(RunRow.intent.in_(intents))
        .subquery()
    )
    run = aliased(RunRow, ranked)
    return (
        select(run).where(ranked.c.rank <= limit).order_by(run.intent, run.created_at.desc(), run.id.desc())
    )
