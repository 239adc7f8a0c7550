"""Storing DeploymentIntents: spec from git, generation, status subresource.

The rules are the Kubernetes ones (DESIGN §2, STYLE 6):

* ``generation`` counts spec changes only. It starts at 1 and moves when the
  canonical spec (sha256 of the sorted-key JSON of ``spec_wire()``) changes;
  labels, annotations, comments or a moved file leave it alone, and so does
  every status write.
* The *revision* of an intent is the commit its stored file content comes
  from. A commit that does not touch the intent's file (same blob) does not
  move it, so unrelated commits never look like a change to the controller.
* Status lives in ``resource_status``, one row per resource, deleted with it.

:func:`plan_upsert` decides, purely, from what is stored and what was read;
:func:`upsert_intent` does the I/O around it in one transaction. Concurrent
upserts (the API and the controller both sync the same repository) are made
safe by locking the row with ``SELECT ... FOR UPDATE`` before deciding, and by
creating new rows with ``INSERT ... ON CONFLICT DO NOTHING``: the loser of a
creation race waits for the winner's commit, then locks and re-reads the row
like any update. On SQLite the write transaction's ``BEGIN IMMEDIATE`` already
serialises writers, and ``FOR UPDATE`` is simply not rendered.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from chiffon.resources import (
    DeploymentIntent,
    DeploymentIntentSpec,
    IntentStatus,
    ObjectMeta,
    initial_conditions,
)
from chiffon.store.records import SourceRef, UpsertOutcome, UpsertResult
from chiffon.store.sqlutil import dialect_insert
from chiffon.store.tables import ResourceRow, ResourceStatusRow

KIND = "DeploymentIntent"
T = TypeVar("T")
# A row can vanish between "not found" and "insert conflicted" only if another
# process created *and* deleted it meanwhile; a few retries settle that.
_MAX_ATTEMPTS = 3


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON form (sorted keys, no spaces) of a spec."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Stored:
    """The parts of a stored intent that an upsert compares against."""

    generation: int
    spec_hash: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    blob: str
    revision: str


@dataclass(frozen=True)
class UpsertPlan:
    outcome: UpsertOutcome
    generation: int
    revision: str
    spec_changed: bool
    revision_moved: bool


def plan_upsert(
    stored: Stored,
    *,
    new_spec_hash: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    source: SourceRef,
) -> UpsertPlan:
    """What an upsert of an existing intent changes. Pure; see the module docstring."""
    spec_changed = new_spec_hash != stored.spec_hash
    # The file's content is what the intent "is at"; an untouched file keeps
    # its revision even when the repository moved on.
    content_changed = spec_changed or source.blob != stored.blob
    revision = source.revision if content_changed else stored.revision
    metadata_changed = dict(labels) != dict(stored.labels) or dict(annotations) != dict(stored.annotations)
    return UpsertPlan(
        outcome="configured" if spec_changed or metadata_changed else "unchanged",
        generation=stored.generation + 1 if spec_changed else stored.generation,
        revision=revision,
        spec_changed=spec_changed,
        revision_moved=revision != stored.revision,
    )


#: Status fields that come from the resource row on read and are never stored as status.
SOURCE_FIELDS = frozenset({"source_path", "source_revision"})


def initial_status(source: SourceRef, now: datetime) -> IntentStatus:
    """Every condition Unknown: nothing has reconciled the intent yet."""
    return IntentStatus(conditions=initial_conditions(now=now), observed_revision=source.revision)


def rows_select(*conditions: Any) -> Select[tuple[ResourceRow, ResourceStatusRow]]:
    """Intents with their status rows (when they have one), by name."""
    return (
        select(ResourceRow, ResourceStatusRow)
        .outerjoin(ResourceStatusRow, ResourceStatusRow.uid == ResourceRow.uid)
        .where(ResourceRow.kind == KIND, *conditions)
        .order_by(ResourceRow.name)
    )


def versions_select() -> Select[tuple[str, int, str, datetime, datetime]]:
    """uid and the :func:`row_versions` of every intent (the last is None without a status row)."""
    return (
        select(
            ResourceRow.uid,
            ResourceRow.generation,
            ResourceRow.source_revision,
            ResourceRow.updated_at,
            ResourceStatusRow.updated_at,
        )
        .outerjoin(ResourceStatusRow, ResourceStatusRow.uid == ResourceRow.uid)
        .where(ResourceRow.kind == KIND)
    )


def row_versions(resource: ResourceRow, status: ResourceStatusRow | None) -> tuple[Any, ...]:
    # Every write of a resource row moves its updated_at or its revision, and every status
    # write (put_statuses) sets the status row's updated_at.
    return (
        resource.generation,
        resource.source_revision,
        resource.updated_at,
        status.updated_at if status is not None else None,
    )


def intent_from_rows(resource: ResourceRow, status: ResourceStatusRow | None) -> DeploymentIntent:
    metadata = ObjectMeta(
        name=resource.name,
        labels=resource.labels,
        annotations=resource.annotations,
        generation=resource.generation,
        uid=resource.uid,
        creation_timestamp=resource.created_at,
    )
    current = IntentStatus.model_validate(status.status) if status is not None else IntentStatus()
    # Where the spec came from is the resource row's fact, surfaced on every read so a
    # status written from an older read can never roll it back.
    current.source_path = resource.source_path
    current.source_revision = resource.source_revision
    return DeploymentIntent(
        metadata=metadata,
        spec=DeploymentIntentSpec.model_validate(resource.spec),
        status=current,
    )


async def upsert_intent(
    session: AsyncSession, intent: DeploymentIntent, source: SourceRef, now: datetime
) -> UpsertResult:
    """Create or update ``intent`` inside the caller's write transaction."""
    name = intent.metadata.name
    spec = intent.spec_wire()
    digest = spec_hash(spec)
    for _ in range(_MAX_ATTEMPTS):
        row = await lock_intent(session, name)
        if row is not None:
            return await _update(session, row, intent, spec, digest, source, now)
        if await _insert(session, intent, spec, digest, source, now):
            return UpsertResult(name=name, outcome="created", generation=1, revision=source.revision)
        # Lost a creation race: the winner has committed, so the next
        # SELECT ... FOR UPDATE finds its row and we update like anyone else.
    raise RuntimeError(f"intent {name!r} kept appearing and disappearing during upsert; try again")


