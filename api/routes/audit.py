"""Audit trail queries (DESIGN §8)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from chiffon.api.deps import StoreDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS, ListResponse
from chiffon.resources import Outcome

router = APIRouter(prefix="/audit", tags=["audit"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES)


def in_utc(since: datetime) -> datetime:
    """``since`` in UTC; a time without an offset is taken as UTC (the store keeps UTC only).

    Found by tests/fuzz: a time without an offset, or one whose UTC form falls outside
    years 1-9999 (``9999-12-31T23:59:59-23:00``), failed the query with a 500.
    """
    try:
        return since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
    except OverflowError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"since: {since.isoformat()} is out of range in UTC"
        ) from None


@router.get("", response_model=ListResponse)
async def list_audit(
    store: StoreDep,
    since: datetime | None = None,
    service: Annotated[str | None, Query(max_length=100)] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    resource: Annotated[str | None, Query(max_length=300)] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    outcome: Outcome | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    events = await store.list_audit(
        since=in_utc(since) if since is not None else None,
        service=service,
        actor=actor,
        resource=resource,
        action=action,
        outcome=outcome,
        limit=limit,
    )
    return {"apiVersion": "v1", "kind": "List", "items": [event.to_wire() for event in events]}
