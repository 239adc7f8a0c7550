"""The DeploymentIntent reconciler, scenario by scenario, on the real store and a real planner.

Each scenario checks the state of the world afterwards — conditions, runs,
outbox rows, audit — not the calls that were made.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chiffon.bus import runs_queue
from chiffon.controllers.abort import AbortError, abort_intent
from chiffon.controllers.intent_reconciler import intent_key
from chiffon.controllers.reconcile import Result, Stalled, Waiting
from chiffon.resources import (
    AgentKind,
    RunStatus,
)
from chiffon.resources.messages import (
    CancelRun,
    RunAccepted,
    decode_envelope,
    make_envelope,
)
from chiffon.store import Store
from tests.integration.reconcile_world import (
    KUMA,
    PORTALS,
    FakeDelivery,
    World,
    intent_text,
    make_world,
)


@pytest.fixture
async def world(store: Store, tmp_path: Path) -> World:
    return await make_world(store, tmp_path)


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
    assert await world.reconcile("kuma") == Result(
        requeue_after=3600.0
    )  # the first drift check is due in an hour
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
    world.clock.advance(stopped.requeue_after + 1)
    assert isinstance(await world.reconcile("kuma"), Waiting)
    # The refusal is audited once, not on every retry.
    [refused] = await world.store.list_audit(action="plan", resource="DeploymentIntent/kuma")
    assert refused.outcome == "failure" and refused.details["reason"] == "PlaybookNotFound"
    assert "nope.yml" in str(refused.details["message"])


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
    assert await world.reconcile("kuma") == Result(
        requeue_after=3600.0
    )  # nothing to run; the next drift check
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
