"""What only the RabbitMQ bus has: the broker's view of queues and messages, and its errors.

The behaviour both buses share is in ``tests/contract``; these tests look at
RabbitMQ itself (with aio-pika and ``rabbitmqctl``) to check that the bus sets
it up the way ``docs/protocol.md`` says.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from chiffon.bus import DEAD_LETTER_QUEUE, BusError, open_bus
from chiffon.bus.base import MAX_DELIVERIES
from chiffon.resources.messages import RunAccepted, make_envelope
from tests.contract.support import BusFactory, amqp_url, sweep_leftover_queues, unique_prefix

WORK = "work"


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Iterator[None]:
    yield
    sweep_leftover_queues()


@pytest.fixture
async def factory() -> AsyncIterator[BusFactory]:
    opened = BusFactory("amqp", unique_prefix())
    try:
        yield opened
    finally:
        await opened.cleanup()


async def test_an_unreachable_broker_is_named_without_its_password() -> None:
    bus = open_bus("amqp://chiffon:s3cret-pw@127.0.0.1:1/lab", prefix=unique_prefix())
    with pytest.raises(BusError) as caught:
        await bus.connect()

    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "s3cret-pw" not in message
    assert "\n" not in message
    with pytest.raises(BusError, match="not connected"):
        await bus.declare(WORK)


async def test_messages_are_persistent_and_carry_their_ids(factory: BusFactory) -> None:
    bus = await factory.open()
    await bus.declare(WORK)
    envelope = make_envelope(RunAccepted(run_id="kuma-1", agent_id="infra-1"), correlation_id="kuma-1")
    await bus.publish(WORK, envelope)

    connection = await aio_pika.connect(amqp_url())
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(factory.prefix + WORK, ensure=False)
        message = await queue.get(no_ack=True)

    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == envelope.message_id
    assert message.correlation_id == "kuma-1"
    assert message.content_type == "application/json"
    assert message.type == "RunAccepted"


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl on this machine")
async def test_queues_are_quorum_queues_that_dead_letter(factory: BusFactory) -> None:
    bus = await factory.open()
    await bus.declare(WORK)

    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "list_queues", "--quiet", "--no-table-headers", "name", "type", "durable", "arguments",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    rows = {
        line.split("\t")[0]: line for line in out.decode().splitlines() if line.startswith(factory.prefix)
    }

    work = rows[factory.prefix + WORK]
    assert "\tquorum\ttrue\t" in work
    assert f'{{"x-delivery-limit",{MAX_DELIVERIES - 1}}}' in work
    assert f'{{"x-dead-letter-routing-key","{factory.prefix}{DEAD_LETTER_QUEUE}"}}' in work
    dead_letter = rows[factory.prefix + DEAD_LETTER_QUEUE]
    assert "\tquorum\ttrue\t" in dead_letter
    assert "x-dead-letter" not in dead_letter, "the dead-letter queue must not dead-letter to itself"


async def test_a_queue_that_exists_with_other_settings_is_reported(factory: BusFactory) -> None:
    bus = await factory.open()
    await bus.declare("fine")
    connection = await aio_pika.connect(amqp_url())
    async with connection:
        channel = await connection.channel()
        classic = await channel.declare_queue(factory.prefix + WORK, durable=False)
        try:
            with pytest.raises(BusError, match="exists with other settings"):
                await bus.declare(WORK)
        finally:
            await classic.delete(if_unused=False, if_empty=False)

    # The refused declaration must not have disturbed publishing.
    await bus.publish("fine", make_envelope(RunAccepted(run_id="r", agent_id="a")))
