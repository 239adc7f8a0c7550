"""The recording agent in a process of its own, for the distributed setup.

    python -m bench.remote_agent --prefix PREFIX [--agent-id infra-1]

In the distributed mode agents are other processes, usually other machines:
their decoding, acking and answering must not be charged to the controller's
event loop. This child runs ``tests.agentsim.RecordingAgent`` over RabbitMQ
(``$CHIFFON_BENCH_AMQP_URL`` as the parent uses), answers requests
concurrently (as an agent running several playbooks does), and prints one
JSON line per RunRequest received — run id, intent, ``time.monotonic()``
(the same clock in every process on Linux) and whether it was a repeat. A
line ``heartbeat`` on its stdin makes it heartbeat; end of stdin stops it.

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
from dataclasses import dataclass, field
from pathlib import Path

from chiffon.bus import Delivery, open_bus
from chiffon.resources.messages import RunRequest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.agentsim import RecordingAgent  # noqa: E402

READY = "ready"


@dataclass
class AnsweringAgent(RecordingAgent):
    """Prints each arrival, then answers in the background."""

    _answering: set[asyncio.Task[None]] = field(default_factory=set)
    _seen: set[str] = field(default_factory=set)

    async def _on_request(self, delivery: Delivery) -> None:
        request = delivery.envelope.payload
        if isinstance(request, RunRequest):
            repeat = request.run_id in self._seen
            self._seen.add(request.run_id)
            line = {"run": request.run_id, "intent": request.intent, "at": time.monotonic(), "repeat": repeat}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        task = asyncio.create_task(super()._on_request(delivery))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)


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
            if line.strip() == b"heartbeat":
                await agent.heartbeat()
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
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.write(b"heartbeat\n")
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
