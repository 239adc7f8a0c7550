"""The outbox relay: publishes what dispatch wrote, with publisher confirms.

Dispatch writes a run row and its outbox row in one transaction; this relay
publishes pending rows in order and marks each published only after the broker
confirmed it. A crash between publish and mark republishes the same message
(same ``message_id`` = run id) on restart, which agents deduplicate — so a
dispatch is never lost and never runs twice: exactly once in effect.
"""

from __future__ import annotations

import asyncio
import logging

from chiffon.bus import Bus, BusError
from chiffon.controllers.faults import AFTER_PUBLISH, crash_point
from chiffon.controllers.manager import sleep_until
from chiffon.resources.messages import ProtocolError, decode_envelope
from chiffon.store import Store, StoreError

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
        while True:
            pending = await self.store.pending_outbox(BATCH)
            if not pending:
                return published
            for message in pending:
                try:
                    envelope = decode_envelope(message.body)
                except ProtocolError:
                    # Written by us, so this is a bug; park it rather than block the queue behind it.
                    log.error("outbox message %s is not a valid envelope; skipping it", message.message_id)
                    await self.store.mark_outbox_failed(message.message_id)
                    continue
                if message.routing_key not in self._declared:
                    # Agents declare their own queue, but a request must never be unroutable.
                    await self.bus.declare(message.routing_key)
                    self._declared.add(message.routing_key)
                await self.bus.publish(message.routing_key, envelope)
                crash_point(AFTER_PUBLISH)
                await self.store.mark_outbox_published(message.message_id)
                published += 1

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
