"""The DeploymentIntent reconciler, scenario by scenario, on the real store and a real planner.

Each scenario checks the state of the world afterwards — conditions, runs,
outbox rows, audit — not the calls that were made.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chiffon.bus import runs_queue
from chiffon.controllers.abort import AbortError, abort_intent
from chiffon.controllers.consumers import HeartbeatConsumer, ResultConsumer
from chiffon.controllers.intent_reconciler import IntentReconciler, intent_key
from chiffon.controllers.planner import Planner
from chiffon.controllers.reconcile import Result, Stalled, Waiting
from chiffon.resources import (
    AgentKind,
    Approval,
    Capacity,
    Decision,
    DeploymentIntent,
    GpuInfo,
    RunStatus,
    find_condition,
)
from chiffon.resources.messages import (
    CancelRun,
    Envelope,
    Heartbeat,
    RunAccepted,
    RunRequest,
    RunResult,
    decode_envelope,
    make_envelope,
)
from chiffon.resources.yamlio import parse_intents
from chiffon.store import SourceRef, Store

ROOT = Path(__file__).resolve().parents[2]
KUMA = "ansible/playbooks/kuma-deployment.yml"
PORTALS = "ansible/playbooks/kuma-config-update.yml"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeDelivery:
    """Our own bus adapter's Delivery, for feeding consumers real envelopes."""

    envelope: Envelope
    redelivered: bool = False
    acked: list[bool] = field(default_factory=list)

    async def ack(self) -> None:
        self.acked.append(True)

    async def reject(self, *, requeue: bool) -> None:
        raise AssertionError("consumers ack what they handled")


def intent_text(
    name: str,
    *,
    approval: str = "Manual",
    steps: tuple[str, ...] = (KUMA,),
    depends: str = "",
    gpu: int = 0,
    port: int = 3001,
) -> str:
    step_lines = "".join(f"    - name: step-{i}\n      playbook: {p}\n" for i, p in enumerate(steps, 1))
    return (
        f"apiVersion: chiffon.dev/v1alpha1\nkind: DeploymentIntent\nmetadata:\n  name: {name}\n"
        f"spec:\n  steps:\n{step_lines}  inventory: ansible/inventory/hosts.yml\n  limit: localhost\n"
        f"  vars: {{kuma_port: {port}}}\n  approval: {approval}\n  resources: {{gpuMemoryMiB: {gpu}}}\n"
        + (f"  dependsOn: [{depends}]\n" if depends else "")
    )


def parse(text: str) -> DeploymentIntent:
    result = parse_intents(text, "test.yaml")
    assert not result.errors, result.errors
    return result.intents[0].intent


