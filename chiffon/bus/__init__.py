"""The message bus: ``chiffon/v1`` envelopes over RabbitMQ, or in process.

Everything else imports the bus from here and codes against the :class:`Bus`
protocol; :func:`open_bus` picks the implementation from the broker URL.
The promises both implementations keep are written in :mod:`chiffon.bus.base`
and, for agent authors, in ``docs/protocol.md``.
"""

from __future__ import annotations

from chiffon.bus.base import (
    DEAD_LETTER_QUEUE,
    HEARTBEATS_QUEUE,
    RESULTS_QUEUE,
    Bus,
    BusError,
    Delivery,
    Handler,
    Subscription,
    runs_queue,
)

__all__ = [
    "DEAD_LETTER_QUEUE",
    "HEARTBEATS_QUEUE",
    "RESULTS_QUEUE",
    "Bus",
    "BusError",
    "Delivery",
    "Handler",
    "Subscription",
    "open_bus",
    "runs_queue",
]

_AMQP_SCHEMES = ("amqp", "amqps")


def open_bus(url: str | None, *, prefix: str = "") -> Bus:
    """The bus for ``url``: in process when it is None or empty, RabbitMQ for ``amqp(s)://``.

    Nothing is connected yet: call ``await bus.connect()``. ``prefix`` is put in
    front of every queue name, the dead-letter queue's included; tests isolate
    themselves with it on a shared broker, production leaves it empty.
    """
    if not url:
        from chiffon.bus.memory import InProcessBus

        return InProcessBus(prefix=prefix)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in _AMQP_SCHEMES:
        raise BusError(
            f"unsupported broker URL scheme {scheme or '(none)'!r}: use amqp:// or amqps://, "
            "or no URL for the in-process bus"
        )
    # Imported here so the embedded mode never loads aio-pika.
    from chiffon.bus.amqp import AmqpBus

    return AmqpBus(url, prefix=prefix)
