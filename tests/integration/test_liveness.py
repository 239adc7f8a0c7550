"""Agent liveness on the real store (SQLite and PostgreSQL), with the real consumers and reconciler.

The clock is fake, so minutes of silence take no time: each scenario feeds
heartbeats and results through the controller's own consumers (the heartbeat
handler wrapped by :meth:`Liveness.observing`, as the controller subscribes
it), runs the liveness check, and looks at the world afterwards — agents,
runs, audit events, the intent's conditions — never at the calls made.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from chiffon.controllers.consumers import HeartbeatConsumer, ResultConsumer
from chiffon.controllers.intent_reconciler import IntentReconciler, intent_key
from chiffon.controllers.liveness import Liveness, LivenessConfig
from chiffon.controllers.planner import Planner
from chiffon.controllers.reconcile import Result, Stalled, Waiting
from chiffon.resources import (
    AgentKind,
    AuditEvent,
    Capacity,
    Outcome,
    Run,
    RunStatus,
    find_condition,
    run_id,
)
from chiffon.resources.messages import (
    AgentOffline,
    Heartbeat,
    RunAccepted,
    RunResult,
    make_envelope,
)
from chiffon.resources.yamlio import parse_intents
from chiffon.store import SourceRef, Store
from tests.integration.reconcile_world import Clock, FakeDelivery

ROOT = Path(__file__).resolve().parents[2]

INTENT = """\
apiVersion: chiffon.dev/v1alpha1
kind: DeploymentIntent
metadata:
  name: kuma
spec:
  steps:
    - name: deploy
      playbook: ansible/playbooks/kuma-deployment.yml
  inventory: ansible/inventory/hosts.yml
  limit: localhost
  approval: Auto
"""


@dataclass
class World:
    store: Store
    clock: Clock
    reconciler: IntentReconciler
    results: ResultConsumer
    heartbeats: HeartbeatConsumer
    liveness: Liveness
    enqueued: list[str]
    capacity_wakes: list[int]

    async def put_intent(self) -> None:
        parsed = parse_intents(INTENT, "kuma.yaml")
        assert not parsed.errors
        await self.store.upsert_intent(
            parsed.intents[0].intent, SourceRef("intents", "kuma.yaml", "b1", "rev-1"), now=self.clock()
        )

    async def reconcile(self) -> Result | Exception:
        try:
            return await self.reconciler.reconcile(intent_key("kuma"))
        except (Waiting, Stalled) as stopped:
            return stopped

    async def beat(self, agent_id: str = "infra-1", *, runs: list[str] | None = None) -> None:
        capacity = Capacity(
            cpu_load_percent=5, cpu_cores=8, memory_total_mib=32000, memory_available_mib=16000
        )
        beat = Heartbeat(
            agent_id=agent_id, kind=AgentKind.INFRA, labels={"role": "infra"}, capacity=capacity, runs=runs
        )
        await self.liveness.observing(self.heartbeats.handle)(FakeDelivery(make_envelope(beat)))

    async def say_offline(self, agent_id: str = "infra-1") -> None:
        message = make_envelope(AgentOffline(agent_id=agent_id))
        await self.liveness.observing(self.heartbeats.handle)(FakeDelivery(message))

    async def accept(self, run: str, agent_id: str = "infra-1") -> None:
        accepted = make_envelope(RunAccepted(run_id=run, agent_id=agent_id), correlation_id=run)
        await self.results.handle(FakeDelivery(accepted))

    async def result(
        self, run: str, status: str = "successful", *, agent_id: str = "infra-1", **kw: object
    ) -> None:
        payload = RunResult(run_id=run, agent_id=agent_id, status=status, duration_seconds=3, **kw)  # type: ignore[arg-type]
        await self.results.handle(FakeDelivery(make_envelope(payload, correlation_id=run)))

    async def runs(self) -> list[Run]:
        return sorted(await self.store.list_runs(intent="kuma"), key=lambda run: run.attempt)

    async def run(self, identifier: str) -> Run:
        found = await self.store.get_run(identifier)
        assert found is not None
        return found

    async def online(self, agent_id: str = "infra-1") -> bool:
        agent = await self.store.get_agent(agent_id)
        assert agent is not None
        return agent.online

    async def audit(self, action: str) -> list[AuditEvent]:
        return await self.store.list_audit(action=action)

    async def ready(self) -> tuple[str, str, str, str | None]:
        intent = await self.store.get_intent("kuma")
        assert intent is not None and intent.status is not None
        ready = find_condition(intent.status.conditions, "Ready")
        assert ready is not None
        return ready.status.value, ready.reason, ready.message, intent.status.blocked_by


@pytest.fixture
async def world(store: Store, tmp_path: Path) -> World:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples/homelab-infra", infra)
    clock = Clock()
    enqueued: list[str] = []
    wakes: list[int] = []
    reconciler = IntentReconciler(
        store, Planner(infra, syntax_check=False), epoch=lambda: 1, on_dispatch=lambda: None, clock=clock
    )
    liveness = Liveness(
        store,
        LivenessConfig(),  # 15 s heartbeats: offline after 45 s of silence, failed 45 s later
        enqueue=enqueued.append,
        on_capacity=lambda: wakes.append(1),
        clock=clock,
    )
    return World(
        store,
        clock,
        reconciler,
        ResultConsumer(store, enqueue=enqueued.append, clock=clock),
        HeartbeatConsumer(store, on_capacity=lambda: None, clock=clock),
        liveness,
        enqueued,
        wakes,
    )


async def running_run(world: World) -> Run:
    """kuma dispatched to infra-1, accepted, and listed in infra-1's next heartbeat."""
    await world.beat(runs=[])
    await world.liveness.start()
    await world.put_intent()
    assert await world.reconcile() == Result(requeue_after=60.0)
    [run] = await world.runs()
    assert (run.status, run.agent_id, run.attempt) == (RunStatus.PENDING, "infra-1", 1)
    world.clock.advance(1)
    await world.accept(run.id)
    world.clock.advance(14)
    await world.beat(runs=[run.id])
    assert (await world.liveness.check()).actions == ()
    return await world.run(run.id)


