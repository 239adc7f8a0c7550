"""HeartbeatConsumer.submit: heartbeats written in batches, acked only once committed (both backends)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from chiffon.bus import HEARTBEATS_QUEUE
from chiffon.bus.memory import InProcessBus
from chiffon.controllers.consumers import HEARTBEATS_PREFETCH, HeartbeatConsumer
from chiffon.resources import Agent
from chiffon.resources.agent import AgentKind, Capacity, GpuInfo
from chiffon.resources.messages import AgentOffline, Envelope, Heartbeat, make_envelope
from chiffon.store import Store, StoreError
from tests.contract.support import eventually

LONG = 30.0  # a coalescing window no test waits out


@dataclass
class FakeDelivery:
    """Our own bus adapter's Delivery, recording how it was settled."""

    envelope: Envelope
    redelivered: bool = False
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def reject(self, *, requeue: bool) -> None:
        self.settled.append("requeue" if requeue else "dead-letter")


class CountingStore:
    """The store, counting batch writes; ``fail_next`` makes the next one fail as an outage would."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.batches: list[list[str]] = []
        self.fail_next = False

    async def upsert_agents(self, agents: Sequence[Agent]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StoreError("the database went away")
        await self._store.upsert_agents(agents)
        self.batches.append([agent.id for agent in agents])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def beat(agent_id: str, *, free_mib: int = 0, load: float = 20.0) -> FakeDelivery:
    gpus = [GpuInfo(index=0, memory_total_mib=24000, memory_free_mib=free_mib)] if free_mib else []
    capacity = Capacity(
        cpu_load_percent=load, cpu_cores=8, memory_total_mib=32000, memory_available_mib=16000, gpus=gpus
    )
    heartbeat = Heartbeat(agent_id=agent_id, kind=AgentKind.DESKTOP, capacity=capacity)
    return FakeDelivery(make_envelope(heartbeat))


def consumer(store: CountingStore, wakes: list[int], **options: Any) -> HeartbeatConsumer:
    def woken() -> None:
        # The waiters read the agents table: it must hold the new room by now.
        wakes.append(len(store.batches))

    return HeartbeatConsumer(store, on_capacity=woken, **options)  # type: ignore[arg-type]


async def stored(store: Store) -> dict[str, Agent]:
    return {agent.id: agent for agent in await store.list_agents()}


async def test_a_burst_is_one_transaction_acked_after_it(store: Store) -> None:
    counting, wakes = CountingStore(store), []
    heartbeats = consumer(counting, wakes, coalesce_seconds=LONG, quiet_seconds=LONG)
    deliveries = [beat(f"desk-{index}") for index in range(20)]
    newer = beat("desk-3", free_mib=8000)
    for delivery in [*deliveries, newer]:
        await heartbeats.submit(delivery)
    await asyncio.sleep(0.05)
    assert await stored(store) == {} and all(d.settled == [] for d in [*deliveries, newer])

    await heartbeats.drain()
    agents = await stored(store)
    assert len(counting.batches) == 1 and len(agents) == 20
    assert agents["desk-3"].capacity is not None and agents["desk-3"].capacity.gpus[0].memory_free_mib == 8000
    assert all(agent.online and agent.last_seen is not None for agent in agents.values())
    assert all(d.settled == ["ack"] for d in [*deliveries, newer])
    assert wakes == [1]  # new agents bring room: one wake-up, after the write


async def test_a_full_batch_is_written_at_once(store: Store) -> None:
    counting, wakes = CountingStore(store), []
    heartbeats = consumer(counting, wakes, max_batch=3, coalesce_seconds=LONG, quiet_seconds=LONG)
    deliveries = [beat(f"desk-{index}") for index in range(3)]
    for delivery in deliveries:
        await heartbeats.submit(delivery)
    await eventually(lambda: bool(counting.batches), within=5, what="the full batch written")
    assert counting.batches == [["desk-0", "desk-1", "desk-2"]]
    assert [d.settled for d in deliveries] == [["ack"], ["ack"], ["ack"]]

    last = beat("desk-3")
    await heartbeats.submit(last)  # not full: it waits for more
    await asyncio.sleep(0.1)
    assert last.settled == []
    await heartbeats.drain()
    assert counting.batches[1:] == [["desk-3"]] and last.settled == ["ack"]


async def test_a_lone_heartbeat_waits_only_for_quiet(store: Store) -> None:
    counting, wakes = CountingStore(store), []
    heartbeats = consumer(counting, wakes, coalesce_seconds=LONG, quiet_seconds=0.05)
    delivery = beat("desk-1")
    started = asyncio.get_running_loop().time()
    await heartbeats.submit(delivery)
    await eventually(lambda: bool(delivery.settled), within=5, what="the heartbeat written")
    assert asyncio.get_running_loop().time() - started < 2
    assert "desk-1" in await stored(store)
    await heartbeats.drain()


async def test_heartbeats_arriving_steadily_wait_at_most_the_coalescing_window(store: Store) -> None:
    counting, wakes = CountingStore(store), []
    heartbeats = consumer(counting, wakes, coalesce_seconds=0.3, quiet_seconds=LONG)
    first = beat("desk-0")
    await heartbeats.submit(first)
    for index in range(1, 40):  # one every 20 ms: never quiet, so the window decides
        await asyncio.sleep(0.02)
        await heartbeats.submit(beat(f"desk-{index}"))
        if first.settled:
            break
    assert first.settled == ["ack"] and 5 <= len(counting.batches[0]) < 40
    await heartbeats.drain()


async def test_going_offline_after_a_heartbeat_in_one_batch_is_what_is_stored(store: Store) -> None:
    counting, wakes = CountingStore(store), []
    heartbeats = consumer(counting, wakes, coalesce_seconds=LONG, quiet_seconds=LONG)
    offline = FakeDelivery(make_envelope(AgentOffline(agent_id="desk-1", reason="shutting down")))
    unknown = FakeDelivery(make_envelope(AgentOffline(agent_id="never-seen")))
    for delivery in (beat("desk-1"), offline, unknown):
        await heartbeats.submit(delivery)
    await heartbeats.drain()
    agents = await stored(store)
    assert set(agents) == {"desk-1"} and agents["desk-1"].online is False
    assert offline.settled == ["ack"] and unknown.settled == ["ack"]


async def test_a_failed_write_returns_the_batch_and_the_next_write_wakes_the_waiters(store: Store) -> None:
    counting, wakes = CountingStore(store), []
    heartbeats = consumer(counting, wakes, coalesce_seconds=LONG, quiet_seconds=LONG)
    counting.fail_next = True
    lost = beat("desk-gpu", free_mib=12000)
    await heartbeats.submit(lost)
    await heartbeats.drain()
    assert lost.settled == ["requeue"] and await stored(store) == {} and wakes == []

    # The broker delivers it again: no longer new to the consumer, yet the waiters are woken.
    again = FakeDelivery(lost.envelope, redelivered=True)
    await heartbeats.submit(again)
    await heartbeats.drain()
    assert again.settled == ["ack"] and "desk-gpu" in await stored(store)
    assert wakes == [1]


async def test_no_wake_up_without_more_room(store: Store) -> None:
    counting, wakes = CountingStore(store), []
    heartbeats = consumer(counting, wakes, coalesce_seconds=LONG, quiet_seconds=LONG)
    await heartbeats.submit(beat("desk-1", load=20))
    await heartbeats.drain()
    await heartbeats.submit(beat("desk-1", load=25))  # a little busier: nothing new fits
    await heartbeats.drain()
    assert wakes == [1] and len(counting.batches) == 2


async def test_through_the_in_process_bus_everything_is_stored_and_acked(store: Store) -> None:
    bus = InProcessBus(prefix=f"t{uuid.uuid4().hex[:8]}.")
    await bus.connect()
    counting, wakes = CountingStore(store), []
    heartbeats = consumer(counting, wakes, quiet_seconds=0.05)
    try:
        subscription = await bus.consume(HEARTBEATS_QUEUE, heartbeats.submit, prefetch=HEARTBEATS_PREFETCH)
        expected = {f"desk-{index}" for index in range(120)}
        for index in range(300):
            await bus.publish(HEARTBEATS_QUEUE, beat(f"desk-{index % 120}", load=index % 50).envelope)
        await eventually(
            lambda: {id_ for batch in counting.batches for id_ in batch} >= expected,
            within=10,
            what="every agent written",
        )
        await heartbeats.drain()
        assert set(await stored(store)) == expected
        await subscription.cancel()
        # Nothing was left unacked: cancelling returned no message to the queue.
        assert await bus._get_raw(HEARTBEATS_QUEUE) is None
        assert len(counting.batches) < 30  # 300 heartbeats, a handful of transactions
    finally:
        await heartbeats.drain()
        await bus.close()


def test_the_batch_limit_must_be_positive(tmp_path: Any) -> None:
    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    with pytest.raises(ValueError, match="max_batch"):
        HeartbeatConsumer(store, on_capacity=lambda: None, max_batch=0)


async def test_upsert_agents_inserts_updates_and_keeps_the_last_of_an_id(store: Store) -> None:
    def agent(agent_id: str, load: float, *, online: bool = True) -> Agent:
        capacity = Capacity(
            cpu_load_percent=load, cpu_cores=4, memory_total_mib=8000, memory_available_mib=4000
        )
        return Agent(id=agent_id, kind=AgentKind.DESKTOP, online=online, capacity=capacity)

    await store.upsert_agents([])
    await store.upsert_agents([agent(f"desk-{index:04d}", 10) for index in range(1500)])
    await store.upsert_agents([agent("desk-0001", 30), agent("desk-0001", 40, online=False), agent("new", 5)])
    agents = await stored(store)
    assert len(agents) == 1501
    assert agents["desk-0001"].online is False and agents["desk-0001"].capacity is not None
    assert agents["desk-0001"].capacity.cpu_load_percent == 40
    assert agents["desk-0002"].capacity is not None and agents["desk-0002"].capacity.cpu_load_percent == 10
