"""DeploymentIntents: read from the store, written through git."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from chiffon.api.deps import ActorDep, OperatorDep, StoreDep, WriterDep
from chiffon.api.schemas import (
    ERROR_RESPONSES,
    SAFE_PARAMETERS,
    AppliedIntentResponse,
    ApplyRequest,
    ApplyResponse,
    DeleteRequest,
    ListResponse,
)
from chiffon.controllers.intents_writer import SubmittedFile, validate_submission

router = APIRouter(
    prefix="/intents", tags=["intents"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES
)


def parse_selector(selector: str | None) -> dict[str, str] | None:
    """``key=value,key2=value2`` as kubectl's ``-l``."""
    if not selector:
        return None
    pairs = {}
    for part in selector.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise HTTPException(
                422,
                detail=f"label selector {part!r} must look like key=value",
            )
        pairs[key.strip()] = value.strip()
    return pairs


@router.get("", response_model=ListResponse)
async def list_intents(
    store: StoreDep,
    selector: Annotated[str | None, Query(alias="labelSelector", max_length=1000)] = None,
) -> dict[str, Any]:
    items = await store.intent_documents(label_selector=parse_selector(selector))
    return {"apiVersion": "v1", "kind": "List", "items": items}


@router.get("/{name}")
async def get_intent(name: str, store: StoreDep) -> dict[str, Any]:
    intent = await store.get_intent(name)
    if intent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"deploymentintent/{name} not found")
    return intent.to_wire()


@router.post("/apply", response_model=ApplyResponse, dependencies=[OperatorDep])
async def apply_intents(body: ApplyRequest, writer: WriterDep, actor: ActorDep) -> ApplyResponse:
    """Validate every document, commit them to the intents repo as the caller, then sync."""
    files = [SubmittedFile(f.name, f.content.encode()) for f in body.files]
    if body.dry_run:
        # Parsing up to 16 MiB of YAML takes seconds: in a worker thread, not on the event loop.
        parsed = await asyncio.to_thread(validate_submission, files)
        return ApplyResponse(
            revision=None,
            committed=False,
            intents=[
                AppliedIntentResponse(name=p.intent.metadata.name, outcome="valid", path="") for p in parsed
            ],
        )
    report = await writer.apply(files, actor, message=body.message)
    return ApplyResponse.model_validate(report, from_attributes=True)


@router.delete("/{name}", response_model=ApplyResponse, dependencies=[OperatorDep])
async def delete_intent(
    name: str, writer: WriterDep, actor: ActorDep, body: DeleteRequest | None = None
) -> ApplyResponse:
    report = await writer.delete(name, actor, message=body.message if body else None)
    return ApplyResponse.model_validate(report, from_attributes=True)
