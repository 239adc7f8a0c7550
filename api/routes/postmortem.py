"""A run's post-mortem: what failed, on which host, the agent's state, the timeline, suggestions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status

from chiffon.api.deps import ContextDep
from chiffon.api.postmortem import postmortem
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS

router = APIRouter(prefix="/runs", tags=["runs"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES)


@router.get("/{run_id}/postmortem")
async def get_postmortem(run_id: str, context: ContextDep) -> dict[str, Any]:
    """The run's post-mortem, computed on read (see ``chiffon.api.postmortem``); 404 for an unknown run."""
    found = await postmortem(context.store, run_id, infra_repo=context.settings.resolved_infra_repo)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id} not found")
    return found