@dataclass
class World:
    store: Store
    reconciler: IntentReconciler
    results: ResultConsumer
    heartbeats: HeartbeatConsumer
    clock: Clock
    enqueued: list[str]
    dispatches: list[int]

    async def put(self, text: str, blob: str = "b1") -> DeploymentIntent:
        intent = parse(text)
        await self.store.upsert_intent(
            intent,
            SourceRef("intents", f"{intent.metadata.name}.yaml", blob, "rev-" + blob),
            now=self.clock(),
        )
        return intent

    async def reconcile(self, name: str) -> Result | Exception:
        try:
            return await self.reconciler.reconcile(intent_key(name))
        except (Waiting, Stalled) as stopped:
            return stopped

    async def condition(self, name: str, kind: str) -> tuple[str, str]:
        intent = await self.store.get_intent(name)
        assert intent is not None and intent.status is not None
        found = find_condition(intent.status.conditions, kind)
        assert found is not None, f"{kind} missing from {intent.status.conditions}"
        return found.status.value, found.reason

    async def approve(self, name: str) -> None:
        intent = await self.store.get_intent(name)
        assert intent is not None and intent.status is not None and intent.status.plan is not None
        await self.store.record_approval(
            Approval(
                intent=name,
                digest=intent.status.plan.digest,
                decision=Decision.APPROVED,
                actor="Alice <a@x>",
                created_at=self.clock(),
            )
        )

    async def heartbeat(
        self,
        agent_id: str = "infra-1",
        *,
        kind: AgentKind = AgentKind.INFRA,
        gpu_free: int = 0,
        labels: dict[str, str] | None = None,
    ) -> None:
        gpus = [GpuInfo(index=0, memory_total_mib=24000, memory_free_mib=gpu_free)] if gpu_free else []
        capacity = Capacity(
            cpu_load_percent=5, cpu_cores=8, memory_total_mib=32000, memory_available_mib=16000, gpus=gpus
        )
        beat = Heartbeat(agent_id=agent_id, kind=kind, labels=labels or {}, capacity=capacity)
        await self.heartbeats.handle(FakeDelivery(make_envelope(beat)))

    async def offline(self, agent_id: str = "infra-1") -> None:
        agents = {a.id: a for a in await self.store.list_agents()}
        await self.store.upsert_agent(agents[agent_id].model_copy(update={"online": False}))

    async def outbox_requests(self) -> list[RunRequest]:
        requests = []
        for message in await self.store.pending_outbox(1000):
            payload = decode_envelope(message.body).payload
            if isinstance(payload, CancelRun):
                continue
            assert isinstance(payload, RunRequest)
            assert message.routing_key == runs_queue(payload.agent_id or "")
            requests.append(payload)
        return requests

    async def finish(self, run_id: str, status: str = "successful", error: str | None = None) -> None:
        await self.results.handle(FakeDelivery(make_envelope(RunAccepted(run_id=run_id, agent_id="infra-1"))))
        self.clock.advance(5)
        result = RunResult(
            run_id=run_id,
            agent_id="infra-1",
            status=status,
            rc=0 if status == "successful" else 2,
            duration_seconds=5,
            error=error,
        )
        await self.results.handle(FakeDelivery(make_envelope(result)))


@pytest.fixture
async def world(store: Store, tmp_path: Path) -> World:
    infra = tmp_path / "homelab-infra"
    shutil.copytree(ROOT / "examples/homelab-infra", infra)
    clock = Clock()
    enqueued: list[str] = []
    dispatches: list[int] = []
    reconciler = IntentReconciler(
        store,
        Planner(infra, syntax_check=False),
        epoch=lambda: 7,
        on_dispatch=lambda: dispatches.append(1),
        clock=clock,
    )
    return World(
        store,
        reconciler,
        ResultConsumer(store, enqueue=enqueued.append, clock=clock),
        HeartbeatConsumer(store, on_capacity=lambda: enqueued.append("capacity"), clock=clock),
        clock,
        enqueued,
        dispatches,
    )


async def test_manual_intent_waits_for_approval_then_capacity_then_dispatches(world: World) -> None:
    await world.put(intent_text("kuma"))
    stopped = await world.reconcile("kuma")
    assert isinstance(stopped, Waiting) and stopped.reason == "AwaitingApproval"
    assert await world.condition("kuma", "Planned") == ("True", "PlanReady")
    assert await world.condition("kuma", "Approved") == ("False", "AwaitingApproval")
    assert await world.condition("kuma", "Ready") == ("False", "AwaitingApproval")
    kuma = await world.store.get_intent("kuma")
    assert kuma and kuma.status and kuma.status.plan and len(kuma.status.plan.digest) == 64
    assert "chiffonctl approve kuma" in (kuma.status.blocked_by or "")
    assert kuma.status.observed_generation == 1 and kuma.status.observed_revision == "rev-b1"

    await world.approve("kuma")
    stopped = await world.reconcile("kuma")
    assert isinstance(stopped, Waiting) and stopped.reason == "NoMatchingAgent"
    assert await world.condition("kuma", "Approved") == ("True", "Approved")
    assert await world.outbox_requests() == []

    await world.heartbeat()
    assert "capacity" in world.enqueued
    result = await world.reconcile("kuma")
    assert result == Result(requeue_after=60.0)
    [request] = await world.outbox_requests()
    assert (request.step, request.attempt, request.epoch, request.agent_id) == ("step-1", 1, 7, "infra-1")
    assert request.extra_vars == {"kuma_port": 3001} and request.playbook == KUMA
    assert await world.condition("kuma", "Ready") == ("False", "Applying")
    assert await world.condition("kuma", "Reconciling") == ("True", "Applying")
    assert world.dispatches == [1]

    # Reconciling again (a restart, a duplicate event) dispatches nothing new.
    await world.reconcile("kuma")
    assert len(await world.outbox_requests()) == 1 and world.dispatches == [1]


