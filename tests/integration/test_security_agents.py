"""Agents may only report on runs they were given, on the real store (SQLite and PostgreSQL).

A RunAccepted / RunEvent / RunResult about a run dispatched to another agent,
or about a run id the controller never dispatched, changes nothing: the run
keeps its status, no events are stored, no ``run.result`` is recorded. Each is
acked (a redelivery would be refused the same way) and audited as
``agent.refused`` — at most once a minute per agent and reason, with a count.
"""

from __future__ import annotations

import logging

import pytest

from chiffon.controllers.audit_throttle import AuditThrottle
from chiffon.controllers.consumers import ResultConsumer
from chiffon.resources import AuditEvent, Outcome, RunStatus
from chiffon.resources.messages import AnsibleEvent, RunAccepted, RunEvent, RunResult, make_envelope
from chiffon.store import Store
from tests.integration.reconcile_world import FakeDelivery
from tests.integration.test_store_runs import make_run


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


EVENT = AnsibleEvent(seq=1, event="runner_on_ok", task="deploy", host="localhost", status="ok")


async def refusals(store: Store) -> list[AuditEvent]:
    return list(reversed(await store.list_audit(action="agent.refused", limit=1000)))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def consumer(store: Store, clock: Clock) -> ResultConsumer:
    return ResultConsumer(store, enqueue=lambda _: None, refusals=AuditThrottle(60, clock=clock))


async def deliver(consumer: ResultConsumer, *payloads: object) -> list[FakeDelivery]:
    deliveries = [FakeDelivery(make_envelope(p)) for p in payloads]  # type: ignore[arg-type]
    for delivery in deliveries:
        await consumer.handle(delivery)  # type: ignore[arg-type]
    return deliveries


async def test_reports_about_another_agents_run_are_refused_and_audited(
    store: Store, consumer: ResultConsumer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    run = make_run(agent_id="infra-1")
    await store.upsert_run(run)

    deliveries = await deliver(
        consumer,
        RunAccepted(run_id=run.id, agent_id="intruder"),
        RunEvent(run_id=run.id, agent_id="intruder", events=[EVENT]),
        RunResult(run_id=run.id, agent_id="intruder", status="successful", rc=0, duration_seconds=1),
    )

    assert all(d.acked == [True] for d in deliveries)
    stored = await store.get_run(run.id)
    assert stored is not None and (stored.status, stored.agent_id) == (RunStatus.PENDING, "infra-1")
    assert await store.list_run_events(run.id) == []
    assert await store.list_audit(action="run.result") == []
    [refused] = await refusals(store)
    assert (refused.actor, refused.resource, refused.outcome) == (
        "agent:intruder",
        "Agent/intruder",
        Outcome.FAILURE,
    )
    assert refused.details == {
        "agent": "intruder",
        "run": run.id,
        "message": "RunAccepted",
        "reason": "not-its-run",
        "owner": "infra-1",
        "count": 1,
        "runs": [run.id],
        "why": f"RunAccepted for run {run.id}, which was given to agent infra-1",
    }
    assert "refused a report of agent intruder" in caplog.text

    # The agent that was given the run still reports as usual.
    await deliver(
        consumer,
        RunAccepted(run_id=run.id, agent_id="infra-1"),
        RunEvent(run_id=run.id, agent_id="infra-1", events=[EVENT]),
        RunResult(run_id=run.id, agent_id="infra-1", status="successful", rc=0, duration_seconds=1),
    )
    done = await store.get_run(run.id)
    assert done is not None and (done.status, done.agent_id) == (RunStatus.SUCCESSFUL, "infra-1")
    assert len(await store.list_run_events(run.id)) == 1
    [result] = await store.list_audit(action="run.result")
    assert result.actor == "agent:infra-1"


async def test_reports_about_runs_never_dispatched_are_refused(
    store: Store, consumer: ResultConsumer
) -> None:
    await deliver(
        consumer,
        RunResult(run_id="made-up", agent_id="infra-1", status="failed", rc=2, duration_seconds=1),
        RunEvent(run_id="made-up-too", agent_id="infra-1", events=[EVENT]),
    )
    assert await store.list_runs() == []
    [refused] = await refusals(store)  # one agent, one reason: the second is held back
    assert refused.details["reason"] == "unknown-run" and refused.details["owner"] is None
    assert refused.details["why"] == "RunResult for run made-up, which was never dispatched"


async def test_a_flood_of_refused_reports_is_audited_once_a_minute_with_a_count(
    store: Store, consumer: ResultConsumer, clock: Clock
) -> None:
    run = make_run(agent_id="infra-1")
    await store.upsert_run(run)
    flood = [
        RunResult(run_id=f"fake-{index}", agent_id="noisy", status="failed", duration_seconds=0)
        for index in range(200)
    ]
    # In batches, as the bus hands them over.
    for start in range(0, len(flood), 50):
        batch = [FakeDelivery(make_envelope(p)) for p in flood[start : start + 50]]
        for delivery in batch:
            await consumer.submit(delivery)  # type: ignore[arg-type]
        await consumer.drain()
    await deliver(consumer, RunResult(run_id=run.id, agent_id="noisy", status="failed", duration_seconds=0))
    assert [(e.details["reason"], e.details["count"]) for e in await refusals(store)] == [
        ("unknown-run", 1),
        ("not-its-run", 1),
    ]
    clock.now += 60
    await deliver(
        consumer, RunResult(run_id="fake-last", agent_id="noisy", status="failed", duration_seconds=0)
    )
    events = await refusals(store)
    assert [(e.details["reason"], e.details["count"]) for e in events] == [
        ("unknown-run", 1),
        ("not-its-run", 1),
        ("unknown-run", 200),
    ]
    assert events[-1].details["runs"] == ["fake-1", "fake-2", "fake-3", "fake-4", "fake-5"]
    assert await store.count_rows("audit_events") == 3
    run_after = await store.get_run(run.id)
    assert run_after is not None and run_after.status is RunStatus.PENDING


async def test_runs_given_to_no_agent_in_particular_take_reports_from_any(
    store: Store, consumer: ResultConsumer
) -> None:
    """Runs recorded before dispatch named an agent have no owner to check against."""
    run = make_run(agent_id=None)
    await store.upsert_run(run)
    await deliver(
        consumer, RunResult(run_id=run.id, agent_id="infra-9", status="successful", duration_seconds=1)
    )
    done = await store.get_run(run.id)
    assert done is not None and (done.status, done.agent_id) == (RunStatus.SUCCESSFUL, "infra-9")
    assert await refusals(store) == []
