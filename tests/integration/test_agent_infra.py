"""The infra agent on a real bus (in process and RabbitMQ) with real Ansible on localhost.

The test plays the controller: it publishes RunRequests and CancelRuns on the
agent's queue and reads what comes back on ``chiffon.results`` and
``chiffon.heartbeats``. Concurrency and shutdown are checked with a stand-in
for the ansible-runner adapter (our own boundary), so they do not depend on
how fast Ansible starts.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from chiffon.agents.infra import DEADLINE_ERROR, InfraAgent
from chiffon.agents.runner import EventSink, PlaybookJob, PlaybookOutcome
from chiffon.bus import HEARTBEATS_QUEUE, RESULTS_QUEUE, Bus, runs_queue
from chiffon.resources.messages import (
    AgentOffline,
    AnsibleEvent,
    CancelRun,
    Envelope,
    ErrorPayload,
    Heartbeat,
    MessageType,
    RunAccepted,
    RunEvent,
    RunRequest,
    RunResult,
    make_envelope,
)
from tests.contract.support import BusFactory, Recorder, eventually, sweep_leftover_queues, unique_prefix

ROOT = Path(__file__).resolve().parents[2]
AGENT = "infra-test"
INVENTORY = "ansible/inventory/hosts.yml"
QUICK = "ansible/playbooks/quick.yml"
SLOW = "ansible/playbooks/slow.yml"
KUMA = "ansible/playbooks/kuma-deployment.yml"

PLAYBOOKS = {
    "quick.yml": """\
        - name: Quick
          hosts: lab
          gather_facts: false
          tasks:
            - name: Say hello
              ansible.builtin.debug:
                msg: hello
        """,
    "medium.yml": """\
        - name: Medium
          hosts: lab
          gather_facts: false
          tasks:
            - name: Sleep a little
              ansible.builtin.command: sleep 4
              changed_when: false
            - name: Say done
              ansible.builtin.debug:
                msg: done
        """,
    "slow.yml": """\
        - name: Slow
          hosts: lab
          gather_facts: false
          tasks:
            - name: Sleep
              ansible.builtin.command: sleep 120
              changed_when: false
        """,
}


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Any:
    yield
    sweep_leftover_queues()


@pytest.fixture(params=["memory", "amqp"])
async def any_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    factory = BusFactory(request.param, unique_prefix())
    try:
        yield factory
    finally:
        await factory.cleanup()


@pytest.fixture
async def memory_bus() -> AsyncIterator[BusFactory]:
    factory = BusFactory("memory", unique_prefix())
    try:
        yield factory
    finally:
        await factory.cleanup()


@pytest.fixture
def infra(tmp_path: Path) -> Path:
    repo = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", repo)
    for name, text in PLAYBOOKS.items():
        (repo / "ansible" / "playbooks" / name).write_text(textwrap.dedent(text))
    return repo


@dataclass
class Inbox:
    """The controller's side of the queues: everything agents report, acked at once."""

    results: Recorder = field(default_factory=Recorder)
    heartbeats: Recorder = field(default_factory=Recorder)

    async def open(self, bus: Bus) -> Inbox:
        for queue in (RESULTS_QUEUE, HEARTBEATS_QUEUE):
            await bus.declare(queue)
        await bus.consume(RESULTS_QUEUE, self.results)
        await bus.consume(HEARTBEATS_QUEUE, self.heartbeats)
        return self

    def about(self, run_id: str) -> list[Envelope]:
        return [d.envelope for d in self.results.deliveries if d.envelope.correlation_id == run_id]

    def payloads(self, kind: type[Any], run_id: str | None = None) -> list[Any]:
        envelopes = self.about(run_id) if run_id else [d.envelope for d in self.results.deliveries]
        return [e.payload for e in envelopes if isinstance(e.payload, kind)]

    async def wait(self, what: Callable[[], bool], description: str, within: float = 60) -> None:
        await eventually(what, within=within, what=description)


@dataclass
class Running:
    agent: InfraAgent
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 60)


