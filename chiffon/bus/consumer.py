"""From broker deliveries to handler calls: the half both buses share.

A backend turns each delivery into a :class:`RawDelivery` (the body as bytes,
the redelivered flag, which delivery of the message this is, and a coroutine
function that tells the broker *ack*, *requeue* or *dead-letter*) and hands it
to the subscription's :class:`Worker`. Everything after that is common, so the
two buses cannot drift apart:

* the body is decoded here, so a poison message is dead-lettered the same way
  whether it came over AMQP or from memory;
* the handler runs for one delivery at a time, in delivery order;
* a handler that raises gets its delivery rejected with ``requeue=True``;
* settling happens at most once and never raises into the handler: once the
  subscription or the connection is gone the broker has already taken the
  message back, so a late ack can only be logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from chiffon.bus.base import MAX_DELIVERIES, Handler
from chiffon.resources.messages import Envelope, ProtocolError, decode_envelope

log = logging.getLogger(__name__)


class Outcome(Enum):
    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead-letter"


def _never_stale() -> bool:
    return False


@dataclass(frozen=True)
class RawDelivery:
    """One delivery as a backend hands it over, before decoding."""

    queue: str
    body: bytes
    redelivered: bool
    attempt: int
    """1 for the first delivery of the message, 2 for the first redelivery, …"""
    settle: Callable[[Outcome], Awaitable[None]]
    is_stale: Callable[[], bool] = field(default=_never_stale)
    """True once the broker has taken the message back (its channel closed)."""


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


async def settle_safely(raw: RawDelivery, outcome: Outcome, what: str) -> None:
    """Settle ``raw``; a failure is logged, because the broker redelivers it anyway."""
    try:
        await raw.settle(outcome)
    except Exception as exc:
        log.warning(
            "could not %s %s on %s (%s); it will be delivered again",
            outcome.value,
            what,
            raw.queue,
            one_line(exc),
        )


class BusDelivery:
    """The one :class:`~chiffon.bus.Delivery` implementation."""

    def __init__(self, raw: RawDelivery, envelope: Envelope) -> None:
        self.envelope = envelope
        self.redelivered = raw.redelivered
        self.attempt = raw.attempt
        self.queue = raw.queue
        self._raw = raw
        self._outcome: Outcome | None = None

    @property
    def settled(self) -> bool:
        return self._outcome is not None

    async def ack(self) -> None:
        await self._settle(Outcome.ACK)

    async def reject(self, *, requeue: bool) -> None:
        await self._settle(Outcome.REQUEUE if requeue else Outcome.DEAD_LETTER)

    def describe(self) -> str:
        return f"{self.envelope.type.value} {self.envelope.message_id}"

    async def _settle(self, outcome: Outcome) -> None:
        if self._outcome is not None:
            log.warning(
                "ignored %s of %s on %s: it was already settled (%s)",
                outcome.value,
                self.describe(),
                self.queue,
                self._outcome.value,
            )
            return
        # Marked before the await: a second call while the first is in flight
        # must not settle twice.
        self._outcome = outcome
        await settle_safely(self._raw, outcome, self.describe())


async def handle(raw: RawDelivery, handler: Handler) -> None:
    """Decode one delivery and run the handler on it (see the module docstring)."""
    if raw.is_stale():
        log.debug("skipped a delivery on %s whose channel closed; the broker redelivers it", raw.queue)
        return
    try:
        envelope = decode_envelope(raw.body)
    except ProtocolError as exc:
        log.warning("dead-lettering an undecodable message on %s: %s", raw.queue, one_line(exc))
        await settle_safely(raw, Outcome.DEAD_LETTER, "an undecodable message")
        return
    delivery = BusDelivery(raw, envelope)
    try:
        await handler(delivery)
    except Exception as exc:
        await _after_handler_error(delivery, exc)


async def _after_handler_error(delivery: BusDelivery, exc: Exception) -> None:
    what = f"{delivery.describe()} on {delivery.queue}"
    if delivery.settled:
        log.error("handler failed after settling %s: %s", what, one_line(exc), exc_info=exc)
        return
    next_step = "dead-lettering it" if delivery.attempt >= MAX_DELIVERIES else "returning it for redelivery"
    log.error(
        "handler failed on %s (delivery %d of %d): %s; %s",
        what,
        delivery.attempt,
        MAX_DELIVERIES,
        one_line(exc),
        next_step,
        exc_info=exc,
    )
    # The broker applies the limit: a requeue past it dead-letters the message.
    await delivery.reject(requeue=True)


class Worker:
    """Runs one subscription's handler, one delivery at a time, in delivery order.

    One at a time keeps a results consumer from applying a RunResult before the
    RunEvents published ahead of it; prefetch still lets the broker send the
    next deliveries early, and handed-over (unsettled) deliveries do not block.
    """

    def __init__(self, handler: Handler, queue: str) -> None:
        self._handler = handler
        self._inbox: asyncio.Queue[RawDelivery] = asyncio.Queue()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"chiffon.bus consumer of {queue}")

    def put(self, raw: RawDelivery) -> None:
        self._inbox.put_nowait(raw)

    async def stop(self) -> None:
        """Cancel the handler if it is running and wait until it has unwound."""
        if asyncio.current_task() is self._task:
            # The handler cancels its own subscription: cancelling this task
            # would abort that very call; let the handler finish, take no more.
            self._stopping = True
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            raw = await self._inbox.get()
            try:
                await handle(raw, self._handler)
            except Exception:
                # handle() catches what it expects; anything else is a bug in the
                # bus, and one bad delivery must not stop the whole subscription.
                log.exception("unexpected error while delivering a message on %s", raw.queue)
