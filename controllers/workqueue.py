"""The controllers' work queue: keys in, one reconcile pass per key at a time.

An asyncio take on client-go's rate-limited workqueue (``util/workqueue``):

* **Keys, not events.** The queue holds ``kind/name`` strings. Adding a key
  that is already waiting does nothing: a burst of changes to one intent costs
  one pass, and the reconciler reads the current state anyway (level-triggered).
* **One pass per key at a time.** A key added while it is being reconciled is
  marked *dirty* and queued again when that pass ends; it is never handed to a
  second worker, since two passes racing on one intent could dispatch a step
  twice.
* **Ready and delayed.** :meth:`WorkQueue.add` makes a key ready now;
  :meth:`WorkQueue.add_after` schedules it, and the earliest request wins. Due
  keys join the back of the ready line, which is FIFO.
* **The pass's outcome decides what next** (:func:`after_pass`, pure):
  ``Result(requeue_after=s)`` → look again in ``s``; ``Result()`` → done;
  ``Waiting`` → look again after its delay, the error backoff untouched;
  ``Stalled`` → done until someone adds the key; anything else → per-key
  exponential backoff (:func:`backoff_delay`).
* **A global cap.** ``max_concurrency`` workers take keys; that is the most
  passes (or batches of passes) running at once.
* **Batches.** :meth:`WorkQueue.run_batches` hands each worker up to
  ``max_batch`` ready keys at once, for a reconciler that reads and writes for
  many keys in one go; each key's outcome is still scheduled on its own.
* **No busy loop.** Idle workers sleep on one :class:`asyncio.Event`, set by
  every add, with a timeout that ends when the next delayed key is due.
* **Graceful shutdown.** Once ``stop`` is set, workers take no new keys;
  passes in flight get ``shutdown_grace`` seconds to finish, then are
  cancelled. A cancelled pass puts its key back, so a later :meth:`run` (after
  leadership comes back, say) picks it up again.

Time: ``clock`` only stamps when delayed keys are due; sleeping is the event
loop's, for ``due - clock()`` seconds. Reading the queue (``len``,
:meth:`~WorkQueue.position`) first promotes keys that are due, so the answer
never depends on whether a worker has woken up yet — and a test that moves a
fake clock sees the effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from chiffon.controllers.reconcile import Result, Stalled, Waiting

log = logging.getLogger(__name__)

Reconcile = Callable[[str], Awaitable[Result]]
Outcome = Result | Exception
ReconcileMany = Callable[[Sequence[str]], Awaitable[Mapping[str, Outcome]]]

DEFAULT_SHUTDOWN_GRACE = 30.0
# 2.0 ** 1024 overflows a float; any sane cap is reached long before this.
_MAX_EXPONENT = 1000


def backoff_delay(failures: int, base: float, max_delay: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: base, 2·base, 4·base … at most max_delay."""
    if failures <= 0:
        return 0.0
    return float(min(max_delay, base * 2.0 ** min(failures - 1, _MAX_EXPONENT)))


@dataclass(frozen=True)
class Next:
    """What the queue does with a key after a pass."""

    retry_in: float | None  # None: leave it until someone adds it again
    failures: int  # the key's count of failures in a row from now on


def after_pass(outcome: Outcome, failures: int, *, base: float, max_delay: float) -> Next:
    """Decide, from one pass's outcome and the failures before it, when to look at the key again."""
    if isinstance(outcome, Result):
        return Next(outcome.requeue_after, 0)
    if isinstance(outcome, Waiting):
        # A closed gate is not an error: neither grow the backoff nor pretend
        # the failures before it were fixed.
        return Next(outcome.requeue_after, failures)
    if isinstance(outcome, Stalled):
        return Next(None, 0)
    return Next(backoff_delay(failures + 1, base, max_delay), failures + 1)