async def test_steps_run_in_order_and_ready_when_all_succeed(world: World) -> None:
    await world.put(intent_text("kuma", approval="Auto", steps=(KUMA, PORTALS)))
    await world.heartbeat()
    await world.reconcile("kuma")
    [first] = await world.outbox_requests()
    await world.finish(first.run_id)
    assert world.enqueued[-1] == "kuma"
    await world.reconcile("kuma")
    requests = await world.outbox_requests()
    assert [r.step for r in requests] == ["step-1", "step-2"]
    await world.finish(requests[1].run_id)
    assert await world.reconcile("kuma") == Result()
    assert await world.condition("kuma", "Ready") == ("True", "Applied")
    kuma = await world.store.get_intent("kuma")
    assert kuma and kuma.status and kuma.status.last_applied_digest == kuma.status.plan.digest  # type: ignore[union-attr]
    actions = [e.action for e in await world.store.list_audit(resource="DeploymentIntent/kuma")]
    assert actions.count("dispatch") == 2 and "applied" in actions and actions.count("run.result") == 2


async def test_a_changed_spec_needs_a_new_approval(world: World) -> None:
    await world.put(intent_text("kuma"))
    await world.reconcile("kuma")
    await world.approve("kuma")
    await world.heartbeat()
    await world.reconcile("kuma")
    assert await world.condition("kuma", "Approved") == ("True", "Approved")
    await world.put(intent_text("kuma", port=4000), blob="b2")
    stopped = await world.reconcile("kuma")
    assert isinstance(stopped, Waiting) and stopped.reason == "PlanChanged"
    assert await world.condition("kuma", "Approved") == ("False", "PlanChanged")
    assert len(await world.outbox_requests()) == 1  # nothing new went out for generation 2


async def test_a_comment_only_change_keeps_the_approval(world: World) -> None:
    await world.put(intent_text("kuma"))
    await world.reconcile("kuma")
    await world.approve("kuma")
    await world.put("# just a comment\n" + intent_text("kuma"), blob="b2")
    await world.heartbeat()
    assert await world.reconcile("kuma") == Result(requeue_after=60.0)
    kuma = await world.store.get_intent("kuma")
    assert (
        kuma and kuma.metadata.generation == 1 and kuma.status and kuma.status.observed_revision == "rev-b2"
    )


async def test_dependencies_hold_until_ready(world: World) -> None:
    await world.put(intent_text("proxy", approval="Auto"))
    await world.put(intent_text("kuma", approval="Auto", depends="proxy"))
    await world.heartbeat()
    stopped = await world.reconcile("kuma")
    assert isinstance(stopped, Waiting) and stopped.reason == "WaitingForDependency"
    assert await world.condition("kuma", "Scheduled") == ("False", "WaitingForDependency")
    await world.reconcile("proxy")
    [request] = await world.outbox_requests()
    await world.finish(request.run_id)
    await world.reconcile("proxy")
    await world.reconcile("kuma")
    assert [r.intent for r in await world.outbox_requests()] == ["proxy", "kuma"]


async def test_pause_between_steps_and_resume(world: World) -> None:
    await world.put(intent_text("kuma", approval="Auto", steps=(KUMA, PORTALS)))
    await world.heartbeat()
    await world.reconcile("kuma")
    [first] = await world.outbox_requests()
    await world.finish(first.run_id)
    await world.offline()
    stopped = await world.reconcile("kuma")
    assert isinstance(stopped, Waiting)
    assert await world.condition("kuma", "Ready") == ("False", "Paused")
    await world.heartbeat()
    await world.reconcile("kuma")
    assert [r.step for r in await world.outbox_requests()] == ["step-1", "step-2"]
    actions = [e.action for e in await world.store.list_audit(resource="DeploymentIntent/kuma")]
    assert "pause" in actions and "resume" in actions


