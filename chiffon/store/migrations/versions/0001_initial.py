"""Initial schema: resources and their status, runs, events, agents, audit, outbox, leader leases.

Revision ID: 0001
Revises:
Create Date: 2024-11-23

Written by hand. Names match chiffon/store/tables.py exactly (its naming
convention); test_migrations.py checks that autogenerate finds no difference
on PostgreSQL and on SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types as they were at this revision: a migration
# must not change meaning when the models change later.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table and index."""
    _resources()
    _runs()
    _agents_and_sources()
    _audit_and_llm_usage()
    _outbox_approvals_and_suggestions()
    _leader_leases()


def downgrade() -> None:
    """Drop everything, children first."""
    for table in (
        "leader_leases",
        "suggestions",
        "approvals",
        "outbox",
        "llm_usage",
        "audit_events",
        "sources",
        "agents",
        "run_events",
        "runs",
        "resource_status",
        "resources",
    ):
        op.drop_table(table)


def _resources() -> None:
    op.create_table(
        "resources",
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("annotations", JSON, nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("source_name", sa.String(200), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("source_blob", sa.String(64), nullable=False),
        sa.Column("source_revision", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("uid", name="pk_resources"),
        sa.UniqueConstraint("kind", "name", name="uq_resources_kind_name"),
    )
    op.create_index("ix_resources_source_name", "resources", ["source_name"])
    op.create_table(
        "resource_status",
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("status", JSON, nullable=False),
        sa.Column("observed_generation", sa.Integer(), nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("uid", name="pk_resource_status"),
        sa.ForeignKeyConstraint(
            ["uid"], ["resources.uid"], name="fk_resource_status_uid_resources", ondelete="CASCADE"
        ),
    )


def _runs() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("intent", sa.String(253), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("plan_digest", sa.String(64), nullable=False),
        sa.Column("step", sa.String(253), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("check_mode", sa.Boolean(), nullable=False),
        sa.Column("agent_id", sa.String(200), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("rc", sa.Integer(), nullable=True),
        sa.Column("stats", JSON, nullable=False),
        sa.Column("usage", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_intent_created_at", "runs", ["intent", "created_at"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_run_events"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_events_run_id_runs", ondelete="CASCADE"),
        sa.UniqueConstraint("run_id", "seq", name="uq_run_events_run_id_seq"),
    )


def _agents_and_sources() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("last_seen", TIME, nullable=True),
        sa.Column("capacity", JSON, nullable=True),
        sa.Column("version", sa.String(200), nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
    )
    op.create_table(
        "sources",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", JSON, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_sources"),
    )


def _audit_and_llm_usage() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("resource", sa.String(300), nullable=True),
        sa.Column("service", sa.String(100), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("revision", sa.String(64), nullable=True),
        sa.Column("details", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_time", "audit_events", ["time"])
    op.create_index("ix_audit_events_service_time", "audit_events", ["service", "time"])
    op.create_index("ix_audit_events_outcome_time", "audit_events", ["outcome", "time"])
    op.create_index("ix_audit_events_actor_time", "audit_events", ["actor", "time"])
    op.create_index("ix_audit_events_resource_time", "audit_events", ["resource", "time"])
    op.create_table(
        "llm_usage",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("intent", sa.String(253), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_llm_usage"),
    )
    op.create_index("ix_llm_usage_time", "llm_usage", ["time"])


def _outbox_approvals_and_suggestions() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("published_at", TIME, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("message_id", name="uq_outbox_message_id"),
    )
    op.create_index("ix_outbox_published_at", "outbox", ["published_at"])
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("intent", sa.String(253), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
    )
    op.create_index("ix_approvals_intent_digest", "approvals", ["intent", "digest"])
    op.create_table(
        "suggestions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("category", sa.String(100), nullable=False),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("reasoning", sa.Text(), nullable=False),
        sa.Column("patch", sa.Text(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_suggestions"),
        sa.UniqueConstraint("fingerprint", name="uq_suggestions_fingerprint"),
    )


def _leader_leases() -> None:
    op.create_table(
        "leader_leases",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("acquired_at", TIME, nullable=False),
        sa.Column("renewed_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leader_leases"),
    )
