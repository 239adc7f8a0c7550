"""Stand-in agents that speak the real ``chiffon/v1`` protocol over the real bus.

``RecordingAgent`` is a recording stand-in for an infra agent.

It speaks the real ``chiffon/v1`` protocol over the real bus: declares its runs
queue, heartbeats, accepts each RunRequest (RunAccepted, then ack — "ack on
accept"), reports a RunResult, and journals every request it received and
every run it executed, so tests can count lost and duplicated dispatches.
Executing is deduplicated by run id, as docs/protocol.md requires of agents.

``SimulatedDesktop`` is the real desktop agent (``chiffon.agents.desktop``:
heartbeats, ``AgentOffline`` on a clean stop) reporting a made-up machine — one
GPU with a chosen amount of free memory — so scheduling by GPU memory can be
tested on a machine without a GPU. ``python -m tests.agentsim desktop --id ID
--gpu-free-mib N`` runs one as its own process (broker from
``CHIFFON_BROKER_URL``, queue prefix from ``CHIFFON_BUS_PREFIX``), so a test can
stop it cleanly (SIGTERM) or kill it silently (SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from dataclasses import dataclass, field

from chiffon.agents.desktop import DesktopAgent
from chiffon.bus import (
    HEARTBEATS_QUEUE,
    RESULTS_QUEUE,
    Bus,
    BusError,
    Delivery,
    Subscription,
    open_bus,
    runs_queue,
)
from chiffon.resources import AgentKind, Capacity
from chiffon.resources.agent import GpuInfo
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


class SimulatedDesktop(DesktopAgent):
    """The real desktop agent, reporting one GPU with ``gpu_free_mib`` free instead of this machine."""

    def __init__(
        self, bus: Bus, *, agent_id: str, gpu_free_mib: int, heartbeat_interval: float = 1.0
    ) -> None:
        super().__init__(
            bus,
            agent_id=agent_id,
            labels={"role": "desktop", "gpu": "true"},
            heartbeat_interval=heartbeat_interval,
        )
        self.gpu_free_mib = gpu_free_mib

    def capacity(self) -> Capacity:
        total = max(self.gpu_free_mib, 24576)
        gpu = GpuInfo(
            index=0, name="Simulated RTX", memory_total_mib=total, memory_free_mib=self.gpu_free_mib
        )
        return Capacity(
            cpu_load_percent=5, cpu_cores=16, memory_total_mib=65536, memory_available_mib=49152, gpus=[gpu]
        )


CONNECT_ATTEMPTS = 60


async def _serve_desktop(agent_id: str, gpu_free_mib: int, interval: float) -> None:
    bus = open_bus(os.environ["CHIFFON_BROKER_URL"], prefix=os.environ.get("CHIFFON_BUS_PREFIX", ""))
    for attempt in range(CONNECT_ATTEMPTS):  # like `chiffon agent`: a broker restarting is waited for
        try:
            await bus.connect()
            break
        except BusError:
            if attempt == CONNECT_ATTEMPTS - 1:
                raise
            await asyncio.sleep(1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        agent = SimulatedDesktop(
            bus, agent_id=agent_id, gpu_free_mib=gpu_free_mib, heartbeat_interval=interval
        )
        await agent.run(stop)
    finally:
        await bus.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.agentsim")
    parser.add_argument("kind", choices=["desktop"])
    parser.add_argument("--id", required=True)
    parser.add_argument("--gpu-free-mib", type=int, required=True)
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(_serve_desktop(args.id, args.gpu_free_mib, args.heartbeat_interval))


if __name__ == "__main__":
    main()
