"""The store's many-at-once reads and writes, on SQLite and on PostgreSQL.

They must agree with the one-at-a-time methods they stand in for: same
results, same generation rules, same "skip a stale status" and "a redispatch
writes nothing" guarantees.
"""

from __future__ import annotations

from datetime import timedelta

from chiffon.resources import (
    Approval,
    AuditEvent,
    ConditionStatus,
    IntentStatus,
    Outcome,
    RunStatus,
    set_condition,
)
from chiffon.resources.approval import Decision
from chiffon.resources.messages import RunRequest, decode_envelope, encode_envelope, make_envelope
from chiffon.store import Store
from chiffon.store.records import Dispatch, ReconcileWrites, RunWrites, StatusWrite
from tests.integration.test_store import BASE_SPEC, T0, make_intent, source
from tests.integration.test_store_runs import make_run


def audit(action: str, resource: str) -> AuditEvent:
    return AuditEvent(
        time=T0, actor="controller", action=action, resource=resource, outcome=Outcome.SUCCESS, details={}
    )


def applied(generation: int) -> IntentStatus:
    conditions = set_condition(
        [], "Ready", ConditionStatus.TRUE, "Applied", "Applied.", now=T0, observed_generation=generation
    )
    return IntentStatus(observed_generation=generation, conditions=conditions)


async def test_upsert_intents_matches_upsert_intent_and_audits_in_the_same_transaction(store: Store) -> None:
    await store.upsert_intent(make_intent("existing"), source(path="intents/existing.yaml"))
    changed = make_intent("existing", spec={**BASE_SPEC, "vars": {"kuma_port": 4000}})
    items = [(changed, source(blob="b2", revision="rev-2", path="intents/existing.yaml"))]
    items += [(make_intent(f"new-{i:04d}"), source(path=f"intents/new-{i:04d}.yaml")) for i in range(700)]

    results = await store.upsert_intents(
        items, audit=lambda r: audit(f"intent.{r.outcome}", r.name) if r.outcome != "unchanged" else None
    )

    assert [r.name for r in results] == [intent.metadata.name for intent, _ in items]
    assert (results[0].outcome, results[0].generation, results[0].revision) == ("configured", 2, "rev-2")
    assert {r.outcome for r in results[1:]} == {"created"} and {r.generation for r in results[1:]} == {1}
    stored = await store.get_intents(["existing", "new-0000", "new-0699", "missing"])
    assert sorted(stored) == ["existing", "new-0000", "new-0699"]
    assert stored["existing"].metadata.generation == 2
    # A created intent gets its initial status (every condition Unknown), as upsert_intent gives it.
    assert stored["new-0699"].status is not None and stored["new-0699"].status.conditions
    assert len(await store.list_audit(action="intent.created", limit=1000)) == 700
    assert len(await store.list_audit(action="intent.configured")) == 1

    again = await store.upsert_intents(items[1:3])
    assert [r.outcome for r in again] == ["unchanged", "unchanged"]


async def test_commit_reconcile_writes_statuses_dispatches_and_audits_together(store: Store) -> None:
    for name in ("a", "b", "stale"):
        await store.upsert_intent(make_intent(name), source(path=f"intents/{name}.yaml"))
    run_a, run_b = make_run("a"), make_run("b")
    writes = ReconcileWrites(
        statuses=[
            StatusWrite("a", applied(1), expected_generation=1),
            StatusWrite("stale", applied(7), expected_generation=7),  # the spec moved on: skipped
            StatusWrite("gone", applied(1), expected_generation=1),  # deleted meanwhile: skipped
        ],
        dispatches=[
            Dispatch(run_a, "chiffon.runs.infra-1", b"request-a", audit("dispatch", "DeploymentIntent/a")),
            Dispatch(run_b, "chiffon.runs.infra-1", b"request-b", audit("dispatch", "DeploymentIntent/b")),
        ],
        audits=[audit("plan", "DeploymentIntent/a")],
    )

    assert await store.commit_reconcile(writes) == {run_a.id, run_b.id}

    stored = await store.get_intents(["a", "stale"])
    assert stored["a"].status is not None and stored["a"].status.observed_generation == 1
    assert stored["stale"].status is not None and stored["stale"].status.observed_generation != 7
    assert [m.message_id for m in await store.pending_outbox()] == [run_a.id, run_b.id]
    assert len(await store.list_audit(action="dispatch")) == 2
    assert len(await store.list_audit(action="plan")) == 1

    # The same passes again (a controller restarted after the commit): nothing new.
    again = ReconcileWrites(dispatches=writes.dispatches)
    assert await store.commit_reconcile(again) == set()
    assert len(await store.pending_outbox()) == 2
    assert len(await store.list_audit(action="dispatch")) == 2
    assert (await store.get_run(run_a.id)).status is RunStatus.PENDING  # type: ignore[union-attr]