async def test_a_run_lost_with_its_agent_goes_unknown_then_failed_and_the_step_is_retried(
    world: World,
) -> None:
    run = await running_run(world)
    assert run.status is RunStatus.RUNNING
    silent_since = world.clock()

    world.clock.advance(45)  # three intervals: not yet
    assert (await world.liveness.check()).actions == ()
    world.clock.advance(1)
    await world.liveness.check()
    assert not await world.online()
    [offline] = await world.audit("agent.offline")
    assert offline.resource == "Agent/infra-1" and offline.outcome is Outcome.FAILURE
    assert offline.details["last_seen"] == silent_since.isoformat()
    assert world.capacity_wakes
    lost = await world.run(run.id)
    assert lost.status is RunStatus.UNKNOWN
    assert lost.error == "agent infra-1 stopped heartbeating (last heartbeat 2026-11-23 12:00:15Z)"
    assert world.enqueued[-1] == "kuma"
    await world.reconcile()
    status, reason, message, blocked_by = await world.ready()
    assert (status, reason) == ("False", "Applying")
    assert f"is unknown on infra-1 (run {run.id}). Agent infra-1 stopped heartbeating" in message
    assert blocked_by == f"run {run.id} is unknown: {lost.error}"

    world.clock.advance(44)  # the grace: one more deadline
    assert (await world.liveness.check()).actions == ()
    world.clock.advance(1)
    await world.liveness.check()
    failed = await world.run(run.id)
    assert failed.status is RunStatus.FAILED and failed.finished_at == world.clock()
    assert failed.error == (
        "agent infra-1 went silent at 2026-11-23 12:00:15Z while running step deploy; no result after 91s"
    )
    [audit] = await world.audit("run.lost")
    assert audit.outcome is Outcome.FAILURE and audit.details["run"] == run.id
    assert [event.details["status"] for event in await world.audit("run.unknown")] == ["unknown"]

    # The intent retries as after any failure: 10 s later, attempt 2, a new run id, on an agent that is up.
    stopped = await world.reconcile()
    assert isinstance(stopped, Waiting) and stopped.reason == "ApplyFailed"
    assert "went silent" in stopped.message and "attempt 2 in 10s" in stopped.message
    world.clock.advance(10)
    await world.beat("infra-2", runs=[])
    await world.reconcile()
    first, second = await world.runs()
    assert first.id == run.id and second.attempt == 2 and second.agent_id == "infra-2"
    assert second.id == run_id("kuma", run.generation, run.plan_digest, "deploy", 2) != run.id
    await world.accept(second.id, "infra-2")
    await world.result(second.id, agent_id="infra-2")
    assert await world.reconcile() == Result(requeue_after=3600.0)  # the first drift check
    assert (await world.ready())[:2] == ("True", "Applied")


