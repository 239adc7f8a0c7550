"""The audit repo: every audit event, one commit each, in a git repo a person can read (DESIGN §8).

The ``audit_events`` table is the record; the audit repo is its durable, readable
copy. :class:`AuditGitWriter` copies the events the repo does not have yet, in id
order, one commit per event::

    events/2025/01/31/42-approve.json     the event's wire form (sorted keys)

    approve Intent/kuma: success          <action> <resource|service|->: <outcome>

    reason: looks right                   why, when the event says (reason, error, message)

    Audit-Event: 42                       the cursor
    Signed-off-by: alice <alice@example.org>

**The cursor lives in the repo.** A sync starts after the newest ``Audit-Event``
trailer on the branch, so a restart, or a second replica, never commits an event
twice, and a repo restored from a backup is filled in from where it stops. One
writer commits at a time: the CLI runs it behind an election of its own
(``audit-git``), and :meth:`GitRepo.import_commits` refuses to move a branch that
moved since the cursor was read, so even two writers cannot interleave.

**Many events, one process.** A batch is one ``git fast-import``: 500 events take
a fraction of a second instead of a few thousand git processes.

Secrets never reach audit rows by design; as a second guard, any ``details`` key
whose name mentions a token, password, secret or key is written as ``***``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Protocol

from chiffon.gitrepo import GitError, GitRepo, Identity, NewCommit
from chiffon.resources import AuditEvent

log = logging.getLogger(__name__)

SYNC_INTERVAL = 2.0
BATCH = 500
TRAILER = "Audit-Event"
FALLBACK_AUTHOR = Identity("chiffon", "chiffon@localhost")
MASK = "***"

_SECRET_WORDS = ("token", "password", "secret", "key")
_WHY_KEYS = ("reason", "error", "message")
_CURSOR = re.compile(rf"^{TRAILER}: (\d+)$", re.MULTILINE)
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_WHY = 500


class AuditSource(Protocol):
    """What the writer needs from the store."""

    async def audit_after(self, after_id: int, limit: int) -> list[AuditEvent]: ...


# -- what one event becomes (pure) ---------------------------------------------------------------


def mask_secrets(value: Any) -> Any:
    """``value`` with every mapping key that names a secret replaced by ``***``, at any depth."""
    if isinstance(value, dict):
        return {key: MASK if _names_secret(str(key)) else mask_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_secrets(item) for item in value]
    return value


def _names_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def event_path(event: AuditEvent) -> str:
    """``events/YYYY/MM/DD/<id>-<action>.json``, dated in UTC."""
    when = _utc(event.time)
    action = _UNSAFE_IN_NAME.sub("-", event.action).strip("-.") or "event"
    return f"events/{when:%Y/%m/%d}/{event.id}-{action}.json"


def event_document(event: AuditEvent) -> bytes:
    """The event's wire form with secrets masked: sorted keys, newline-terminated."""
    wire = event.model_copy(update={"details": mask_secrets(event.details)}).to_wire()
    return (json.dumps(wire, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def event_author(actor: str) -> Identity:
    """The acting identity; ``chiffon <chiffon@localhost>`` when ``actor`` names none."""
    try:
        identity = Identity.parse(actor)
    except Exception:  # a parser bug must not stop the audit trail
        return FALLBACK_AUTHOR
    if not identity.name.strip() or "@" not in identity.email:
        return FALLBACK_AUTHOR
    return identity


def commit_message(event: AuditEvent) -> str:
    """What happened on the first line, why in the body, then the cursor and sign-off trailers."""
    subject = f"{event.action} {event.resource or event.service or '-'}: {event.outcome.value}"
    paragraphs = [" ".join(subject.split())]
    why = _why(mask_secrets(event.details))
    if why:
        paragraphs.append(why)
    paragraphs.append(f"{TRAILER}: {event.id}\nSigned-off-by: {event_author(event.actor)}")
    return "\n\n".join(paragraphs) + "\n"


def _why(details: dict[str, Any]) -> str | None:
    for key in _WHY_KEYS:
        value = details.get(key)
        if value not in (None, "", {}, []):
            text = " ".join(str(value).split())
            if len(text) > _MAX_WHY:
                text = text[: _MAX_WHY - 1] + "…"
            return f"{key}: {text}"
    return None


def event_commit(event: AuditEvent) -> NewCommit:
    return NewCommit(
        message=commit_message(event),
        author=event_author(event.actor),
        time=event.time,
        files={event_path(event): event_document(event)},
    )


def last_committed(message: str) -> int:
    """The newest ``Audit-Event`` id in a commit message, 0 if it has none."""
    ids = _CURSOR.findall(message)
    return int(ids[-1]) if ids else 0


def _utc(when: datetime) -> datetime:
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


# -- the writer ----------------------------------------------------------------------------------


class AuditGitWriter:
    """Copies audit events from the store into the audit repo (see the module docstring)."""

    def __init__(self, store: AuditSource, repo: GitRepo) -> None:
        self._store = store
        self._repo = repo
        self._failing: str | None = None  # the last failure logged, so a long outage logs once

    async def cursor(self) -> tuple[str, str | None, int]:
        """(branch, its tip, the last event id committed on it)."""
        branch = await self._repo.current_branch()
        if branch is None:
            raise GitError(f"the audit repo {self._repo.path} has no branch checked out")
        tip = await self._repo.resolve("HEAD")
        if tip is None:
            return branch, None, 0
        out = await self._repo.git("log", "-1", "-E", f"--grep=^{TRAILER}: [0-9]+$", "--format=%B", tip, "--")
        return branch, tip, last_committed(out.decode(errors="replace"))

    async def sync(self, limit: int = BATCH) -> int:
        """Commit up to ``limit`` events the repo does not have yet; returns how many."""
        branch, tip, after = await self.cursor()
        events = [event for event in await self._store.audit_after(after, limit) if event.id is not None]
        if not events:
            return 0
        await self._repo.import_commits([event_commit(event) for event in events], branch=branch, parent=tip)
        log.debug("committed audit events %d..%d to %s", events[0].id, events[-1].id, self._repo.path)
        return len(events)

    async def run(self, stop: asyncio.Event, interval: float = SYNC_INTERVAL) -> None:
        """Sync every ``interval`` seconds (at once while behind) until ``stop`` is set.

        A git or store failure is logged and tried again next round; it never ends the loop.
        """
        while not stop.is_set():
            behind = False
            try:
                behind = await self.sync() >= BATCH
                self._recovered()
            except Exception as exc:  # git, the store, the disk: all retried next round
                self._failed(exc)
            if not behind:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await stop.wait()

    def _failed(self, exc: Exception) -> None:
        why = f"{type(exc).__name__}: {exc}"
        if why != self._failing:
            log.warning("could not write audit events to %s (retrying): %s", self._repo.path, why)
            self._failing = why

    def _recovered(self) -> None:
        if self._failing is not None:
            log.info("writing audit events to %s again", self._repo.path)
            self._failing = None