async def start(bus: Bus, infra: Path, work: Path, **options: Any) -> Running:
    options.setdefault("heartbeat_interval", 0.5)
    options.setdefault("env", {"CHIFFON_LAB_ROOT": str(work.parent / "lab")})
    agent = InfraAgent(bus, repo=infra, work_dir=work, agent_id=AGENT, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await eventually(lambda: agent.heartbeats_sent > 0 or task.done(), within=30, what="the first heartbeat")
    if task.done():
        task.result()
    return Running(agent, stop, task)


def request(run_id: str, playbook: str | None = QUICK, **changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "intent": "test",
        "generation": 1,
        "plan_digest": "sha256:test",
        "step": "deploy",
        "playbook": playbook,
        "inventory": INVENTORY,
        "limit": "localhost",
        "agent_id": AGENT,
    }
    fields.update(changes)
    return make_envelope(RunRequest(**fields), message_id=run_id)


def cancel(run_id: str) -> Envelope:
    return make_envelope(CancelRun(run_id=run_id, reason="test"), correlation_id=run_id)


async def test_a_request_is_accepted_run_and_reported(
    any_bus: BusFactory, infra: Path, tmp_path: Path
) -> None:
    bus = await any_bus.open()
    inbox = await Inbox().open(bus)
    running = await start(bus, infra, tmp_path / "agent")
    try:
        await bus.publish(runs_queue(AGENT), request("kuma-1", KUMA, extra_vars={"kuma_port": 3007}))
        await inbox.wait(lambda: bool(inbox.payloads(RunResult, "kuma-1")), "the RunResult")

        kinds = [e.type for e in inbox.about("kuma-1")]
        assert kinds[0] is MessageType.RUN_ACCEPTED and kinds[-1] is MessageType.RUN_RESULT
        assert set(kinds[1:-1]) == {MessageType.RUN_EVENT}
        result = inbox.payloads(RunResult, "kuma-1")[0]
        assert (result.status, result.rc, result.agent_id) == ("successful", 0, AGENT)
        assert result.stats["localhost"].changed > 0 and result.usage is not None
        events = [event for batch in inbox.payloads(RunEvent, "kuma-1") for event in batch.events]
        assert any(e.status == "changed" and e.task == "Render the uptime-kuma compose file" for e in events)
        compose = tmp_path / "lab" / "stacks" / "uptime-kuma" / "docker-compose.yml"
        assert "3007:3001" in compose.read_text()

        beat = inbox.heartbeats.deliveries[0].envelope.payload
        assert isinstance(beat, Heartbeat)
        assert (beat.agent_id, beat.kind.value, beat.labels) == (AGENT, "infra", {"role": "infra"})
        assert beat.capacity.cpu_cores == psutil.cpu_count(logical=True)
        assert beat.capacity.memory_total_mib == psutil.virtual_memory().total // (1024 * 1024)
        assert beat.capacity.gpus == [] or all(gpu.memory_total_mib > 0 for gpu in beat.capacity.gpus)
    finally:
        await running.halt()
    await inbox.wait(lambda: said_offline(inbox), "the AgentOffline, last on the heartbeat queue", within=10)

    # The request was acked on accept: a new agent on the same queue finds nothing to do.
    again = await start(bus, infra, tmp_path / "agent")
    await asyncio.sleep(1)
    await again.halt()
    assert again.agent.executed == []


async def test_the_same_request_twice_runs_once(any_bus: BusFactory, infra: Path, tmp_path: Path) -> None:
    bus = await any_bus.open()
    inbox = await Inbox().open(bus)
    running = await start(bus, infra, tmp_path / "agent")
    try:
        await bus.publish(runs_queue(AGENT), request("twice"))
        await bus.publish(runs_queue(AGENT), request("twice"))
        await inbox.wait(lambda: bool(inbox.payloads(RunResult, "twice")), "the RunResult")
        # A copy arriving after the run finished is answered from the journal.
        await bus.publish(runs_queue(AGENT), request("twice"))
        await inbox.wait(lambda: len(inbox.payloads(RunResult, "twice")) == 2, "the RunResult again")
    finally:
        await running.halt()
    assert running.agent.executed == ["twice"]
    first, second = inbox.payloads(RunResult, "twice")
    assert first == second and first.status == "successful"

    # And after a restart, from the journal on disk.
    restarted = await start(bus, infra, tmp_path / "agent")
    try:
        await bus.publish(runs_queue(AGENT), request("twice"))
        await inbox.wait(
            lambda: len(inbox.payloads(RunResult, "twice")) == 3, "the RunResult after a restart"
        )
    finally:
        await restarted.halt()
    assert restarted.agent.executed == []


async def test_a_stale_epoch_is_refused_also_after_a_restart(
    any_bus: BusFactory, infra: Path, tmp_path: Path
) -> None:
    bus = await any_bus.open()
    inbox = await Inbox().open(bus)
    running = await start(bus, infra, tmp_path / "agent")
    try:
        await bus.publish(runs_queue(AGENT), request("new-leader", epoch=5))
        await inbox.wait(lambda: bool(inbox.payloads(RunResult, "new-leader")), "the epoch-5 run")
        await bus.publish(runs_queue(AGENT), request("old-leader", epoch=3))
        await inbox.wait(lambda: bool(inbox.payloads(ErrorPayload, "old-leader")), "the StaleEpoch error")
    finally:
        await running.halt()
    error = inbox.payloads(ErrorPayload, "old-leader")[0]
    assert error.code == "StaleEpoch" and error.related_message_id == "old-leader"
    assert "epoch 3" in error.message and "epoch 5" in error.message
    assert running.agent.executed == ["new-leader"]

    restarted = await start(bus, infra, tmp_path / "agent")
    try:
        await bus.publish(runs_queue(AGENT), request("old-again", epoch=4))
        await inbox.wait(
            lambda: bool(inbox.payloads(ErrorPayload, "old-again")), "StaleEpoch after a restart"
        )
    finally:
        await restarted.halt()
    assert restarted.agent.executed == []


async def test_cancel_stops_a_running_playbook(memory_bus: BusFactory, infra: Path, tmp_path: Path) -> None:
    bus = await memory_bus.open()
    inbox = await Inbox().open(bus)
    running = await start(bus, infra, tmp_path / "agent")
    try:
        await bus.publish(runs_queue(AGENT), request("slow", SLOW))
        await inbox.wait(lambda: bool(inbox.payloads(RunEvent, "slow")), "the first events")
        await bus.publish(runs_queue(AGENT), cancel("slow"))
        await inbox.wait(lambda: bool(inbox.payloads(RunResult, "slow")), "the canceled RunResult")
    finally:
        await running.halt()
    result = inbox.payloads(RunResult, "slow")[0]
    assert result.status == "canceled" and result.duration_seconds < 60


async def test_requests_that_never_run(memory_bus: BusFactory, infra: Path, tmp_path: Path) -> None:
    bus = await memory_bus.open()
    inbox = await Inbox().open(bus)
    running = await start(bus, infra, tmp_path / "agent")
    past = datetime.now(UTC) - timedelta(minutes=1)
    try:
        # A cancel overtaking its request: the request is answered canceled and never runs.
        await bus.publish(runs_queue(AGENT), cancel("overtaken"))
        await bus.publish(runs_queue(AGENT), request("overtaken"))
        await bus.publish(runs_queue(AGENT), request("too-late", deadline=past))
        await bus.publish(runs_queue(AGENT), request("escape", "../../etc/passwd"))
        await bus.publish(runs_queue(AGENT), request("elsewhere", agent_id="infra-other"))
        await inbox.wait(lambda: bool(inbox.payloads(ErrorPayload, "elsewhere")), "all answers")
    finally:
        await running.halt()
    assert running.agent.executed == []

    overtaken = inbox.payloads(RunResult, "overtaken")[0]
    assert (overtaken.status, overtaken.error) == ("canceled", "canceled before it started")
    late = inbox.payloads(RunResult, "too-late")[0]
    assert (late.status, late.error, late.duration_seconds) == ("timeout", DEADLINE_ERROR, 0)
    [invalid] = inbox.payloads(ErrorPayload, "escape")
    assert invalid.code == "InvalidRequest" and "escapes" in invalid.message
    assert inbox.payloads(RunResult, "escape")[0].status == "failed"
    [wrong] = inbox.payloads(ErrorPayload, "elsewhere")
    assert wrong.code == "WrongAgent" and wrong.related_message_id == "elsewhere"
    assert inbox.payloads(RunAccepted) == []


async def test_a_run_interrupted_by_a_crash_is_reported_failed(
    memory_bus: BusFactory, infra: Path, tmp_path: Path
) -> None:
    work = tmp_path / "agent"
    work.mkdir()
    (work / "journal.jsonl").write_text(
        '{"kind":"accepted","runId":"crashed","at":"2025-05-04T10:00:00+00:00"}\n'
    )
    bus = await memory_bus.open()
    inbox = await Inbox().open(bus)
    running = await start(bus, infra, work)
    try:
        await inbox.wait(lambda: bool(inbox.payloads(RunResult, "crashed")), "the interrupted run's result")
        # Its request coming back (the controller publishing it again) does not run it either.
        await bus.publish(runs_queue(AGENT), request("crashed"))
        await inbox.wait(
            lambda: len(inbox.payloads(RunResult, "crashed")) == 2, "the answer from the journal"
        )
    finally:
        await running.halt()
    assert running.agent.executed == []
    assert {r.status for r in inbox.payloads(RunResult, "crashed")} == {"failed"}


class GatedRunner:
    """Stands in for the ansible-runner adapter: each run waits for its gate (or a cancel)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, run_id: str) -> asyncio.Event:
        return self.gates.setdefault(run_id, asyncio.Event())

    async def __call__(
        self, job: PlaybookJob, on_events: EventSink, cancel: asyncio.Event
    ) -> PlaybookOutcome:
        self.started.append(job.run_id)
        await on_events([AnsibleEvent(seq=1, event="runner_on_ok", task="t", host="h", status="ok")])
        waits = [asyncio.ensure_future(self.gate(job.run_id).wait()), asyncio.ensure_future(cancel.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        status = "canceled" if cancel.is_set() else "successful"
        return PlaybookOutcome(status, 0, {}, 0.01)  # type: ignore[arg-type]


async def test_at_most_max_concurrent_runs(memory_bus: BusFactory, infra: Path, tmp_path: Path) -> None:
    bus = await memory_bus.open()
    inbox = await Inbox().open(bus)
    runner = GatedRunner()
    running = await start(bus, infra, tmp_path / "agent", max_concurrent=2, runner=runner)
    try:
        for name in ("a", "b", "c", "d"):
            await bus.publish(runs_queue(AGENT), request(name))
        await inbox.wait(lambda: len(inbox.payloads(RunAccepted)) == 2, "two runs accepted")
        await asyncio.sleep(0.3)
        assert runner.started == ["a", "b"] and len(inbox.payloads(RunAccepted)) == 2

        # A waiting request is canceled without ever starting; a finished run frees a slot.
        await bus.publish(runs_queue(AGENT), cancel("c"))
        await inbox.wait(lambda: bool(inbox.payloads(RunResult, "c")), "c answered canceled")
        runner.gate("a").set()
        await inbox.wait(lambda: runner.started == ["a", "b", "d"], "d to start once a finished")
        runner.gate("b").set()
        runner.gate("d").set()
        await inbox.wait(lambda: len(inbox.payloads(RunResult)) == 4, "every result")
    finally:
        await running.halt()
    assert inbox.payloads(RunResult, "c")[0].status == "canceled"
    assert [r.status for r in inbox.payloads(RunResult) if r.run_id != "c"] == ["successful"] * 3
    assert inbox.payloads(RunAccepted, "c") == []


async def test_a_clean_stop_cancels_runs_and_returns_waiting_requests(
    memory_bus: BusFactory, infra: Path, tmp_path: Path
) -> None:
    bus = await memory_bus.open()
    inbox = await Inbox().open(bus)
    runner = GatedRunner()
    first = await start(bus, infra, tmp_path / "agent", max_concurrent=1, runner=runner, shutdown_grace=0.2)
    await bus.publish(runs_queue(AGENT), request("running"))
    await bus.publish(runs_queue(AGENT), request("waiting"))
    await inbox.wait(lambda: runner.started == ["running"], "the first run to start")
    await first.halt()
    assert inbox.payloads(RunResult, "running")[0].status == "canceled"
    await inbox.wait(lambda: said_offline(inbox), "the AgentOffline, last on the heartbeat queue", within=10)
    assert inbox.payloads(RunAccepted, "waiting") == []

    # The waiting request was never acked: the next agent on the queue gets it.
    second = await start(bus, infra, tmp_path / "agent", runner=runner)
    try:
        await inbox.wait(lambda: "waiting" in runner.started, "the waiting request to reach the new agent")
        runner.gate("waiting").set()
        await inbox.wait(lambda: bool(inbox.payloads(RunResult, "waiting")), "its result")
    finally:
        await second.halt()
    assert runner.started == ["running", "waiting"]


def said_offline(inbox: Inbox) -> bool:
    """The agent's last word on the heartbeat queue is AgentOffline (a broker delivers it a moment later)."""
    deliveries = inbox.heartbeats.deliveries
    return bool(deliveries) and isinstance(deliveries[-1].envelope.payload, AgentOffline)


async def test_heartbeats_keep_coming(memory_bus: BusFactory, infra: Path, tmp_path: Path) -> None:
    bus = await memory_bus.open()
    inbox = await Inbox().open(bus)
    running = await start(
        bus, infra, tmp_path / "agent", heartbeat_interval=0.1, labels={"role": "infra", "site": "x"}
    )
    try:
        await inbox.wait(lambda: len(inbox.heartbeats.deliveries) >= 4, "four heartbeats", within=10)
    finally:
        await running.halt()
    beats = [d.envelope.payload for d in inbox.heartbeats.deliveries]
    assert all(isinstance(b, Heartbeat) and b.labels == {"role": "infra", "site": "x"} for b in beats[:-1])
    assert isinstance(beats[-1], AgentOffline)


RABBITMQCTL = shutil.which("rabbitmqctl")


async def close_connections_of(prefix: str) -> int:
    """Close (broker side) every connection whose name carries ``prefix``; how many."""
    assert RABBITMQCTL is not None

    async def ctl(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            RABBITMQCTL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        return out.decode()

    listing = await ctl("list_connections", "--quiet", "--no-table-headers", "pid", "client_properties")
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if prefix in line]
    for pid in pids:
        await ctl("close_connection", pid, "test: simulated network failure")
    return len(pids)


@pytest.mark.skipif(RABBITMQCTL is None, reason="needs rabbitmqctl on this machine")
async def test_the_agent_survives_a_dropped_connection(infra: Path, tmp_path: Path) -> None:
    factory = BusFactory("amqp", unique_prefix())
    try:
        controller_bus = await factory.open()
        agent_bus = await factory.open()
        inbox = await Inbox().open(controller_bus)
        running = await start(agent_bus, infra, tmp_path / "agent", heartbeat_interval=0.3)
        try:
            await controller_bus.publish(
                runs_queue(AGENT), request("across-the-drop", "ansible/playbooks/medium.yml")
            )
            await inbox.wait(lambda: bool(inbox.payloads(RunAccepted, "across-the-drop")), "the run to start")
            assert await close_connections_of(factory.prefix) == 2
            await inbox.wait(lambda: bool(inbox.payloads(RunResult, "across-the-drop")), "its result")
            events = [e for batch in inbox.payloads(RunEvent, "across-the-drop") for e in batch.events]
            assert any(e.task == "Say done" for e in events)  # events published after the drop arrived
            beats = len(inbox.heartbeats.deliveries)
            await inbox.wait(
                lambda: len(inbox.heartbeats.deliveries) > beats + 2, "heartbeats after the drop"
            )
            await controller_bus.publish(runs_queue(AGENT), request("after-the-drop"))
            await inbox.wait(
                lambda: bool(inbox.payloads(RunResult, "after-the-drop")), "a run after the drop"
            )
        finally:
            await running.halt()
        assert running.agent.executed == ["across-the-drop", "after-the-drop"]
        assert {r.status for r in inbox.payloads(RunResult)} == {"successful"}
    finally:
        await factory.cleanup()
