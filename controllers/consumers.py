"""Consumers of what agents report: run progress and results, heartbeats.

Every handler is idempotent — a redelivered message changes nothing twice —
and acks only after its effect is committed to the database, so a controller
killed mid-handler gets the message again.

An agent may only report on runs it was given. A ``RunAccepted``, ``RunEvent``
or ``RunResult`` about a run id the database does not know (``unknown-run``),
or about a run dispatched to another agent (``not-its-run``: the run's
``agent_id`` is set and differs), is refused: nothing of it is applied, it is
acked (a redelivery would be refused the same way), logged, and audited as
``agent.refused`` — at most one event per agent and reason a minute, with the
count of refused reports and a few of their run ids (:class:`AuditThrottle`),
so a confused or hostile agent cannot flood the audit. Heartbeats need no
registration (there is no allow-list of agents); a heartbeat's ``runs`` claim
only counts for the runs dispatched to that agent (``liveness.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chiffon.bus import Delivery
from chiffon.controllers.audit_throttle import MAX_KEYS, AuditThrottle
from chiffon.controllers.faults import AFTER_RESULT, crash_point
from chiffon.controllers.scheduler import best_gpu_free, is_online
from chiffon.resources import Agent, AuditEvent, Outcome, Run, RunStatus
from chiffon.resources.messages import (
    AgentOffline,
    ErrorPayload,
    Heartbeat,
    RunAccepted,
    RunEvent,
    RunResult,
)
from chiffon.store import Store
from chiffon.store.records import RunWrites

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def finished_run(run: Run, result: RunResult, now: datetime) -> Run:
    """The run as the result describes it (pure)."""
    started = run.started_at or now - timedelta(seconds=result.duration_seconds)
    return run.model_copy(
        update={
            "status": RunStatus(result.status),
            "rc": result.rc,
            "stats": result.stats,
            "usage": result.usage,
            "error": result.error,
            "agent_id": result.agent_id,
            "started_at": started,
            "finished_at": now,
        }
    )


class ResultConsumer:
    """RunAccepted / RunEvent / RunResult / Error from agents → runs, events and audit.

    :meth:`submit` is what the bus calls: it queues the delivery and returns, and
    a flush writes everything queued so far in one transaction, then acks it
    all — so a burst of a thousand results costs a few dozen transactions, in
    delivery order, and nothing is acked before it is committed. :meth:`handle`
    does the same for one delivery and returns once it is committed.
    """

    def __init__(
        self,
        store: Store,
        *,
        enqueue: Callable[[str], None],
        clock: Clock = utcnow,
        refusals: AuditThrottle | None = None,
    ) -> None:
        self.store = store
        self._enqueue = enqueue
        self._clock = clock
        self._queued: list[Delivery] = []
        self._flushing: asyncio.Task[None] | None = None
        self._refusals = refusals or AuditThrottle()
        self._held: dict[tuple[str, str], list[str]] = {}  # run ids of refusals not yet audited

    async def handle(self, delivery: Delivery) -> None:
        await self._flush([delivery])

    async def submit(self, delivery: Delivery) -> None:
        self._queued.append(delivery)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_queued(), name="results flush")

    async def drain(self) -> None:
        """Wait for queued deliveries to be written (leadership ending)."""
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)

    async def _flush_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            await self._flush(batch)

    async def _flush(self, batch: list[Delivery]) -> None:
        payloads = [delivery.envelope.payload for delivery in batch]
        now = self._clock()
        refused: list[Refusal] = []

        def decide(runs: dict[str, Run]) -> RunWrites:
            kept, refused[:] = screen_reports(runs, payloads)
            return apply_reports(runs, kept, now, services)

        try:
            # The results' audit events carry the service, so `chiffonctl audit --service` finds the runs.
            finished = [p.run_id for p in payloads if isinstance(p, RunResult)]
            services = await self.store.services_of_runs(finished)
            writes = await self.store.update_runs(
                {p.run_id for p in payloads if isinstance(p, RUN_REPORTS)}, decide
            )
        except Exception as exc:  # nothing was written: the broker delivers them again
            log.error("could not record %d agent reports: %s; returning them", len(batch), exc, exc_info=exc)
            for delivery in batch:
                await delivery.reject(requeue=True)
            return
        results = sum(isinstance(p, RunResult) for p in payloads)
        if results:
            crash_point(AFTER_RESULT, results)
        for delivery in batch:
            await delivery.ack()
        if refused:
            await self._audit_refusals(refused, now)
        for intent in sorted({run.intent for run in writes.runs}):
            self._enqueue(intent)

    async def _audit_refusals(self, refused: Sequence[Refusal], now: datetime) -> None:
        """One ``agent.refused`` event per agent and reason a minute at most, counting the others."""
        events = []
        for refusal in refused:
            key = (refusal.agent_id[:200], refusal.reason)
            if key not in self._held and len(self._held) >= MAX_KEYS:
                self._held.clear()  # bounded memory; the counts still come from the throttle
            held = self._held.setdefault(key, [])
            if len(held) < REFUSED_RUNS_KEPT:
                held.append(refusal.run_id[:200])
            count = self._refusals.admit(key)
            if count is None:
                log.debug("refused %s again: %s", refusal.agent_id, refusal.describe())
                continue
            log.warning("refused a report of agent %s: %s", refusal.agent_id, refusal.describe())
            events.append(refusal_audit(refusal, now, count, self._held.pop(key)))
        for event in events:
            try:
                await self.store.record_audit(event)
            except Exception as exc:  # the reports were refused all the same
                log.warning("could not record a refused agent report in the audit: %s", exc)


RUN_REPORTS = (RunAccepted, RunEvent, RunResult)
REFUSED_RUNS_KEPT = 5
"""How many run ids an ``agent.refused`` event lists (``count`` says how many reports there were)."""


@dataclass(frozen=True)
class Refusal:
    """A report an agent had no business making: about a run it was not given."""

    agent_id: str
    run_id: str
    message: str  # RunAccepted, RunEvent or RunResult
    reason: str  # unknown-run | not-its-run
    owner: str | None = None  # the agent the run was given to

    def describe(self) -> str:
        if self.reason == "unknown-run":
            return f"{self.message} for run {self.run_id}, which was never dispatched"
        return f"{self.message} for run {self.run_id}, which was given to agent {self.owner}"


def screen_reports(runs: Mapping[str, Run], payloads: Sequence[object]) -> tuple[list[object], list[Refusal]]:
    """The reports an agent may make — about a run that exists and was given to it (or to no agent in
    particular) — and the refusals of the others, in delivery order (pure)."""
    kept: list[object] = []
    refused: list[Refusal] = []
    for payload in payloads:
        if not isinstance(payload, RUN_REPORTS):
            kept.append(payload)
            continue
        run = runs.get(payload.run_id)
        message = type(payload).__name__
        if run is None:
            refused.append(Refusal(payload.agent_id, payload.run_id, message, "unknown-run"))
        elif run.agent_id is not None and run.agent_id != payload.agent_id:
            refused.append(Refusal(payload.agent_id, payload.run_id, message, "not-its-run", run.agent_id))
        else:
            kept.append(payload)
    return kept, refused


def refusal_audit(refusal: Refusal, now: datetime, count: int, runs: Sequence[str]) -> AuditEvent:
    """The ``agent.refused`` event of ``count`` refusals like ``refusal`` (pure)."""
    return AuditEvent(
        time=now,
        actor=f"agent:{refusal.agent_id}"[:200],
        action="agent.refused",
        resource=f"Agent/{refusal.agent_id}"[:300],
        outcome=Outcome.FAILURE,
        details={
            "agent": refusal.agent_id[:200],
            "run": refusal.run_id[:200],
            "message": refusal.message,
            "reason": refusal.reason,
            "owner": refusal.owner,
            "count": count,
            "runs": list(runs),
            "why": refusal.describe(),
        },
    )


def apply_reports(
    runs: dict[str, Run], payloads: Sequence[object], now: datetime, services: Mapping[str, str] | None = None
) -> RunWrites:
    """What a batch of agent reports changes, in delivery order (pure; ``runs`` is updated as it goes)."""
    changed: dict[str, Run] = {}
    writes = RunWrites()
    for payload in payloads:
        if isinstance(payload, RunEvent):
            writes.events.append((payload.run_id, payload.events))
        elif isinstance(payload, RunAccepted | RunResult):
            run = runs.get(payload.run_id)
            if run is None:
                log.warning(
                    "%s for unknown run %s from %s ignored",
                    type(payload).__name__,
                    payload.run_id,
                    payload.agent_id,
                )
                continue
            after = (
                accepted_run(run, payload, now)
                if isinstance(payload, RunAccepted)
                else result_run(run, payload, now)
            )
            if after is not None:
                runs[run.id] = changed[run.id] = after
                if isinstance(payload, RunResult):
                    writes.audits.append(result_audit(after, payload, now, (services or {}).get(run.id)))
        elif isinstance(payload, ErrorPayload):
            log.warning("agent reported %s: %s", payload.code, payload.message)
        else:
            log.warning("ignoring %s on the results queue", type(payload).__name__)
    writes.runs = list(changed.values())
    return writes


def accepted_run(run: Run, accepted: RunAccepted, now: datetime) -> Run | None:
    """The run once an agent took it; None when that changes nothing (finished, or already running)."""
    if run.status.finished or run.status is RunStatus.RUNNING:
        return None
    return run.model_copy(
        update={"status": RunStatus.RUNNING, "agent_id": accepted.agent_id, "started_at": now}
    )


def result_run(run: Run, result: RunResult, now: datetime) -> Run | None:
    """The run as its result describes it; None for a redelivery (the first copy already counted)."""
    return None if run.status.finished else finished_run(run, result, now)


def result_audit(done: Run, result: RunResult, now: datetime, service: str | None = None) -> AuditEvent:
    return AuditEvent(
        time=now,
        actor=f"agent:{result.agent_id}",
        action="run.result",
        resource=f"DeploymentIntent/{done.intent}",
        service=service,
        outcome=Outcome.SUCCESS if done.status is RunStatus.SUCCESSFUL else Outcome.FAILURE,
        details={
            "run": done.id,
            "step": done.step,
            "status": done.status.value,
            "rc": done.rc,
            "duration_seconds": result.duration_seconds,
            "error": result.error,
        },
    )


def capacity_improved(before: Agent | None, after: Agent, now: datetime) -> bool:
    """Whether a heartbeat could let a waiting intent run (pure): new, back online, or more room."""
    if not is_online(after, now) or after.capacity is None:
        return False
    if before is None or before.capacity is None or not is_online(before, now):
        return True
    old, new = before.capacity, after.capacity
    return (
        (old.busy and not new.busy)
        or best_gpu_free(new) > best_gpu_free(old)
        or new.memory_available_mib > old.memory_available_mib + 256
        or new.cpu_load_percent + 10 < old.cpu_load_percent
        or before.labels != after.labels
    )


HEARTBEATS_PREFETCH = 200
"""The prefetch to consume ``chiffon.heartbeats`` with (:meth:`HeartbeatConsumer.submit`): the
largest batch, two seconds of a thousand agents heartbeating every ten seconds."""
HEARTBEAT_COALESCE_SECONDS = 0.5
"""How long a queued heartbeat may wait for others to share its transaction."""
HEARTBEAT_QUIET_SECONDS = 0.1
"""A batch is written once nothing more arrived for this long (a lone heartbeat is not held up)."""


class HeartbeatConsumer:
    """Heartbeat / AgentOffline → the agents table; tells the controller when capacity appears.

    :meth:`submit` is what the bus calls: it notes the agent's new row (stamped
    with the time of receipt) and returns; a flush writes the rows queued so far
    in one transaction — the newest per agent — and only then acks their
    deliveries and, if any of them brought more room, wakes the capacity
    waiters (``on_capacity``). A batch is written when it holds ``max_batch``
    deliveries (consume with that prefetch, :data:`HEARTBEATS_PREFETCH`), when
    nothing arrived for :data:`HEARTBEAT_QUIET_SECONDS`, when its first
    heartbeat has waited :data:`HEARTBEAT_COALESCE_SECONDS`, or at
    :meth:`drain`. A thousand agents heartbeating every ten seconds then cost
    two transactions a second instead of a hundred. Liveness does not wait for
    the write: it notes each heartbeat as it is received
    (``Liveness.observing``). :meth:`handle` does the same for one delivery and
    returns once it is committed.
    """

    def __init__(
        self,
        store: Store,
        *,
        on_capacity: Callable[[], None],
        clock: Clock = utcnow,
        max_batch: int = HEARTBEATS_PREFETCH,
        coalesce_seconds: float = HEARTBEAT_COALESCE_SECONDS,
        quiet_seconds: float = HEARTBEAT_QUIET_SECONDS,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.store = store
        self._on_capacity = on_capacity
        self._clock = clock
        self.max_batch = max_batch
        self.coalesce_seconds = coalesce_seconds
        self.quiet_seconds = quiet_seconds
        self._last: dict[str, Agent] = {}
        self._rows: dict[str, Agent] = {}
        self._queued: list[Delivery] = []
        self._improved = False
        self._first_queued = 0.0
        self._last_queued = 0.0
        self._now = asyncio.Event()
        self._draining = False
        self._flushing: asyncio.Task[None] | None = None

    def _receive(self, delivery: Delivery) -> tuple[Agent | None, bool]:
        """The row a Heartbeat or AgentOffline makes (None: nothing to write) and whether it
        brings more room; remembers it as the agent's latest."""
        payload = delivery.envelope.payload
        now = self._clock()
        if isinstance(payload, Heartbeat):
            agent = Agent(
                id=payload.agent_id,
                kind=payload.kind,
                labels=payload.labels,
                online=payload.online,
                last_seen=now,
                capacity=payload.capacity,
                version=payload.version,
            )
            improved = capacity_improved(self._last.get(agent.id), agent, now)
            self._last[agent.id] = agent
            return agent, improved
        if isinstance(payload, AgentOffline):
            log.info("agent %s went offline: %s", payload.agent_id, payload.reason)
            known = self._last.get(payload.agent_id)
            if known is None:
                return None, False
            offline = known.model_copy(update={"online": False, "last_seen": now})
            self._last[payload.agent_id] = offline
            return offline, False
        log.warning("ignoring %s on the heartbeats queue", delivery.envelope.type.value)
        return None, False

    async def handle(self, delivery: Delivery) -> None:
        """Store one delivery now, then ack it."""
        row, improved = self._receive(delivery)
        if row is not None:
            await self.store.upsert_agents([row])  # the batch statement: compiled once, then cached
        if improved:
            self._on_capacity()
        await delivery.ack()

    async def submit(self, delivery: Delivery) -> None:
        """Queue one delivery for the next batch; it is acked once the batch is committed."""
        row, improved = self._receive(delivery)
        loop = asyncio.get_running_loop()
        self._last_queued = loop.time()
        if not self._queued:
            self._first_queued = self._last_queued
        self._queued.append(delivery)
        if row is not None:
            self._rows[row.id] = row
        self._improved = self._improved or improved
        if len(self._queued) >= self.max_batch:
            self._now.set()
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_queued(), name="heartbeats flush")

    async def drain(self) -> None:
        """Write what is queued now, without waiting for more (leadership ending)."""
        self._draining = True
        try:
            while self._flushing is not None and not self._flushing.done():
                self._now.set()
                await asyncio.gather(self._flushing, return_exceptions=True)
        finally:
            self._draining = False

    async def _flush_queued(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queued:
            while not (self._now.is_set() or self._draining):
                due = min(self._first_queued + self.coalesce_seconds, self._last_queued + self.quiet_seconds)
                wait = due - loop.time()
                if wait <= 0:
                    break
                try:
                    await asyncio.wait_for(self._now.wait(), wait)
                except TimeoutError:
                    continue
            self._now.clear()
            batch, rows, improved = self._queued, list(self._rows.values()), self._improved
            self._queued, self._rows, self._improved = [], {}, False
            await self._write(batch, rows, improved)

    async def _write(self, batch: list[Delivery], rows: list[Agent], improved: bool) -> None:
        try:
            await self.store.upsert_agents(rows)
        except Exception as exc:  # nothing was written: the broker delivers them again
            log.error("could not record %d heartbeats: %s; returning them", len(batch), exc, exc_info=exc)
            for delivery in batch:
                await delivery.reject(requeue=True)
            # Their redelivered copies will not look new any more: wake the waiters after the next write.
            self._improved = self._improved or improved
            return
        for delivery in batch:
            await delivery.ack()
        if improved:
            self._on_capacity()
