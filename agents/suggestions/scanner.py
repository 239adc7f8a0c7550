"""Suggestions after runs: a quick scan of homelab-infra whenever runs finish (DESIGN §5, §8).

The scanner follows the audit trail. When ``run.result`` events arrive it waits for
the batch to settle (``QUIET_SECONDS`` without a new one), then runs the quick scan
(:func:`.service.scan` with ``lint=False``): the static
checks and the run-based findings — a task that changed on a repeat of an identical
run, a step whose newest run failed (with what the failure usually means). ansible-lint
is left to ``chiffonctl suggestions scan``: it takes tens of seconds on a real repo.

Every suggestion a scan adds is audited (action ``suggestion``) under the service of
each intent whose plan runs the file it is about, so ``chiffonctl audit --service
uptime-kuma`` shows the suggestions next to the runs that led to them.

It runs behind an election of its own ("suggestions"): one scanner at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from chiffon.agents.suggestions import service
from chiffon.agents.suggestions.relevance import plan_files, playbook_roles, touches
from chiffon.resources import AuditEvent, DeploymentIntent, Outcome
from chiffon.store import Store
from chiffon.store.errors import StoreError
from chiffon.store.records import Suggestion

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
QUIET_SECONDS = 2.0
BATCH = 500
SCAN_TRIGGERS = frozenset({"run.result"})
ACTOR = "controller"


class SuggestionScanner:
    def __init__(self, store: Store, infra_root: Path, *, quiet: float = QUIET_SECONDS) -> None:
        self.store = store
        self.infra_root = infra_root
        self.quiet = quiet
        self.after: int | None = None
        self.pending_since: float | None = None
        self.scans = 0

    async def follow(self) -> bool:
        """Read the audit events since the last call; True when runs finished among them."""
        if self.after is None:
            newest = await self.store.list_audit(limit=1)
            self.after = (newest[0].id or 0) if newest else 0
        triggered = False
        while True:
            events = await self.store.audit_after(self.after, BATCH)
            if not events:
                return triggered
            triggered |= any(event.action in SCAN_TRIGGERS for event in events)
            self.after = max(self.after, *(event.id or 0 for event in events))

    async def scan(self) -> list[Suggestion]:
        """The quick scan; returns the suggestions it added (each audited under its services)."""
        before = {s.id for s in await self.store.list_suggestions()}
        await service.scan(self.store, self.infra_root, lint=False)
        self.scans += 1
        added = [s for s in await self.store.list_suggestions() if s.id not in before]
        if added:
            await self._audit(added)
        return added

    async def _audit(self, added: Sequence[Suggestion]) -> None:
        intents = await self.store.list_intents()
        now = datetime.now(UTC)
        for suggestion in added:
            concerned: Sequence[DeploymentIntent | None] = _concerned(intents, suggestion, self.infra_root)
            for intent in concerned or [None]:
                await self.store.record_audit(_audit_event(suggestion, intent, now))

    async def run(self, stop: asyncio.Event, interval: float = POLL_SECONDS) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if await self.follow():
                    self.pending_since = loop.time()
                if self.pending_since is not None and loop.time() - self.pending_since >= self.quiet:
                    self.pending_since = None
                    await self.scan()
            except StoreError as error:
                log.warning("suggestion scanner: database unavailable (%s); trying again", error)
            except service.SuggestionError as error:
                log.warning("suggestion scanner: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


def _concerned(
    intents: Sequence[DeploymentIntent], suggestion: Suggestion, infra: Path
) -> list[DeploymentIntent]:
    """The intents whose plan runs the suggestion's file (a playbook, or a file in one of its roles)."""
    found = []
    for intent in intents:
        playbooks, roles = plan_files(intent, ())
        roles |= playbook_roles(infra, playbooks)
        if touches(suggestion.file, playbooks, roles):
            found.append(intent)
    return found


def _audit_event(suggestion: Suggestion, intent: DeploymentIntent | None, now: datetime) -> AuditEvent:
    return AuditEvent(
        time=now,
        actor=ACTOR,
        action="suggestion",
        resource=f"Suggestion/{suggestion.id}",
        service=intent.service if intent is not None else None,
        outcome=Outcome.INFO,
        details={
            "category": suggestion.category,
            "file": suggestion.file,
            "line": suggestion.line,
            "reasoning": suggestion.reasoning,
            **({"intent": intent.metadata.name} if intent is not None else {}),
        },
    )
