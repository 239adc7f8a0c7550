"""What every agent does: say who it is and what room it has, until it stops.

An agent is one control loop, ``await agent.run(stop)`` (the same shape as the
controller's loops, so ``chiffon up`` supervises it with them):

1. declare the queues it uses (``chiffon.heartbeats``, ``chiffon.results``
   and whatever the kind needs: the infra agent's ``chiffon.runs.<id>``), then
   :meth:`AgentBase.on_start`;
2. publish a ``Heartbeat`` at once and then every ``heartbeat_interval``
   seconds (15 by default, advertised in the heartbeat: the controller calls
   an agent offline after three intervals of silence), with its labels, a
   fresh capacity reading and, from an agent that runs playbooks, the runs it
   still owes a result for (:meth:`AgentBase.claimed_runs`): that is how the
   controller tells a run that is still going from one lost with its agent;
3. when ``stop`` is set: :meth:`AgentBase.on_stop` (the infra agent finishes
   or cancels its runs there), then ``AgentOffline``, so the controller knows
   at once rather than after three missed heartbeats.

Broker outages do not end an agent. The bus reconnects by itself; a heartbeat
that cannot be published is logged (once per outage) and skipped, because the
next one replaces it (docs/protocol.md §5). A stop during an outage does not
wait for the broker: the heartbeat in flight is abandoned and ``AgentOffline``
gets a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from typing import ClassVar, TypeVar

from chiffon import __version__
from chiffon.agents.capacity import BusyCheck, CpuLoad, read_capacity
from chiffon.bus import HEARTBEATS_QUEUE, RESULTS_QUEUE, Bus, BusError, runs_queue
from chiffon.resources.agent import AgentKind, Capacity
from chiffon.resources.messages import AgentOffline, Heartbeat, make_envelope

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_HEARTBEAT_INTERVAL = 15.0
OFFLINE_PUBLISH_TIMEOUT = 5.0


async def sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``await work``, abandoning (cancelling) it if ``stop`` is set first; None then."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(stopper, task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


class AgentBase:
    """Heartbeats, queues and a clean stop; subclasses add what the agent does."""

    kind: ClassVar[AgentKind]

    def __init__(
        self,
        bus: Bus,
        agent_id: str,
        *,
        labels: Mapping[str, str] | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        busy: BusyCheck | None = None,
    ) -> None:
        runs_queue(agent_id)  # validates the id: 1-200 printable characters, no spaces
        if heartbeat_interval <= 0:
            raise ValueError("the heartbeat interval must be positive")
        self.bus = bus
        self.agent_id = agent_id
        self.labels = dict(labels or {})
        self.heartbeat_interval = heartbeat_interval
        self.busy = busy
        self.heartbeats_sent = 0
        self._cpu = CpuLoad()
        self._heartbeat_failing = False

    # What subclasses add ------------------------------------------------------------------

    def queues(self) -> list[str]:
        """Queues to declare before anything else."""
        return [HEARTBEATS_QUEUE, RESULTS_QUEUE]

    async def on_start(self) -> None:
        """Called once the queues exist, before the first heartbeat."""

    async def on_stop(self) -> None:
        """Called when stopping, before ``AgentOffline``."""

    def capacity(self) -> Capacity:
        """This machine's capacity (blocking; called in a thread)."""
        return read_capacity(self.busy, cpu=self._cpu)

    def claimed_runs(self) -> list[str] | None:
        """Ids of the runs this agent accepted and still owes a result for (the heartbeat's
        ``runs``); None from an agent that never runs playbooks."""
        return None

    # The loop -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then stop cleanly and say so."""
        for queue in self.queues():
            await self.bus.declare(queue)
        try:
            await self.on_start()
            log.info("agent %s (%s) started, labels %s", self.agent_id, self.kind.value, self.labels)
            while not stop.is_set():
                await unless_stopped(self.heartbeat(), stop)
                await sleep_or_stop(self.heartbeat_interval, stop)
        finally:
            try:
                await self.on_stop()
            finally:
                await self._say_offline()

    async def heartbeat(self) -> None:
        """Publish one heartbeat; a failure is logged, never raised."""
        try:
            capacity = await asyncio.to_thread(self.capacity)
            beat = Heartbeat(
                agent_id=self.agent_id,
                kind=self.kind,
                labels=self.labels,
                capacity=capacity,
                interval_seconds=self.heartbeat_interval,
                version=__version__,
                runs=self.claimed_runs(),
            )
            await self.bus.publish(HEARTBEATS_QUEUE, make_envelope(beat))
        except Exception as exc:
            level = logging.DEBUG if self._heartbeat_failing else logging.WARNING
            log.log(level, "agent %s could not publish a heartbeat (%s); will try again", self.agent_id, exc)
            self._heartbeat_failing = True
            return
        if self._heartbeat_failing:
            log.info("agent %s publishes heartbeats again", self.agent_id)
            self._heartbeat_failing = False
        self.heartbeats_sent += 1

    async def _say_offline(self) -> None:
        envelope = make_envelope(AgentOffline(agent_id=self.agent_id))
        try:
            await asyncio.wait_for(self.bus.publish(HEARTBEATS_QUEUE, envelope), OFFLINE_PUBLISH_TIMEOUT)
        except (BusError, TimeoutError) as exc:
            log.warning("agent %s could not say it is going offline (%s)", self.agent_id, exc)
        else:
            log.info("agent %s stopped", self.agent_id)
