"""Audit trail queries (DESIGN §8)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from chiffon.api.deps import StoreDep
from chiffon.api.schemas import ListResponse
from chiffon.resources import Outcome

router = APIRouter(prefix="/audit", tags=["audit"])


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
        since=since,
        service=service,
        actor=actor,
        resource=resource,
        action=action,
        outcome=outcome,
        limit=limit,
    )
    return {"apiVersion": "v1", "kind": "List", "items": [event.to_wire() for event in events]}