async def lock_intent(session: AsyncSession, name: str, *, shared: bool = False) -> ResourceRow | None:
    """The intent's row, locked until the transaction ends (no-op on SQLite)."""
    statement = (
        select(ResourceRow)
        .where(ResourceRow.kind == KIND, ResourceRow.name == name)
        .with_for_update(read=shared)
    )
    return (await session.scalars(statement)).one_or_none()


async def _insert(
    session: AsyncSession,
    intent: DeploymentIntent,
    spec: dict[str, Any],
    digest: str,
    source: SourceRef,
    now: datetime,
) -> bool:
    uid = str(uuid.uuid4())
    insert = await dialect_insert(session, ResourceRow)
    statement = (
        insert.values(**_new_row(uid, intent, spec, digest, source, now))
        .on_conflict_do_nothing(index_elements=["kind", "name"])
        .returning(ResourceRow.uid)
    )
    if (await session.execute(statement)).scalar_one_or_none() is None:
        return False
    await put_status(session, uid, initial_status(source, now), now)
    return True


async def _update(
    session: AsyncSession,
    row: ResourceRow,
    intent: DeploymentIntent,
    spec: dict[str, Any],
    digest: str,
    source: SourceRef,
    now: datetime,
) -> UpsertResult:
    stored = Stored(
        generation=row.generation,
        spec_hash=row.spec_hash,
        labels=row.labels,
        annotations=row.annotations,
        blob=row.source_blob,
        revision=row.source_revision,
    )
    plan = plan_upsert(
        stored,
        new_spec_hash=digest,
        labels=intent.metadata.labels,
        annotations=intent.metadata.annotations,
        source=source,
    )
    _apply(row, plan, intent, spec, digest, source, now)
    if plan.revision_moved:
        await _set_observed_revision(session, row.uid, plan.revision, now)
    return UpsertResult(
        name=row.name, outcome=plan.outcome, generation=plan.generation, revision=plan.revision
    )


def _apply(
    row: ResourceRow,
    plan: UpsertPlan,
    intent: DeploymentIntent,
    spec: dict[str, Any],
    digest: str,
    source: SourceRef,
    now: datetime,
) -> None:
    """Copy the plan onto the row; the ORM writes only columns whose value changed."""
    before = (row.labels, row.annotations, row.source_name, row.source_path, row.source_blob)
    row.labels = dict(intent.metadata.labels)
    row.annotations = dict(intent.metadata.annotations)
    row.source_name = source.source_name
    row.source_path = source.path
    row.source_blob = source.blob
    row.source_revision = plan.revision
    if plan.spec_changed:
        row.spec = spec
        row.spec_hash = digest
        row.generation = plan.generation
    after = (row.labels, row.annotations, row.source_name, row.source_path, row.source_blob)
    if plan.spec_changed or plan.revision_moved or before != after:
        row.updated_at = now


async def _set_observed_revision(session: AsyncSession, uid: str, revision: str, now: datetime) -> None:
    row = await session.get(ResourceStatusRow, uid)
    status = IntentStatus.model_validate(row.status) if row is not None else IntentStatus()
    status.observed_revision = revision
    await put_status(session, uid, status, now)


