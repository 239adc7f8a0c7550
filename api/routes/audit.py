"""Audit trail queries (DESIGN §8)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BeforeValidator

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


_RFC3339_START = re.compile(r"\d{4}-\d{2}-\d{2}")


def rfc3339_only(value: object) -> object:
    """Refuse what is not RFC 3339 (documented), such as a number, which pydantic reads as Unix time.

    Found by tests/fuzz (schemathesis): ``since=0.0`` was answered as if it were 1970.
    """
    if isinstance(value, str) and not _RFC3339_START.match(value):
        raise ValueError(f"{value!r} is not an RFC 3339 time; write e.g. 2026-11-30T10:00:00Z")
    return value


Since = Annotated[datetime, BeforeValidator(rfc3339_only)]


@router.get("", response_model=ListResponse)
async def list_audit(
    store: StoreDep,
    since: Since | None = None,
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
