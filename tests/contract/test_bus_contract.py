"""The bus contract (DESIGN §4): one suite, run on the in-process bus and on RabbitMQ.

Each test states one promise of ``chiffon.bus`` from the point of view of the
code that uses it: what a consumer receives, when, how often, and what happens
to messages nobody can process. Raw bytes go in through the buses' test-only
``_publish_raw`` and come out of a queue through ``_get_raw`` (basic.get).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from chiffon.bus import (
    DEAD_LETTER_QUEUE,
    HEARTBEATS_QUEUE,
    RESULTS_QUEUE,
    Bus,
    BusError,
    Delivery,
    Subscription,
    open_bus,
    runs_queue,
)
from chiffon.bus.base import MAX_DELIVERIES
from chiffon.bus.memory import InProcessBus
from chiffon.resources.messages import CancelRun, RunRequest, encode_envelope, make_envelope
from tests.contract.support import QUIET, RUN_ID, BusFactory, Recorder, eventually, numbered, sample_payloads

WORK = "work"


async def test_every_message_type_round_trips(bus: Bus) -> None:
    await bus.declare(WORK)
    sent = [make_envelope(payload, correlation_id=RUN_ID) for payload in sample_payloads()]
    for envelope in sent:
        await bus.publish(WORK, envelope)

    received = Recorder()
    await bus.consume(WORK, received)
    await received.wait_for(len(sent))

    assert [delivery.envelope for delivery in received.deliveries] == sent
    assert not any(delivery.redelivered for delivery in received.deliveries)


async def test_the_real_queue_names_carry_their_messages(bus: Bus) -> None:
    for queue in (runs_queue("infra-1"), RESULTS_QUEUE, HEARTBEATS_QUEUE):
        await bus.declare(queue)
        await bus.publish(queue, numbered(1)[0])
        received = Recorder()
        subscription = await bus.consume(queue, received)
        await received.wait_for(1)
        await subscription.cancel()


async def test_an_acked_message_is_gone(bus: Bus) -> None:
    await bus.declare(WORK)
    await bus.publish(WORK, numbered(1)[0])
    received = Recorder()
    subscription = await bus.consume(WORK, received)
    await received.wait_for(1)
    await subscription.cancel()

    assert await bus._get_raw(WORK) is None  # type: ignore[attr-defined]


async def test_a_failing_handler_gets_the_message_again_marked_redelivered(bus: Bus) -> None:
    seen: list[Delivery] = []

    async def fail_once(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 1:
            raise RuntimeError("the database is down")
        await delivery.ack()

    await bus.declare(WORK)
    await bus.publish(WORK, numbered(1)[0])
    await bus.consume(WORK, fail_once)
    await eventually(lambda: len(seen) == 2, what="the redelivery")
    await asyncio.sleep(QUIET)

    assert [delivery.envelope.message_id for delivery in seen] == ["m000", "m000"]
    assert [delivery.redelivered for delivery in seen] == [False, True]
    assert len(seen) == 2, "an acked redelivery must not come back"


async def test_after_the_delivery_limit_the_message_is_dead_lettered(bus: Bus) -> None:
    seen: list[Delivery] = []

    async def always_fail(delivery: Delivery) -> None:
        seen.append(delivery)
        raise RuntimeError("this message cannot be processed")

    await bus.declare(WORK)
    envelope = numbered(1)[0]
    await bus.publish(WORK, envelope)
    await bus.consume(WORK, always_fail)
    parked = Recorder()
    await bus.consume(DEAD_LETTER_QUEUE, parked)
    await parked.wait_for(1)
    await asyncio.sleep(QUIET)

    assert len(seen) == MAX_DELIVERIES
    assert [delivery.redelivered for delivery in seen] == [False] + [True] * (MAX_DELIVERIES - 1)
    assert [delivery.envelope for delivery in parked.deliveries] == [envelope]


async def test_reject_without_requeue_dead_letters_at_once(bus: Bus) -> None:
    seen: list[Delivery] = []

    async def refuse(delivery: Delivery) -> None:
        seen.append(delivery)
        await delivery.reject(requeue=False)

    await bus.declare(WORK)
    envelope = numbered(1)[0]
    await bus.publish(WORK, envelope)
    await bus.consume(WORK, refuse)
    parked = Recorder()
    await bus.consume(DEAD_LETTER_QUEUE, parked)
    await parked.wait_for(1)
    await asyncio.sleep(QUIET)

    assert len(seen) == 1
    assert parked.deliveries[0].envelope == envelope


async def test_poison_is_dead_lettered_and_never_reaches_the_handler(bus: Bus) -> None:
    poison = [b"not json at all", b'{"protocol": "chiffon/v1", "type": "LaunchMissiles"}', b"\xff\xfe"]
    await bus.declare(WORK)
    for body in poison:
        await bus._publish_raw(WORK, body)  # type: ignore[attr-defined]
    good = numbered(1)[0]
    await bus.publish(WORK, good)

    received = Recorder()
    await bus.consume(WORK, received)
    await received.wait_for(1)
    await asyncio.sleep(QUIET)

    assert [delivery.envelope for delivery in received.deliveries] == [good]
    parked = [await bus._get_raw(DEAD_LETTER_QUEUE) for _ in poison]  # type: ignore[attr-defined]
    assert parked == poison


async def test_unsettled_deliveries_go_to_the_next_consumer_after_cancel(bus: Bus) -> None:
    await bus.declare(WORK)
    for envelope in numbered(3):
        await bus.publish(WORK, envelope)
    holder = Recorder(ack=False)
    first = await bus.consume(WORK, holder)
    await holder.wait_for(3)

    await first.cancel()
    second = Recorder()
    await bus.consume(WORK, second)
    await second.wait_for(3)

    assert second.ids == ["m000", "m001", "m002"]
    assert all(delivery.redelivered for delivery in second.deliveries)


async def test_unsettled_deliveries_go_to_another_process_when_a_bus_closes(bus_factory: BusFactory) -> None:
    leaving = await bus_factory.open()
    staying = await bus_factory.open()
    await leaving.declare(WORK)
    await leaving.publish(WORK, numbered(1)[0])
    holder = Recorder(ack=False)
    await leaving.consume(WORK, holder)
    await holder.wait_for(1)

    await leaving.close()
    received = Recorder()
    await staying.consume(WORK, received)
    await received.wait_for(1)

    assert received.ids == ["m000"]
    assert received.deliveries[0].redelivered


async def test_cancel_stops_a_running_handler_and_loses_nothing(bus: Bus) -> None:
    started = asyncio.Event()
    stopped: list[BaseException] = []

    async def stuck(delivery: Delivery) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            stopped.append(exc)
            raise

    await bus.declare(WORK)
    await bus.publish(WORK, numbered(1)[0])
    subscription = await bus.consume(WORK, stuck)
    await asyncio.wait_for(started.wait(), 10)
    await subscription.cancel()

    assert len(stopped) == 1, "cancel() must not return while the handler still runs"
    received = Recorder()
    await bus.consume(WORK, received)
    await received.wait_for(1)
    assert received.ids == ["m000"]


async def test_a_handler_may_cancel_its_own_subscription(bus: Bus) -> None:
    await bus.declare(WORK)
    for envelope in numbered(3):
        await bus.publish(WORK, envelope)
    seen: list[str] = []
    subscriptions: list[Subscription] = []

    async def take_one(delivery: Delivery) -> None:
        seen.append(delivery.envelope.message_id)
        await delivery.ack()
        await subscriptions[0].cancel()

    subscriptions.append(await bus.consume(WORK, take_one, prefetch=3))
    await eventually(lambda: len(seen) == 1, what="the first delivery")
    await asyncio.sleep(QUIET)
    assert seen == ["m000"]

    received = Recorder()
    await bus.consume(WORK, received)
    await received.wait_for(2)
    assert received.ids == ["m001", "m002"]


async def test_prefetch_limits_unsettled_deliveries(bus: Bus) -> None:
    await bus.declare(WORK)
    for envelope in numbered(5):
        await bus.publish(WORK, envelope)
    holder = Recorder(ack=False)
    await bus.consume(WORK, holder, prefetch=2)
    await holder.wait_for(2)
    await asyncio.sleep(QUIET)
    assert holder.ids == ["m000", "m001"]

    await holder.deliveries[0].ack()
    await holder.wait_for(3)
    await asyncio.sleep(QUIET)
    assert holder.ids == ["m000", "m001", "m002"]


async def test_one_consumer_receives_in_publish_order(bus: Bus) -> None:
    sent = numbered(40)
    await bus.declare(WORK)
    for envelope in sent:
        await bus.publish(WORK, envelope)
    received = Recorder()
    await bus.consume(WORK, received, prefetch=7)
    await received.wait_for(len(sent))

    assert received.ids == [envelope.message_id for envelope in sent]


async def test_one_subscription_runs_one_handler_at_a_time(bus: Bus) -> None:
    running: list[int] = [0]
    most: list[int] = [0]
    done: list[str] = []

    async def slow(delivery: Delivery) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.01)
        running[0] -= 1
        done.append(delivery.envelope.message_id)
        await delivery.ack()

    await bus.declare(WORK)
    for envelope in numbered(10):
        await bus.publish(WORK, envelope)
    await bus.consume(WORK, slow, prefetch=10)
    await eventually(lambda: len(done) == 10, what="10 handled messages")

    assert most[0] == 1
    assert done == [f"m{index:03d}" for index in range(10)]


async def test_publishing_to_an_undeclared_queue_raises(bus: Bus) -> None:
    with pytest.raises(BusError, match="nowhere"):
        await bus.publish("nowhere", numbered(1)[0])


async def test_a_queue_deleted_behind_the_bus_can_be_declared_again(bus: Bus) -> None:
    await bus.declare(WORK)
    await bus._delete_queue(bus._prefix + WORK)  # type: ignore[attr-defined]

    with pytest.raises(BusError):
        await bus.publish(WORK, numbered(1)[0])
    await bus.declare(WORK)
    await bus.publish(WORK, numbered(1)[0])


async def test_two_consumers_share_the_work_without_duplicates(bus: Bus) -> None:
    sent = numbered(40)
    await bus.declare(WORK)

    async def worker(seen: list[str], delivery: Delivery) -> None:
        await asyncio.sleep(0.005)
        seen.append(delivery.envelope.message_id)
        await delivery.ack()

    first: list[str] = []
    second: list[str] = []
    await bus.consume(WORK, lambda delivery: worker(first, delivery), prefetch=1)
    await bus.consume(WORK, lambda delivery: worker(second, delivery), prefetch=1)
    for envelope in sent:
        await bus.publish(WORK, envelope)
    await eventually(lambda: len(first) + len(second) >= len(sent), what="all messages handled")
    await asyncio.sleep(QUIET)

    assert sorted(first + second) == [envelope.message_id for envelope in sent]
    assert first and second, "both consumers should have had a share"


async def test_settling_twice_is_harmless(bus: Bus) -> None:
    errors: list[BaseException] = []

    async def settle_three_times(delivery: Delivery) -> None:
        try:
            await delivery.ack()
            await delivery.ack()
            await delivery.reject(requeue=True)
        except BaseException as exc:
            errors.append(exc)
            raise

    await bus.declare(WORK)
    await bus.publish(WORK, numbered(1)[0])
    subscription = await bus.consume(WORK, settle_three_times)
    await asyncio.sleep(QUIET)
    await subscription.cancel()

    assert errors == []
    assert await bus._get_raw(WORK) is None  # type: ignore[attr-defined]


async def test_a_late_ack_after_cancel_is_harmless_and_the_message_comes_back(bus: Bus) -> None:
    await bus.declare(WORK)
    await bus.publish(WORK, numbered(1)[0])
    holder = Recorder(ack=False)
    subscription = await bus.consume(WORK, holder)
    await holder.wait_for(1)
    await subscription.cancel()

    await holder.deliveries[0].ack()  # must only log

    received = Recorder()
    await bus.consume(WORK, received)
    await received.wait_for(1)
    assert received.ids == ["m000"]


async def test_declare_is_idempotent_and_consume_declares_too(bus: Bus) -> None:
    await bus.declare(WORK)
    await bus.declare(WORK)
    received = Recorder()
    await bus.consume("declared-by-consumer", received)
    await bus.publish("declared-by-consumer", numbered(1)[0])
    await received.wait_for(1)


async def test_a_request_past_its_deadline_is_still_delivered(bus: Bus) -> None:
    late = RunRequest(
        run_id=RUN_ID,
        intent="uptime-kuma",
        generation=3,
        plan_digest="sha256:0f3c",
        step="deploy",
        playbook="ansible/playbooks/kuma-deployment.yml",
        deadline=datetime.now(UTC) - timedelta(hours=1),
    )
    envelope = make_envelope(late, message_id=RUN_ID)
    await bus.declare(runs_queue("infra-1"))
    await bus.publish(runs_queue("infra-1"), envelope)
    received = Recorder()
    await bus.consume(runs_queue("infra-1"), received)
    await received.wait_for(1)

    assert received.deliveries[0].envelope == envelope


async def test_prefixes_keep_buses_apart(bus_factory: BusFactory) -> None:
    mine = await bus_factory.open()
    theirs = await bus_factory.open(prefix=bus_factory.prefix + "other.")
    await mine.declare(WORK)
    await theirs.declare(WORK)
    await theirs.publish(WORK, numbered(1)[0])

    received = Recorder()
    await mine.consume(WORK, received)
    await asyncio.sleep(QUIET)
    assert received.deliveries == []


async def test_a_bus_must_be_connected_and_closes_twice(bus_factory: BusFactory) -> None:
    bus = await bus_factory.open()
    await bus.close()
    await bus.close()

    with pytest.raises(BusError, match="not connected"):
        await bus.publish(WORK, numbered(1)[0])
    with pytest.raises(BusError, match="not connected"):
        await bus.consume(WORK, Recorder())


async def test_an_oversized_message_is_refused_before_it_is_sent(bus: Bus) -> None:
    await bus.declare(WORK)
    huge = make_envelope(CancelRun(run_id="r", reason="x" * (5 * 1024 * 1024)))
    with pytest.raises(ValueError, match="limit"):
        await bus.publish(WORK, huge)


# -- without a broker ---------------------------------------------------------


def test_queue_names() -> None:
    assert runs_queue("infra-1") == "chiffon.runs.infra-1"
    assert (RESULTS_QUEUE, HEARTBEATS_QUEUE, DEAD_LETTER_QUEUE) == (
        "chiffon.results",
        "chiffon.heartbeats",
        "chiffon.dead-letter",
    )


@pytest.mark.parametrize("agent_id", ["", "two words", "tab\tbed", "x" * 201])
def test_runs_queue_refuses_unusable_agent_ids(agent_id: str) -> None:
    with pytest.raises(ValueError, match="agent id"):
        runs_queue(agent_id)


def test_open_bus_picks_the_implementation() -> None:
    assert isinstance(open_bus(None), InProcessBus)
    assert isinstance(open_bus(""), InProcessBus)
    assert type(open_bus("amqp://guest:guest@localhost/")).__name__ == "AmqpBus"
    with pytest.raises(BusError, match="unsupported broker URL scheme 'redis'"):
        open_bus("redis://localhost:6379/0")


def test_encoded_messages_are_the_documented_json() -> None:
    body = encode_envelope(make_envelope(CancelRun(run_id="r"), message_id="m"))
    assert body.startswith(b'{"protocol":"chiffon/v1","type":"CancelRun","messageId":"m"')
