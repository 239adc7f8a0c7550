"""Suggestions for homelab-infra: list, show, scan, accept (commit the patch), dismiss."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, Field

from chiffon.agents.suggestions import lint, service
from chiffon.agents.suggestions.findings import split_category
from chiffon.api.deps import ActorDep, ContextDep, OperatorDep, StoreDep
from chiffon.api.schemas import ERROR_RESPONSES, MAX_DB_INT, SAFE_PARAMETERS, BodyText
from chiffon.store.records import SUGGESTION_STATUSES, Suggestion

router = APIRouter(
    prefix="/suggestions", tags=["suggestions"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES
)

STATUS_PATTERN = "^(" + "|".join(SUGGESTION_STATUSES) + ")$"
SuggestionId = Annotated[int, Path(ge=0, le=MAX_DB_INT)]


class AcceptRequest(BaseModel):
    branch: BodyText | None = Field(
        default=None,
        max_length=200,
        description="branch to commit on; default chiffon/suggestion-<id>, or the checked-out branch "
        "when suggestions_on_current_branch is set",
    )


class DismissRequest(BaseModel):
    reason: BodyText = Field(default="", max_length=2000)


def suggestion_public(suggestion: Suggestion) -> dict[str, Any]:
    source, rule = split_category(suggestion.category)
    return {
        "id": suggestion.id,
        "category": suggestion.category,
        "source": source,
        "rule": rule,
        "file": suggestion.file,
        "line": suggestion.line,
        "reasoning": suggestion.reasoning,
        "patch": suggestion.patch,
        "status": suggestion.status,
        "fingerprint": suggestion.fingerprint,
        "createdAt": suggestion.created_at.isoformat(),
        "updatedAt": suggestion.updated_at.isoformat(),
    }


def _http_error(exc: service.SuggestionError) -> HTTPException:
    if isinstance(exc, service.SuggestionNotFoundError):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))
    if isinstance(exc, service.SuggestionConflictError):
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=str(exc))


@router.get("")
async def list_suggestions(
    store: StoreDep, status_: str | None = Query(default=None, alias="status", pattern=STATUS_PATTERN)
) -> dict[str, Any]:
    """Suggestions, newest first, optionally only those with one status."""
    items = await store.list_suggestions(status_)  # type: ignore[arg-type]
    return {"kind": "List", "items": [suggestion_public(item) for item in items]}


@router.post("/scan", dependencies=[OperatorDep])
async def scan(context: ContextDep) -> dict[str, Any]:
    """Lint and check homelab-infra's committed state and the stored runs; store what is new."""
    settings = context.settings
    try:
        result = await service.scan(
            context.store, settings.resolved_infra_repo, lint_timeout=settings.lint_timeout
        )
    except service.SuggestionError as exc:
        raise _http_error(exc) from None
    except lint.LintError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None
    return {
        "found": result.found,
        "new": result.new,
        "implemented": result.implemented,
        "bySource": result.by_source,
        "revision": result.revision,
    }


@router.get("/{suggestion_id}")
async def get_suggestion(suggestion_id: SuggestionId, store: StoreDep) -> dict[str, Any]:
    try:
        found = await service.get_suggestion(store, suggestion_id)
    except service.SuggestionError as exc:
        raise _http_error(exc) from None
    history = await store.list_audit(resource=f"Suggestion/{suggestion_id}", limit=20)
    return {**suggestion_public(found), "history": [event.to_wire() for event in history]}


@router.post("/{suggestion_id}/accept", dependencies=[OperatorDep])
async def accept(
    suggestion_id: SuggestionId, body: AcceptRequest, context: ContextDep, actor: ActorDep
) -> dict[str, Any]:
    """Apply the patch as a commit in homelab-infra, proven by ansible-lint; 422 if it does not help."""
    settings = context.settings
    try:
        result = await service.accept(
            context.store,
            settings.resolved_infra_repo,
            suggestion_id,
            actor,
            branch=body.branch,
            on_current_branch=settings.suggestions_on_current_branch,
            lint_timeout=settings.lint_timeout,
        )
    except service.SuggestionError as exc:
        raise _http_error(exc) from None
    return {
        "suggestion": suggestion_public(result.suggestion),
        "commit": result.commit,
        "branch": result.branch,
        "lintBefore": result.lint_before,
        "lintAfter": result.lint_after,
        "regenerated": result.regenerated,
        "files": result.files,
    }


@router.post("/{suggestion_id}/dismiss", dependencies=[OperatorDep])
async def dismiss(
    suggestion_id: SuggestionId, body: DismissRequest, store: StoreDep, actor: ActorDep
) -> dict[str, Any]:
    try:
        found = await service.dismiss(store, suggestion_id, actor, reason=body.reason)
    except service.SuggestionError as exc:
        raise _http_error(exc) from None
    return suggestion_public(found)
