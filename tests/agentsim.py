"""A recording stand-in for an infra agent, until the real one exists (issue: Agents).

It speaks the real ``chiffon/v1`` protocol over the real bus: declares its runs
queue, heartbeats, accepts each RunRequest (RunAccepted, then ack — "ack on
accept"), reports a RunResult, and journals every request it received and
every run it executed, so tests can count lost and duplicated dispatches.
Executing is deduplicated by run id, as docs/protocol.md requires of agents.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from chiffon.bus import HEARTBEATS_QUEUE, RESULTS_QUEUE, Bus, Delivery, Subscription, runs_queue
from chiffon.resources import AgentKind, Capacity
from chiffon.resources.messages import Heartbeat, RunAccepted, RunRequest, RunResult, make_envelope


@dataclass
class RecordingAgent:
    bus: Bus
    agent_id: str = "infra-1"
    labels: dict[str, str] = field(default_factory=lambda: {"role": "infra"})
    outcome: str = "successful"
    received: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    highest_epoch: int = 0
    _subscription: Subscription | None = None

    async def start(self) -> None:
        for queue in (runs_queue(self.agent_id), RESULTS_QUEUE, HEARTBEATS_QUEUE):
            await self.bus.declare(queue)
        self._subscription = await self.bus.consume(runs_queue(self.agent_id), self._on_request)
        await self.heartbeat()

    async def heartbeat(self) -> None:
        capacity = Capacity(
            cpu_load_percent=5, cpu_cores=8, memory_total_mib=32000, memory_available_mib=16000
        )
        beat = Heartbeat(agent_id=self.agent_id, kind=AgentKind.INFRA, labels=self.labels, capacity=capacity)
        await self.bus.publish(HEARTBEATS_QUEUE, make_envelope(beat))

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()

    async def _on_request(self, delivery: Delivery) -> None:
        request = delivery.envelope.payload
        if not isinstance(request, RunRequest):
            await delivery.ack()
            return
        self.received.append(request.run_id)
        self.highest_epoch = max(self.highest_epoch, request.epoch)
        await self.accept(request)
        await delivery.ack()
        await self.finish(request)

    async def accept(self, request: RunRequest) -> None:
        await self.bus.publish(
            RESULTS_QUEUE, make_envelope(RunAccepted(run_id=request.run_id, agent_id=self.agent_id))
        )

    async def finish(self, request: RunRequest) -> None:
        """Execute (once per run id) and report the result."""
        if request.run_id not in self.executed:
            self.executed.append(request.run_id)
            await asyncio.sleep(0)
        result = RunResult(
            run_id=request.run_id,
            agent_id=self.agent_id,
            status=self.outcome,
            rc=0 if self.outcome == "successful" else 2,
            duration_seconds=0.01,
        )
        await self.bus.publish(RESULTS_QUEUE, make_envelope(result))

    def duplicates(self) -> list[str]:
        return sorted({run for run in self.executed if self.executed.count(run) > 1})
