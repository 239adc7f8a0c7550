"""Orchestration overhead: RunRequest published → RunResult received, over bare ``ansible-playbook``.

The playbook is a no-op on localhost (``bench-noop.yml``: one play on the
example inventory's ``lab`` group, connection local, no fact gathering, one
``ansible.builtin.ping`` task), in a copy of ``examples/homelab-infra``,
limited to ``localhost``. Two ways to run it, alternated in one process on
one machine:

* **bare**: ``ansible-playbook -i ansible/inventory/hosts.yml --limit localhost
  ansible/playbooks/bench-noop.yml`` in the repo, as a person would type it
  (``ANSIBLE_CONFIG`` set to the repo's ``ansible.cfg``, output to
  /dev/null): wall time from spawning it to its exit;
* **through the agent**: a real :class:`~chiffon.agents.infra.InfraAgent`
  serving its runs queue; the bench plays the controller, publishes a
  ``RunRequest`` for the same playbook, inventory and limit, and takes the
  wall time from just before ``publish`` to its ``RunResult`` arriving in
  the bench's handler on ``chiffon.results``. In between: delivery,
  RunAccepted (confirmed before the run starts), the journal, the private
  data dir, ansible-runner with its callback plugin, the event stream in
  batches, resource sampling, the journal again, the RunResult.

One warm-up of each first, not counted. Then ``pairs`` pairs, the order
alternating (bare first, then agent first, …) so drift affects both alike.
The figure is the median of the per-pair ratios agent / bare; the medians of
both series are reported too. Every agent run must end ``successful``.

On RabbitMQ (``--bus amqp``) the agent and the bench each have a connection
of their own, under a queue prefix of their own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.agent_support import broker_shared, delete_queues, failed, median, rounded, row
from bench.common import AMQP_URL, ROOT, observed
from chiffon.agents.infra import InfraAgent
from chiffon.ansible_cli import find_ansible_playbook
from chiffon.bus import HEARTBEATS_QUEUE, RESULTS_QUEUE, Bus, Delivery, open_bus, runs_queue
from chiffon.resources.messages import RunAccepted, RunRequest, RunResult, make_envelope

FIGURE = "orchestration overhead"
TARGET_RATIO = 1.10
TARGET = f"≤{TARGET_RATIO:.2f}x bare"
PAIRS, QUICK_PAIRS = 15, 6
PLAYBOOK = "ansible/playbooks/bench-noop.yml"
INVENTORY = "ansible/inventory/hosts.yml"
LIMIT = "localhost"
NOOP_PLAYBOOK = """\
- name: No-op
  hosts: lab
  gather_facts: false
  tasks:
    - name: Answer a ping
      ansible.builtin.ping:
"""
RUN_TIMEOUT = 120.0

BUS_NAMES = {"memory": "in-process bus", "amqp": "RabbitMQ"}


class ResultsInbox:
    """The controller's side of ``chiffon.results`` and ``chiffon.heartbeats``: when each message came."""

    def __init__(self) -> None:
        self.results: dict[str, tuple[float, RunResult]] = {}
        self.accepted: dict[str, float] = {}
        self.events: dict[str, int] = {}
        self._arrived = asyncio.Event()

    async def on_result(self, delivery: Delivery) -> None:
        now = time.perf_counter()
        payload = delivery.envelope.payload
        if isinstance(payload, RunResult):
            self.results.setdefault(payload.run_id, (now, payload))
            self._arrived.set()
        elif isinstance(payload, RunAccepted):
            self.accepted.setdefault(payload.run_id, now)
        else:
            run_id = delivery.envelope.correlation_id or ""
            self.events[run_id] = self.events.get(run_id, 0) + 1
        await delivery.ack()

    async def on_heartbeat(self, delivery: Delivery) -> None:
        await delivery.ack()

    async def wait_result(self, run_id: str) -> tuple[float, RunResult]:
        async with asyncio.timeout(RUN_TIMEOUT):
            while run_id not in self.results:
                self._arrived.clear()
                await self._arrived.wait()
        return self.results[run_id]