async def test_insufficient_gpu_waits_then_runs_when_a_desktop_has_room(world: World) -> None:
    await world.put(intent_text("ollama", approval="Auto", gpu=8192))
    await world.heartbeat()
    await world.heartbeat("desk", kind=AgentKind.DESKTOP, gpu_free=4096)
    stopped = await world.reconcile("ollama")
    assert isinstance(stopped, Waiting) and stopped.reason == "InsufficientCapacity"
    assert "4096 MiB GPU memory free, 8192 MiB needed" in stopped.message
    assert intent_key("ollama") in world.reconciler.waiting_for_capacity
    await world.heartbeat("desk", kind=AgentKind.DESKTOP, gpu_free=12000)
    await world.reconcile("ollama")
    [request] = await world.outbox_requests()
    assert request.agent_id == "infra-1"
    assert await world.condition("ollama", "Scheduled") == ("True", "AgentSelected")


async def test_failed_runs_retry_with_backoff_then_stall(world: World) -> None:
    await world.put(intent_text("kuma", approval="Auto"))
    await world.heartbeat()
    for attempt in (1, 2, 3):
        await world.reconcile("kuma")
        requests = await world.outbox_requests()
        assert requests[-1].attempt == attempt
        await world.finish(requests[-1].run_id, status="failed", error="task X failed")
        stopped = await world.reconcile("kuma")
        if attempt < 3:
            assert isinstance(stopped, Waiting) and stopped.reason == "ApplyFailed"
            world.clock.advance(stopped.requeue_after + 1)
            await world.heartbeat()
    assert isinstance(stopped, Stalled)
    assert await world.condition("kuma", "Stalled") == ("True", "ApplyFailed")
    assert len({r.run_id for r in await world.outbox_requests()}) == 3


async def test_missing_playbook_is_reported_as_planned_false(world: World) -> None:
    await world.put(intent_text("kuma", steps=("ansible/playbooks/nope.yml",)))
    stopped = await world.reconcile("kuma")
    assert isinstance(stopped, Waiting) and stopped.reason == "PlaybookNotFound"
    assert await world.condition("kuma", "Planned") == ("False", "PlaybookNotFound")
    assert await world.condition("kuma", "Stalled") == ("True", "PlaybookNotFound")
    assert await world.condition("kuma", "Approved") == ("Unknown", "NotReached")


async def test_a_converged_intent_is_not_written_again(world: World) -> None:
    await world.put(intent_text("kuma", approval="Auto"))
    await world.heartbeat()
    await world.reconcile("kuma")
    [request] = await world.outbox_requests()
    await world.finish(request.run_id)
    await world.reconcile("kuma")
    before = await world.store.get_intent("kuma")
    world.clock.advance(30)
    await world.reconcile("kuma")
    after = await world.store.get_intent("kuma")
    assert before == after


async def test_result_consumer_is_idempotent(world: World) -> None:
    await world.put(intent_text("kuma", approval="Auto"))
    await world.heartbeat()
    await world.reconcile("kuma")
    [request] = await world.outbox_requests()
    await world.finish(request.run_id)
    run = await world.store.get_run(request.run_id)
    await world.finish(request.run_id, status="failed")  # a late duplicate must not rewrite history
    again = await world.store.get_run(request.run_id)
    assert run == again and again is not None and again.status is RunStatus.SUCCESSFUL


async def test_deleted_intent_reconciles_to_nothing(world: World) -> None:
    assert await world.reconcile("ghost") == Result()


async def test_a_new_generation_with_an_applied_digest_runs_nothing(world: World) -> None:
    await world.put(intent_text("kuma", approval="Auto"))
    await world.heartbeat()
    await world.reconcile("kuma")
    [request] = await world.outbox_requests()
    await world.finish(request.run_id)
    await world.reconcile("kuma")
    # Only the approval policy changes: a new generation, the same plan digest.
    await world.put(
        intent_text("kuma", approval="Auto").replace("approval: Auto", "approval: Auto\n  priority: High"),
        blob="b2",
    )
    assert await world.reconcile("kuma") == Result()
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.metadata.generation == 2
    assert await world.condition("kuma", "Ready") == ("True", "Applied")
    assert len(await world.outbox_requests()) == 1


