"""The in-process bus: the embedded mode's broker, in asyncio, with RabbitMQ's rules.

It exists so that ``chiffon up`` needs no server, and so that code tested on it
behaves the same on RabbitMQ. It therefore copies the broker rather than
taking shortcuts:

* Queues hold encoded bytes, not objects: every delivery is decoded again, so
  a poison message is dead-lettered exactly as over AMQP, and nobody can mutate
  a message after publishing it.
* One broker per process, like a RabbitMQ virtual host: every
  :class:`InProcessBus` in the process sees the same queues, so the embedded
  controller and agents may each call ``open_bus(None)``. The ``prefix``
  isolates tests from each other, as it does on RabbitMQ.
* Returned messages go back to the head of the queue in their original order
  and count towards :data:`~chiffon.bus.base.MAX_DELIVERIES`, as in a quorum
  queue; deliveries go round-robin to consumers that have prefetch room.

Not thread-safe: everything runs on one event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from functools import partial

from chiffon.bus.base import DEAD_LETTER_QUEUE, MAX_DELIVERIES, BusError, Handler, Subscription, encode
from chiffon.bus.consumer import Outcome, RawDelivery, Worker
from chiffon.resources.messages import Envelope

log = logging.getLogger(__name__)


class _Message:
    __slots__ = ("body", "deliveries")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.deliveries = 0


class _Queue:
    """One queue: ready messages, consumers, and where rejected messages go."""

    def __init__(self, name: str, dead_letter: _Queue | None) -> None:
        self.name = name
        # None for the dead-letter queue itself: what it rejects is dropped, and
        # it has no delivery limit (RabbitMQ would drop the message at the limit).
        self.dead_letter = dead_letter
        self.ready: deque[_Message] = deque()
        self.consumers: list[_Consumer] = []
        self._turn = 0

    def put(self, message: _Message) -> None:
        self.ready.append(message)
        self.dispatch()

    def give_back(self, messages: list[_Message]) -> None:
        """Return unsettled messages to the head of the queue, or dead-letter them at the limit."""
        keep = []
        for message in messages:
            if self.dead_letter is not None and message.deliveries >= MAX_DELIVERIES:
                self.reject(message, f"delivered {message.deliveries} times")
            else:
                keep.append(message)
        self.ready.extendleft(reversed(keep))
        self.dispatch()

    def reject(self, message: _Message, reason: str) -> None:
        if self.dead_letter is None:
            log.info("dropped a message rejected on %s (%s): it has no dead-letter queue", self.name, reason)
            return
        self.dead_letter.put(_Message(message.body))

    def dispatch(self) -> None:
        while self.ready:
            consumer = self._next_consumer()
            if consumer is None:
                return
            consumer.deliver(self.ready.popleft())

    def _next_consumer(self) -> _Consumer | None:
        count = len(self.consumers)
        for offset in range(count):
            consumer = self.consumers[(self._turn + offset) % count]
            if consumer.has_room():
                self._turn = (self._turn + offset + 1) % count
                return consumer
        return None


class _Consumer:
    """One subscription's side of a queue: what it holds unsettled, and its worker."""

    _tags = itertools.count(1)

    def __init__(self, queue: _Queue, handler: Handler, prefetch: int) -> None:
        self.queue = queue
        self.prefetch = prefetch
        self.worker = Worker(handler, queue.name)
        # Insertion-ordered, so a cancel returns messages in the order they came.
        self.unsettled: dict[int, _Message] = {}

    def has_room(self) -> bool:
        return len(self.unsettled) < self.prefetch

    def deliver(self, message: _Message) -> None:
        message.deliveries += 1
        tag = next(self._tags)
        self.unsettled[tag] = message
        raw = RawDelivery(
            queue=self.queue.name,
            body=message.body,
            redelivered=message.deliveries > 1,
            attempt=message.deliveries,
            settle=partial(self._settle, tag),
            is_stale=lambda: tag not in self.unsettled,
        )
        self.worker.put(raw)

    async def _settle(self, tag: int, outcome: Outcome) -> None:
        message = self.unsettled.pop(tag, None)
        if message is None:
            raise BusError("its subscription was cancelled")
        if outcome is Outcome.REQUEUE:
            self.queue.give_back([message])
        elif outcome is Outcome.DEAD_LETTER:
            self.queue.reject(message, "rejected by its consumer")
        self.queue.dispatch()

    async def stop(self) -> None:
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        await self.worker.stop()
        returned = list(self.unsettled.values())
        self.unsettled.clear()
        self.queue.give_back(returned)


class _Broker:
    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}

    def declare(self, name: str, dead_letter: _Queue | None) -> _Queue:
        if name not in self.queues:
            self.queues[name] = _Queue(name, dead_letter)
        return self.queues[name]


_BROKER = _Broker()


class _MemorySubscription:
    def __init__(self, bus: InProcessBus, consumer: _Consumer) -> None:
        self._bus = bus
        self._consumer = consumer
        self._cancelled = False

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self._bus._subscriptions.discard(self)
        await self._consumer.stop()


class InProcessBus:
    """The :class:`~chiffon.bus.Bus` of the embedded mode."""

    def __init__(self, *, prefix: str = "", broker: _Broker | None = None) -> None:
        self._prefix = prefix
        self._broker = broker or _BROKER
        self._connected = False
        self._declared: set[str] = set()
        self._subscriptions: set[_MemorySubscription] = set()

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        self._connected = False

    async def declare(self, queue: str) -> None:
        self._require_connection()
        self._declare(self._prefix + queue)

    async def publish(self, queue: str, envelope: Envelope) -> None:
        await self._publish_raw(queue, encode(envelope))

    async def consume(self, queue: str, handler: Handler, *, prefetch: int = 16) -> Subscription:
        self._require_connection()
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1 (got {prefetch})")
        # Consuming declares too, as over AMQP, so a consumer that starts before
        # any publisher does not depend on someone else declaring the queue.
        target = self._declare(self._prefix + queue)
        consumer = _Consumer(target, handler, prefetch)
        target.consumers.append(consumer)
        subscription = _MemorySubscription(self, consumer)
        self._subscriptions.add(subscription)
        target.dispatch()
        return subscription

    def _declare(self, name: str) -> _Queue:
        dead_letter = self._broker.declare(self._prefix + DEAD_LETTER_QUEUE, None)
        self._declared.update({dead_letter.name, name})
        if name == dead_letter.name:
            return dead_letter
        return self._broker.declare(name, dead_letter)

    def _require_connection(self) -> None:
        if not self._connected:
            raise BusError("the in-process bus is not connected: call connect() first")

    # -- for tests: raw bytes in and out, and cleanup -------------------------

    async def _publish_raw(self, queue: str, body: bytes) -> None:
        self._require_connection()
        name = self._prefix + queue
        target = self._broker.queues.get(name)
        if target is None:
            raise BusError(
                f"cannot publish to {name}: the in-process bus has no such queue; declare it first"
            )
        target.put(_Message(body))
        # A real publish waits for the broker; yielding here keeps a tight
        # publishing loop from starving the consumers, as it would over AMQP.
        await asyncio.sleep(0)

    async def _get_raw(self, queue: str) -> bytes | None:
        """Take the next ready message off ``queue`` without a consumer (like basic.get)."""
        target = self._broker.queues.get(self._prefix + queue)
        if target is None or not target.ready:
            return None
        return target.ready.popleft().body

    async def _delete_queue(self, name: str) -> None:
        """Delete the queue with this full (prefixed) name."""
        self._broker.queues.pop(name, None)
