"""Rows to models and models to rows, for everything but intents.

Pure functions. JSON columns hold each model's wire form (camelCase, as on the
API and the bus), so what the database holds reads like what ``chiffonctl get
-o json`` prints, and reading it back goes through the same validation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar, cast

from chiffon.resources import Agent, Approval, AuditEvent, Model, Run
from chiffon.resources.messages import AnsibleEvent
from chiffon.store.records import (
    ApiToken,
    ChatProposal,
    LlmUsage,
    OutboxMessage,
    Suggestion,
    SuggestionStatus,
)
from chiffon.store.tables import (
    ApiTokenRow,
    ChatProposalRow,
    LlmUsageRow,
    OutboxRow,
    SuggestionRow,
)

ModelT = TypeVar("ModelT", bound=Model)


def model_from_row(model: type[ModelT], row: object) -> ModelT:
    """Read a row into a resource model: columns are named like the model's fields,
    and JSON columns hold the wire form, which validates back into nested models."""
    return model.model_validate(row, from_attributes=True)


def run_values(run: Run, now: datetime) -> dict[str, Any]:
    return {
        "id": run.id,
        "intent": run.intent,
        "generation": run.generation,
        "plan_digest": run.plan_digest,
        "step": run.step,
        "step_index": run.step_index,
        "attempt": run.attempt,
        "epoch": run.epoch,
        "check_mode": run.check_mode,
        "agent_id": run.agent_id,
        "status": run.status.value,
        "rc": run.rc,
        "stats": {host: stats.to_wire() for host, stats in run.stats.items()},
        "usage": run.usage.to_wire() if run.usage is not None else None,
        "error": run.error,
        "created_at": run.created_at or now,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


def event_from_json(data: dict[str, Any]) -> AnsibleEvent:
    return AnsibleEvent.model_validate(data)


def agent_values(agent: Agent, now: datetime) -> dict[str, Any]:
    return {
        "id": agent.id,
        "kind": agent.kind.value,
        "labels": dict(agent.labels),
        "online": agent.online,
        "last_seen": agent.last_seen,
        "capacity": agent.capacity.to_wire() if agent.capacity is not None else None,
        "version": agent.version,
        "updated_at": now,
    }


def audit_values(event: AuditEvent) -> dict[str, Any]:
    # The id is the database's to assign; an id on the way in is ignored.
    return {
        "time": event.time,
        "actor": event.actor,
        "action": event.action,
        "resource": event.resource,
        "service": event.service,
        "outcome": event.outcome.value,
        "revision": event.revision,
        "details": event.details,
    }


def approval_values(approval: Approval, now: datetime) -> dict[str, Any]:
    return {
        "intent": approval.intent,
        "digest": approval.digest,
        "decision": approval.decision.value,
        "actor": approval.actor,
        "reason": approval.reason,
        "created_at": approval.created_at or now,
    }


def outbox_from_row(row: OutboxRow) -> OutboxMessage:
    return OutboxMessage(
        id=row.id,
        message_id=row.message_id,
        routing_key=row.routing_key,
        body=bytes(row.body),
        created_at=row.created_at,
        attempts=row.attempts,
        published_at=row.published_at,
    )


def suggestion_from_row(row: SuggestionRow) -> Suggestion:
    return Suggestion(
        id=row.id,
        category=row.category,
        file=row.file,
        line=row.line,
        reasoning=row.reasoning,
        patch=row.patch,
        status=cast(SuggestionStatus, row.status),
        fingerprint=row.fingerprint,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def llm_usage_from_row(row: LlmUsageRow) -> LlmUsage:
    return LlmUsage(
        id=row.id,
        time=row.time,
        model=row.model,
        provider=row.provider,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_usd=row.cost_usd,
        latency_ms=row.latency_ms,
        reason=row.reason,
        intent=row.intent,
        outcome=row.outcome,
    )


def proposal_from_row(row: ChatProposalRow) -> ChatProposal:
    return ChatProposal(
        id=row.id,
        conversation=row.conversation,
        created_at=row.created_at,
        actor=row.actor,
        request=row.request,
        documents=row.documents,
        detail=dict(row.detail),
        status=row.status,  # type: ignore[arg-type]
        revision=row.revision,
        decided_at=row.decided_at,
    )


def token_from_row(row: ApiTokenRow) -> ApiToken:
    return ApiToken(
        name=row.name,
        role=row.role,
        token_hash=row.token_hash,
        created_at=row.created_at,
        created_by=row.created_by,
        revoked_at=row.revoked_at,
    )