class WorkQueue:
    """Deduplicating, per-key serial, rate-limited queue of reconcile keys (see the module docstring)."""

    def __init__(
        self,
        *,
        max_concurrency: int = 8,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self._max_concurrency = max_concurrency
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._clock = clock
        self._shutdown_grace = shutdown_grace
        self._ready: dict[str, None] = {}  # an ordered set: the ready line, oldest first
        self._due: dict[str, float] = {}  # delayed key -> clock time it becomes ready
        self._timers: list[tuple[float, int, str]] = []  # heap over _due; may hold stale entries
        self._order = itertools.count()  # breaks ties in the heap without comparing keys
        self._in_flight: set[str] = set()
        self._dirty: set[str] = set()  # in flight, and added again meanwhile
        self._failures: dict[str, int] = {}
        self._wakeup = asyncio.Event()
        self._closing = False
        self._running = False

    # -- adding and reading ------------------------------------------------------------------

    def add(self, key: str) -> None:
        """Make ``key`` ready now; a key already waiting stays where it is."""
        self._due.pop(key, None)
        if key in self._in_flight:
            # Never a second worker on one key: run it again once this pass ends.
            self._dirty.add(key)
            return
        if key not in self._ready:
            self._ready[key] = None
            self._wakeup.set()

    def add_after(self, key: str, delay: float) -> None:
        """Make ``key`` ready in ``delay`` seconds, unless it is due sooner already."""
        if delay <= 0:
            self.add(key)
            return
        if key in self._ready or key in self._dirty:
            return
        due = self._clock() + delay
        if self._due.get(key, math.inf) <= due:
            return
        self._due[key] = due
        heapq.heappush(self._timers, (due, next(self._order), key))
        # A sleeping worker may have planned to wake later than this.
        self._wakeup.set()

    def forget(self, key: str) -> None:
        """Reset ``key``'s failure count: its next failure waits ``base_delay`` again."""
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        """How many passes of ``key`` have failed in a row."""
        return self._failures.get(key, 0)

    def __len__(self) -> int:
        """Keys waiting, ready or delayed; keys in flight are not counted, even if dirty."""
        self._promote_due()
        return len(self._ready) + len(self._due)

    def position(self, key: str) -> int | None:
        """``key``'s 1-based place in the ready line; None if it is delayed, in flight or unknown."""
        self._promote_due()
        if key not in self._ready:
            return None
        return next(place for place, waiting in enumerate(self._ready, start=1) if waiting == key)

    @property
    def in_flight(self) -> int:
        """How many passes are running now."""
        return len(self._in_flight)

    # -- running -----------------------------------------------------------------------------

    async def run(self, reconcile: Reconcile, stop: asyncio.Event) -> None:
        """Reconcile keys with ``max_concurrency`` workers until ``stop`` is set and they have finished."""

        async def one_at_a_time(keys: Sequence[str]) -> Mapping[str, Outcome]:
            return {keys[0]: await _attempt(keys[0], reconcile)}

        await self.run_batches(one_at_a_time, stop, max_batch=1)

    async def run_batches(self, reconcile: ReconcileMany, stop: asyncio.Event, *, max_batch: int) -> None:
        """Like :meth:`run`, with up to ``max_batch`` ready keys per call of ``reconcile``."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if self._running:
            raise RuntimeError("this WorkQueue is already running")
        self._running, self._closing = True, False
        workers = [
            asyncio.create_task(self._worker(reconcile, max_batch), name=f"workqueue-worker-{n}")
            for n in range(self._max_concurrency)
        ]
        try:
            await stop.wait()
            await self._drain(workers)
        finally:
            self._closing = True
            await _cancel_all(workers)
            self._running = False

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        self._closing = True
        self._wakeup.set()  # idle workers see _closing and return
        _, pending = await asyncio.wait(workers, timeout=self._shutdown_grace)
        if pending:
            log.warning(
                "%d reconcile(s) still running %.0fs after stop; cancelling them",
                len(self._in_flight),
                self._shutdown_grace,
            )

    async def _worker(self, reconcile: ReconcileMany, max_batch: int) -> None:
        while keys := await self._take(max_batch):
            await self._process(keys, reconcile)

    async def _take(self, most: int) -> list[str]:
        """Up to ``most`` ready keys, oldest first, now marked in flight; [] once the queue is closing."""
        while not self._closing:
            self._promote_due()
            if self._ready:
                keys = list(itertools.islice(self._ready, most))
                for key in keys:
                    del self._ready[key]
                self._in_flight.update(keys)
                return keys
            # No await between the check above and this clear, so no add is missed.
            self._wakeup.clear()
            await self._sleep(self._next_due_in())
        return []

    async def _sleep(self, seconds: float | None) -> None:
        """Sleep until an add, or for ``seconds`` (None: until an add)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()

    async def _process(self, keys: list[str], reconcile: ReconcileMany) -> None:
        try:
            outcomes = await _attempt_many(keys, reconcile)
        except BaseException:
            # Cut short (shutdown cancelled it): queue them again for a later run().
            for key in keys:
                self._finish(key)
                self.add(key)
            raise
        for key in keys:
            self._finish(key)
            self._schedule(key, outcomes[key])

    def _finish(self, key: str) -> None:
        self._in_flight.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def _schedule(self, key: str, outcome: Outcome) -> None:
        decision = after_pass(outcome, self.failures(key), base=self._base_delay, max_delay=self._max_delay)
        if decision.failures:
            self._failures[key] = decision.failures
        else:
            self.forget(key)
        _log_outcome(key, outcome, decision)
        if decision.retry_in is not None:
            self.add_after(key, decision.retry_in)

    # -- delayed keys ------------------------------------------------------------------------

    def _promote_due(self) -> None:
        """Move every delayed key whose time has come to the ready line."""
        now = self._clock()
        while self._timers and self._timers[0][0] <= now:
            due, _, key = heapq.heappop(self._timers)
            if self._due.get(key) == due:  # otherwise stale: added or rescheduled since
                self.add(key)

    def _next_due_in(self) -> float | None:
        """Seconds until the next delayed key is due; None when none is delayed."""
        # Drop stale heads so that they cause no needless wake-ups.
        while self._timers and self._due.get(self._timers[0][2]) != self._timers[0][0]:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - self._clock())


async def _attempt(key: str, reconcile: Reconcile) -> Outcome:
    try:
        return await reconcile(key)
    except Exception as exc:  # every failure is an outcome to schedule, never a reason to stop
        return exc


async def _attempt_many(keys: list[str], reconcile: ReconcileMany) -> dict[str, Outcome]:
    try:
        outcomes = await reconcile(keys)
    except Exception as exc:  # the whole batch failed: each key backs off
        return dict.fromkeys(keys, exc)
    missing = RuntimeError("the reconciler returned no outcome for this key")
    return {key: outcomes.get(key, missing) for key in keys}


def _log_outcome(key: str, outcome: Outcome, decision: Next) -> None:
    if isinstance(outcome, Stalled):
        log.warning("%s stalled (%s): %s; waiting for a change", key, outcome.reason, outcome.message)
    elif isinstance(outcome, Waiting):
        log.debug("%s waiting (%s): %s", key, outcome.reason, outcome.message)
    elif isinstance(outcome, Exception):
        log.error(
            "reconciling %s failed (%d in a row); retrying in %.1fs",
            key,
            decision.failures,
            decision.retry_in,
            exc_info=outcome,
        )


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):  # a bug in the queue itself, not in a reconciler
            log.error("a work queue worker crashed", exc_info=result)
