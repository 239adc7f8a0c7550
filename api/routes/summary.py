"""An intent's run summary: each step's outcome, the totals, related suggestions, the audit link."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from chiffon.api.deps import ContextDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS
from chiffon.api.summary import intent_summary

router = APIRouter(
    prefix="/intents", tags=["intents"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES
)


@router.get("/{name}/summary")
async def get_summary(
    name: str,
    context: ContextDep,
    plan: Annotated[
        str | None,
        Query(pattern=r"^[0-9a-f]{6,64}$", description="a plan digest or its first 6+ characters"),
    ] = None,
) -> dict[str, Any]:
    """What the plan's runs did: each step's status, duration, agent and resources; suggestions; audit."""
    summary = await intent_summary(
        context.store, name, infra_repo=context.settings.resolved_infra_repo, plan=plan
    )
    if summary is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"deploymentintent/{name} not found")
    return summary
