"""The outbox relay: publishes what dispatch wrote, with publisher confirms.

Dispatch writes a run row and its outbox row in one transaction; this relay
publishes pending rows in order and marks them published (a batch at a time,
in one transaction) only after the broker confirmed each. A crash between
publish and mark republishes the same message (same ``message_id`` = run id)
on restart, which agents deduplicate — so a dispatch is never lost and never
runs twice: exactly once in effect.
"""

from __future__ import annotations

import asyncio
import logging

from chiffon.bus import Bus, BusError
from chiffon.controllers.faults import AFTER_PUBLISH, crash_point
from chiffon.controllers.manager import sleep_until
from chiffon.resources.messages import ProtocolError, decode_envelope
from chiffon.store import OutboxMessage, Store, StoreError

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
BATCH = 100


class OutboxRelay:
    def __init__(self, store: Store, bus: Bus, *, poll_interval: float = POLL_SECONDS) -> None:
        self.store = store
        self.bus = bus
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._declared: set[str] = set()

    def wake(self) -> None:
        """Called right after a dispatch commits, so the request goes out without waiting for a poll."""
        self._wake.set()

    async def drain(self) -> int:
        """Publish every pending message once; return how many were published."""
        published = 0
        while pending := await self.store.pending_outbox(BATCH):
            await self._declare({message.routing_key for message in pending})
            # In flight together: the broker confirms them as a stream instead of one
            # round trip each. Frames leave in this order, so a queue sees them in order.
            outcomes = await asyncio.gather(*(self._publish(m) for m in pending), return_exceptions=True)
            done = [m.message_id for m, ok in zip(pending, outcomes, strict=True) if ok is True]
            # Marked once per batch, also when some failed: a crash before this line
            # republishes the batch, which agents deduplicate by message id.
            if done:
                await self.store.mark_outbox_published(*done)
                published += len(done)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        return published

    async def _declare(self, routing_keys: set[str]) -> None:
        # Agents declare their own queue, but a request must never be unroutable.
        for routing_key in sorted(routing_keys - self._declared):
            await self.bus.declare(routing_key)
            self._declared.add(routing_key)

    async def _publish(self, message: OutboxMessage) -> bool:
        try:
            envelope = decode_envelope(message.body)
        except ProtocolError:
            # Written by us, so this is a bug; park it rather than block the queue behind it.
            log.error("outbox message %s is not a valid envelope; skipping it", message.message_id)
            await self.store.mark_outbox_failed(message.message_id)
            return False
        await self.bus.publish(message.routing_key, envelope)
        crash_point(AFTER_PUBLISH)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            delay = self.poll_interval
            try:
                await self.drain()
                failures = 0
            except (BusError, StoreError) as exc:
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures)
                log.warning("outbox relay paused %.1fs: %s", delay, exc)
            await sleep_until(delay, stop, self._wake)
            self._wake.clear()
