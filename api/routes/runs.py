"""Runs: one playbook execution each, with their recorded events, replayed or followed live."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, status
from fastapi.responses import StreamingResponse

from chiffon.api.deps import StoreDep
from chiffon.api.runstream import follow_run, resume_after
from chiffon.api.schemas import ERROR_RESPONSES, MAX_DB_INT, SAFE_PARAMETERS, ListResponse
from chiffon.resources import Run
from chiffon.store import Store

router = APIRouter(prefix="/runs", tags=["runs"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES)


async def _known_run(store: Store, run_id: str) -> Run:
    run = await store.get_run(run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id} not found")
    return run


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
    return (await _known_run(store, run_id)).to_wire()


@router.get("/{run_id}/events", response_model=ListResponse)
async def list_run_events(
    run_id: str, store: StoreDep, after: Annotated[int, Query(ge=-1, le=MAX_DB_INT)] = -1
) -> dict[str, Any]:
    """The events stored so far, in order; ``after`` skips those up to that ``seq``."""
    await _known_run(store, run_id)
    events = await store.list_run_events(run_id, after_seq=after)
    return {"apiVersion": "v1", "kind": "List", "items": [event.to_wire() for event in events]}


@router.get(
    "/{run_id}/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def stream_run(
    run_id: str,
    store: StoreDep,
    after: Annotated[int, Query(ge=-1, le=MAX_DB_INT, description="start after this event seq")] = -1,
    last_event_id: Annotated[
        str | None, Header(max_length=20, description="resume point sent by a reconnecting client")
    ] = None,
) -> StreamingResponse:
    """Replay the run's events, then stream new ones live; ends with the run's final status.

    Messages: ``run`` (status changes), ``output`` (one ansible event, ``id`` = its seq),
    ``end`` (the finished run), ``error``. See ``chiffon.api.runstream``.
    """
    run = await _known_run(store, run_id)
    try:
        start = resume_after(after, last_event_id)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"Last-Event-ID: {exc}") from None
    if start > MAX_DB_INT:
        detail = f"Last-Event-ID: {start} is past the last possible event id ({MAX_DB_INT})"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)
    return StreamingResponse(
        follow_run(store, run, start),
        media_type="text/event-stream",
        # No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
