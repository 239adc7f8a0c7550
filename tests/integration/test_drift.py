"""Drift detection, scenario by scenario: check-mode rounds, Drifted with the diff, Heal through approval.

The reconciler runs on the real store and planner with a fake clock; the agent's
side (accept, events, result) is played by the test, as in ``test_reconciler.py``.
The same flow with real ansible is in ``tests/e2e/test_seed_scenario.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import HTTPException

from chiffon.api.routes.approvals import _decided_digest
from chiffon.controllers.intent_reconciler import CONTROLLER_ACTOR
from chiffon.controllers.reconcile import Result
from chiffon.resources import Approval, AuditEvent, Decision, DriftStatus, Outcome, RunStatus, find_condition
from chiffon.resources.messages import AnsibleEvent, RunRequest
from chiffon.store import Store
from tests.integration.reconcile_world import KUMA, PORTALS, World, intent_text, make_world

HOUR = 3600.0
DIFF = "--- before: /tmp/lab/uptime-kuma/docker-compose.yml\n+++ after\n-  - 3002:3001\n+  - 3001:3001"


@pytest.fixture
async def world(store: Store, tmp_path: Path) -> World:
    return await make_world(store, tmp_path)


def drifting(mode: str = "Report", approval: str = "Auto") -> str:
    text = intent_text("kuma", approval=approval, steps=(KUMA, PORTALS))
    return text + f"  driftDetection: {{interval: 1h, mode: {mode}}}\n"


async def applied(world: World, text: str) -> None:
    """Put the intent, approve it if it is Manual, and run both steps to Ready."""
    await world.put(text)
    await world.heartbeat()
    await world.reconcile("kuma")
    if "approval: Manual" in text:
        await world.approve("kuma")
        await world.reconcile("kuma")
    for _ in range(2):
        await world.finish((await world.outbox_requests())[-1].run_id)
        await world.reconcile("kuma")
    assert await world.condition("kuma", "Ready") == ("True", "Applied")


async def next_request(world: World, seen: int) -> RunRequest:
    requests = await world.outbox_requests()
    assert len(requests) == seen + 1, [(r.step, r.check) for r in requests]
    return requests[-1]


async def later(world: World, hours: float = 1) -> None:
    """Time passes; the agent keeps sending heartbeats, so it is still online."""
    world.clock.advance(hours * HOUR)
    await world.heartbeat()


async def audits(world: World, action: str) -> list[AuditEvent]:
    return [e for e in await world.store.list_audit(resource="DeploymentIntent/kuma") if e.action == action]


async def drift_of(world: World) -> DriftStatus:
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None and kuma.status.drift is not None
    return kuma.status.drift


def changed_compose() -> list[AnsibleEvent]:
    task = "uptime_kuma : Write the compose file"
    return [
        AnsibleEvent(seq=7, event="runner_on_file_diff", task=task, host="localhost", output=DIFF),
        AnsibleEvent(seq=8, event="runner_on_ok", task=task, host="localhost", status="changed"),
    ]


async def check_round(world: World, seen: int, *, changed_in_step: int | None = None) -> int:
    """Run one check round (both steps); ``changed_in_step`` reports drift in that step. Returns runs seen."""
    for index in range(2):
        request = await next_request(world, seen)
        assert request.check and request.diff and request.step == f"step-{index + 1}"
        drifted = changed_in_step == index + 1
        events = changed_compose() if drifted else None
        await world.finish(request.run_id, changed=1 if drifted else 0, events=events)
        seen += 1
        await world.reconcile("kuma")
    return seen


async def test_a_ready_intent_is_checked_every_interval_and_drift_shows_with_its_diff(world: World) -> None:
    await applied(world, drifting())
    assert await world.reconcile("kuma") == Result(requeue_after=HOUR)
    assert len(await world.outbox_requests()) == 2  # nothing before the interval

    await later(world)
    assert await world.reconcile("kuma") == Result(requeue_after=60.0)
    seen = await check_round(world, 2)
    record = await drift_of(world)
    assert record.round == 1 and record.checked_at is not None and not record.drifted
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None
    assert find_condition(kuma.status.conditions, "Drifted") is None
    runs = {run.id: run for run in (await world.store.runs_of(["kuma"]))["kuma"]}
    assert all(runs[run_id].check_mode for run_id in record.runs)
    assert not await audits(world, "drift")

    # Someone edits the compose file by hand: the next round finds it.
    await later(world)
    await world.reconcile("kuma")
    seen = await check_round(world, seen, changed_in_step=1)
    assert await world.condition("kuma", "Drifted") == ("True", "ChangesFound")
    assert await world.condition("kuma", "Ready") == ("True", "Applied")
    record = await drift_of(world)
    [change] = record.changes
    assert (change.step, change.task, change.host) == ("step-1", "Write the compose file", "localhost")
    assert change.diff == DIFF
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None
    drifted = find_condition(kuma.status.conditions, "Drifted")
    assert drifted is not None and "Write the compose file on localhost" in drifted.message
    [audit] = await audits(world, "drift")
    assert audit.outcome is Outcome.FAILURE and audit.actor == CONTROLLER_ACTOR and audit.service == "kuma"
    assert audit.details["changes"] == ["Write the compose file@localhost"]

    # Report never touches the host; the drift is put right by hand and the next round clears it.
    await later(world)
    await world.reconcile("kuma")
    await check_round(world, seen)
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None
    assert find_condition(kuma.status.conditions, "Drifted") is None
    found = await audits(world, "drift")
    assert [a.outcome for a in found] == [Outcome.SUCCESS, Outcome.FAILURE]  # newest first
    assert "drift is gone" in str(found[0].details["message"])


async def test_heal_waits_for_approval_of_its_own_digest_then_applies_the_plan_again(world: World) -> None:
    await applied(world, drifting(mode="Heal", approval="Manual"))
    await later(world)
    await world.reconcile("kuma")
    seen = await check_round(world, 2, changed_in_step=1)
    record = await drift_of(world)
    assert record.heal_digest is not None and record.heal_digest != record.digest
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None
    assert f"chiffonctl approve kuma --plan {record.heal_digest[:12]}" in (kuma.status.blocked_by or "")
    assert len(await world.outbox_requests()) == seen  # nothing runs without the approval

    # Approving the plan's own digest again heals nothing: the heal has a digest of its own.
    await world.approve("kuma")
    await world.reconcile("kuma")
    assert len(await world.outbox_requests()) == seen

    await world.store.record_approval(
        Approval(
            intent="kuma",
            digest=record.heal_digest,
            decision=Decision.APPROVED,
            actor="Alice <a@x>",
            created_at=world.clock(),
        )
    )
    await world.reconcile("kuma")
    for index in range(2):
        request = await next_request(world, seen)
        assert not request.check and request.step == f"step-{index + 1}"
        await world.finish(request.run_id, changed=1)
        seen += 1
        await world.reconcile("kuma")
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None
    assert find_condition(kuma.status.conditions, "Drifted") is None
    assert kuma.status.drift is not None and kuma.status.drift.heal_digest is None
    heals = await audits(world, "heal")
    assert [h.outcome for h in heals] == [Outcome.SUCCESS]
    heal_runs = [r for r in (await world.store.runs_of(["kuma"]))["kuma"] if r.heals_drift]
    assert len(heal_runs) == 2 and all(r.status is RunStatus.SUCCESSFUL for r in heal_runs)
    assert await world.reconcile("kuma") == Result(requeue_after=HOUR)


async def test_an_auto_intent_heals_without_asking_and_a_failed_heal_stops_there(world: World) -> None:
    await applied(world, drifting(mode="Heal", approval="Auto"))
    await later(world)
    await world.reconcile("kuma")
    seen = await check_round(world, 2, changed_in_step=2)
    request = await next_request(world, seen)
    assert not request.check and request.step == "step-1"
    await world.finish(request.run_id, status="failed", error="Write the compose file: permission denied")
    assert await world.reconcile("kuma") == Result()
    record = await drift_of(world)
    assert record.error is not None and "permission denied" in record.error
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None
    assert "drift not healed" in (kuma.status.blocked_by or "")
    assert await world.condition("kuma", "Drifted") == ("True", "ChangesFound")
    # Nothing is retried behind anyone's back.
    await later(world)
    await world.reconcile("kuma")
    assert len(await world.outbox_requests()) == seen + 1


async def test_a_failed_check_is_reported_and_the_next_round_comes_an_interval_later(world: World) -> None:
    await applied(world, drifting())
    await later(world)
    await world.reconcile("kuma")
    request = await next_request(world, 2)
    await world.finish(request.run_id, status="failed", error="unreachable")
    assert await world.reconcile("kuma") == Result(requeue_after=HOUR)
    record = await drift_of(world)
    assert record.error is not None and "could not finish" in record.error and not record.drifted
    [audit] = await audits(world, "drift.check")
    assert audit.outcome is Outcome.FAILURE
    assert len(await world.outbox_requests()) == 3


async def test_a_check_waits_for_capacity_without_taking_ready_away(world: World) -> None:
    await applied(world, drifting())
    await world.offline()
    world.clock.advance(HOUR)
    assert await world.reconcile("kuma") == Result(requeue_after=300.0)
    assert await world.condition("kuma", "Ready") == ("True", "Applied")
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None
    assert "drift check waiting for capacity" in (kuma.status.blocked_by or "")
    await world.heartbeat()
    await world.reconcile("kuma")
    assert (await next_request(world, 2)).check


async def test_off_runs_no_checks_and_a_new_plan_forgets_the_old_drift(world: World) -> None:
    await applied(world, drifting())
    await later(world)
    await world.reconcile("kuma")
    await check_round(world, 2, changed_in_step=1)
    assert await world.condition("kuma", "Drifted") == ("True", "ChangesFound")

    # A new plan (another port) replaces the drifted one: no Drifted until it is checked.
    await world.put(drifting().replace("kuma_port: 3001", "kuma_port: 3002"), blob="b2")
    await world.reconcile("kuma")
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None
    assert find_condition(kuma.status.conditions, "Drifted") is None and kuma.status.drift is None

    await world.put(drifting().replace("mode: Report", "mode: Off"), blob="b3")
    await world.reconcile("kuma")
    for _ in range(2):
        requests = await world.outbox_requests()
        await world.finish(requests[-1].run_id)
        await world.reconcile("kuma")
    await later(world, 10)
    count = len(await world.outbox_requests())
    assert await world.reconcile("kuma") == Result()
    assert len(await world.outbox_requests()) == count


async def test_approve_without_a_digest_names_the_pending_heal_and_a_wrong_one_is_stale(world: World) -> None:
    await applied(world, drifting(mode="Heal", approval="Manual"))
    await later(world)
    await world.reconcile("kuma")
    await check_round(world, 2, changed_in_step=1)
    kuma = await world.store.get_intent("kuma")
    assert kuma is not None and kuma.status is not None and kuma.status.plan is not None
    heal = (await drift_of(world)).heal_digest
    assert heal is not None
    assert _decided_digest("kuma", kuma.status, None) == heal
    assert _decided_digest("kuma", kuma.status, heal[:8]) == heal
    assert _decided_digest("kuma", kuma.status, kuma.status.plan.digest[:8]) == kuma.status.plan.digest
    with pytest.raises(HTTPException) as stale:
        _decided_digest("kuma", kuma.status, "abcdef12")
    assert stale.value.status_code == 409 and f"drift heal {heal[:12]}" in str(stale.value.detail)


async def test_turning_heal_off_drops_the_pending_heal_but_keeps_reporting(world: World) -> None:
    await applied(world, drifting(mode="Heal", approval="Manual"))
    await later(world)
    await world.reconcile("kuma")
    seen = await check_round(world, 2, changed_in_step=1)
    assert (await drift_of(world)).heal_digest is not None
    await world.put(drifting(mode="Report", approval="Manual"), blob="b2")
    assert await world.reconcile("kuma") == Result(requeue_after=HOUR)
    record = await drift_of(world)
    assert record.heal_digest is None and record.drifted
    assert await world.condition("kuma", "Drifted") == ("True", "ChangesFound")
    assert len(await world.outbox_requests()) == seen
