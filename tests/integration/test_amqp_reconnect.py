"""The AMQP bus survives a lost connection and a broker restart (DESIGN §9: no lost work).

The broker is shared with other people's tests, so the first test closes only
its own connection (found by the prefix in its ``connection_name``). The slow
test really restarts the RabbitMQ application; whatever happens, it leaves the
broker running and answering ``rabbitmq-diagnostics ping``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from chiffon.bus import Bus, Delivery
from chiffon.resources.messages import Envelope
from tests.contract.support import (
    BusFactory,
    Recorder,
    broker_alone,
    eventually,
    numbered,
    sweep_leftover_queues,
    unique_prefix,
)

WORK = "work"
log = logging.getLogger(__name__)
RABBITMQCTL = shutil.which("rabbitmqctl")
needs_rabbitmqctl = pytest.mark.skipif(RABBITMQCTL is None, reason="needs rabbitmqctl on this machine")


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


@pytest.fixture
async def lone_factory() -> AsyncIterator[BusFactory]:
    """For the restart test, which holds the broker alone and must not share it with itself."""
    opened = BusFactory("amqp", unique_prefix(), share_broker=False)
    try:
        yield opened
    finally:
        await opened.cleanup()


async def rabbitmqctl(*args: str) -> str:
    assert RABBITMQCTL is not None
    process = await asyncio.create_subprocess_exec(
        RABBITMQCTL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, f"rabbitmqctl {' '.join(args)} failed: {err.decode().strip()}"
    return out.decode()


async def close_connections_of(prefix: str) -> int:
    """Close (broker side) every connection whose name carries ``prefix``; how many."""
    listing = await rabbitmqctl(
        "list_connections", "--quiet", "--no-table-headers", "pid", "client_properties"
    )
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if prefix in line]
    for pid in pids:
        await rabbitmqctl("close_connection", pid, "test: simulated network failure")
    return len(pids)


def ensure_broker_running(timeout: float = 120.0) -> None:
    """Blocking on purpose: it must work even while the test's event loop is being torn down."""
    assert RABBITMQCTL is not None
    subprocess.run([RABBITMQCTL, "start_app"], capture_output=True, timeout=timeout, check=False)
    diagnostics = shutil.which("rabbitmq-diagnostics") or "rabbitmq-diagnostics"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # ping answers as soon as the Erlang node runs; check_running waits for the app.
        checks = [
            subprocess.run([diagnostics, "-q", check], capture_output=True, timeout=timeout, check=False)
            for check in ("ping", "check_running")
        ]
        if all(check.returncode == 0 for check in checks):
            return
        time.sleep(1)
    raise AssertionError("RabbitMQ did not answer ping after the restart test: start it by hand")


@needs_rabbitmqctl
async def test_publishing_and_consuming_resume_after_the_connection_drops(factory: BusFactory) -> None:
    bus = await factory.open()
    await bus.declare(WORK)
    received = Recorder()
    await bus.consume(WORK, received)
    held = Recorder(ack=False)
    await bus.consume("held", held)
    sent = numbered(3)
    await bus.publish(WORK, sent[0])
    await bus.publish("held", sent[0])
    await received.wait_for(1)
    await held.wait_for(1)

    assert await close_connections_of(factory.prefix) == 1

    # publish() waits for the reconnect; the consumers were restored by then or soon after.
    await bus.publish(WORK, sent[1])
    await bus.publish(WORK, sent[2])
    await received.wait_for(3, within=30)
    assert received.ids == ["m000", "m001", "m002"]

    # The delivery from before the drop can no longer be settled: acking it
    # only logs, and the broker gives the message to the restored consumer.
    await held.deliveries[0].ack()
    await held.wait_for(2, within=30)
    assert held.ids == ["m000", "m000"]
    assert held.deliveries[1].redelivered


@needs_rabbitmqctl
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_no_confirmed_message_is_lost_when_the_broker_restarts(lone_factory: BusFactory) -> None:
    received: list[str] = []

    async def record(delivery: Delivery) -> None:
        received.append(delivery.envelope.message_id)
        # Slower than the publisher: a backlog sits in the queue, and deliveries
        # are unacked, when the broker stops.
        await asyncio.sleep(0.02)
        await delivery.ack()

    sent = numbered(200)
    confirmed: list[str] = []
    expected = {envelope.message_id for envelope in sent}
    async with broker_alone():
        bus = await lone_factory.open()
        await bus.declare(WORK)
        await bus.consume(WORK, record, prefetch=20)
        publishing = asyncio.create_task(_publish_slowly(bus, sent, confirmed))
        try:
            await eventually(lambda: len(confirmed) >= 50, within=30, what="50 confirmed publishes")
            await rabbitmqctl("stop_app")
            await rabbitmqctl("start_app")
            await asyncio.wait_for(publishing, timeout=120)
            await eventually(lambda: expected <= set(received), within=90, what="every message to arrive")
        finally:
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
            ensure_broker_running()

    duplicates = len(received) - len(set(received))
    missing = sorted(expected - set(received))
    log.info(
        "broker restart: %d deliveries of %d messages (%d duplicates)", len(received), len(sent), duplicates
    )
    assert not missing, f"lost {len(missing)} confirmed messages ({duplicates} duplicates): {missing[:10]}"
    assert confirmed == [envelope.message_id for envelope in sent]


async def _publish_slowly(bus: Bus, sent: list[Envelope], confirmed: list[str]) -> None:
    # Spread over a few seconds, so the restart lands in the middle of it.
    for envelope in sent:
        await bus.publish(WORK, envelope)
        confirmed.append(envelope.message_id)
        await asyncio.sleep(0.01)
