"""Rows to models and models to rows, for everything but intents.

Pure functions. JSON columns hold each model's wire form (camelCase, as on the
API and the bus), so what the database holds reads like what ``chiffonctl get
-o json`` prints, and reading it back goes through the same validation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from chiffon.resources import (
    Agent,
    AgentKind,
    Approval,
    AuditEvent,
    Capacity,
    Decision,
    Outcome,
    Run,
    RunStatus,
)
from chiffon.resources.messages import AnsibleEvent
from chiffon.resources.run import HostStats, ResourceUsage
from chiffon.store.records import LlmUsage, OutboxMessage, Suggestion, SuggestionStatus
from chiffon.store.tables import (
    AgentRow,
    ApprovalRow,
    AuditEventRow,
    LlmUsageRow,
    OutboxRow,
    RunRow,
    SuggestionRow,
)


def run_values(run: Run, now: datetime) -> dict[str, Any]:
    return {
        "id": run.id,
        "intent": run.intent,
        "generation": run.generation,
        "plan_digest": run.plan_digest,
        "step": run.step,
        "step_index": run.step_index,
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


def run_from_row(row: RunRow) -> Run:
    return Run(
        id=row.id,
        intent=row.intent,
        generation=row.generation,
        plan_digest=row.plan_digest,
        step=row.step,
        step_index=row.step_index,
        check_mode=row.check_mode,
        agent_id=row.agent_id,
        status=RunStatus(row.status),
        rc=row.rc,
        stats={host: HostStats.model_validate(stats) for host, stats in row.stats.items()},
        usage=ResourceUsage.model_validate(row.usage) if row.usage is not None else None,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


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


def agent_from_row(row: AgentRow) -> Agent:
    return Agent(
        id=row.id,
        kind=AgentKind(row.kind),
        labels=row.labels,
        online=row.online,
        last_seen=row.last_seen,
        capacity=Capacity.model_validate(row.capacity) if row.capacity is not None else None,
        version=row.version,
    )


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


def audit_from_row(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        time=row.time,
        actor=row.actor,
        action=row.action,
        resource=row.resource,
        service=row.service,
        outcome=Outcome(row.outcome),
        revision=row.revision,
        details=row.details,
    )


def approval_values(approval: Approval, now: datetime) -> dict[str, Any]:
    return {
        "intent": approval.intent,
        "digest": approval.digest,
        "decision": approval.decision.value,
        "actor": approval.actor,
        "reason": approval.reason,
        "created_at": approval.created_at or now,
    }


def approval_from_row(row: ApprovalRow) -> Approval:
    return Approval(
        intent=row.intent,
        digest=row.digest,
        decision=Decision(row.decision),
        actor=row.actor,
        reason=row.reason,
        created_at=row.created_at,
    )


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
