"""Abort an intent: cancel its run in flight and hold its plan until it is approved again.

Stopping is open to operators (anyone who may change what runs); starting
again needs an approver, like any plan (``routes/approvals.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from chiffon.api.deps import ActorDep, OperatorDep, StoreDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS, BodyText
from chiffon.controllers.abort import AbortError, abort_intent

router = APIRouter(
    prefix="/intents",
    tags=["approvals"],
    dependencies=[SAFE_PARAMETERS, OperatorDep],
    responses=ERROR_RESPONSES,
)


class AbortRequest(BaseModel):
    reason: BodyText = Field(default="", max_length=2000, description="why (kept in the audit trail)")


@router.post("/{name}/abort")
async def abort(name: str, body: AbortRequest, store: StoreDep, actor: ActorDep) -> dict[str, Any]:
    """Cancel the run in flight and reject the current plan; `approve` it again to run it."""
    try:
        report = await abort_intent(store, name, actor=str(actor), reason=body.reason)
    except AbortError as error:
        code = status.HTTP_404_NOT_FOUND if "not found" in str(error) else status.HTTP_409_CONFLICT
        raise HTTPException(code, detail=str(error)) from None
    return {
        "intent": report.intent,
        "digest": report.digest,
        "canceledRuns": report.canceled_runs,
        "approval": report.approval.to_wire(),
    }
