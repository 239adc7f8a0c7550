"""The manager: runs the control loops until asked to stop, restarting any that crash.

Each loop is an ``async def run(stop)`` that returns when ``stop`` is set. A
loop that raises is logged and restarted after an exponential backoff, so one
bad dependency (a database restart, a broker outage) never ends the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

Loop = Callable[[asyncio.Event], Awaitable[None]]

FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0


@dataclass(frozen=True)
class NamedLoop:
    name: str
    run: Loop


def restart_delay(failures: int) -> float:
    """1 s, 2 s, 4 s … capped at a minute."""
    return float(min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2 ** max(0, failures - 1)))


class Manager:
    def __init__(self, loops: Sequence[NamedLoop]) -> None:
        self._loops = list(loops)

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._supervise(loop, stop), name=loop.name) for loop in self._loops]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self, loop: NamedLoop, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await loop.run(stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = restart_delay(failures)
                log.exception("%s crashed; restarting in %.0fs", loop.name, delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    continue


async def sleep_until(seconds: float, *events: asyncio.Event) -> None:
    """Sleep ``seconds`` or until any of ``events`` is set, whichever comes first."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