async def test_commit_reconcile_with_nothing_to_write_opens_no_transaction(store: Store) -> None:
    assert await store.commit_reconcile(ReconcileWrites()) == set()


async def test_runs_of_keeps_the_newest_per_intent(store: Store) -> None:
    for index in range(5):
        await store.upsert_run(make_run("a", f"step-{index}", created=T0 + timedelta(minutes=index)))
    await store.upsert_run(make_run("b", "only"))

    found = await store.runs_of(["a", "b", "c"], limit=3)

    assert sorted(found) == ["a", "b"]
    assert [run.step for run in found["a"]] == ["step-4", "step-3", "step-2"]
    assert found["a"] == (await store.list_runs(intent="a", limit=3))
    assert [run.step for run in found["b"]] == ["only"]


async def test_approvals_of_groups_newest_first(store: Store) -> None:
    for intent, digest, decision in (("a", "1" * 64, Decision.REJECTED), ("a", "2" * 64, Decision.APPROVED)):
        await store.record_approval(
            Approval(intent=intent, digest=digest, decision=decision, actor="alice", reason="")
        )
    found = await store.approvals_of(["a", "b"])
    assert list(found) == ["a"]
    assert [a.digest[0] for a in found["a"]] == ["2", "1"]


async def test_outbox_marks_many_in_one_call(store: Store) -> None:
    for index in range(3):
        await store.enqueue_outbox(f"m-{index}", "chiffon.runs.infra-1", b"x")
    await store.mark_outbox_published("m-0", "m-2")
    assert [m.message_id for m in await store.pending_outbox()] == ["m-1"]


async def test_intents_and_runs_read_together(store: Store) -> None:
    await store.upsert_intent(make_intent("a"), source(path="intents/a.yaml"))
    await store.upsert_run(make_run("a"))
    await store.upsert_run(make_run("gone"))  # runs of an intent that no longer exists are read too
    found, runs = await store.intents_and_runs(["a", "gone", "never"], runs_each=5)
    assert list(found) == ["a"]
    assert sorted(runs) == ["a", "gone"]


async def test_a_new_leader_rearms_the_requests_no_agent_accepted(store: Store) -> None:
    for name in ("a", "b"):
        await store.upsert_intent(make_intent(name), source(path=f"intents/{name}.yaml"))
    waiting, taken = make_run("a", epoch=2), make_run("b", epoch=2)
    dispatches = []
    for run in (waiting, taken):
        request = RunRequest(
            run_id=run.id,
            intent=run.intent,
            generation=1,
            plan_digest=run.plan_digest,
            step=run.step,
            epoch=2,
        )
        body = encode_envelope(make_envelope(request, message_id=run.id))
        dispatches.append(Dispatch(run, "chiffon.runs.infra-1", body))
    await store.commit_reconcile(ReconcileWrites(dispatches=dispatches))
    await store.mark_outbox_published(waiting.id, taken.id)
    await store.update_runs(
        [taken.id],
        lambda runs: RunWrites(runs=[runs[taken.id].model_copy(update={"status": RunStatus.RUNNING})]),
    )

    assert await store.rearm_unaccepted_runs(3) == [waiting.id]
    [pending] = await store.pending_outbox()
    request = decode_envelope(pending.body).payload
    assert pending.message_id == waiting.id and isinstance(request, RunRequest) and request.epoch == 3
    runs = {run.id: run for run in await store.list_runs()}
    assert runs[waiting.id].epoch == 3 and runs[taken.id].epoch == 2
    assert await store.rearm_unaccepted_runs(3) == []  # already this leader's
