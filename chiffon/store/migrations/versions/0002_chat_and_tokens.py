"""Chat proposals and role-bound API tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Written by hand; test_migrations.py checks it against chiffon/store/tables.py.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "chat_proposals",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("conversation", sa.String(200), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("documents", sa.Text(), nullable=False),
        sa.Column("detail", JSON, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("revision", sa.String(64), nullable=True),
        sa.Column("decided_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_chat_proposals"),
    )
    op.create_index(
        "ix_chat_proposals_conversation_created_at", "chat_proposals", ["conversation", "created_at"]
    )
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
    op.drop_index("ix_chat_proposals_conversation_created_at", table_name="chat_proposals")
    op.drop_table("chat_proposals")
