"""Runs: one playbook execution each, with their recorded events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from chiffon.api.deps import StoreDep
from chiffon.api.schemas import ListResponse

router = APIRouter(prefix="/runs", tags=["runs"])


@router.get("", response_model=ListResponse)
async def list_runs(
    store: StoreDep,
    intent: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    runs = await store.list_runs(intent=intent, limit=limit)
    return {"apiVersion": "v1", "kind": "List", "items": [run.to_wire() for run in runs]}


@router.get("/{run_id}")
async def get_run(run_id: str, store: StoreDep) -> dict[str, Any]:
    run = await store.get_run(run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id} not found")
    return run.to_wire()


@router.get("/{run_id}/events", response_model=ListResponse)
async def list_run_events(
    run_id: str, store: StoreDep, after: Annotated[int, Query(ge=-1)] = -1
) -> dict[str, Any]:
    events = await store.list_run_events(run_id, after_seq=after)
    return {"apiVersion": "v1", "kind": "List", "items": [event.to_wire() for event in events]}
