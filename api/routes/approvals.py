"""Approve or reject an intent's plan — bound to the plan digest, never to a commit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from chiffon.api.deps import ActorDep, ApproverDep, StoreDep
from chiffon.resources import Approval, AuditEvent, Decision, IntentStatus, Outcome

router = APIRouter(prefix="/intents", tags=["approvals"], dependencies=[ApproverDep])

DIGEST_PATTERN = r"^[0-9a-f]{6,64}$"


class DecisionRequest(BaseModel):
    plan: str | None = Field(
        default=None,
        pattern=DIGEST_PATTERN,
        description="the plan digest (or its first 6+ characters) being decided; default: the current plan",
    )
    reason: str = Field(default="", max_length=2000)


class RejectRequest(DecisionRequest):
    reason: str = Field(min_length=1, max_length=2000)


async def decide(
    name: str, body: DecisionRequest, decision: Decision, store: StoreDep, actor: str
) -> dict[str, Any]:
    intent = await store.get_intent(name)
    if intent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"deploymentintent/{name} not found")
    plan = intent.status.plan if intent.status else None
    if plan is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"deploymentintent/{name} has no plan yet; see `chiffonctl describe intent {name}`",
        )
    digest = _decided_digest(name, intent.status, body.plan)
    now = datetime.now(UTC)
    approval = Approval(
        intent=name, digest=digest, decision=decision, actor=actor, reason=body.reason, created_at=now
    )
    await store.record_approval(approval)
    await store.record_audit(
        AuditEvent(
            time=now,
            actor=actor,
            action="approve" if decision is Decision.APPROVED else "reject",
            resource=f"DeploymentIntent/{name}",
            service=intent.service,
            outcome=Outcome.SUCCESS,
            details={"digest": digest, "reason": body.reason, "heal": digest != plan.digest},
        )
    )
    return approval.to_wire()


def _decided_digest(name: str, status_: IntentStatus | None, wanted: str | None) -> str:
    """The digest a decision binds to: the one named, else the pending heal of a drifted,
    applied plan, else the current plan. A name that matches neither is stale (409)."""
    assert status_ is not None and status_.plan is not None
    plan = status_.plan.digest
    drift = status_.drift
    heal = drift.heal_digest if drift is not None and drift.digest == plan else None
    if wanted is None:
        return heal if heal and status_.last_applied_digest == plan else plan
    for candidate in (plan, heal):
        if candidate and candidate.startswith(wanted):
            return candidate
    pending = f" (or the drift heal {heal[:12]})" if heal else ""
    raise HTTPException(
        status.HTTP_409_CONFLICT,
        detail=(
            f"plan {wanted[:12]} is stale: the current plan of deploymentintent/{name} is "
            f"{plan[:12]}{pending}. Review it with `chiffonctl describe intent {name}`, "
            "then approve that one"
        ),
    )


@router.post("/{name}/approve")
async def approve(name: str, body: DecisionRequest, store: StoreDep, actor: ActorDep) -> dict[str, Any]:
    """Approve the current plan (optionally naming its digest, so you approve what you reviewed)."""
    return await decide(name, body, Decision.APPROVED, store, str(actor))


@router.post("/{name}/reject")
async def reject(name: str, body: RejectRequest, store: StoreDep, actor: ActorDep) -> dict[str, Any]:
    """Reject the current plan; a reason is required."""
    return await decide(name, body, Decision.REJECTED, store, str(actor))