def make_repo(tmp: Path) -> Path:
    repo = tmp / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", repo)
    (repo / PLAYBOOK).write_text(NOOP_PLAYBOOK)
    return repo


def bare_environment(repo: Path, lab: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(repo / "ansible.cfg")
    env["PATH"] = os.pathsep.join([str(find_ansible_playbook().parent), env.get("PATH", "")])
    env["CHIFFON_LAB_ROOT"] = str(lab)
    return env


async def run_bare(repo: Path, env: dict[str, str]) -> float:
    """Wall seconds of one bare ``ansible-playbook`` run; raises if it fails."""
    command = [str(find_ansible_playbook()), "-i", INVENTORY, "--limit", LIMIT, PLAYBOOK]
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=repo,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    rc = await process.wait()
    elapsed = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"bare ansible-playbook exited with status {rc}")
    return elapsed


async def run_through_agent(bus: Bus, inbox: ResultsInbox, agent_id: str, run_id: str) -> dict[str, float]:
    """Publish a RunRequest for the no-op playbook; seconds until its RunResult arrived, and parts."""
    request = RunRequest(
        run_id=run_id,
        intent="bench-noop",
        generation=1,
        plan_digest="sha256:bench",
        step="noop",
        playbook=PLAYBOOK,
        inventory=INVENTORY,
        limit=LIMIT,
        agent_id=agent_id,
        timeout_seconds=int(RUN_TIMEOUT),
    )
    envelope = make_envelope(request, message_id=run_id)
    started = time.perf_counter()
    await bus.publish(runs_queue(agent_id), envelope)
    arrived, result = await inbox.wait_result(run_id)
    if result.status != "successful":
        raise RuntimeError(f"run {run_id} ended {result.status}: {result.error}")
    return {
        "total": arrived - started,
        "accepted": inbox.accepted.get(run_id, arrived) - started,
        "runner": result.duration_seconds,
        "event_batches": inbox.events.get(run_id, 0),
    }


async def measure(bus_kind: str, *, quick: bool, pairs: int | None = None) -> dict[str, Any]:
    setup = BUS_NAMES[bus_kind]
    try:
        if bus_kind == "amqp":
            async with broker_shared():
                return await _measure(bus_kind, quick=quick, pairs=pairs)
        return await _measure(bus_kind, quick=quick, pairs=pairs)
    except Exception as exc:
        return failed(FIGURE, setup, TARGET, f"{type(exc).__name__}: {exc}")


