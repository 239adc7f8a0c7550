"""Chat: a request in words becomes a proposal; a confirm commits it (see ``chiffon.api.chat``).

Proposing and deciding need the operator role: a confirm commits to the
intents repo like ``chiffonctl apply`` does. Approving the plan that follows
is a separate step that needs the approver role (``routes/approvals.py``).

Every POST here spends one token of the caller's chat allowance
(``chat_rate_per_minute``, ``chat_rate_burst``; ``ChatRateDep``): a proposal may
call a language model, which costs money and time. Past it: 429 with
``Retry-After``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from chiffon.api.chat import ChatService, ConflictError, chat_service, proposal_to_wire
from chiffon.api.deps import ActorDep, ChatRateDep, ContextDep, OperatorDep, StoreDep, WriterDep
from chiffon.api.schemas import ERROR_RESPONSES, SAFE_PARAMETERS, BodyText
from chiffon.resources.intent import Priority

router = APIRouter(prefix="/chat", tags=["chat"], dependencies=[SAFE_PARAMETERS], responses=ERROR_RESPONSES)

ID_PATTERN = r"^[a-z]-[0-9a-f]{6,32}$"


def get_chat(context: ContextDep, store: StoreDep, writer: WriterDep) -> ChatService:
    return chat_service(context.settings, store, writer)


ChatDep = Annotated[ChatService, Depends(get_chat)]


class ChatRequest(BaseModel):
    message: BodyText = Field(min_length=1, max_length=4000, description="what you want, in words")
    conversation: str | None = Field(default=None, pattern=ID_PATTERN)
    intent: str | None = Field(
        default=None, max_length=63, description="an existing intent this message modifies"
    )
    priority: Priority | None = None


@router.post("", dependencies=[OperatorDep, ChatRateDep])
async def propose(body: ChatRequest, chat: ChatDep, actor: ActorDep) -> dict[str, Any]:
    """Compile a request into intents and preview their plans; nothing is committed yet."""
    proposal = await chat.propose(
        body.message,
        actor,
        conversation=body.conversation,
        modify=body.intent,
        priority=body.priority.value if body.priority else None,
    )
    return proposal_to_wire(proposal)


@router.get("/conversations/{conversation}")
async def conversation(conversation: str, chat: ChatDep) -> dict[str, Any]:
    """A conversation's proposals, oldest first."""
    items = await chat.conversation(conversation)
    return {"apiVersion": "v1", "kind": "List", "items": [proposal_to_wire(p) for p in items]}


@router.get("/{proposal_id}")
async def get_proposal(proposal_id: str, chat: ChatDep) -> dict[str, Any]:
    return proposal_to_wire(await _decided(chat.get(proposal_id)))


@router.post("/{proposal_id}/confirm", dependencies=[OperatorDep, ChatRateDep])
async def confirm(proposal_id: str, chat: ChatDep, actor: ActorDep) -> dict[str, Any]:
    """Commit the proposal's YAML to the intents repo as you; the controller plans it next."""
    return proposal_to_wire(await _decided(chat.confirm(proposal_id, actor)))


@router.post("/{proposal_id}/discard", dependencies=[OperatorDep, ChatRateDep])
async def discard(proposal_id: str, chat: ChatDep, actor: ActorDep) -> dict[str, Any]:
    return proposal_to_wire(await _decided(chat.discard(proposal_id, actor)))


async def _decided(work: Any) -> Any:
    try:
        return await work
    except LookupError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from None
    except ConflictError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from None
