"""Consumers of what agents report: run progress and results, heartbeats.

Every handler is idempotent — a redelivered message changes nothing twice —
and acks only after its effect is committed to the database, so a controller
killed mid-handler gets the message again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from chiffon.bus import Delivery
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
    """RunAccepted / RunEvent / RunResult / Error from agents → runs, events and audit."""

    def __init__(self, store: Store, *, enqueue: Callable[[str], None], clock: Clock = utcnow) -> None:
        self.store = store
        self._enqueue = enqueue
        self._clock = clock

    async def handle(self, delivery: Delivery) -> None:
        payload = delivery.envelope.payload
        if isinstance(payload, RunAccepted):
            await self._accepted(payload)
        elif isinstance(payload, RunEvent):
            await self.store.append_run_events(payload.run_id, payload.events)
        elif isinstance(payload, RunResult):
            await self._result(payload)
            crash_point(AFTER_RESULT)
        elif isinstance(payload, ErrorPayload):
            log.warning("agent reported %s: %s", payload.code, payload.message)
        else:
            log.warning("ignoring %s on the results queue", delivery.envelope.type.value)
        await delivery.ack()

    async def _accepted(self, accepted: RunAccepted) -> None:
        run = await self.store.get_run(accepted.run_id)
        if run is None or run.status.finished or run.status is RunStatus.RUNNING:
            return
        now = self._clock()
        await self.store.upsert_run(
            run.model_copy(
                update={"status": RunStatus.RUNNING, "agent_id": accepted.agent_id, "started_at": now}
            )
        )
        self._enqueue(run.intent)

    async def _result(self, result: RunResult) -> None:
        run = await self.store.get_run(result.run_id)
        if run is None:
            log.warning("result for unknown run %s from %s ignored", result.run_id, result.agent_id)
            return
        if run.status.finished:
            return  # a redelivery: the first copy already counted
        now = self._clock()
        done = finished_run(run, result, now)
        await self.store.upsert_run(done)
        await self.store.record_audit(
            AuditEvent(
                time=now,
                actor=f"agent:{result.agent_id}",
                action="run.result",
                resource=f"DeploymentIntent/{run.intent}",
                outcome=Outcome.SUCCESS if done.status is RunStatus.SUCCESSFUL else Outcome.FAILURE,
                details={
                    "run": run.id,
                    "step": run.step,
                    "status": done.status.value,
                    "rc": done.rc,
                    "duration_seconds": result.duration_seconds,
                    "error": result.error,
                },
            )
        )
        self._enqueue(run.intent)


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


class HeartbeatConsumer:
    """Heartbeat / AgentOffline → the agents table; tells the controller when capacity appears."""

    def __init__(self, store: Store, *, on_capacity: Callable[[], None], clock: Clock = utcnow) -> None:
        self.store = store
        self._on_capacity = on_capacity
        self._clock = clock
        self._last: dict[str, Agent] = {}

    async def handle(self, delivery: Delivery) -> None:
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
            await self.store.upsert_agent(agent)
            if capacity_improved(self._last.get(agent.id), agent, now):
                self._on_capacity()
            self._last[agent.id] = agent
        elif isinstance(payload, AgentOffline):
            known = self._last.get(payload.agent_id)
            if known is not None:
                offline = known.model_copy(update={"online": False, "last_seen": now})
                await self.store.upsert_agent(offline)
                self._last[payload.agent_id] = offline
            log.info("agent %s went offline: %s", payload.agent_id, payload.reason)
        await delivery.ack()