async def _measure(bus_kind: str, *, quick: bool, pairs: int | None) -> dict[str, Any]:
    setup = BUS_NAMES[bus_kind]
    count = pairs or (QUICK_PAIRS if quick else PAIRS)
    tag = uuid.uuid4().hex[:8]
    prefix = f"chiffon-bench-{tag}."
    url = AMQP_URL if bus_kind == "amqp" else None
    tmp = Path(tempfile.mkdtemp(prefix=f"chiffon-bench-{tag}-"))
    buses: list[Bus] = []
    stop = asyncio.Event()
    agent_task: asyncio.Task[None] | None = None
    try:
        repo = make_repo(tmp)
        lab = tmp / "lab"

        async def connected() -> Bus:
            bus = open_bus(url, prefix=prefix)
            buses.append(bus)
            await bus.connect()
            return bus

        controller_bus = await connected()
        agent_bus = await connected() if bus_kind == "amqp" else controller_bus
        inbox = ResultsInbox()
        for queue in (RESULTS_QUEUE, HEARTBEATS_QUEUE):
            await controller_bus.declare(queue)
        await controller_bus.consume(RESULTS_QUEUE, inbox.on_result)
        await controller_bus.consume(HEARTBEATS_QUEUE, inbox.on_heartbeat)
        agent_id = f"bench-infra-{tag}"
        agent = InfraAgent(
            agent_bus,
            repo=repo,
            work_dir=tmp / "agent",
            agent_id=agent_id,
            env={"CHIFFON_LAB_ROOT": str(lab)},
        )
        agent_task = asyncio.create_task(agent.run(stop), name="bench infra agent")
        async with asyncio.timeout(30):
            while agent.heartbeats_sent == 0:
                if agent_task.done():
                    agent_task.result()
                await asyncio.sleep(0.01)
        env = bare_environment(repo, lab)

        async def bare() -> float:
            return await run_bare(repo, env)

        async def through_agent(index: int) -> dict[str, float]:
            return await run_through_agent(controller_bus, inbox, agent_id, f"bench-noop-{tag}-{index}")

        with observed() as seen:
            warmup_bare = await bare()
            warmup_agent = await through_agent(0)
            bare_s, agent_runs = await _alternate(count, bare, through_agent)
        ratios = [run["total"] / base for run, base in zip(agent_runs, bare_s, strict=True)]
        ratio = median(ratios)
        agent_s = [run["total"] for run in agent_runs]
        bare_median, agent_median = median(bare_s), median(agent_s)
        passed = ratio <= TARGET_RATIO
        result = row(
            FIGURE,
            setup,
            measured=round(ratio, 3),
            summary=(
                f"{ratio:.3f}x (agent {agent_median:.3f}s / bare {bare_median:.3f}s, "
                f"{1000 * (agent_median - bare_median):+.0f} ms, {count} pairs)"
            ),
            target=TARGET,
            passed=passed,
            details={
                "pairs": count,
                "median_of_pair_ratios": round(ratio, 4),
                "ratio_of_medians": round(agent_median / bare_median, 4),
                "pair_ratios": rounded(ratios, 4),
                "bare_seconds": rounded(bare_s),
                "agent_seconds": rounded(agent_s),
                "bare_median_s": round(bare_median, 4),
                "agent_median_s": round(agent_median, 4),
                "bare_min_s": round(min(bare_s), 4),
                "agent_min_s": round(min(agent_s), 4),
                "request_to_accepted_median_ms": round(1000 * median([r["accepted"] for r in agent_runs]), 1),
                "runner_duration_median_s": round(median([r["runner"] for r in agent_runs]), 4),
                "run_event_batches_median": median([r["event_batches"] for r in agent_runs]),
                "warmup_not_counted_s": {
                    "bare": round(warmup_bare, 3),
                    "agent": round(warmup_agent["total"], 3),
                },
                "playbook": PLAYBOOK,
                "bare_command": f"ansible-playbook -i {INVENTORY} --limit {LIMIT} {PLAYBOOK}",
                "bus": setup,
                "notes": [
                    "figure: median over pairs of (RunRequest published → RunResult received) / "
                    "(bare ansible-playbook wall time); order alternates within pairs",
                ],
            },
        )
        return seen.annotate(result)
    finally:
        stop.set()
        if agent_task is not None:
            try:
                async with asyncio.timeout(60):
                    await asyncio.gather(agent_task, return_exceptions=True)
            except TimeoutError:
                agent_task.cancel()
        if url is not None:
            await delete_queues(buses, prefix, url)
        else:
            for bus in buses:
                await bus.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _alternate(
    count: int,
    bare: Callable[[], Awaitable[float]],
    through_agent: Callable[[int], Awaitable[dict[str, float]]],
) -> tuple[list[float], list[dict[str, float]]]:
    bare_s: list[float] = []
    agent_runs: list[dict[str, float]] = []
    for index in range(1, count + 1):
        if index % 2:
            bare_s.append(await bare())
            agent_runs.append(await through_agent(index))
        else:
            agent_runs.append(await through_agent(index))
            bare_s.append(await bare())
    return bare_s, agent_runs
