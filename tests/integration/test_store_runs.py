"""Runs, their events, the outbox and agents, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chiffon.resources import Agent, AgentKind, Capacity, GpuInfo, Run, RunStatus, run_id
from chiffon.resources.messages import AnsibleEvent
from chiffon.resources.run import HostStats, ResourceUsage
from chiffon.store import Store

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DIGEST = "a" * 64


def make_run(
    intent: str = "uptime-kuma", step: str = "deploy", *, created: datetime = T0, **changes: object
) -> Run:
    fields: dict[str, object] = {
        "id": run_id(intent, 1, DIGEST, step),
        "intent": intent,
        "generation": 1,
        "plan_digest": DIGEST,
        "step": step,
        "step_index": 0,
        "created_at": created,
    }
    return Run.model_validate({**fields, **changes})


def events(*seqs: int) -> list[AnsibleEvent]:
    return [
        AnsibleEvent(seq=seq, event="runner_on_ok", task=f"task {seq}", host="unraid", status="ok")
        for seq in seqs
    ]


# -- runs --------------------------------------------------------------------------------------


async def test_upsert_run_round_trips_and_updates_in_place(store: Store) -> None:
    pending = make_run()
    await store.upsert_run(pending)
    assert await store.get_run(pending.id) == pending

    finished = make_run(
        status=RunStatus.SUCCESSFUL,
        agent_id="infra-1",
        rc=0,
        stats={"unraid": HostStats(ok=5, changed=2)},
        usage=ResourceUsage(cpu_seconds=1.5, peak_memory_mib=80.0),
        started_at=T0 + timedelta(seconds=1),
        finished_at=T0 + timedelta(seconds=30),
        created_at=T0 + timedelta(hours=1),  # ignored: a run keeps its first created_at
    )
    await store.upsert_run(finished)

    stored = await store.get_run(pending.id)
    assert stored == finished.model_copy(update={"created_at": T0})
    assert stored is not None and stored.finished_at is not None and stored.finished_at.tzinfo is not None
    assert await store.count_rows("runs") == 1
    assert await store.get_run("no-such-run") is None


async def test_list_runs_newest_first_by_intent_with_limit(store: Store) -> None:
    for minute, (intent, step) in enumerate([("kuma", "deploy"), ("proxy", "deploy"), ("kuma", "configure")]):
        await store.upsert_run(make_run(intent, step, created=T0 + timedelta(minutes=minute)))

    assert [(r.intent, r.step) for r in await store.list_runs()] == [
        ("kuma", "configure"),
        ("proxy", "deploy"),
        ("kuma", "deploy"),
    ]
    assert [r.step for r in await store.list_runs(intent="kuma")] == ["configure", "deploy"]
    assert [r.step for r in await store.list_runs(intent="kuma", limit=1)] == ["configure"]
    assert await store.list_runs(intent="nobody") == []


async def test_dispatch_writes_run_and_message_once(store: Store) -> None:
    run = make_run()

    assert await store.dispatch_run(run, routing_key="run.infra", body=b'{"run": 1}')
    await store.upsert_run(make_run(status=RunStatus.RUNNING))
    assert not await store.dispatch_run(run, routing_key="run.infra", body=b'{"run": 1}')

    [message] = await store.pending_outbox()
    assert (message.message_id, message.routing_key, message.body) == (run.id, "run.infra", b'{"run": 1}')
    stored = await store.get_run(run.id)
    assert stored is not None and stored.status is RunStatus.RUNNING  # not rewound to pending


# -- run events --------------------------------------------------------------------------------


async def test_append_run_events_ignores_redelivered_seqs(store: Store) -> None:
    run = make_run()
    await store.upsert_run(run)

    assert await store.append_run_events(run.id, events(0, 1, 2)) == 3
    assert await store.append_run_events(run.id, events(0, 1, 2)) == 0
    assert await store.append_run_events(run.id, events(2, 3, 3, 4)) == 2
    assert await store.append_run_events(run.id, []) == 0

    assert [e.seq for e in await store.list_run_events(run.id)] == [0, 1, 2, 3, 4]
    assert [e.seq for e in await store.list_run_events(run.id, after_seq=2)] == [3, 4]
    assert await store.list_run_events(run.id, after_seq=4) == []
    assert (await store.list_run_events(run.id))[0] == events(0)[0]


async def test_append_run_events_in_large_batches(store: Store) -> None:
    run = make_run()
    await store.upsert_run(run)
    assert await store.append_run_events(run.id, events(*range(1200))) == 1200
    assert await store.append_run_events(run.id, events(*range(1100, 1300))) == 100
    assert len(await store.list_run_events(run.id, after_seq=999)) == 300


async def test_events_of_an_unknown_run_are_refused(store: Store) -> None:
    with pytest.raises(LookupError, match="ghost"):
        await store.append_run_events("ghost", events(0))


# -- outbox ------------------------------------------------------------------------------------


async def test_outbox_refuses_duplicates_and_tracks_publishing(store: Store) -> None:
    assert await store.enqueue_outbox("m-1", "run.infra", b"one")
    assert await store.enqueue_outbox("m-2", "run.desktop", b"\x00\xffbinary")
    assert not await store.enqueue_outbox("m-1", "run.infra", b"other body")

    pending = await store.pending_outbox()
    assert [(m.message_id, m.body, m.attempts) for m in pending] == [
        ("m-1", b"one", 0),
        ("m-2", b"\x00\xffbinary", 0),
    ]
    assert [m.message_id for m in await store.pending_outbox(limit=1)] == ["m-1"]
    assert all(m.created_at.tzinfo is not None and m.published_at is None for m in pending)

    await store.mark_outbox_failed("m-1")
    await store.mark_outbox_published("m-2")

    [left] = await store.pending_outbox()
    assert (left.message_id, left.attempts) == ("m-1", 1)
    await store.mark_outbox_published("m-1")
    await store.mark_outbox_published("unknown")  # nothing to do, no error
    assert await store.pending_outbox() == []
    assert not await store.enqueue_outbox("m-1", "run.infra", b"one")  # still known after publishing


# -- agents ------------------------------------------------------------------------------------


def make_agent(agent_id: str, *, online: bool = True, free_mib: int = 20_000) -> Agent:
    capacity = Capacity(
        cpu_load_percent=12.5,
        cpu_cores=16,
        memory_total_mib=65_536,
        memory_available_mib=40_000,
        gpus=[GpuInfo(index=0, name="RTX 4090", memory_total_mib=24_564, memory_free_mib=free_mib)],
    )
    return Agent(
        id=agent_id,
        kind=AgentKind.DESKTOP,
        labels={"role": "gpu"},
        online=online,
        last_seen=T0,
        capacity=capacity,
        version="0.1.0",
    )


async def test_agents_upsert_and_list(store: Store) -> None:
    await store.upsert_agent(make_agent("zeta"))
    await store.upsert_agent(Agent(id="infra-1", kind=AgentKind.INFRA))
    await store.upsert_agent(make_agent("zeta", online=False, free_mib=1_000))

    agents = await store.list_agents()

    assert [a.id for a in agents] == ["infra-1", "zeta"]
    assert agents[0] == Agent(id="infra-1", kind=AgentKind.INFRA)
    assert agents[1] == make_agent("zeta", online=False, free_mib=1_000)
    assert await store.count_rows("agents") == 2
