"""The database tables, as typed SQLAlchemy declarative classes.

These classes describe the schema; they never create it. Tables are created
and changed only by the Alembic revisions in ``migrations/versions`` (written
by hand and checked against this module by ``test_migrations.py``, which
requires an empty autogenerate diff on both backends).

Every name is explicit or follows :data:`NAMING_CONVENTION`, so a migration
can refer to an index or constraint by the same name on PostgreSQL and SQLite.
Rows are plain storage: conversion to and from the resource models lives in
the modules that use them, and nothing outside ``chiffon.store`` sees a row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chiffon.store.coltypes import JSONDocument, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Column sizes. PostgreSQL enforces them; SQLite ignores them.
NAME = 253  # DNS-1123 subdomain, the longest name Kubernetes-style tooling allows
ID = 200
DIGEST = 64  # sha256 hex; also fits sha1 and sha256 git object ids
SHORT = 32


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ResourceRow(Base):
    """A resource's spec as read from git, with the server-set metadata."""

    __tablename__ = "resources"
    __table_args__ = (
        UniqueConstraint("kind", "name", name="uq_resources_kind_name"),
        Index("ix_resources_source_name", "source_name"),
    )

    uid: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(NAME))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    spec_hash: Mapped[str] = mapped_column(String(DIGEST))
    labels: Mapped[dict[str, str]] = mapped_column(JSONDocument)
    annotations: Mapped[dict[str, str]] = mapped_column(JSONDocument)
    generation: Mapped[int] = mapped_column(Integer)
    source_name: Mapped[str] = mapped_column(String(ID))
    source_path: Mapped[str] = mapped_column(Text)
    source_blob: Mapped[str] = mapped_column(String(DIGEST))
    source_revision: Mapped[str] = mapped_column(String(DIGEST))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ResourceStatusRow(Base):
    """The status subresource: lives only here, never in git."""

    __tablename__ = "resource_status"

    uid: Mapped[str] = mapped_column(
        String(36), ForeignKey("resources.uid", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    observed_generation: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApprovalRow(Base):
    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_intent_digest", "intent", "digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    intent: Mapped[str] = mapped_column(String(NAME))
    digest: Mapped[str] = mapped_column(String(DIGEST))
    decision: Mapped[str] = mapped_column(String(SHORT))
    actor: Mapped[str] = mapped_column(String(ID))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RunRow(Base):
    """One playbook run; ``id`` is the deterministic run id (DESIGN §3)."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_intent_created_at", "intent", "created_at"),
        Index("ix_runs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    intent: Mapped[str] = mapped_column(String(NAME))
    generation: Mapped[int] = mapped_column(Integer)
    plan_digest: Mapped[str] = mapped_column(String(DIGEST))
    step: Mapped[str] = mapped_column(String(NAME))
    step_index: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    check_mode: Mapped[bool] = mapped_column(Boolean)
    agent_id: Mapped[str | None] = mapped_column(String(ID))
    status: Mapped[str] = mapped_column(String(SHORT))
    rc: Mapped[int | None] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RunEventRow(Base):
    """An ansible event of a run; ``(run_id, seq)`` makes redelivery harmless."""

    __tablename__ = "run_events"
    __table_args__ = (UniqueConstraint("run_id", "seq", name="uq_run_events_run_id_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(ID), ForeignKey("runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    event: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AgentRow(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    kind: Mapped[str] = mapped_column(String(SHORT))
    labels: Mapped[dict[str, str]] = mapped_column(JSONDocument)
    online: Mapped[bool] = mapped_column(Boolean)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime)
    capacity: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    version: Mapped[str | None] = mapped_column(String(ID))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEventRow(Base):
    """Every decision Chiffon makes (DESIGN §8); indexed for the CLI's filters."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_time", "time"),
        Index("ix_audit_events_service_time", "service", "time"),
        Index("ix_audit_events_outcome_time", "outcome", "time"),
        Index("ix_audit_events_actor_time", "actor", "time"),
        Index("ix_audit_events_resource_time", "resource", "time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(ID))
    action: Mapped[str] = mapped_column(String(100))
    resource: Mapped[str | None] = mapped_column(String(300))
    service: Mapped[str | None] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(SHORT))
    revision: Mapped[str | None] = mapped_column(String(DIGEST))
    details: Mapped[dict[str, Any]] = mapped_column(JSONDocument)


class LlmUsageRow(Base):
    """One LLM call: what it cost and why that model was chosen (DESIGN §6)."""

    __tablename__ = "llm_usage"
    __table_args__ = (Index("ix_llm_usage_time", "time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    model: Mapped[str] = mapped_column(String(ID))
    provider: Mapped[str] = mapped_column(String(100))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    intent: Mapped[str | None] = mapped_column(String(NAME))
    outcome: Mapped[str] = mapped_column(String(SHORT))


class OutboxRow(Base):
    """A message written in the same transaction as the change it announces."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_published_at", "published_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(ID), unique=True)
    routing_key: Mapped[str] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer)


class SuggestionRow(Base):
    __tablename__ = "suggestions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    category: Mapped[str] = mapped_column(String(100))
    file: Mapped[str] = mapped_column(Text)
    line: Mapped[int | None] = mapped_column(Integer)
    reasoning: Mapped[str] = mapped_column(Text)
    patch: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(SHORT))
    fingerprint: Mapped[str] = mapped_column(String(DIGEST), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SourceRow(Base):
    """The last known status of a git source, keyed by the source's name."""

    __tablename__ = "sources"

    name: Mapped[str] = mapped_column(String(ID), primary_key=True)
    status: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LeaderLeaseRow(Base):
    """Who leads a named election, and its fencing epoch (see :mod:`chiffon.store.leader`).

    The advisory lock decides who leads; this row only records it. ``epoch``
    goes up by one at every acquisition, so a term's writes can be told from
    an earlier term's; ``renewed_at`` moves at each successful check.
    """

    __tablename__ = "leader_leases"

    name: Mapped[str] = mapped_column(String(ID), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(ID))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ChatProposalRow(Base):
    """What the chat compiler proposed for one request, kept until it is committed or dropped."""

    __tablename__ = "chat_proposals"
    __table_args__ = (Index("ix_chat_proposals_conversation_created_at", "conversation", "created_at"),)

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    conversation: Mapped[str] = mapped_column(String(ID))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(ID))
    request: Mapped[str] = mapped_column(Text)
    documents: Mapped[str] = mapped_column(Text)  # the proposed YAML, exactly what a confirm commits
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDocument)  # intents, preview, compiler, warnings
    status: Mapped[str] = mapped_column(String(SHORT))  # proposed | committed | discarded
    revision: Mapped[str | None] = mapped_column(String(DIGEST))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiTokenRow(Base):
    """A bearer token of the API: only its sha256 is kept (the token itself is shown once)."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),)

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    role: Mapped[str] = mapped_column(String(SHORT))
    token_hash: Mapped[str] = mapped_column(String(DIGEST))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(ID))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
