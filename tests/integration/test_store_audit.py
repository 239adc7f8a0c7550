"""Audit events (filters, order, indexes), approvals, sources, suggestions and LLM usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chiffon.resources import Approval, AuditEvent, Decision, FileError, Outcome, SourceStatus
from chiffon.store import Store
from chiffon.store.queries import audit_select
from chiffon.store.testing import analyze, explain

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def audit(minute: int, **changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "time": T0 + timedelta(minutes=minute),
        "actor": "controller",
        "action": "plan",
        "resource": "DeploymentIntent/uptime-kuma",
        "service": "uptime-kuma",
        "outcome": Outcome.SUCCESS,
        "details": {"minute": minute},
    }
    return AuditEvent.model_validate({**fields, **changes})


# -- audit -------------------------------------------------------------------------------------


async def test_audit_round_trip_in_utc(store: Store) -> None:
    two_hours_east = timezone(timedelta(hours=2))
    event = audit(0, time=datetime(2024, 5, 1, 14, 0, tzinfo=two_hours_east), revision="abc123")

    first = await store.record_audit(event)
    second = await store.record_audit(audit(1))

    assert second > first
    [_, stored] = await store.list_audit()
    assert stored.id == first
    assert stored.time == T0 and stored.time.tzinfo == UTC
    assert stored.model_copy(update={"id": None, "time": event.time}) == event


async def test_audit_filters_newest_first(store: Store) -> None:
    await store.record_audit(audit(0))
    await store.record_audit(audit(1, actor="alice", action="approve"))
    await store.record_audit(audit(2, outcome=Outcome.FAILURE, action="apply"))
    await store.record_audit(audit(3, service="proxy", resource="DeploymentIntent/proxy"))
    await store.record_audit(
        audit(4, outcome=Outcome.FAILURE, service="proxy", resource="DeploymentIntent/proxy")
    )

    async def minutes(**filters: object) -> list[int]:
        return [e.details["minute"] for e in await store.list_audit(**filters)]  # type: ignore[arg-type]

    assert await minutes() == [4, 3, 2, 1, 0]
    assert await minutes(service="uptime-kuma") == [2, 1, 0]
    assert await minutes(actor="alice") == [1]
    assert await minutes(outcome=Outcome.FAILURE) == [4, 2]
    assert await minutes(resource="DeploymentIntent/proxy") == [4, 3]
    assert await minutes(action="approve") == [1]
    assert await minutes(since=T0 + timedelta(minutes=2)) == [4, 3, 2]
    assert await minutes(since=T0 + timedelta(minutes=1), outcome=Outcome.FAILURE, service="proxy") == [4]
    assert await minutes(limit=2) == [4, 3]
    assert await minutes(service="nothing") == []


async def test_audit_events_in_the_same_instant_keep_insertion_order(store: Store) -> None:
    for action in ("plan", "approve", "dispatch"):
        await store.record_audit(audit(0, action=action))
    assert [e.action for e in await store.list_audit()] == ["dispatch", "approve", "plan"]


async def test_every_audit_query_of_chiffonctl_audit_reads_its_index(store: Store) -> None:
    # 2000 events across 100 services, 50 actors and intents, 1 in 25 failed: each filter of
    # `chiffonctl audit` (--service, --failed, --actor, --intent) is a selective query that
    # should read its (column, time) index, newest first, not scan the table.
    for i in range(2000):
        await store.record_audit(
            audit(
                i,
                service=f"svc-{i % 100}",
                actor=f"actor-{i % 50}",
                resource=f"DeploymentIntent/intent-{i % 50}",
                outcome=Outcome.FAILURE if i % 25 == 0 else Outcome.SUCCESS,
                details={"n": i, "pad": "x" * 200},
            )
        )
    await analyze(store)

    queries = {
        "ix_audit_events_service_time": audit_select(service="svc-7", limit=100),
        "ix_audit_events_outcome_time": audit_select(outcome=Outcome.FAILURE, limit=100),
        "ix_audit_events_actor_time": audit_select(actor="actor-7", limit=100),
        "ix_audit_events_resource_time": audit_select(resource="DeploymentIntent/intent-7", limit=100),
    }
    for index, statement in queries.items():
        plan = "\n".join(await explain(store, statement))
        assert index in plan, f"{index} not used:\n{plan}"
        if store.dialect == "sqlite":
            assert f"USING INDEX {index}" in plan, plan
        else:
            assert "Seq Scan" not in plan, plan
    assert len(await store.list_audit(service="svc-7")) == 20
    assert len(await store.list_audit(outcome=Outcome.FAILURE)) == 80


# -- approvals ---------------------------------------------------------------------------------


async def test_approvals_newest_first_per_intent(store: Store) -> None:
    digest = "b" * 64
    first = await store.record_approval(
        Approval(
            intent="kuma",
            digest=digest,
            decision=Decision.REJECTED,
            actor="bob",
            reason="not now",
            created_at=T0,
        )
    )
    second = await store.record_approval(
        Approval(intent="kuma", digest=digest, decision=Decision.APPROVED, actor="alice")
    )
    await store.record_approval(
        Approval(intent="proxy", digest=digest, decision=Decision.APPROVED, actor="alice")
    )

    approvals = await store.list_approvals("kuma")

    assert second > first
    assert [(a.decision, a.actor) for a in approvals] == [
        (Decision.APPROVED, "alice"),
        (Decision.REJECTED, "bob"),
    ]
    assert approvals[1] == Approval(
        intent="kuma", digest=digest, decision=Decision.REJECTED, actor="bob", reason="not now", created_at=T0
    )
    assert approvals[0].created_at is not None and approvals[0].created_at.tzinfo is not None
    assert await store.list_approvals("nobody") == []


# -- sources -----------------------------------------------------------------------------------


async def test_source_statuses_are_replaced_by_name(store: Store) -> None:
    broken = SourceStatus(
        name="intents",
        url="/srv/intents",
        branch="main",
        revision="r1",
        last_sync_at=T0,
        file_errors=[FileError(path="bad.yaml", line=3, field="spec.steps", message="is required")],
    )
    await store.save_source_status(SourceStatus(name="zz-other", url="https://git/x", branch="main"))
    await store.save_source_status(broken)
    assert await store.list_source_statuses() == [
        broken,
        SourceStatus(name="zz-other", url="https://git/x", branch="main"),
    ]

    fixed = broken.model_copy(update={"revision": "r2", "file_errors": [], "intents": 4})
    await store.save_source_status(fixed)

    assert (await store.list_source_statuses())[0] == fixed


# -- suggestions -------------------------------------------------------------------------------


async def test_suggestions_are_recorded_once_per_fingerprint(store: Store) -> None:
    found = await store.add_suggestion(
        category="idempotency",
        file="ansible/playbooks/kuma-deployment.yml",
        line=12,
        reasoning="The task changed on a second identical run.",
        patch="- shell: docker compose up -d\n+ community.docker.docker_compose_v2: ...",
        fingerprint="f" * 64,
    )
    assert (found.status, found.line, found.category) == ("open", 12, "idempotency")
    other = await store.add_suggestion(
        category="lint", file="roles/x/tasks/main.yml", reasoning="Use FQCN.", fingerprint="e" * 64
    )

    assert await store.set_suggestion_status(found.id, "dismissed")
    again = await store.add_suggestion(
        category="idempotency", file="elsewhere.yml", reasoning="found again", fingerprint="f" * 64
    )

    assert again.id == found.id and again.status == "dismissed" and again.file == found.file
    assert [s.id for s in await store.list_suggestions()] == [other.id, found.id]
    assert [s.id for s in await store.list_suggestions(status="open")] == [other.id]
    assert [s.id for s in await store.list_suggestions(status="dismissed")] == [found.id]
    assert await store.list_suggestions(status="implemented") == []
    assert not await store.set_suggestion_status(9999, "accepted")
    with pytest.raises(ValueError, match="suggestion status"):
        await store.set_suggestion_status(found.id, "maybe")  # type: ignore[arg-type]


# -- LLM usage ---------------------------------------------------------------------------------


async def test_llm_usage_is_recorded(store: Store) -> None:
    local = await store.record_llm_usage(
        model="ollama/llama3.1:8b",
        provider="ollama",
        prompt_tokens=900,
        completion_tokens=300,
        cost_usd=0.0,
        latency_ms=2100,
        reason="local first",
        outcome="success",
        time=T0,
    )
    external = await store.record_llm_usage(
        model="claude-3-5-sonnet",
        provider="anthropic",
        prompt_tokens=1200,
        completion_tokens=400,
        cost_usd=0.0096,
        latency_ms=3400,
        reason="High priority intent",
        intent="uptime-kuma",
        outcome="success",
        time=T0 + timedelta(minutes=5),
    )

    usage = await store.list_llm_usage()

    assert [u.id for u in usage] == [external, local]
    assert usage[0].cost_usd == pytest.approx(0.0096)
    assert (usage[0].intent, usage[1].intent, usage[1].time) == ("uptime-kuma", None, T0)
    assert [u.id for u in await store.list_llm_usage(since=T0 + timedelta(minutes=1))] == [external]
