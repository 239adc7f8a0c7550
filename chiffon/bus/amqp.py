"""The RabbitMQ bus: the only module that imports aio-pika.

Topology, all on the default exchange (routing key = queue name):

* every queue is a durable **quorum** queue whose ``x-delivery-limit`` makes
  the broker count returns and dead-letter a message after
  :data:`~chiffon.bus.base.MAX_DELIVERIES` deliveries (RabbitMQ 3.10 delivers
  ``limit + 1`` times and counts a closed consumer channel as a return);
* rejected and over-limit messages are dead-lettered through the default
  exchange to ``chiffon.dead-letter`` with the ``at-least-once`` strategy, so a
  message is never lost between the two queues (it needs ``x-overflow:
  reject-publish``, which only matters for queues with a length limit: none);
* the dead-letter queue itself has neither a limit nor a dead-letter target.

Publishing uses one channel with publisher confirms and ``mandatory`` set:
``publish`` returns after the broker's ack; an unroutable message (no such
queue) comes back as a return and raises :class:`BusError` at once. Lost
connections, nacks and missing confirms are retried with backoff for
``retry_for`` seconds (30 by default), then raise. A retry after a lost confirm
can publish twice: consumers de-duplicate by ``message_id``.

Each subscription gets its own channel: ``basic.qos`` then limits that consumer
alone, and closing the channel is what makes RabbitMQ return its unacked
messages (``basic.cancel`` alone keeps them).

Reconnecting is aio-pika's ``connect_robust``: after a lost connection or a
broker restart it reconnects every second, reopens channels, restores their
prefetch, re-declares the consumers' queues and re-registers the consumers
under their old tags (checked by ``tests/integration/test_amqp_reconnect.py``).
Deliveries received on the old channel can no longer be settled; the broker has
requeued them, so the worker skips those it had not started and a late ack is
only logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelPreconditionFailed, PublishError

from chiffon.bus.base import DEAD_LETTER_QUEUE, MAX_DELIVERIES, BusError, Handler, Subscription, encode
from chiffon.bus.consumer import Outcome, RawDelivery, Worker, one_line
from chiffon.resources.messages import Envelope

log = logging.getLogger(__name__)

T = TypeVar("T")

RECONNECT_INTERVAL = 1.0
CONNECT_TIMEOUT = 10.0
RETRY_FOR = 30.0
FIRST_RETRY_DELAY = 0.2
MAX_RETRY_DELAY = 3.0
# basic.cancel and channel.close during an outage must not hang a shutdown.
CANCEL_TIMEOUT = 5.0

_OBJECT_REPR = re.compile(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-f]+>")

# What a retry may fix: a lost connection, a closed channel, a nack, a timeout.
_TRANSIENT: tuple[type[BaseException], ...] = (TimeoutError, *CONNECTION_EXCEPTIONS)


def describe_url(url: str) -> str:
    """Where the broker is, without the password: ``amqp://user@host:port/vhost``."""
    parts = urlsplit(url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{parts.hostname or 'localhost'}:{port}{parts.path or '/'}"


def queue_arguments(name: str, dead_letter_queue: str) -> dict[str, Any]:
    """The x-arguments of a queue; changing them later needs a new queue or a policy."""
    if name == dead_letter_queue:
        return {"x-queue-type": "quorum"}
    return {
        "x-queue-type": "quorum",
        # RabbitMQ delivers a message limit + 1 times before dead-lettering it.
        "x-delivery-limit": MAX_DELIVERIES - 1,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def _raw_delivery(queue: str, message: AbstractIncomingMessage) -> RawDelivery:
    count = (message.headers or {}).get("x-delivery-count", 0)
    attempt = (count if isinstance(count, int) else 0) + 1
    return RawDelivery(
        queue=queue,
        body=message.body,
        redelivered=bool(message.redelivered),
        attempt=attempt,
        settle=lambda outcome: _settle(message, outcome),
        is_stale=lambda: _is_stale(message),
    )


async def _settle(message: AbstractIncomingMessage, outcome: Outcome) -> None:
    if _is_stale(message):
        raise BusError("its channel closed")
    if outcome is Outcome.ACK:
        await message.ack()
    else:
        await message.reject(requeue=outcome is Outcome.REQUEUE)


def _is_stale(message: AbstractIncomingMessage) -> bool:
    try:
        return message.channel.is_closed
    except CONNECTION_EXCEPTIONS:
        # aio-pika raises ChannelInvalidStateError once the channel has closed.
        return True


class _AmqpSubscription:
    def __init__(self, bus: AmqpBus, channel: AbstractRobustChannel, queue: AbstractQueue, handler: Handler):
        self._bus = bus
        self._channel = channel
        self._queue = queue
        self._worker = Worker(handler, queue.name)
        self._tag: str | None = None
        self._cancelled = False

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aio-pika calls this in one task per delivery, started in delivery
        # order; queueing at once keeps that order for the worker.
        self._worker.put(_raw_delivery(self._queue.name, message))

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._bus._subscriptions.discard(self)
        if self._tag is not None:
            # Also stops aio-pika from restoring the consumer after a reconnect.
            await _quietly(self._queue.cancel(self._tag), f"cancel the consumer of {self._queue.name}")
        await self._worker.stop()
        # Closing the channel is what returns its unacked messages to the queue.
        await _quietly(self._channel.close(), f"close the channel of {self._queue.name}")


async def _quietly(operation: Awaitable[Any], what: str) -> None:
    try:
        async with asyncio.timeout(CANCEL_TIMEOUT):
            await operation
    except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        log.debug("could not %s: %s", what, one_line(exc))


class AmqpBus:
    """The :class:`~chiffon.bus.Bus` on RabbitMQ (see the module docstring)."""

    def __init__(self, url: str, *, prefix: str = "", retry_for: float = RETRY_FOR) -> None:
        self._url = url
        self._where = describe_url(url)
        self._prefix = prefix
        self._retry_for = retry_for
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._declared: set[str] = set()
        self._subscriptions: set[_AmqpSubscription] = set()
        # Shown by `rabbitmqctl list_connections client_properties`; the prefix
        # lets a test find (and close) its own connection on a shared broker.
        self.connection_name = f"chiffon {prefix or '-'} pid {os.getpid()}"

    async def connect(self) -> None:
        if self._connection is not None:
            return
        try:
            connection = await aio_pika.connect_robust(
                self._url,
                timeout=CONNECT_TIMEOUT,
                reconnect_interval=RECONNECT_INTERVAL,
                client_properties={"connection_name": self.connection_name},
            )
        except Exception as exc:
            raise BusError(
                f"cannot connect to the message broker at {self._where}: {self._reason(exc)}"
            ) from exc
        connection.reconnect_callbacks.add(self._on_reconnect)
        try:
            self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except Exception as exc:
            await connection.close()
            raise BusError(
                f"cannot open a channel on the broker at {self._where}: {self._reason(exc)}"
            ) from exc
        self._connection = connection

    def _on_reconnect(self, *_: object) -> None:
        log.info("reconnected to the message broker at %s", self._where)

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        connection, self._connection, self._publisher = self._connection, None, None
        if connection is not None:
            await _quietly(connection.close(), f"close the connection to {self._where}")

    async def declare(self, queue: str) -> None:
        name = self._prefix + queue
        dead_letter = self._prefix + DEAD_LETTER_QUEUE
        for target in (dead_letter, name):
            if target not in self._declared:
                await self._retrying(partial(self._declare_once, target), f"declare {target}")
                self._declared.add(target)

    async def _declare_once(self, name: str) -> None:
        # A throwaway channel: a declaration the broker refuses closes its
        # channel, and that must not disturb publishing.
        channel = await self._require_connection().channel(publisher_confirms=False)
        try:
            await channel.declare_queue(
                name,
                durable=True,
                arguments=queue_arguments(name, self._prefix + DEAD_LETTER_QUEUE),
                robust=False,
            )
        finally:
            await _quietly(channel.close(), f"close the channel that declared {name}")

    async def publish(self, queue: str, envelope: Envelope) -> None:
        message = aio_pika.Message(
            encode(envelope),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=envelope.message_id,
            correlation_id=envelope.correlation_id,
            content_type="application/json",
            type=envelope.type.value,
            timestamp=envelope.sent_at,
            app_id="chiffon",
        )
        await self._publish(queue, message, f"{envelope.type.value} {envelope.message_id}")

    async def _publish(self, queue: str, message: aio_pika.Message, what: str) -> None:
        name = self._prefix + queue
        self._require_connection()
        try:
            await self._retrying(partial(self._publish_once, name, message), f"publish {what} to {name}")
        except BusError:
            # The queue may have been deleted behind our back: let the next
            # declare() really declare it instead of trusting the cache.
            self._declared.discard(name)
            raise

    async def _publish_once(self, name: str, message: aio_pika.Message) -> None:
        if self._publisher is None:
            raise BusError(f"the bus to {self._where} is closed")
        await self._publisher.default_exchange.publish(message, routing_key=name, mandatory=True)

    async def consume(self, queue: str, handler: Handler, *, prefetch: int = 16) -> Subscription:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1 (got {prefetch})")
        # Declaring first means a consumer never depends on a publisher having
        # declared the queue, and turns a refused declaration into a BusError.
        await self.declare(queue)
        name = self._prefix + queue
        subscription = await self._retrying(
            partial(self._subscribe, name, handler, prefetch), f"consume {name}"
        )
        self._subscriptions.add(subscription)
        return subscription

    async def _subscribe(self, name: str, handler: Handler, prefetch: int) -> _AmqpSubscription:
        channel = await self._require_connection().channel(publisher_confirms=False)
        subscription: _AmqpSubscription | None = None
        try:
            await channel.set_qos(prefetch_count=prefetch)
            # robust=True: aio-pika re-declares it and restores the consumer after a reconnect.
            amqp_queue = await channel.declare_queue(
                name,
                durable=True,
                arguments=queue_arguments(name, self._prefix + DEAD_LETTER_QUEUE),
                robust=True,
            )
            subscription = _AmqpSubscription(self, channel, amqp_queue, handler)
            await subscription.start()
        except BaseException:
            # A failed attempt (it may be retried) must leave no channel or worker behind.
            if subscription is not None:
                await subscription.cancel()
            else:
                await _quietly(channel.close(), f"close the channel that failed to consume {name}")
            raise
        return subscription

    def _require_connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BusError(f"the bus to {self._where} is not connected: call connect() first")
        return self._connection

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``attempt`` until it succeeds, a permanent error, or ``retry_for`` runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for
        delay = FIRST_RETRY_DELAY
        while True:
            self._require_connection()
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.01)):
                    return await attempt()
            except BusError:
                raise
            except PublishError as exc:
                raise BusError(
                    f"cannot {what} on {self._where}: the broker returned it as unroutable "
                    f"({self._reason(exc)}); declare the queue first"
                ) from exc
            except ChannelPreconditionFailed as exc:
                raise BusError(
                    f"cannot {what} on {self._where}: it exists with other settings ({self._reason(exc)})"
                ) from exc
            except _TRANSIENT as exc:
                if loop.time() + delay >= deadline:
                    raise BusError(
                        f"cannot {what} on {self._where} within {self._retry_for:g} s: {self._reason(exc)}"
                    ) from exc
                log.info("could not %s (%s); retrying in %.1f s", what, self._reason(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    def _reason(self, exc: BaseException) -> str:
        # aio-pika puts object reprs in some messages; the class name says as much.
        reason = _OBJECT_REPR.sub(r"\1", one_line(exc))
        password = urlsplit(self._url).password
        return reason.replace(password, "***") if password else reason

    # -- for tests: raw bytes in and out, and cleanup -------------------------

    async def _publish_raw(self, queue: str, body: bytes) -> None:
        message = aio_pika.Message(
            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=uuid.uuid4().hex
        )
        await self._publish(queue, message, "raw bytes")

    async def _get_raw(self, queue: str) -> bytes | None:
        """Take the next ready message off ``queue`` without a consumer (basic.get)."""
        channel = await self._require_connection().channel(publisher_confirms=False)
        try:
            amqp_queue = await channel.get_queue(self._prefix + queue, ensure=False)
            message = await amqp_queue.get(no_ack=True, fail=False)
            return None if message is None else message.body
        finally:
            await _quietly(channel.close(), "close a channel")

    async def _delete_queue(self, name: str) -> None:
        """Delete the queue with this full (prefixed) name."""
        channel = await self._require_connection().channel(publisher_confirms=False)
        try:
            await channel.queue_delete(name)
        finally:
            await _quietly(channel.close(), "close a channel")
