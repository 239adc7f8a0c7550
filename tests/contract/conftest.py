"""Fixtures of the bus contract: every test runs on the in-process bus and on RabbitMQ.

* ``bus_factory``, parametrized ``memory`` / ``amqp``: opens connected buses
  that share the test's queue prefix (a second bus is a second process as far
  as the broker is concerned); it closes them and deletes their queues after
  the test, then fails the test if it left asyncio tasks running.
* ``bus``: the first bus of that factory.

See ``tests/contract/support.py`` for how RabbitMQ is found and shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from chiffon.bus import Bus
from tests.contract.support import BusFactory, sweep_leftover_queues, unique_prefix

KINDS = [pytest.param("memory", id="memory"), pytest.param("amqp", id="amqp")]


@pytest.fixture(scope="session", autouse=True)
def _sweep_rabbitmq() -> Iterator[None]:
    yield
    sweep_leftover_queues()


@pytest.fixture(params=KINDS)
async def bus_factory(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    factory = BusFactory(request.param, unique_prefix())
    try:
        yield factory
    finally:
        await factory.cleanup()
    await _fail_on_leftover_tasks()


@pytest.fixture
async def bus(bus_factory: BusFactory) -> Bus:
    return await bus_factory.open()


async def _fail_on_leftover_tasks() -> None:
    """Closing a bus must leave nothing running (STYLE 14); give closing sockets a moment."""
    current = asyncio.current_task()
    for _ in range(100):
        leftover = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
        if not leftover:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the test left {len(leftover)} asyncio task(s) running: {leftover}", pytrace=False)
