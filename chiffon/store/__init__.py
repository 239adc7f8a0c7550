"""Chiffon's store: every table, every query, and the migrations that make them.

This package is the only one that imports SQLAlchemy, Alembic, asyncpg or
aiosqlite; the rest of Chiffon sees :class:`Store` and the resource models.

* **Two backends, one behaviour.** PostgreSQL (``postgresql+asyncpg://``) for
  the distributed mode, SQLite (``sqlite+aiosqlite:///path``) for the embedded
  one. The differences (JSONB vs JSON, ``timestamptz`` vs naive text, row locks
  vs ``BEGIN IMMEDIATE``) are absorbed in :mod:`~chiffon.store.coltypes` and
  :mod:`~chiffon.store.engine`; every test runs on both.
* **Migrations own the schema.** :mod:`~chiffon.store.tables` describes it,
  the Alembic revisions in ``migrations/versions`` create it, and a test proves
  the two agree. ``Store.migrate()`` runs them at every start.
* **Spec from git, status from the controllers.** ``upsert_intent`` bumps
  ``generation`` only when the canonical spec changes; ``write_intent_status``
  never does (see :mod:`~chiffon.store.intents`).
* **Failures in words.** An unreachable database raises :class:`StoreError`
  naming host and port (or the SQLite path), never the password.
* **Aware UTC datetimes** go in and come out, on both backends.
* **One leader** among controller replicas: ``acquire_leadership`` hands out a
  :class:`LeaderLease` backed by a PostgreSQL advisory lock, with an epoch that
  grows at every new term (see :mod:`~chiffon.store.leader`).
"""

from chiffon.store.errors import StoreError
from chiffon.store.leader import LeaderLease, LeaderRecord
from chiffon.store.records import (
    ApiToken,
    ChatProposal,
    LlmSpend,
    LlmUsage,
    OutboxMessage,
    ProposalStatus,
    SourceRef,
    Suggestion,
    SuggestionStatus,
    UpsertOutcome,
    UpsertResult,
)
from chiffon.store.store import Store

__all__ = [
    "ApiToken",
    "ChatProposal",
    "LeaderLease",
    "LeaderRecord",
    "LlmSpend",
    "LlmUsage",
    "OutboxMessage",
    "ProposalStatus",
    "SourceRef",
    "Store",
    "StoreError",
    "Suggestion",
    "SuggestionStatus",
    "UpsertOutcome",
    "UpsertResult",
]
