"""Heartbeats say which runs an agent still owes a result for (``runs``), and a restart owns up.

The infra agent runs on the in-process bus with a stand-in for the
ansible-runner adapter (our own boundary) that holds each run until the test
lets it finish; the test reads the heartbeats and results the agent publishes.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chiffon.agents.desktop import DesktopAgent
from chiffon.agents.infra import InfraAgent
from chiffon.agents.runner import EventSink, PlaybookJob, PlaybookOutcome
from chiffon.bus import HEARTBEATS_QUEUE, RESULTS_QUEUE, Bus, runs_queue
from chiffon.resources.messages import Heartbeat, RunAccepted, RunRequest, RunResult, make_envelope
from tests.contract.support import BusFactory, Recorder, eventually, unique_prefix

ROOT = Path(__file__).resolve().parents[2]
AGENT = "infra-claims"


class HeldRunner:
    """Each run waits until the test releases it, then succeeds."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(
        self, job: PlaybookJob, on_events: EventSink, cancel: asyncio.Event
    ) -> PlaybookOutcome:
        await self.release.wait()
        return PlaybookOutcome("successful", 0, {}, 0.01)


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    factory = BusFactory("memory", unique_prefix())
    try:
        yield await factory.open()
    finally:
        await factory.cleanup()


def request(run_id: str) -> RunRequest:
    return RunRequest(
        run_id=run_id,
        intent="kuma",
        generation=1,
        plan_digest="sha256:x",
        step="deploy",
        playbook="ansible/playbooks/kuma-deployment.yml",
        inventory="ansible/inventory/hosts.yml",
        limit="localhost",
        agent_id=AGENT,
    )


def payloads(recorder: Recorder, kind: type) -> list:  # type: ignore[type-arg]
    return [d.envelope.payload for d in recorder.deliveries if isinstance(d.envelope.payload, kind)]


async def test_heartbeats_list_the_runs_in_progress(bus: Bus, tmp_path: Path) -> None:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", infra)
    for queue in (HEARTBEATS_QUEUE, RESULTS_QUEUE, runs_queue(AGENT)):
        await bus.declare(queue)
    beats, results = Recorder(), Recorder()
    await bus.consume(HEARTBEATS_QUEUE, beats)
    await bus.consume(RESULTS_QUEUE, results)
    runner = HeldRunner()
    agent = InfraAgent(bus, repo=infra, work_dir=tmp_path / "agent", agent_id=AGENT, runner=runner)
    stop = asyncio.Event()
    serving = asyncio.create_task(agent.run(stop))
    try:
        await eventually(lambda: bool(payloads(beats, Heartbeat)), what="the first heartbeat")
        first = payloads(beats, Heartbeat)[0]
        assert (first.runs, first.interval_seconds) == ([], 15)

        await bus.publish(runs_queue(AGENT), make_envelope(request("r-1"), message_id="r-1"))
        await eventually(lambda: bool(payloads(results, RunAccepted)), what="RunAccepted")
        await agent.heartbeat()
        await eventually(lambda: payloads(beats, Heartbeat)[-1].runs == ["r-1"], what="a claim of r-1")

        runner.release.set()
        await eventually(lambda: bool(payloads(results, RunResult)), what="the RunResult")
        await eventually(lambda: "r-1" in agent.journal.reported, what="the result confirmed")
        await agent.heartbeat()
        await eventually(lambda: payloads(beats, Heartbeat)[-1].runs == [], what="no claim any more")
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)


async def test_a_restarted_agent_reports_the_run_it_died_under(bus: Bus, tmp_path: Path) -> None:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples" / "homelab-infra", infra)
    work = tmp_path / "agent"
    work.mkdir()
    (work / "journal.jsonl").write_text(
        '{"kind":"accepted","runId":"r-9","at":"2026-05-04T10:00:00+00:00"}\n'
    )
    for queue in (HEARTBEATS_QUEUE, RESULTS_QUEUE):
        await bus.declare(queue)
    beats, results = Recorder(), Recorder()
    await bus.consume(HEARTBEATS_QUEUE, beats)
    await bus.consume(RESULTS_QUEUE, results)
    agent = InfraAgent(bus, repo=infra, work_dir=work, agent_id=AGENT, runner=HeldRunner())
    stop = asyncio.Event()
    serving = asyncio.create_task(agent.run(stop))
    try:
        await eventually(lambda: bool(payloads(results, RunResult)), what="the interrupted run's result")
        await eventually(lambda: bool(payloads(beats, Heartbeat)), what="a heartbeat")
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)
    [result] = payloads(results, RunResult)
    assert (result.run_id, result.status) == ("r-9", "failed")
    assert result.error == f"agent {AGENT} restarted while the run was in progress"
    assert payloads(beats, Heartbeat)[0].runs == []  # it does not claim what it lost


async def test_a_desktop_agent_lists_no_runs(bus: Bus) -> None:
    await bus.declare(HEARTBEATS_QUEUE)
    beats = Recorder()
    await bus.consume(HEARTBEATS_QUEUE, beats)
    desktop = DesktopAgent(bus, agent_id="desk-claims", heartbeat_interval=2)
    await desktop.heartbeat()
    await eventually(lambda: bool(payloads(beats, Heartbeat)), what="a heartbeat")
    [beat] = payloads(beats, Heartbeat)
    assert (beat.runs, beat.interval_seconds) == (None, 2)
    assert (
        b'"runs"'
        not in beats.deliveries[0].envelope.model_dump_json(by_alias=True, exclude_none=True).encode()
    )
