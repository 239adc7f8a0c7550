"""What every bus offers: queue names, the error, and the typed interfaces.

The bus moves ``chiffon/v1`` envelopes (``chiffon.resources.messages``) between
the controller and the agents through three kinds of queue (``docs/protocol.md``):

* ``chiffon.runs.<agent id>``: controller → one agent (RunRequest, CancelRun);
* ``chiffon.results``: agents → controller (RunAccepted, RunEvent, RunResult, Error);
* ``chiffon.heartbeats``: agents → controller (Heartbeat, AgentOffline);

plus ``chiffon.dead-letter``, where messages go that cannot be processed.

Two implementations keep one set of promises, checked by one contract suite
(``tests/contract``): :class:`~chiffon.bus.amqp.AmqpBus` on RabbitMQ and
:class:`~chiffon.bus.memory.InProcessBus` for the embedded mode.

* **At least once.** ``publish`` returns only once the broker holds the message;
  a message leaves its queue only when the consumer acks it. Consumers must be
  idempotent (the run id is the idempotency key).
* **Manual settlement.** The bus never acks by itself. A handler that raises has
  its delivery rejected with ``requeue=True``; a handler that returns without
  settling hands the delivery over to whoever holds it, and it stays unacked
  (holding one prefetch slot) until settled or until the subscription goes
  away, when it is redelivered.
* **Redelivery limit.** A message is delivered at most :data:`MAX_DELIVERIES`
  times; being returned once more sends it to the dead-letter queue. Returns
  count whether they come from ``reject(requeue=True)``, a failing handler or a
  consumer that went away (that is how RabbitMQ 3.10 quorum queues count), so a
  message that crashes its consumer every time is parked too.
* **Poison.** A body that is not a valid envelope never reaches a handler: it is
  dead-lettered with a one-line log saying why.
* **Order.** Per queue, FIFO to a single consumer. One subscription runs its
  handler for one delivery at a time, in delivery order; concurrency comes from
  more subscriptions. Redelivered messages may overtake newer ones.
* **Deadlines** are enforced by consumers, not by the broker: a RunRequest whose
  ``deadline`` has passed is still delivered and the agent answers it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from chiffon.resources.messages import MAX_MESSAGE_BYTES, Envelope, ProtocolError, encode_envelope

RESULTS_QUEUE = "chiffon.results"
HEARTBEATS_QUEUE = "chiffon.heartbeats"
DEAD_LETTER_QUEUE = "chiffon.dead-letter"
RUNS_QUEUE_PREFIX = "chiffon.runs."

MAX_DELIVERIES = 5
"""Deliveries of one message before it is dead-lettered (the first one included)."""

# RabbitMQ caps queue names at 255 bytes; agent ids are at most 200 characters
# (Heartbeat.agentId), which leaves room for the prefix tests add.
_MAX_AGENT_ID = 200


def runs_queue(agent_id: str) -> str:
    """The queue the controller sends one agent its RunRequests and CancelRuns on."""
    if not agent_id or len(agent_id) > _MAX_AGENT_ID:
        raise ValueError(f"agent id must be 1 to {_MAX_AGENT_ID} characters (got {len(agent_id)})")
    if not agent_id.isprintable() or any(char.isspace() for char in agent_id):
        raise ValueError(f"agent id {agent_id!r} must not contain spaces or control characters")
    return f"{RUNS_QUEUE_PREFIX}{agent_id}"


def encode(envelope: Envelope) -> bytes:
    """The wire form of ``envelope``; refuses what every consumer would dead-letter as too big."""
    body = encode_envelope(envelope)
    if len(body) > MAX_MESSAGE_BYTES:
        what = f"{envelope.type.value} {envelope.message_id}"
        raise ProtocolError(f"{what} is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    return body


class BusError(RuntimeError):
    """The broker cannot be used: unreachable, or it did not take a message.

    The message is one line that says where the broker is, never the password.
    """


class Delivery(Protocol):
    """One delivery of one message to one subscription.

    Settle it exactly once with :meth:`ack` or :meth:`reject`; settling again,
    or after the subscription or the connection went away, only logs (the
    broker has returned the message to the queue by then).
    """

    envelope: Envelope
    redelivered: bool

    async def ack(self) -> None: ...

    async def reject(self, *, requeue: bool) -> None:
        """``requeue=True``: deliver again (up to the limit); ``False``: dead-letter now."""
        ...


Handler = Callable[[Delivery], Awaitable[None]]


class Subscription(Protocol):
    async def cancel(self) -> None:
        """Stop deliveries, cancel a handler still running, return unsettled messages."""
        ...


class Bus(Protocol):
    async def connect(self) -> None: ...

    async def close(self) -> None:
        """Cancel every subscription, then disconnect. Safe to call twice."""
        ...

    async def declare(self, queue: str) -> None:
        """Create ``queue`` (and the dead-letter queue) if missing; idempotent."""
        ...

    async def publish(self, queue: str, envelope: Envelope) -> None:
        """Return once the broker holds the message; raise :class:`BusError` otherwise."""
        ...

    async def consume(self, queue: str, handler: Handler, *, prefetch: int = 16) -> Subscription:
        """Call ``handler`` for each delivery; at most ``prefetch`` unsettled at a time."""
        ...
