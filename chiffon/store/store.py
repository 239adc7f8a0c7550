"""The Store: Chiffon's only door to its database.

One class, one method per question or fact, each a single short transaction.
Callers pass and get ``chiffon.resources`` models (or the small records of
:mod:`chiffon.store.records`); rows, sessions and SQL never leave this package.

Transactions come in two kinds. ``_read()`` is a plain transaction. ``_write()``
asks for the SQLite write lock up front (``BEGIN IMMEDIATE``, see
:mod:`chiffon.store.engine`) so concurrent writers queue instead of failing;
on PostgreSQL the methods that read-then-write lock their rows explicitly.
Connection failures inside either become :class:`StoreError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, delete, func, or_, select, text, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chiffon.resources import (
    Agent,
    Approval,
    AuditEvent,
    DeploymentIntent,
    IntentStatus,
    Outcome,
    Run,
    RunStatus,
    SourceStatus,
)
from chiffon.resources.messages import AnsibleEvent, RunRequest, decode_envelope, encode_envelope
from chiffon.store import bulk, convert, intents, leader
from chiffon.store.coltypes import NaiveDatetimeError
from chiffon.store.engine import WRITE, make_engine, normalise_url
from chiffon.store.errors import describe_url, is_connection_failure, store_error
from chiffon.store.leader import LeaderLease, LeaderRecord
from chiffon.store.migrate import current_revision, in_process_lock, schema_diff, upgrade_to_head
from chiffon.store.queries import audit_select, runs_of_select, runs_select
from chiffon.store.records import (
    SUGGESTION_STATUSES,
    ApiToken,
    ChatProposal,
    LlmSpend,
    LlmUsage,
    OutboxMessage,
    ProposalStatus,
    ReconcileWrites,
    RunWrites,
    SourceRef,
    Suggestion,
    SuggestionStatus,
    UpsertResult,
)
from chiffon.store.sqlutil import dialect_insert
from chiffon.store.tables import (
    AgentRow,
    ApiTokenRow,
    ApprovalRow,
    AuditEventRow,
    ChatProposalRow,
    LeaderLeaseRow,
    LlmUsageRow,
    OutboxRow,
    ResourceRow,
    RunEventRow,
    RunRow,
    SourceRow,
    SuggestionRow,
)

log = logging.getLogger(__name__)

# Rows per INSERT of run events: well under both backends' bound-parameter limits.
_EVENT_CHUNK = 500


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Async access to the database at one URL (PostgreSQL or SQLite)."""

    def __init__(self, engine: AsyncEngine, *, url: URL, schema: str | None = None) -> None:
        self._engine = engine
        self._url = url
        self._schema = schema
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Lock connections for leader election, made on first use (PostgreSQL only).
        self._leader_engine: AsyncEngine | None = None
        # SQLite has one writer at a time. Writers of this process queue here rather than
        # in SQLite's busy handler, which sleeps up to 100 ms between tries; other
        # processes on the same file still wait through busy_timeout.
        self._sqlite_writer = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        # uid -> (row versions, wire form) for intent_documents
        self._documents: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None, echo: bool = False) -> Store:
        """A store for ``url``; ``schema`` picks a PostgreSQL schema via ``search_path``."""
        parsed = normalise_url(url)
        return cls(make_engine(parsed, schema=schema, echo=echo), url=parsed, schema=schema)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine, for tests and maintenance tools only."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self._engine.dialect.name

    @property
    def location(self) -> str:
        """Where the database is, safe to print (no password)."""
        return describe_url(self._url)

    def __repr__(self) -> str:
        return f"<Store {self.location}>"

    async def migrate(self) -> None:
        """``alembic upgrade head``: idempotent, safe to run at every start, concurrently too."""
        async with in_process_lock(), self._connection_errors(), self._engine.connect() as connection:
            await connection.execution_options(**{WRITE: True})
            async with connection.begin():
                await connection.run_sync(upgrade_to_head, self._schema)

    async def revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migration)."""
        async with self._connection_errors(), self._engine.connect() as connection:
            return await connection.run_sync(current_revision)

    async def schema_drift(self) -> list[Any]:
        """Alembic's autogenerate diff between the database and the models; [] when in step."""
        async with self._connection_errors(), self._engine.connect() as connection:
            return await connection.run_sync(schema_diff)

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers."""
        try:
            async with self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:  # anything at all means "not usable"
            raise store_error(exc, self._url) from exc

    async def close(self) -> None:
        if self._leader_engine is not None:
            # A lease still held keeps its connection: NullPool never owned it.
            await self._leader_engine.dispose()
        await self._engine.dispose()

    # -- transactions ------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except StatementError as exc:
            # A naive datetime is the caller's bug, not the database's: say so plainly.
            if isinstance(exc.orig, NaiveDatetimeError):
                raise exc.orig from None
            if is_connection_failure(exc):
                raise store_error(exc, self._url) from exc
            raise
        except Exception as exc:
            if is_connection_failure(exc):
                raise store_error(exc, self._url) from exc
            raise

    @asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[AsyncSession]:
        queue = self._sqlite_writer if write and self._sqlite_writer is not None else nullcontext()
        async with queue, self._connection_errors(), self._sessions() as session, session.begin():
            # Procure the connection now, with the option the SQLite BEGIN hook reads.
            await session.connection(execution_options={WRITE: write})
            yield session

    def _read(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self._transaction(write=False)

    def _write(self) -> AbstractAsyncContextManager[AsyncSession]:
        return self._transaction(write=True)

    # -- intents -----------------------------------------------------------------------------

    async def upsert_intent(
        self, intent: DeploymentIntent, source: SourceRef, *, now: datetime | None = None
    ) -> UpsertResult:
        """Store an intent read from git; bumps ``generation`` only when its spec changed."""
        async with self._write() as session:
            return await intents.upsert_intent(session, intent, source, now or _utcnow())

    async def upsert_intents(
        self,
        items: Sequence[tuple[DeploymentIntent, SourceRef]],
        *,
        now: datetime | None = None,
        audit: Callable[[UpsertResult], AuditEvent | None] | None = None,
    ) -> list[UpsertResult]:
        """:meth:`upsert_intent` for many intents, in a few statements per transaction.

        ``audit`` turns each result into the audit event to record with it (or
        None), in the same transaction. Each chunk of names is its own
        transaction, so a huge first import never holds the write lock for long.
        """
        results: list[UpsertResult] = []
        for chunk in intents.chunked(items):
            async with self._write() as session:
                done = await intents.upsert_intents(session, chunk, now or _utcnow())
                events = [event for result in done if audit and (event := audit(result)) is not None]
                await bulk.insert_audits(session, events)
            results.extend(done)
        return results

    async def get_intent(self, name: str) -> DeploymentIntent | None:
        found = await self._load_intents(ResourceRow.name == name)
        return found[0] if found else None

    async def get_intents(self, names: Iterable[str]) -> dict[str, DeploymentIntent]:
        """The named intents that exist, by name."""
        found: dict[str, DeploymentIntent] = {}
        for chunk in intents.chunked(sorted(set(names))):
            for intent in await self._load_intents(ResourceRow.name.in_(chunk)):
                found[intent.metadata.name] = intent
        return found

    async def list_intents(
        self, *, label_selector: Mapping[str, str] | None = None
    ) -> list[DeploymentIntent]:
        """All intents, sorted by name; ``label_selector`` keeps those carrying every label given."""
        found = await self._load_intents()
        if not label_selector:
            return found
        # Filtered here, not in SQL: a homelab has tens of intents, and JSON
        # containment is spelt differently on each backend.
        wanted = dict(label_selector)
        return [i for i in found if all(i.metadata.labels.get(k) == v for k, v in wanted.items())]

    async def intent_documents(
        self, *, label_selector: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`list_intents` in wire form (what ``GET /intents`` answers), remade only for changed rows.

        Reading and validating every intent took most of that request's time, and the page
        polls it every few seconds while almost nothing changes. One light query reads each
        intent's row versions (generation, source revision, when its row and its status
        were last written); only intents whose versions moved are read whole. The dicts
        returned are shared with later calls: do not modify them.
        """
        async with self._read() as session:
            versions = {
                uid: tuple(key) for uid, *key in (await session.execute(intents.versions_select())).all()
            }
            found = {uid: self._documents[uid][1] for uid, key in versions.items() if self._cached(uid, key)}
            stale = [uid for uid in versions if uid not in found]
            for chunk in intents.chunked(stale):
                statement = intents.rows_select(ResourceRow.uid.in_(chunk))
                for resource, status in (await session.execute(statement)).all():
                    document = intents.intent_from_rows(resource, status).to_wire()
                    self._documents[resource.uid] = (intents.row_versions(resource, status), document)
                    found[resource.uid] = document
        for uid in self._documents.keys() - versions.keys():
            del self._documents[uid]
        # From what this call read (another call may have replaced cache entries meanwhile).
        documents = sorted(found.values(), key=lambda document: str(document["metadata"]["name"]))
        wanted = dict(label_selector or {})
        return [
            document
            for document in documents
            if all(document["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]

    def _cached(self, uid: str, versions: tuple[Any, ...]) -> bool:
        entry = self._documents.get(uid)
        return entry is not None and entry[0] == versions

    async def intents_and_runs(
        self, names: Iterable[str], *, runs_each: int = 50
    ) -> tuple[dict[str, DeploymentIntent], dict[str, list[Run]]]:
        """:meth:`get_intents` and :meth:`runs_of` in one read transaction: what a reconcile batch reads."""
        found: dict[str, DeploymentIntent] = {}
        runs: dict[str, list[Run]] = {}
        for chunk in intents.chunked(sorted(set(names))):
            async with self._read() as session:
                for intent in await self._select_intents(session, ResourceRow.name.in_(chunk)):
                    found[intent.metadata.name] = intent
                for row in (await session.scalars(runs_of_select(chunk, limit=runs_each))).all():
                    runs.setdefault(row.intent, []).append(convert.model_from_row(Run, row))
        return found, runs

    async def _load_intents(self, *conditions: Any) -> list[DeploymentIntent]:
        async with self._read() as session:
            return await self._select_intents(session, *conditions)

    @staticmethod
    async def _select_intents(session: AsyncSession, *conditions: Any) -> list[DeploymentIntent]:
        rows = (await session.execute(intents.rows_select(*conditions))).all()
        return [intents.intent_from_rows(resource, status) for resource, status in rows]

    async def intent_sources(self, source_name: str) -> dict[str, SourceRef]:
        """Intent name -> where it was read from, for the intents of one source."""
        # Four short columns, not whole rows: a resync of 10,000 intents reads this every time.
        statement = select(
            ResourceRow.name, ResourceRow.source_path, ResourceRow.source_blob, ResourceRow.source_revision
        ).where(ResourceRow.kind == intents.KIND, ResourceRow.source_name == source_name)
        async with self._read() as session:
            rows = (await session.execute(statement)).all()
        return {name: SourceRef(source_name, path, blob, revision) for name, path, blob, revision in rows}

    async def delete_intents(self, names: Iterable[str]) -> list[str]:
        """Delete intents (their status goes with them); returns the names that existed."""
        wanted = sorted(set(names))
        if not wanted:
            return []
        statement = (
            delete(ResourceRow)
            .where(ResourceRow.kind == intents.KIND, ResourceRow.name.in_(wanted))
            .returning(ResourceRow.name)
        )
        async with self._write() as session:
            deleted = (
                await session.execute(statement, execution_options={"synchronize_session": False})
            ).scalars()
            return sorted(deleted)

    async def write_intent_status(
        self, name: str, status: IntentStatus, *, expected_generation: int | None = None
    ) -> bool:
        """Replace an intent's status; never bumps ``generation``.

        Returns False, writing nothing, when the intent is gone or, with
        ``expected_generation``, when its spec changed since the caller read it
        (the status would describe a spec that no longer exists).
        """
        async with self._write() as session:
            # A shared lock waits for a concurrent upsert to commit, so the
            # generation checked here is the one the status lands on.
            row = await intents.lock_intent(session, name, shared=True)
            if row is None or (expected_generation is not None and row.generation != expected_generation):
                return False
            await intents.put_status(session, row.uid, status, _utcnow())
            return True

    async def commit_reconcile(self, writes: ReconcileWrites) -> set[str]:
        """What reconcile passes decided, in one transaction; returns the ids of the runs created.

        A status whose intent is gone or whose spec changed since it was read
        (``expected_generation``) is skipped, as in :meth:`write_intent_status`;
        a dispatch whose run already exists writes nothing (see :meth:`dispatch_run`).
        """
        if not writes:
            return set()
        now = _utcnow()
        async with self._write() as session:
            created = await bulk.dispatch_runs(session, writes.dispatches, now)
            await bulk.insert_audits(session, writes.audits)
            current = await intents.lock_generations(session, [w.name for w in writes.statuses])
            await intents.put_statuses(
                session,
                [
                    (current[w.name][0], w.status)
                    for w in writes.statuses
                    if w.name in current
                    and (w.expected_generation is None or current[w.name][1] == w.expected_generation)
                ],
                now,
            )
        return created

    # -- sources -----------------------------------------------------------------------------

    async def save_source_status(self, status: SourceStatus) -> None:
        values = {"status": status.to_wire(), "updated_at": _utcnow()}
        async with self._write() as session:
            insert = await dialect_insert(session, SourceRow)
            await session.execute(
                insert.values(name=status.name, **values).on_conflict_do_update(
                    index_elements=["name"], set_=values
                )
            )

    async def list_source_statuses(self) -> list[SourceStatus]:
        async with self._read() as session:
            rows = (await session.scalars(select(SourceRow).order_by(SourceRow.name))).all()
        return [SourceStatus.model_validate(row.status) for row in rows]

    # -- audit -------------------------------------------------------------------------------

    async def record_audit(self, event: AuditEvent) -> int:
        """Append an audit event; returns its id."""
        async with self._write() as session:
            row = AuditEventRow(**convert.audit_values(event))
            session.add(row)
            await session.flush()
            return row.id

    async def list_audit(
        self,
        *,
        since: datetime | None = None,
        service: str | None = None,
        actor: str | None = None,
        outcome: Outcome | None = None,
        resource: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Audit events matching every filter given, newest first."""
        statement = audit_select(
            since=since,
            service=service,
            actor=actor,
            outcome=outcome,
            resource=resource,
            action=action,
            limit=limit,
        )
        async with self._read() as session:
            rows = (await session.scalars(statement)).all()
        return [convert.model_from_row(AuditEvent, row) for row in rows]

    async def audit_after(self, after_id: int, limit: int) -> list[AuditEvent]:
        """Up to ``limit`` audit events with an id above ``after_id``, oldest id first (a cursor)."""
        statement = (
            select(AuditEventRow).where(AuditEventRow.id > after_id).order_by(AuditEventRow.id).limit(limit)
        )
        async with self._read() as session:
            rows = (await session.scalars(statement)).all()
        return [convert.model_from_row(AuditEvent, row) for row in rows]

    # -- approvals ---------------------------------------------------------------------------

    async def record_approval(self, approval: Approval) -> int:
        async with self._write() as session:
            row = ApprovalRow(**convert.approval_values(approval, _utcnow()))
            session.add(row)
            await session.flush()
            return row.id

    async def approvals_of(self, names: Iterable[str]) -> dict[str, list[Approval]]:
        """:meth:`list_approvals` for many intents: name -> decisions, newest first."""
        found: dict[str, list[Approval]] = {}
        for chunk in intents.chunked(sorted(set(names))):
            statement = (
                select(ApprovalRow)
                .where(ApprovalRow.intent.in_(chunk))
                .order_by(ApprovalRow.created_at.desc(), ApprovalRow.id.desc())
            )
            async with self._read() as session:
                rows = (await session.scalars(statement)).all()
            for row in rows:
                found.setdefault(row.intent, []).append(convert.model_from_row(Approval, row))
        return found

    async def list_approvals(self, intent: str) -> list[Approval]:
        """Every approval or rejection of ``intent``, newest first."""
        statement = (
            select(ApprovalRow)
            .where(ApprovalRow.intent == intent)
            .order_by(ApprovalRow.created_at.desc(), ApprovalRow.id.desc())
        )
        async with self._read() as session:
            rows = (await session.scalars(statement)).all()
        return [convert.model_from_row(Approval, row) for row in rows]

    async def approvals_after(self, after_id: int, *, limit: int = 1000) -> list[tuple[int, str]]:
        """(id, intent) of approvals recorded after ``after_id``: how controllers notice new decisions."""
        statement = (
            select(ApprovalRow.id, ApprovalRow.intent)
            .where(ApprovalRow.id > after_id)
            .order_by(ApprovalRow.id)
            .limit(limit)
        )
        async with self._read() as session:
            return [(row_id, intent) for row_id, intent in (await session.execute(statement)).all()]

    # -- runs --------------------------------------------------------------------------------

    async def upsert_run(self, run: Run) -> None:
        """Insert or update a run by its deterministic id; ``created_at`` is kept from the first write."""
        async with self._write() as session:
            await self._put_run(session, run, overwrite=True)

    async def dispatch_run(
        self, run: Run, *, routing_key: str, body: bytes, message_id: str | None = None
    ) -> bool:
        """Write a new run and its outbox message in one transaction (DESIGN §3).

        Returns False, writing nothing, if the run already exists: a restarted
        controller re-dispatching the same step neither duplicates the message
        nor rewinds the run's status.
        """
        async with self._write() as session:
            if not await self._put_run(session, run, overwrite=False):
                return False
            return await self._put_outbox(session, message_id or run.id, routing_key, body)

    async def _put_run(self, session: AsyncSession, run: Run, *, overwrite: bool) -> bool:
        values = convert.run_values(run, _utcnow())
        insert = (await dialect_insert(session, RunRow)).values(**values)
        if overwrite:
            changes = {k: v for k, v in values.items() if k not in ("id", "created_at")}
            statement = insert.on_conflict_do_update(index_elements=["id"], set_=changes)
        else:
            statement = insert.on_conflict_do_nothing(index_elements=["id"])
        result = await session.execute(statement.returning(RunRow.id))
        return result.scalar_one_or_none() is not None

    async def get_run(self, run_id: str) -> Run | None:
        async with self._read() as session:
            row = await session.get(RunRow, run_id)
        return convert.model_from_row(Run, row) if row is not None else None

    async def services_of_runs(self, run_ids: Iterable[str]) -> dict[str, str]:
        """run id -> the service of its intent (its ``spec.service``, else its name), for known runs."""
        ids = sorted(set(run_ids))
        if not ids:
            return {}
        async with self._read() as session:
            statement = select(RunRow.id, RunRow.intent).where(RunRow.id.in_(ids))
            owners: dict[str, str] = {run: intent for run, intent in (await session.execute(statement)).all()}
        found = await self.get_intents(owners.values())
        return {run: found[name].service for run, name in owners.items() if name in found}

    async def list_runs(self, *, intent: str | None = None, limit: int = 50) -> list[Run]:
        """Runs, newest first."""
        async with self._read() as session:
            rows = (await session.scalars(runs_select(intent=intent, limit=limit))).all()
        return [convert.model_from_row(Run, row) for row in rows]

    async def runs_of(self, names: Iterable[str], *, limit: int = 50) -> dict[str, list[Run]]:
        """:meth:`list_runs` for many intents: name -> its latest ``limit`` runs, newest first."""
        found: dict[str, list[Run]] = {}
        for chunk in intents.chunked(sorted(set(names))):
            async with self._read() as session:
                rows = (await session.scalars(runs_of_select(chunk, limit=limit))).all()
            for row in rows:
                found.setdefault(row.intent, []).append(convert.model_from_row(Run, row))
        return found

    async def update_runs(
        self, run_ids: Iterable[str], decide: Callable[[dict[str, Run]], RunWrites]
    ) -> RunWrites:
        """Read runs, let ``decide`` (pure) say what to write, and write it: one transaction.

        The runs are locked while ``decide`` looks at them, so a concurrent writer
        (another report, the liveness check) never overwrites what it did not see.
        Events for runs that are not in the database are dropped with a warning.
        """
        async with self._write() as session:
            runs: dict[str, Run] = {}
            for chunk in intents.chunked(sorted(set(run_ids))):
                statement = select(RunRow).where(RunRow.id.in_(chunk)).with_for_update()
                for row in (await session.scalars(statement)).all():
                    runs[row.id] = convert.model_from_row(Run, row)
            writes = decide(runs)
            now = _utcnow()
            await bulk.upsert_runs(session, writes.runs, now)
            rows = []
            for run_id, events in writes.events:
                if run_id not in runs:
                    log.warning("dropped %d events of unknown run %s", len(events), run_id)
                    continue
                unique = {event.seq: event for event in events}
                rows += [
                    {"run_id": run_id, "seq": seq, "event": event.to_wire(), "created_at": now}
                    for seq, event in sorted(unique.items())
                ]
            for start in range(0, len(rows), _EVENT_CHUNK):
                await self._insert_events(session, rows[start : start + _EVENT_CHUNK])
            await bulk.insert_audits(session, writes.audits)
        return writes

    async def append_run_events(self, run_id: str, events: Sequence[AnsibleEvent]) -> int:
        """Store a run's events; an event whose ``seq`` is already stored is ignored.

        Returns how many rows were inserted, so a redelivered batch returns 0.
        Raises LookupError if the run does not exist.
        """
        # The last copy of a seq within one batch wins, like a later delivery would not.
        unique = {event.seq: event for event in events}
        rows = [
            {"run_id": run_id, "seq": seq, "event": event.to_wire(), "created_at": _utcnow()}
            for seq, event in sorted(unique.items())
        ]
        inserted = 0
        try:
            async with self._write() as session:
                for start in range(0, len(rows), _EVENT_CHUNK):
                    inserted += await self._insert_events(session, rows[start : start + _EVENT_CHUNK])
        except IntegrityError as exc:
            raise LookupError(f"run {run_id!r} does not exist; record the run before its events") from exc
        return inserted

    @staticmethod
    async def _insert_events(session: AsyncSession, rows: list[dict[str, Any]]) -> int:
        insert = await dialect_insert(session, RunEventRow)
        statement = (
            insert.values(rows)
            .on_conflict_do_nothing(index_elements=["run_id", "seq"])
            .returning(RunEventRow.seq)
        )
        return len((await session.execute(statement)).all())

    async def list_run_events(self, run_id: str, *, after_seq: int = -1) -> list[AnsibleEvent]:
        """A run's events with ``seq > after_seq``, in order (``logs -f`` polls with the last seq)."""
        statement = (
            select(RunEventRow.event)
            .where(RunEventRow.run_id == run_id, RunEventRow.seq > after_seq)
            .order_by(RunEventRow.seq)
        )
        async with self._read() as session:
            events = (await session.scalars(statement)).all()
        return [convert.event_from_json(event) for event in events]

    # -- agents ------------------------------------------------------------------------------

    async def upsert_agent(self, agent: Agent) -> None:
        values = convert.agent_values(agent, _utcnow())
        changes = {k: v for k, v in values.items() if k != "id"}
        async with self._write() as session:
            insert = await dialect_insert(session, AgentRow)
            await session.execute(
                insert.values(**values).on_conflict_do_update(index_elements=["id"], set_=changes)
            )

    async def upsert_agents(self, agents: Sequence[Agent]) -> None:
        """Insert or update many agents in one transaction (a batch of heartbeats); the last of
        one id wins. The same as :meth:`upsert_agent` for each, in a few statements."""
        latest = {agent.id: agent for agent in agents}
        if not latest:
            return
        now = _utcnow()
        rows = [convert.agent_values(agent, now) for agent in latest.values()]
        async with self._write() as session:
            insert = await dialect_insert(session, AgentRow)
            changes = {name: insert.excluded[name] for name in rows[0] if name != "id"}
            # One statement, many parameter sets: compiled once and cached, whatever the batch size
            # (a multi-row VALUES is compiled anew for each row count, and costs more than the write).
            await session.execute(insert.on_conflict_do_update(index_elements=["id"], set_=changes), rows)

    async def list_agents(self) -> list[Agent]:
        async with self._read() as session:
            rows = (await session.scalars(select(AgentRow).order_by(AgentRow.id))).all()
        return [convert.model_from_row(Agent, row) for row in rows]

    # -- LLM usage ---------------------------------------------------------------------------

    async def record_llm_usage(
        self,
        *,
        model: str,
        provider: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        latency_ms: int,
        reason: str,
        outcome: str,
        intent: str | None = None,
        time: datetime | None = None,
    ) -> int:
        """Record one LLM call (DESIGN §6); returns its id."""
        row = LlmUsageRow(
            time=time or _utcnow(),
            model=model,
            provider=provider,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
            latency_ms=latency_ms,
            reason=reason,
            intent=intent,
            outcome=outcome,
        )
        async with self._write() as session:
            session.add(row)
            await session.flush()
            return row.id

    async def list_llm_usage(self, *, since: datetime | None = None, limit: int = 1000) -> list[LlmUsage]:
        """LLM calls, newest first."""
        statement = select(LlmUsageRow)
        if since is not None:
            statement = statement.where(LlmUsageRow.time >= since)
        statement = statement.order_by(LlmUsageRow.time.desc(), LlmUsageRow.id.desc()).limit(limit)
        async with self._read() as session:
            rows = (await session.scalars(statement)).all()
        return [convert.llm_usage_from_row(row) for row in rows]

    async def llm_spend(self, *, since: datetime) -> list[LlmSpend]:
        """Calls, tokens and cost per provider and model since ``since`` (one grouped query)."""
        failed = func.sum(case((LlmUsageRow.outcome == "success", 0), else_=1))
        statement = (
            select(
                LlmUsageRow.provider,
                LlmUsageRow.model,
                func.count(),
                func.coalesce(func.sum(LlmUsageRow.prompt_tokens), 0),
                func.coalesce(func.sum(LlmUsageRow.completion_tokens), 0),
                func.coalesce(func.sum(LlmUsageRow.cost_usd), 0.0),
                func.coalesce(failed, 0),
            )
            .where(LlmUsageRow.time >= since)
            .group_by(LlmUsageRow.provider, LlmUsageRow.model)
            .order_by(LlmUsageRow.provider, LlmUsageRow.model)
        )
        async with self._read() as session:
            rows = (await session.execute(statement)).all()
        return [
            LlmSpend(
                provider=provider,
                model=model,
                calls=int(calls),
                prompt_tokens=int(prompt),
                completion_tokens=int(completion),
                cost_usd=float(cost),
                failures=int(failures),
            )
            for provider, model, calls, prompt, completion, cost, failures in rows
        ]

    # -- chat proposals ----------------------------------------------------------------------

    async def save_proposal(self, proposal: ChatProposal) -> None:
        async with self._write() as session:
            session.add(
                ChatProposalRow(
                    id=proposal.id,
                    conversation=proposal.conversation,
                    created_at=proposal.created_at,
                    actor=proposal.actor[:200],
                    request=proposal.request,
                    documents=proposal.documents,
                    detail=proposal.detail,
                    status=proposal.status,
                    revision=proposal.revision,
                    decided_at=proposal.decided_at,
                )
            )

    async def get_proposal(self, proposal_id: str) -> ChatProposal | None:
        async with self._read() as session:
            row = await session.get(ChatProposalRow, proposal_id)
        return convert.proposal_from_row(row) if row is not None else None

    async def conversation(self, conversation: str, *, limit: int = 200) -> list[ChatProposal]:
        """A conversation's proposals, oldest first."""
        statement = (
            select(ChatProposalRow)
            .where(ChatProposalRow.conversation == conversation)
            .order_by(ChatProposalRow.created_at.desc())
            .limit(limit)
        )
        async with self._read() as session:
            rows = (await session.scalars(statement)).all()
        return [convert.proposal_from_row(row) for row in reversed(rows)]

    async def decide_proposal(
        self, proposal_id: str, status: ProposalStatus, *, revision: str | None = None
    ) -> bool:
        """Move a proposal out of ``proposed``; False when it had already left it (decided once)."""
        statement = (
            update(ChatProposalRow)
            .where(ChatProposalRow.id == proposal_id, ChatProposalRow.status == "proposed")
            .values(status=status, revision=revision, decided_at=_utcnow())
        )
        async with self._write() as session:
            result = await session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- API tokens --------------------------------------------------------------------------

    async def create_token(self, token: ApiToken) -> None:
        """Store a token; ValueError when the name or the hash is already taken."""
        try:
            async with self._write() as session:
                session.add(
                    ApiTokenRow(
                        name=token.name,
                        role=token.role,
                        token_hash=token.token_hash,
                        created_at=token.created_at,
                        created_by=token.created_by[:200],
                        revoked_at=token.revoked_at,
                    )
                )
        except IntegrityError as error:
            raise ValueError(f"a token named {token.name!r} already exists") from error

    async def token_by_hash(self, token_hash: str) -> ApiToken | None:
        statement = select(ApiTokenRow).where(ApiTokenRow.token_hash == token_hash)
        async with self._read() as session:
            row = (await session.scalars(statement)).first()
        return convert.token_from_row(row) if row is not None else None

    async def list_tokens(self) -> list[ApiToken]:
        async with self._read() as session:
            rows = (await session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.name))).all()
        return [convert.token_from_row(row) for row in rows]

    async def revoke_token(self, name: str) -> bool:
        """Revoke a token by name; False when there is no such live token."""
        statement = (
            update(ApiTokenRow)
            .where(ApiTokenRow.name == name, ApiTokenRow.revoked_at.is_(None))
            .values(revoked_at=_utcnow())
        )
        async with self._write() as session:
            result = await session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- outbox ------------------------------------------------------------------------------

    async def enqueue_outbox(self, message_id: str, routing_key: str, body: bytes) -> bool:
        """Queue a message for the relay; False if ``message_id`` is already queued."""
        async with self._write() as session:
            return await self._put_outbox(session, message_id, routing_key, body)

    @staticmethod
    async def _put_outbox(session: AsyncSession, message_id: str, routing_key: str, body: bytes) -> bool:
        insert = await dialect_insert(session, OutboxRow)
        statement = (
            insert.values(
                message_id=message_id,
                routing_key=routing_key,
                body=body,
                created_at=_utcnow(),
                published_at=None,
                attempts=0,
            )
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(OutboxRow.id)
        )
        return (await session.execute(statement)).scalar_one_or_none() is not None

    async def pending_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        """Unpublished messages, oldest first (the order they were written in)."""
        statement = (
            select(OutboxRow).where(OutboxRow.published_at.is_(None)).order_by(OutboxRow.id).limit(limit)
        )
        async with self._read() as session:
            rows = (await session.scalars(statement)).all()
        return [convert.outbox_from_row(row) for row in rows]

    async def rearm_unaccepted_runs(self, epoch: int) -> list[str]:
        """Give the runs an older leader dispatched but no agent accepted yet ``epoch``, and queue
        their requests again (same run id, the new epoch); returns their ids.

        A new leader calls it when it takes over: an agent that has seen the new epoch refuses
        requests from the old one (the epoch fence), so without this such a run would wait for
        ever. Resending is safe: an agent that did take the old request answers the run id from
        memory and never runs it twice.
        """
        async with self._write() as session:
            runs = (
                await session.scalars(
                    select(RunRow).where(
                        RunRow.status == RunStatus.PENDING.value,
                        or_(RunRow.epoch.is_(None), RunRow.epoch < epoch),
                    )
                )
            ).all()
            rearmed = []
            for run in runs:
                message = await session.scalar(select(OutboxRow).where(OutboxRow.message_id == run.id))
                if message is None:
                    continue
                envelope = decode_envelope(message.body)
                if not isinstance(envelope.payload, RunRequest):
                    continue
                request = envelope.payload.model_copy(update={"epoch": epoch})
                message.body = encode_envelope(envelope.model_copy(update={"payload": request}))
                message.published_at = None
                run.epoch = epoch
                rearmed.append(run.id)
            return rearmed

    async def mark_outbox_published(self, *message_ids: str) -> None:
        """The broker confirmed these messages; they leave the pending list (one transaction)."""
        await self._touch_outbox(*message_ids, published=True)

    async def mark_outbox_failed(self, message_id: str) -> None:
        """A publish attempt failed; the message stays pending with one more attempt counted."""
        await self._touch_outbox(message_id, published=False)

    async def _touch_outbox(self, *message_ids: str, published: bool) -> None:
        changes: dict[str, Any] = {"attempts": OutboxRow.attempts + 1}
        if published:
            changes["published_at"] = _utcnow()
        async with self._write() as session:
            for chunk in intents.chunked(message_ids):
                statement = (
                    update(OutboxRow)
                    .where(OutboxRow.message_id.in_(chunk), OutboxRow.published_at.is_(None))
                    .values(**changes)
                )
                await session.execute(statement, execution_options={"synchronize_session": False})

    # -- suggestions -------------------------------------------------------------------------

    async def add_suggestion(
        self,
        *,
        category: str,
        file: str,
        reasoning: str,
        fingerprint: str,
        line: int | None = None,
        patch: str | None = None,
    ) -> Suggestion:
        """Record a suggestion once per fingerprint; a known one is returned as it is.

        Finding the same problem again never reopens a dismissed suggestion.
        """
        now = _utcnow()
        async with self._write() as session:
            insert = await dialect_insert(session, SuggestionRow)
            await session.execute(
                insert.values(
                    category=category,
                    file=file,
                    line=line,
                    reasoning=reasoning,
                    patch=patch,
                    status="open",
                    fingerprint=fingerprint,
                    created_at=now,
                    updated_at=now,
                ).on_conflict_do_nothing(index_elements=["fingerprint"])
            )
            statement = select(SuggestionRow).where(SuggestionRow.fingerprint == fingerprint)
            return convert.suggestion_from_row((await session.scalars(statement)).one())

    async def list_suggestions(self, status: SuggestionStatus | None = None) -> list[Suggestion]:
        """Suggestions, newest first, optionally only those in ``status``."""
        statement = select(SuggestionRow)
        if status is not None:
            statement = statement.where(SuggestionRow.status == _check_suggestion_status(status))
        statement = statement.order_by(SuggestionRow.created_at.desc(), SuggestionRow.id.desc())
        async with self._read() as session:
            rows = (await session.scalars(statement)).all()
        return [convert.suggestion_from_row(row) for row in rows]

    async def set_suggestion_status(self, suggestion_id: int, status: SuggestionStatus) -> bool:
        """Move a suggestion to ``status``; False if there is no such suggestion."""
        statement = (
            update(SuggestionRow)
            .where(SuggestionRow.id == suggestion_id)
            .values(status=_check_suggestion_status(status), updated_at=_utcnow())
            .returning(SuggestionRow.id)
        )
        async with self._write() as session:
            result = await session.execute(statement, execution_options={"synchronize_session": False})
            return result.scalar_one_or_none() is not None

    # -- leader election ---------------------------------------------------------------------

    async def acquire_leadership(self, name: str, holder: str) -> LeaderLease | None:
        """Try once to lead election ``name``; None while another process leads it.

        PostgreSQL: a session advisory lock on a dedicated connection that the
        returned lease keeps open; SQLite: always granted. Either way the
        election's epoch goes up by one (see :mod:`chiffon.store.leader`).
        """
        async with self._connection_errors():
            if self.dialect == "postgresql":
                return await leader.acquire_on_postgres(self._lock_engine(), name, holder, self._schema)
            async with self._write() as session:
                epoch = await leader.bump_epoch(await session.connection(), name, holder)
            return leader.EmbeddedLease(name=name, holder=holder, epoch=epoch, backend_pid=None)

    async def current_leader(self, name: str) -> LeaderRecord | None:
        """The latest term of election ``name`` as recorded (it may have ended since)."""
        async with self._read() as session:
            row = await session.get(LeaderLeaseRow, name)
        return leader.record_from_row(row) if row is not None else None

    def _lock_engine(self) -> AsyncEngine:
        if self._leader_engine is None:
            self._leader_engine = leader.leader_engine(self._url, self._schema)
        return self._leader_engine

    # -- housekeeping ------------------------------------------------------------------------

    async def count_rows(self, table: str) -> int:
        """Rows in one of the store's tables (for health pages and tests)."""
        tables = {t.name: t for t in ResourceRow.metadata.sorted_tables}
        if table not in tables:
            raise ValueError(f"unknown table {table!r}; known: {', '.join(sorted(tables))}")
        async with self._read() as session:
            return int((await session.execute(select(func.count()).select_from(tables[table]))).scalar_one())

    # -- agents, one at a time -----------------------------------------------------------------

    async def get_agent(self, agent_id: str) -> Agent | None:
        """One agent as its last heartbeat left it; None if it never reported."""
        async with self._read() as session:
            row = await session.get(AgentRow, agent_id)
        return convert.model_from_row(Agent, row) if row is not None else None

    # -- liveness (controllers/liveness.py) ----------------------------------------------------

    async def agent_presence(self) -> list[Agent]:
        """Every agent's id, kind, online flag and last heartbeat, without labels or capacity:
        cheap enough to read every few seconds with a thousand agents."""
        statement = select(AgentRow.id, AgentRow.kind, AgentRow.online, AgentRow.last_seen).order_by(
            AgentRow.id
        )
        async with self._read() as session:
            rows = (await session.execute(statement)).all()
        return [
            Agent.model_validate({"id": id_, "kind": kind, "online": online, "last_seen": last_seen})
            for id_, kind, online, last_seen in rows
        ]

    async def runs_in_flight(self, *, limit: int = 10_000) -> list[Run]:
        """Runs not finished yet (pending, starting, running, unknown), oldest first."""
        unfinished = [status.value for status in RunStatus if not status.finished]
        statement = (
            select(RunRow)
            .where(RunRow.status.in_(unfinished))
            .order_by(RunRow.created_at, RunRow.id)
            .limit(limit)
        )
        async with self._read() as session:
            rows = (await session.scalars(statement)).all()
        return [convert.model_from_row(Run, row) for row in rows]

    async def mark_agent_offline(
        self, agent_id: str, *, seen: datetime | None, audit: AuditEvent | None = None
    ) -> bool:
        """Set an agent offline unless it heartbeated after ``seen`` (its last heartbeat as read),
        recording ``audit`` in the same transaction. False, writing nothing, if a newer heartbeat won."""
        no_newer: ColumnElement[bool] = AgentRow.last_seen.is_(None)
        if seen is not None:
            no_newer = or_(no_newer, AgentRow.last_seen <= seen)
        statement = (
            update(AgentRow)
            .where(AgentRow.id == agent_id, no_newer)
            .values(online=False, updated_at=_utcnow())
            .returning(AgentRow.id)
        )
        return await self._update_and_audit(statement, audit)

    async def mark_agent_online(self, agent_id: str, *, audit: AuditEvent | None = None) -> bool:
        """Set an agent online (it heartbeats again), recording ``audit`` in the same transaction."""
        statement = (
            update(AgentRow)
            .where(AgentRow.id == agent_id)
            .values(online=True, updated_at=_utcnow())
            .returning(AgentRow.id)
        )
        return await self._update_and_audit(statement, audit)

    async def set_run_status(
        self,
        run_id: str,
        *,
        expected: RunStatus,
        status: RunStatus,
        error: str | None,
        finished_at: datetime | None = None,
        audit: AuditEvent | None = None,
    ) -> bool:
        """Compare-and-set: give a run ``status`` and ``error`` (and ``finished_at``, when given)
        only if its status is still ``expected``, recording ``audit`` in the same transaction.
        False, writing nothing, if something else (a result) changed the run first."""
        values: dict[str, Any] = {"status": status.value, "error": error}
        if finished_at is not None:
            values["finished_at"] = finished_at
        statement = (
            update(RunRow)
            .where(RunRow.id == run_id, RunRow.status == expected.value)
            .values(**values)
            .returning(RunRow.id)
        )
        return await self._update_and_audit(statement, audit)

    async def _update_and_audit(self, statement: Any, audit: AuditEvent | None) -> bool:
        async with self._write() as session:
            result = await session.execute(statement, execution_options={"synchronize_session": False})
            if result.scalar_one_or_none() is None:
                return False
            if audit is not None:
                session.add(AuditEventRow(**convert.audit_values(audit)))
        return True


def _check_suggestion_status(status: str) -> str:
    if status not in SUGGESTION_STATUSES:
        raise ValueError(f"suggestion status {status!r} is not one of {', '.join(SUGGESTION_STATUSES)}")
    return status
