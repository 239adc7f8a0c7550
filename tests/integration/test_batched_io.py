"""The controller's batched I/O on the in-process bus: agent reports written a batch at a time,
outbox published a batch at a time — acked or marked only after the write, never lost."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from chiffon.bus import RESULTS_QUEUE, Bus, BusError, open_bus, runs_queue
from chiffon.controllers.consumers import ResultConsumer
from chiffon.controllers.outbox import OutboxRelay
from chiffon.resources import RunStatus
from chiffon.resources.messages import (
    AnsibleEvent,
    Envelope,
    RunAccepted,
    RunEvent,
    RunRequest,
    RunResult,
    encode_envelope,
    make_envelope,
)
from chiffon.store import Store
from chiffon.store.records import RunWrites
from tests.integration.test_store_runs import make_run


async def until(predicate: Any, within: float = 5.0) -> None:
    # Polling: the consumer writes from its own task and signals nobody.
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


class FlakyStore:
    """The real store, whose first ``update_runs`` fails as if the database went away."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.failures_left = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def update_runs(self, run_ids: Any, decide: Any) -> RunWrites:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("database went away")
        return await self._store.update_runs(run_ids, decide)


async def test_reports_are_written_in_order_and_acked_after_the_write(store: Store) -> None:
    runs = [make_run(f"svc-{index}") for index in range(20)]
    for run in runs:
        await store.upsert_run(run)
    bus = open_bus(None)
    await bus.connect()
    woken: list[str] = []
    flaky = FlakyStore(store)
    consumer = ResultConsumer(flaky, enqueue=woken.append)  # type: ignore[arg-type]
    subscription = await bus.consume(RESULTS_QUEUE, consumer.submit, prefetch=200)
    try:
        for run in runs:
            event = AnsibleEvent(seq=1, event="runner_on_ok", task="deploy", host="localhost", status="ok")
            for payload in (
                RunAccepted(run_id=run.id, agent_id="infra-1"),
                RunEvent(run_id=run.id, agent_id="infra-1", events=[event]),
                RunResult(run_id=run.id, agent_id="infra-1", status="successful", rc=0, duration_seconds=1),
            ):
                await bus.publish(RESULTS_QUEUE, make_envelope(payload))

        async def all_finished() -> bool:
            stored = [await store.get_run(run.id) for run in runs]
            return all(r is not None and r.status is RunStatus.SUCCESSFUL for r in stored)

        await until(all_finished)
    finally:
        await subscription.cancel()
        await consumer.drain()
        await bus.close()
    assert flaky.failures_left == 0  # the first batch failed, was returned, and came back
    assert sorted(set(woken)) == sorted(run.intent for run in runs)
    assert [e.task for e in await store.list_run_events(runs[0].id)] == ["deploy"]
    assert len(await store.list_audit(action="run.result", limit=100)) == len(runs)


class FailingBus:
    """The in-process bus, refusing to publish one message."""

    def __init__(self, bus: Bus, refuse: str) -> None:
        self._bus = bus
        self.refuse = refuse
        self.published: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def publish(self, queue: str, envelope: Envelope) -> None:
        if envelope.message_id == self.refuse:
            raise BusError("broker unreachable")
        await self._bus.publish(queue, envelope)
        self.published.append(envelope.message_id)


def request(run_id: str) -> bytes:
    payload = RunRequest(
        run_id=run_id,
        intent="svc",
        generation=1,
        plan_digest="a" * 64,
        step="deploy",
        step_index=0,
        epoch=1,
        playbook="ansible/playbooks/kuma-deployment.yml",
        agent_id="infra-1",
    )
    return encode_envelope(make_envelope(payload, message_id=run_id))


async def test_relay_marks_what_was_confirmed_even_when_one_publish_fails(store: Store) -> None:
    for index in range(5):
        await store.enqueue_outbox(f"run-{index}", runs_queue("infra-1"), request(f"run-{index}"))
    inner = open_bus(None)
    await inner.connect()
    bus = FailingBus(inner, refuse="run-2")
    relay = OutboxRelay(store, bus)  # type: ignore[arg-type]
    try:
        try:
            await relay.drain()
        except BusError:
            pass
        else:
            raise AssertionError("the failed publish must surface, so the relay backs off")
        assert [m.message_id for m in await store.pending_outbox()] == ["run-2"]
        assert sorted(bus.published) == ["run-0", "run-1", "run-3", "run-4"]
        bus.refuse = ""
        assert await relay.drain() == 1
        assert await store.pending_outbox() == []
    finally:
        await inner.close()
