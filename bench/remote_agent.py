"""The recording agent in a process of its own, for the distributed setup.

    python -m bench.remote_agent --prefix PREFIX [--agent-id infra-1]

In the distributed mode agents are other processes, usually other machines:
their decoding, acking and answering must not be charged to the controller's
event loop. This child runs a :class:`BenchAgent` over RabbitMQ (the URL the
parent uses) and prints one JSON line per RunRequest received — run id,
intent, ``time.monotonic()`` (the same clock in every process on Linux) and
whether it was a repeat. Lines on its stdin: ``heartbeat``, ``hold``,
``release``; end of stdin stops it.

:class:`RemoteAgent` is the parent's side, with the interface the figures use
(``arrivals``, ``received``, ``duplicates()``, ``wait_for``, ``heartbeat``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiffon.bus import Delivery, open_bus
from chiffon.resources.messages import RunRequest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.agentsim import RecordingAgent  # noqa: E402

READY = "ready"


@dataclass
class BenchAgent(RecordingAgent):
    """The recording agent as the figures need it.

    Answering (RunAccepted, ack, RunResult) happens in the background, as an agent
    running several playbooks at once does: the bus hands over the next request
    meanwhile, so arrivals measure the controller, not this stand-in's publisher
    confirms. While ``holding``, it is just "a consumer acking requests" (the burst
    figure's definition): it acks at once and answers only on :meth:`release`.
    """

    holding: bool = False
    _held: list[RunRequest] = field(default_factory=list)
    _answering: set[asyncio.Task[None]] = field(default_factory=set)

    def arrived(self, request: RunRequest) -> None:
        """Called first thing for every RunRequest delivered."""

    async def _on_request(self, delivery: Delivery) -> None:
        request = delivery.envelope.payload
        if isinstance(request, RunRequest):
            self.arrived(request)
            if self.holding:
                self.received.append(request.run_id)
                self._held.append(request)
                await delivery.ack()
                return
        self._background(super()._on_request(delivery))

    async def release(self) -> None:
        """Stop holding; answer every request held so far."""
        self.holding = False
        held, self._held = self._held, []
        for request in held:
            self._background(self._answer(request))

    async def _answer(self, request: RunRequest) -> None:
        await self.accept(request)
        await self.finish(request)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)


@dataclass
class AnsweringAgent(BenchAgent):
    """Prints each arrival on stdout for the parent."""

    _seen: set[str] = field(default_factory=set)

    def arrived(self, request: RunRequest) -> None:
        repeat = request.run_id in self._seen
        self._seen.add(request.run_id)
        line = {"run": request.run_id, "intent": request.intent, "at": time.monotonic(), "repeat": repeat}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


async def serve(amqp_url: str, prefix: str, agent_id: str) -> None:
    bus = open_bus(amqp_url, prefix=prefix)
    await bus.connect()
    agent = AnsweringAgent(bus, agent_id=agent_id)
    try:
        await agent.start()
        print(READY, flush=True)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command = line.strip()
            if command == b"heartbeat":
                await agent.heartbeat()
            elif command == b"hold":
                agent.holding = True
            elif command == b"release":
                await agent.release()
    finally:
        await agent.stop()
        await bus.close()


class RemoteAgent:
    """The parent's handle on a :func:`serve` child."""

    def __init__(self, amqp_url: str, prefix: str, agent_id: str = "infra-1") -> None:
        self.agent_id = agent_id
        self._args = ["--amqp-url", amqp_url, "--prefix", prefix, "--agent-id", agent_id]
        self.arrivals: dict[str, float] = {}
        self.received: list[str] = []
        self._repeats: list[str] = []
        self._arrived = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.remote_agent",
            *self._args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self._process.stdout is not None
        first = await asyncio.wait_for(self._process.stdout.readline(), 60)
        if first.strip() != READY.encode():
            raise RuntimeError(f"the remote agent did not start: {first!r}")
        self._reading = asyncio.create_task(self._read(self._process.stdout))

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            arrival = json.loads(line)
            self.received.append(arrival["run"])
            self.arrivals.setdefault(arrival["intent"], arrival["at"])
            if arrival["repeat"]:
                self._repeats.append(arrival["run"])
            self._arrived.set()

    async def heartbeat(self) -> None:
        await self._tell(b"heartbeat")

    async def hold(self) -> None:
        """Ack requests without answering them, until :meth:`release` (see BenchAgent)."""
        await self._tell(b"hold")

    async def release(self) -> None:
        await self._tell(b"release")

    async def _tell(self, command: bytes) -> None:
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.write(command + b"\n")
            await self._process.stdin.drain()

    def duplicates(self) -> list[str]:
        return sorted(set(self._repeats))

    async def wait_for(self, names: list[str], *, within: float) -> None:
        missing = set(names)
        async with asyncio.timeout(within):
            while missing := missing - self.arrivals.keys():
                self._arrived.clear()
                await self._arrived.wait()

    async def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--agent-id", default="infra-1")
    args = parser.parse_args()
    asyncio.run(serve(args.amqp_url, args.prefix, args.agent_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
