"""Small typed values the store hands out that are not resources.

Resources (intents, runs, agents, audit events...) are the pydantic models of
``chiffon.resources``. These dataclasses cover what only the store speaks of:
where an intent was read from, what an upsert did, outbox rows, suggestions
and LLM usage rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from chiffon.resources import AuditEvent, IntentStatus, Run
from chiffon.resources.messages import AnsibleEvent

UpsertOutcome = Literal["created", "configured", "unchanged"]
SuggestionStatus = Literal["open", "accepted", "dismissed", "implemented"]
SUGGESTION_STATUSES: tuple[str, ...] = get_args(SuggestionStatus)


@dataclass(frozen=True)
class SourceRef:
    """Where an intent's spec was read: source, file, git blob and commit."""

    source_name: str
    path: str
    blob: str
    revision: str


@dataclass(frozen=True)
class UpsertResult:
    """What ``upsert_intent`` did, in ``kubectl apply`` words.

    ``revision`` is the commit the stored spec now comes from; it does not move
    for a commit that left the intent's file untouched.
    """

    name: str
    outcome: UpsertOutcome
    generation: int
    revision: str


@dataclass(frozen=True)
class StatusWrite:
    """An intent's new status, written only if its generation is still ``expected_generation``."""

    name: str
    status: IntentStatus
    expected_generation: int | None = None


@dataclass(frozen=True)
class Dispatch:
    """A new run and the message that starts it; ``audit`` is recorded only if the run is new."""

    run: Run
    routing_key: str
    body: bytes
    audit: AuditEvent | None = None


@dataclass
class ReconcileWrites:
    """Everything some reconcile passes decided to write, committed in one transaction."""

    statuses: list[StatusWrite] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    audits: list[AuditEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.statuses or self.dispatches or self.audits)


@dataclass
class RunWrites:
    """What agents' reports change: runs to save, events to append, audit events to record."""

    runs: list[Run] = field(default_factory=list)
    events: list[tuple[str, list[AnsibleEvent]]] = field(default_factory=list)
    audits: list[AuditEvent] = field(default_factory=list)


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    message_id: str
    routing_key: str
    body: bytes
    created_at: datetime
    attempts: int
    published_at: datetime | None = None


@dataclass(frozen=True)
class Suggestion:
    """An improvement found by ansible-lint or by watching runs (DESIGN §5)."""

    id: int
    category: str
    file: str
    line: int | None
    reasoning: str
    patch: str | None
    status: SuggestionStatus
    fingerprint: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class LlmUsage:
    """One LLM call and its cost (DESIGN §6)."""

    id: int
    time: datetime
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: int
    reason: str
    intent: str | None
    outcome: str


@dataclass(frozen=True)
class LlmSpend:
    """What one provider's calls added up to over a period (budgets and ``chiffonctl usage``)."""

    provider: str
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    failures: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


ProposalStatus = Literal["proposed", "committed", "discarded"]


@dataclass(frozen=True)
class ChatProposal:
    """What the chat compiler proposed for one request (DESIGN §6), and what became of it."""

    id: str
    conversation: str
    created_at: datetime
    actor: str
    request: str
    documents: str
    detail: dict[str, Any]
    status: ProposalStatus
    revision: str | None = None
    decided_at: datetime | None = None


@dataclass(frozen=True)
class ApiToken:
    """A role-bound API token; the store keeps only its sha256."""

    name: str
    role: str
    token_hash: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