async def test_a_batch_decides_like_single_passes_and_commits_once(world: World) -> None:
    names = [f"svc-{index}" for index in range(6)]
    for name in names:
        await world.put(intent_text(name, approval="Auto"))
    await world.put(intent_text("manual", approval="Manual"))
    await world.put(intent_text("after", approval="Auto", depends="svc-0"))
    await world.heartbeat()
    keys = [intent_key(name) for name in [*names, "manual", "after", "ghost"]]

    batch = await world.reconciler.reconcile_many(keys)

    assert world.dispatches == [1]  # one commit woke the relay once for all six dispatches
    assert sorted(r.intent for r in await world.outbox_requests()) == names
    assert isinstance(batch.outcomes[intent_key("manual")], Waiting)
    after = batch.outcomes[intent_key("after")]
    assert isinstance(after, Waiting) and after.reason == "WaitingForDependency"
    assert batch.outcomes[intent_key("ghost")] == Result()
    assert batch.ready == {**dict.fromkeys([*names, "manual", "after"], False), "ghost": False}
    assert await world.condition("manual", "Approved") == ("False", "AwaitingApproval")
    dispatched = await world.store.list_audit(action="dispatch", limit=100)
    assert sorted(event.resource for event in dispatched) == [f"DeploymentIntent/{n}" for n in names]

    # Again, as after a crash right after the commit: nothing is dispatched twice.
    await world.reconciler.reconcile_many(keys)
    assert len(await world.outbox_requests()) == len(names)
    assert len(await world.store.list_audit(action="dispatch", limit=100)) == len(names)


async def test_intents_waiting_for_capacity_are_told_their_place_in_line(world: World) -> None:
    await world.heartbeat()
    names = ("first", "second", "third")
    for name in names:
        await world.put(intent_text(name, approval="Auto", gpu=8192))
        await world.reconcile(name)
    # Capacity appearing wakes them in the order they started waiting; still no room.
    assert list(world.reconciler.waiting_for_capacity) == [intent_key(n) for n in names]
    await world.reconciler.reconcile_many(list(world.reconciler.waiting_for_capacity))
    intent = await world.store.get_intent("second")
    assert intent is not None and intent.status is not None and intent.status.blocked_by is not None
    assert intent.status.blocked_by.startswith("waiting for capacity (2nd of 3 in line): ")


async def test_abort_cancels_the_run_in_flight_and_holds_even_an_auto_plan(world: World) -> None:
    await world.put(intent_text("kuma", approval="Auto", steps=(KUMA, PORTALS)))
    await world.heartbeat()
    await world.reconcile("kuma")
    [request] = await world.outbox_requests()
    await world.results.handle(
        FakeDelivery(make_envelope(RunAccepted(run_id=request.run_id, agent_id="infra-1")))
    )

    report = await abort_intent(
        world.store, "kuma", actor="Alice <a@x>", reason="wrong day", now=world.clock()
    )

    assert report.canceled_runs == [request.run_id]
    cancels = [
        (m.routing_key, decode_envelope(m.body).payload)
        for m in await world.store.pending_outbox(1000)
        if m.message_id.startswith("cancel-")
    ]
    assert cancels == [(runs_queue("infra-1"), CancelRun(run_id=request.run_id, reason="aborted: wrong day"))]
    events = await world.store.list_audit(resource="DeploymentIntent/kuma")
    [audit] = [event for event in events if event.action == "abort"]
    assert audit.actor == "Alice <a@x>" and audit.details["canceledRuns"] == [request.run_id]

    # The agent reports the run canceled: nothing restarts, although the intent is Auto.
    await world.finish(request.run_id, status="canceled")
    assert await world.reconcile("kuma") == Result()
    assert await world.condition("kuma", "Approved") == ("False", "Rejected")
    kuma = await world.store.get_intent("kuma")
    assert kuma and kuma.status and "chiffonctl approve kuma" in (kuma.status.blocked_by or "")
    assert len(await world.outbox_requests()) == 1

    # Approving the same plan again retries the canceled step as the next attempt.
    world.clock.advance(600)
    await world.heartbeat()
    await world.approve("kuma")
    await world.reconcile("kuma")
    retried = (await world.outbox_requests())[-1]
    assert (retried.step, retried.attempt) == ("step-1", 2)


async def test_abort_without_a_plan_is_refused(world: World) -> None:
    with pytest.raises(AbortError, match="not found"):
        await abort_intent(world.store, "ghost", actor="a", reason="")
