"""An intent's history and rollback: ``chiffonctl history intent/NAME``, ``chiffonctl rollback``.

History is git's log of the file the intent lives in, each commit joined with
what the audit trail says about it: the generation the source gave the intent
at that commit (``intent.created``/``intent.configured``) and the plan digest
the reconciler applied from it (``applied``). Rollback commits the intent's old
document as a new change (IntentsWriter.rollback), so it is planned and
approved like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from chiffon.api.deps import ActorDep, OperatorDep, StoreDep, WriterDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS, ApplyResponse, BodyText
from chiffon.controllers.intents_writer import Revision
from chiffon.resources import AuditEvent

router = APIRouter(
    prefix="/intents", tags=["intents"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES
)

AUDIT_LOOKBACK = 1000
SOURCE_ACTIONS = ("intent.created", "intent.configured")


class RevisionEntry(BaseModel):
    revision: str
    time: datetime
    author: str
    subject: str
    generation: int | None = None
    applied: bool = False
    applied_at: datetime | None = Field(default=None, serialization_alias="appliedAt")
    digest: str | None = None


class HistoryResponse(BaseModel):
    name: str
    path: str
    generation: int | None = None
    digest: str | None = None
    last_applied_digest: str | None = Field(default=None, serialization_alias="lastAppliedDigest")
    observed_revision: str | None = Field(default=None, serialization_alias="observedRevision")
    items: list[RevisionEntry]


class RollbackRequest(BaseModel):
    to: BodyText = Field(min_length=1, max_length=200, description="the revision to go back to")
    reason: BodyText | None = Field(
        default=None, max_length=2000, description="why; kept in the commit message"
    )


def history_entries(
    revisions: Sequence[Revision], source_events: Sequence[AuditEvent], applied: Sequence[AuditEvent]
) -> list[RevisionEntry]:
    """Each revision with the generation it became and the first time its plan was applied."""
    generations = {
        event.revision: event.details.get("generation") for event in source_events if event.revision
    }
    first_applied: dict[str, AuditEvent] = {}
    for event in applied:  # newest first: the last one kept is the earliest
        if event.revision:
            first_applied[event.revision] = event
    entries = []
    for revision in revisions:
        generation = generations.get(revision.sha)
        done = first_applied.get(revision.sha)
        entries.append(
            RevisionEntry(
                revision=revision.sha,
                time=revision.time,
                author=revision.author,
                subject=revision.subject,
                generation=generation if isinstance(generation, int) else None,
                applied=done is not None,
                applied_at=done.time if done else None,
                digest=str(done.details.get("digest")) if done and done.details.get("digest") else None,
            )
        )
    return entries


@router.get("/{name}/history", response_model=HistoryResponse, response_model_by_alias=True)
async def intent_history(
    name: str,
    store: StoreDep,
    writer: WriterDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> HistoryResponse:
    """Revisions of the intent's file, newest first, with the generation and what was applied."""
    path, revisions = await writer.history(name, limit=limit)
    resource = f"DeploymentIntent/{name}"
    source_events = [
        event
        for action in SOURCE_ACTIONS
        for event in await store.list_audit(resource=resource, action=action, limit=AUDIT_LOOKBACK)
    ]
    applied = await store.list_audit(resource=resource, action="applied", limit=AUDIT_LOOKBACK)
    intent = await store.get_intent(name)
    status = intent.status if intent else None
    return HistoryResponse(
        name=name,
        path=path,
        generation=intent.metadata.generation if intent else None,
        digest=status.plan.digest if status and status.plan else None,
        last_applied_digest=status.last_applied_digest if status else None,
        observed_revision=status.observed_revision if status else None,
        items=history_entries(revisions, source_events, applied),
    )


@router.post("/{name}/rollback", response_model=ApplyResponse, dependencies=[OperatorDep])
async def rollback_intent(
    name: str, body: RollbackRequest, writer: WriterDep, actor: ActorDep
) -> ApplyResponse:
    """Commit the intent's document as it was at ``to``; the new plan is approved like any change."""
    report = await writer.rollback(name, body.to, actor, message=body.reason)
    return ApplyResponse.model_validate(report, from_attributes=True)