def status_values(status: IntentStatus, now: datetime) -> dict[str, Any]:
    """The status row's columns (less ``uid``) for ``status``."""
    return {
        "status": status.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude=set(SOURCE_FIELDS)
        ),
        "observed_generation": status.observed_generation,
        "updated_at": now,
    }


async def put_status(session: AsyncSession, uid: str, status: IntentStatus, now: datetime) -> None:
    """Insert or replace the status row of resource ``uid``."""
    await put_statuses(session, [(uid, status)], now)


async def put_statuses(
    session: AsyncSession, statuses: Sequence[tuple[str, IntentStatus]], now: datetime
) -> None:
    """Insert or replace the status rows of many resources with one statement."""
    if not statuses:
        return
    rows = [{"uid": uid, **status_values(status, now)} for uid, status in statuses]
    insert = await dialect_insert(session, ResourceStatusRow.__table__)
    replace = {column: insert.excluded[column] for column in ("status", "observed_generation", "updated_at")}
    await session.execute(insert.on_conflict_do_update(index_elements=["uid"], set_=replace), rows)


async def lock_generations(session: AsyncSession, names: Sequence[str]) -> dict[str, tuple[str, int]]:
    """name -> (uid, generation) of the named intents, share-locked until the transaction ends."""
    found: dict[str, tuple[str, int]] = {}
    for chunk in chunked(names):
        statement = (
            select(ResourceRow.name, ResourceRow.uid, ResourceRow.generation)
            .where(ResourceRow.kind == KIND, ResourceRow.name.in_(chunk))
            .with_for_update(read=True)
        )
        for name, uid, generation in (await session.execute(statement)).all():
            found[name] = (uid, generation)
    return found


async def upsert_intents(
    session: AsyncSession, items: Sequence[tuple[DeploymentIntent, SourceRef]], now: datetime
) -> list[UpsertResult]:
    """:func:`upsert_intent` for many intents, with a handful of statements instead of three each.

    Existing rows are locked and read in one query, new ones inserted in one
    statement; a name that another writer created meanwhile (its insert
    conflicted) goes through the one-at-a-time path, which handles that race.
    """
    names = [intent.metadata.name for intent, _ in items]
    existing: dict[str, ResourceRow] = {}
    for chunk in chunked(names):
        statement = (
            select(ResourceRow).where(ResourceRow.kind == KIND, ResourceRow.name.in_(chunk)).with_for_update()
        )
        existing.update((row.name, row) for row in (await session.scalars(statement)).all())
    results: dict[str, UpsertResult] = {}
    new: list[tuple[DeploymentIntent, SourceRef]] = []
    for intent, source in items:
        row = existing.get(intent.metadata.name)
        if row is None:
            new.append((intent, source))
            continue
        spec = intent.spec_wire()
        results[row.name] = await _update(session, row, intent, spec, spec_hash(spec), source, now)
    created = await _insert_many(session, new, now)
    for intent, source in new:
        name = intent.metadata.name
        if name in created:
            results[name] = UpsertResult(name=name, outcome="created", generation=1, revision=source.revision)
        else:
            results[name] = await upsert_intent(session, intent, source, now)
    return [results[name] for name in names]


async def _insert_many(
    session: AsyncSession, items: Sequence[tuple[DeploymentIntent, SourceRef]], now: datetime
) -> set[str]:
    """Insert new intent rows and their initial status; returns the names actually inserted."""
    if not items:
        return set()
    rows = []
    for intent, source in items:
        spec = intent.spec_wire()
        rows.append(_new_row(str(uuid.uuid4()), intent, spec, spec_hash(spec), source, now))
    table = ResourceRow.__table__
    statement = (
        (await dialect_insert(session, table))
        .on_conflict_do_nothing(index_elements=["kind", "name"])
        .returning(table.c.name, table.c.uid)
    )
    inserted = dict((await session.execute(statement, rows)).tuples().all())
    sources = {intent.metadata.name: source for intent, source in items}
    await put_statuses(
        session, [(uid, initial_status(sources[name], now)) for name, uid in inserted.items()], now
    )
    return set(inserted)


def _new_row(
    uid: str, intent: DeploymentIntent, spec: dict[str, Any], digest: str, source: SourceRef, now: datetime
) -> dict[str, Any]:
    return {
        "uid": uid,
        "kind": KIND,
        "name": intent.metadata.name,
        "spec": spec,
        "spec_hash": digest,
        "labels": dict(intent.metadata.labels),
        "annotations": dict(intent.metadata.annotations),
        "generation": 1,
        "source_name": source.source_name,
        "source_path": source.path,
        "source_blob": source.blob,
        "source_revision": source.revision,
        "created_at": now,
        "updated_at": now,
    }


#: Names per ``IN (...)``: under SQLite's old 999-variable limit with room to spare.
CHUNK = 500


def chunked(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