async def test_an_agent_that_comes_back_and_claims_its_run_keeps_it(world: World) -> None:
    run = await running_run(world)
    world.clock.advance(46)
    await world.liveness.check()
    assert (await world.run(run.id)).status is RunStatus.UNKNOWN

    world.clock.advance(10)
    await world.beat(runs=[run.id])  # back, still running it
    await world.liveness.check()
    claimed = await world.run(run.id)
    assert (claimed.status, claimed.error) == (RunStatus.RUNNING, None)
    assert await world.online()
    [online] = await world.audit("agent.online")
    assert online.outcome is Outcome.INFO
    [audit] = await world.audit("run.claimed")
    assert audit.details["message"] == "agent infra-1 claimed the run at 2026-11-23 12:01:11Z"

    world.clock.advance(120)  # long past the grace: a claimed run is not failed
    await world.beat(runs=[run.id])
    await world.liveness.check()
    assert (await world.run(run.id)).status is RunStatus.RUNNING
    await world.result(run.id)
    await world.reconcile()
    assert (await world.ready())[:2] == ("True", "Applied")


@pytest.mark.parametrize(
    ("status", "error", "ready"),
    [
        ("successful", None, ("True", "Applied")),
        ("failed", "agent infra-1 restarted while the run was in progress", ("False", "ApplyFailed")),
    ],
    ids=["late-success", "restarted-agent-reports-failure"],
)
async def test_a_result_for_an_unknown_run_finishes_it(
    world: World, status: str, error: str | None, ready: tuple[str, str]
) -> None:
    run = await running_run(world)
    world.clock.advance(46)
    await world.liveness.check()
    assert (await world.run(run.id)).status is RunStatus.UNKNOWN

    await world.result(run.id, status, error=error)
    done = await world.run(run.id)
    assert (done.status.value, done.error) == (status, error)
    await world.reconcile()
    assert (await world.ready())[:2] == ready
    world.clock.advance(60)
    decisions = await world.liveness.check()
    assert not any(getattr(action, "run_id", None) == run.id for action in decisions.actions)
    assert (await world.run(run.id)).status.value == status
    assert await world.audit("run.lost") == []


async def test_a_run_its_agent_stopped_listing_goes_unknown_then_failed(world: World) -> None:
    run = await running_run(world)
    for _ in range(4):  # the agent heartbeats on, but without the run (it restarted without a journal)
        world.clock.advance(15)
        await world.beat(runs=[])
        await world.liveness.check()
    lost = await world.run(run.id)
    assert lost.status is RunStatus.UNKNOWN and await world.online()
    assert lost.error == "agent infra-1 heartbeats but has not listed this run since 2026-11-23 12:00:15Z"
    for _ in range(3):
        world.clock.advance(15)
        await world.beat(runs=[])
        await world.liveness.check()
    failed = await world.run(run.id)
    assert failed.status is RunStatus.FAILED
    assert failed.error is not None and "stopped listing the run at 2026-11-23 12:00:15Z" in failed.error


