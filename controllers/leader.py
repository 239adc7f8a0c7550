"""Leader election: one controller replica reconciles, the others stand by.

::

    standby ──try every retry_interval──▶ leading ──check every renew_interval──┐
       ▲                                     │ lost, stop, or lead returned      │
       └─── wait retry_interval ◀── release ◀┘◀─────────────────────────────────┘

The lock is the store's (:mod:`chiffon.store.leader`): a PostgreSQL session
advisory lock on a connection of its own, so it lives exactly as long as the
leader's connection. A leader that dies frees it as soon as the server sees
the connection go — at once for a killed process, within about ten seconds
(TCP keepalives) for a vanished host — and a standby takes over at its next
try. On SQLite (embedded, one process) the lease is always granted.

While leading, :class:`LeaderElector` runs ``lead(epoch, lost)`` as a task.
``epoch`` grows with every term; the leader stamps its writes with it, so work
done under an older term can be told apart. ``lost`` is set when the lease
fails a check (the connection died or the lock is gone), when ``stop`` is set,
or when the term ends for any other reason. ``lead`` must then wind down; it
gets ``grace`` seconds before it is cancelled, and the lock is released only
after it has finished, so on this side two terms never overlap.

Safety does not rest on timing alone: a leader whose connection breaks learns
it within ``renew_interval`` plus the check timeout (7 s by default), while the
server frees the lock only once it gives the connection up; and anything a
late leader still writes carries its old epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal, Protocol

from chiffon.resources import AuditEvent, Outcome
from chiffon.store import LeaderLease, LeaderRecord, StoreError

log = logging.getLogger(__name__)

Lead = Callable[[int, asyncio.Event], Awaitable[None]]
TermEnd = Literal["lost", "stopping", "lead returned"]

DEFAULT_ELECTION = "controller"
RETRY_INTERVAL = 2.0
RENEW_INTERVAL = 2.0
LEAD_GRACE = 10.0


class Elections(Protocol):
    """What the elector needs from the store."""

    async def acquire_leadership(self, name: str, holder: str) -> LeaderLease | None: ...

    async def current_leader(self, name: str) -> LeaderRecord | None: ...

    async def record_audit(self, event: AuditEvent) -> int: ...


def default_holder() -> str:
    """``host/pid``: enough for a person to find the leading process."""
    return f"{socket.gethostname()}/{os.getpid()}"


class LeaderElector:
    """Competes for election ``name`` and runs ``lead`` whenever it wins (see the module docstring)."""

    def __init__(
        self,
        store: Elections,
        *,
        name: str = DEFAULT_ELECTION,
        holder: str | None = None,
        retry_interval: float = RETRY_INTERVAL,
        renew_interval: float = RENEW_INTERVAL,
        grace: float = LEAD_GRACE,
    ) -> None:
        self._store = store
        self.name = name
        self.holder = holder or default_holder()
        self._retry_interval = retry_interval
        self._renew_interval = renew_interval
        self._grace = grace
        self._lease: LeaderLease | None = None
        self._standing_by: str | None = None  # why we last failed to lead; logged once per change

    @property
    def lease(self) -> LeaderLease | None:
        """The lease held now (None while standing by): for status pages and tests."""
        return self._lease

    async def run(self, stop: asyncio.Event, lead: Lead) -> None:
        """Try to lead until ``stop`` is set; while leading, run ``lead``. Returns with nothing held."""
        while not stop.is_set():
            lease = await self._try_acquire()
            if lease is not None:
                await self._serve(lease, stop, lead)
            await _wait(stop, self._retry_interval)

    # -- standing by -------------------------------------------------------------------------

    async def _try_acquire(self) -> LeaderLease | None:
        try:
            lease = await self._store.acquire_leadership(self.name, self.holder)
        except StoreError as exc:
            # The database is down or restarting: keep trying, quietly after the first time.
            self._stand_by(f"the database is unavailable ({exc})")
            return None
        if lease is None:
            self._stand_by(await self._who_leads())
        return lease

    async def _who_leads(self) -> str:
        try:
            record = await self._store.current_leader(self.name)
        except StoreError:
            record = None
        if record is None:
            return "another replica leads"
        return f"{record.holder} leads (epoch {record.epoch})"

    def _stand_by(self, why: str) -> None:
        if why != self._standing_by:
            log.info("%s standing by for %r: %s", self.holder, self.name, why)
            self._standing_by = why

    # -- leading -----------------------------------------------------------------------------

    async def _serve(self, lease: LeaderLease, stop: asyncio.Event, lead: Lead) -> None:
        """One term: run ``lead`` while the lease holds, then wind it down and release."""
        self._lease, self._standing_by = lease, None
        log.info("%s is now leading %r (epoch %d)", self.holder, self.name, lease.epoch)
        await self._audit("leader.elected", lease.epoch)
        lost = asyncio.Event()
        term = asyncio.create_task(
            _lead(lead, lease.epoch, lost), name=f"lead {self.name} epoch {lease.epoch}"
        )
        try:
            ended = await self._hold(lease, stop, term)
            _log_term_end(self.holder, self.name, lease.epoch, ended)
            await self._audit("leader.lost" if ended == "lost" else "leader.stepped-down", lease.epoch, ended)
            lost.set()
            await self._wind_down(term)
        finally:
            lost.set()
            await _finish(term)  # already done, unless we were cancelled ourselves
            await lease.release()
            self._lease = None
            log.info("%s released %r (epoch %d)", self.holder, self.name, lease.epoch)

    async def _audit(self, action: str, epoch: int, why: str | None = None) -> None:
        """A leader change is an audit event; an unreachable database must not hold up the election."""
        details: dict[str, object] = {"election": self.name, "epoch": epoch}
        if why:
            details["why"] = why
        event = AuditEvent(
            time=datetime.now(UTC),
            actor=self.holder,
            action=action,
            resource=f"Election/{self.name}",
            outcome=Outcome.INFO,
            details=details,
        )
        try:
            await self._store.record_audit(event)
        except StoreError as error:
            log.warning("could not record %s of %r in the audit trail: %s", action, self.name, error)

    async def _hold(self, lease: LeaderLease, stop: asyncio.Event, term: asyncio.Task[None]) -> TermEnd:
        """Check the lease every ``renew_interval`` until it is lost, ``stop`` is set or ``lead`` returns."""
        stopping = asyncio.create_task(stop.wait(), name=f"stop watch {self.name}")
        try:
            while True:
                await asyncio.wait(
                    {term, stopping}, timeout=self._renew_interval, return_when="FIRST_COMPLETED"
                )
                if term.done():
                    return "lead returned"
                if stopping.done():
                    return "stopping"
                if not await lease.check():
                    return "lost"
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)

    async def _wind_down(self, term: asyncio.Task[None]) -> None:
        """Give ``lead`` ``grace`` seconds to notice ``lost`` and return, then cancel it."""
        _, pending = await asyncio.wait({term}, timeout=self._grace)
        if pending:
            log.warning(
                "lead of %r did not return within %.0fs of its term ending; cancelling it",
                self.name,
                self._grace,
            )


def _log_term_end(holder: str, name: str, epoch: int, ended: TermEnd) -> None:
    if ended == "lost":
        log.warning("%s lost the lead of %r (epoch %d)", holder, name, epoch)
    else:
        log.info("%s ends its term leading %r (epoch %d): %s", holder, name, epoch, ended)


async def _lead(lead: Lead, epoch: int, lost: asyncio.Event) -> None:
    # A coroutine of our own, so that any awaitable ``lead`` returns can run as a task.
    await lead(epoch, lost)


async def _finish(term: asyncio.Task[None]) -> None:
    """Cancel ``term`` if it still runs, wait for it, and log how it failed, if it did."""
    term.cancel()
    [result] = await asyncio.gather(term, return_exceptions=True)
    if isinstance(result, Exception):
        log.error("lead failed", exc_info=result)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
