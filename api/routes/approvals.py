"""Approve or reject an intent's plan — bound to the plan digest, never to a commit.

Refusals are audited as ``denied`` (docs/auth.md): a malformed digest (422,
``malformed-digest``), a stale one (409, ``stale-digest``, naming the current
plan), and — with ``approval_requires_other_person`` on — an approval by the
person who requested the change (403, ``same-person``).

Who requested a plan is the author of the change that produced the intent's
current spec: the actor of its newest ``intent.created`` / ``intent.configured``
audit event, which the source writes with the commit's author. A chat
confirm, ``chiffonctl apply`` or a rollback commits as the caller, so that is
the token's identity; a ``git push`` is its commit author. Identities are the
same person when their emails match (a token's is ``token:<name>``), ignoring
case. With no such event the requester is unknown and the approval is refused
(``requester-unknown``): the rule fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from chiffon.api.auth import Principal, Role
from chiffon.api.deps import ActorDep, ApproverDep, ContextDep, PrincipalDep, audit_denied
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS, BodyText
from chiffon.gitrepo import Identity
from chiffon.resources import Approval, AuditEvent, Decision, DeploymentIntent, IntentStatus, Outcome
from chiffon.store import Store

router = APIRouter(
    prefix="/intents",
    tags=["approvals"],
    dependencies=[ApproverDep, SAFE_PARAMETERS],
    responses=ERROR_RESPONSES,
)

DIGEST_PATTERN = r"^[0-9a-f]{6,64}$"


class DecisionRequest(BaseModel):
    plan: str | None = Field(
        default=None,
        pattern=DIGEST_PATTERN,
        description="the plan digest (or its first 6+ characters) being decided; default: the current plan",
    )
    reason: BodyText = Field(default="", max_length=2000)


class RejectRequest(DecisionRequest):
    reason: BodyText = Field(min_length=1, max_length=2000)


@dataclass(frozen=True)
class Decider:
    """Who decides, and where: what a refusal's audit names."""

    request: Request
    principal: Principal
    actor: Identity


async def decide(
    name: str,
    body: DecisionRequest,
    decision: Decision,
    store: Store,
    decider: Decider,
    *,
    other_person: bool = False,
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
    try:
        digest = _decided_digest(name, intent.status, body.plan)
    except HTTPException as refused:
        await _refused(store, decider, intent, "stale-digest", given=body.plan, current=plan.digest)
        raise refused from None
    if other_person and decision is Decision.APPROVED:
        await _check_other_person(store, decider, intent)
    actor = str(decider.actor)
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


REQUEST_ACTIONS = ("intent.created", "intent.configured")


async def requester_of(store: Store, name: str) -> str | None:
    """Who made the change behind the intent's current spec: the newest created/configured event's actor."""
    resource = f"DeploymentIntent/{name}"
    events = [
        event
        for action in REQUEST_ACTIONS
        for event in await store.list_audit(resource=resource, action=action, limit=1)
    ]
    if not events:
        return None
    return max(events, key=lambda event: event.time).actor


def same_person(one: str, other: str) -> bool:
    """Whether two ``Name <email>`` identities are one person: same email, ignoring case (pure)."""
    return Identity.parse(one).email.strip().lower() == Identity.parse(other).email.strip().lower()


async def _check_other_person(store: Store, decider: Decider, intent: DeploymentIntent) -> None:
    """403 (audited) when the approver is the person who requested the change, or nobody can tell."""
    name = intent.metadata.name
    requester = await requester_of(store, name)
    approver = str(decider.actor)
    if requester is None:
        await _refused(store, decider, intent, "requester-unknown")
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=(
                f"approvals need another person than the requester here (approval_requires_other_person), "
                f"and the audit does not say who requested deploymentintent/{name}; "
                "re-apply the intent so its author is recorded, then have someone else approve it"
            ),
        )
    if same_person(requester, approver):
        await _refused(store, decider, intent, "same-person", requester=requester)
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=(
                f"{approver} requested this change to deploymentintent/{name} and may not approve it too: "
                "this server needs another person's approval (approval_requires_other_person)"
            ),
        )


async def _refused(
    store: Store, decider: Decider, intent: DeploymentIntent, reason: str, **details: object
) -> None:
    await audit_denied(
        store,
        decider.request,
        str(decider.actor),
        Role.APPROVER,
        decider.principal.role,
        reason,
        resource=f"DeploymentIntent/{intent.metadata.name}",
        service=intent.service,
        details=details,
    )


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
async def approve(
    name: str,
    body: DecisionRequest,
    request: Request,
    context: ContextDep,
    principal: PrincipalDep,
    actor: ActorDep,
) -> dict[str, Any]:
    """Approve the current plan (optionally naming its digest, so you approve what you reviewed)."""
    return await decide(
        name,
        body,
        Decision.APPROVED,
        context.store,
        Decider(request, principal, actor),
        other_person=context.settings.approval_requires_other_person,
    )


@router.post("/{name}/reject")
async def reject(
    name: str,
    body: RejectRequest,
    request: Request,
    context: ContextDep,
    principal: PrincipalDep,
    actor: ActorDep,
) -> dict[str, Any]:
    """Reject the current plan; a reason is required."""
    return await decide(name, body, Decision.REJECTED, context.store, Decider(request, principal, actor))


# A 422 from these routes (a malformed digest) is audited too (app.py).
approve.audit_invalid = True  # type: ignore[attr-defined]
reject.audit_invalid = True  # type: ignore[attr-defined]