async def test_a_request_queued_for_an_offline_agent_stays_pending_and_says_why(world: World) -> None:
    await world.beat(runs=[])
    await world.liveness.start()
    await world.put_intent()
    await world.reconcile()
    [run] = await world.runs()
    world.clock.advance(46)  # the agent died before taking the request
    await world.liveness.check()
    waiting = await world.run(run.id)
    assert waiting.status is RunStatus.PENDING
    assert waiting.error == (
        "queued for agent infra-1, which is offline (last heartbeat 2026-11-23 12:00:00Z); "
        "it starts when infra-1 comes back"
    )
    await world.reconcile()
    _, reason, message, blocked_by = await world.ready()
    assert reason == "Applying" and "Queued for agent infra-1, which is offline" in message
    assert blocked_by == f"run {run.id} is pending: {waiting.error}"
    world.clock.advance(600)  # however long: the durable queue holds the request; it is never failed
    await world.liveness.check()
    assert (await world.run(run.id)).status is RunStatus.PENDING

    await world.beat(runs=[])  # back: it will take the request from its queue
    await world.liveness.check()
    back = await world.run(run.id)
    assert (back.status, back.error) == (RunStatus.PENDING, None)
    await world.reconcile()
    assert (await world.ready())[3] is None
    await world.accept(run.id)
    await world.result(run.id)
    await world.reconcile()
    assert (await world.ready())[:2] == ("True", "Applied")


async def test_agent_offline_takes_effect_at_once_and_a_heartbeat_undoes_it(world: World) -> None:
    await world.beat(runs=[])
    await world.liveness.start()
    world.clock.advance(2)
    await world.say_offline()
    await world.liveness.check()
    assert not await world.online()
    [offline] = await world.audit("agent.offline")
    assert offline.outcome is Outcome.INFO
    assert offline.details["reason"] == "said it is going offline: clean shutdown"
    await world.liveness.check()
    assert len(await world.audit("agent.offline")) == 1  # recorded once

    world.clock.advance(30)
    await world.beat(runs=[])
    await world.liveness.check()
    assert await world.online()
    assert len(await world.audit("agent.online")) == 1


async def test_a_new_leader_gives_every_agent_one_deadline(world: World) -> None:
    await world.beat(runs=[])  # heard by an earlier leader, 10 minutes ago
    world.clock.advance(600)
    fresh = Liveness(
        world.store,
        LivenessConfig(),
        enqueue=world.enqueued.append,
        on_capacity=lambda: None,
        clock=world.clock,
    )
    await fresh.start()
    world.clock.advance(44)
    assert (await fresh.check()).actions == ()
    assert await world.online()
    world.clock.advance(2)
    await fresh.check()
    assert not await world.online()
    [offline] = await world.audit("agent.offline")
    assert "last heartbeat 2026-11-23 12:00:00Z" in str(offline.details["reason"])

    # An agent already offline when a leader starts is not reported again, nor back until it beats.
    again = Liveness(
        world.store,
        LivenessConfig(),
        enqueue=world.enqueued.append,
        on_capacity=lambda: None,
        clock=world.clock,
    )
    await again.start()
    world.clock.advance(100)
    assert (await again.check()).actions == ()


async def test_writes_lose_to_a_newer_heartbeat_or_result(world: World) -> None:
    run = await running_run(world)
    agent = await world.store.get_agent("infra-1")
    assert agent is not None and agent.last_seen is not None
    stale = agent.last_seen - timedelta(seconds=1)
    assert not await world.store.mark_agent_offline("infra-1", seen=stale)
    assert await world.online()
    await world.result(run.id)
    assert not await world.store.set_run_status(
        run.id, expected=RunStatus.RUNNING, status=RunStatus.UNKNOWN, error="lost"
    )
    assert (await world.run(run.id)).status is RunStatus.SUCCESSFUL
    assert [r.id for r in await world.store.runs_in_flight()] == []
    assert await world.store.mark_agent_offline("infra-1", seen=agent.last_seen)
    assert not await world.online()


async def test_the_loop_checks_at_once_on_news_and_stops_when_told(world: World) -> None:
    await world.beat(runs=[])
    stop = asyncio.Event()
    loop = asyncio.create_task(world.liveness.run(stop))
    try:
        await asyncio.sleep(0.2)  # started and checked once; the next check is 5 s away
        await world.say_offline()
        for _ in range(50):
            if not await world.online():
                break
            await asyncio.sleep(0.05)
        assert not await world.online(), "AgentOffline should wake the check at once"
        world.clock.advance(1)
        await world.beat(runs=[])  # a heartbeat from an agent declared offline wakes it too
        for _ in range(50):
            if await world.online():
                break
            await asyncio.sleep(0.05)
        assert await world.online()
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)
