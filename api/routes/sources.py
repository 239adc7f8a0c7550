"""Git sources: what was read, at which revision, and which files could not be."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from chiffon.api.deps import OperatorDep, SourceDep, StoreDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS, ListResponse

router = APIRouter(
    prefix="/sources", tags=["sources"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES
)


@router.get("", response_model=ListResponse)
async def list_sources(store: StoreDep) -> dict[str, Any]:
    statuses = await store.list_source_statuses()
    return {"apiVersion": "v1", "kind": "List", "items": [s.to_wire() for s in statuses]}


@router.post("/sync", status_code=status.HTTP_200_OK, dependencies=[OperatorDep])
async def sync_sources(source: SourceDep) -> dict[str, Any]:
    """Sync now (a git host's push webhook can call this)."""
    report = await source.sync()
    return {
        "revision": report.revision,
        "changed": report.changed,
        "unchanged": report.unchanged,
        "errors": [e.to_wire() for e in report.errors],
    }
