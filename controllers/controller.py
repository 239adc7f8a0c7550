"""The controller: while it holds leadership, it runs every loop that changes the world.

Only the leader syncs git, reconciles, relays the outbox and consumes agent
reports; a standby replica waits in the leader election. Everything the
leader does is keyed by intent name and level-based, so a new leader starts
by enqueueing every intent and converges from whatever state it finds.

Events that open a gate enqueue the keys they concern:

* a git sync → the intents that changed;
* an approval recorded (by any API process) → that intent;
* a run accepted or finished → its intent;
* an agent appearing or reporting more room → the intents waiting for capacity
  (coalesced to at most once per ``CAPACITY_COALESCE_SECONDS``);
* an intent becoming Ready → the intents that depend on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from chiffon.bus import HEARTBEATS_QUEUE, RESULTS_QUEUE, Bus, Subscription
from chiffon.controllers.consumers import HEARTBEATS_PREFETCH, HeartbeatConsumer, ResultConsumer
from chiffon.controllers.intent_reconciler import IntentReconciler, intent_key
from chiffon.controllers.liveness import Liveness, LivenessConfig
from chiffon.controllers.manager import sleep_until
from chiffon.controllers.outbox import OutboxRelay
from chiffon.controllers.planner import Planner
from chiffon.controllers.reconcile import Result
from chiffon.controllers.source import GitSource
from chiffon.controllers.workqueue import WorkQueue
from chiffon.store import Store

log = logging.getLogger(__name__)

APPROVAL_POLL_SECONDS = 1.0
CAPACITY_COALESCE_SECONDS = 1.0
SHUTDOWN_GRACE_SECONDS = 20.0
# Keys per reconcile batch: big enough that a burst costs few transactions, small
# enough that the first dispatches of a burst go out within a fraction of a second.
MAX_BATCH = 50
# Unsettled results the broker may hand over at once: the most one results flush writes.
RESULTS_PREFETCH = 200


class Controller:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        source: GitSource,
        planner: Planner,
        *,
        max_concurrency: int = 8,
        max_batch: int = MAX_BATCH,
        liveness: LivenessConfig | None = None,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.bus = bus
        self.source = source
        self.epoch = 0
        self.queue = WorkQueue(max_concurrency=max_concurrency)
        self.relay = OutboxRelay(store, bus)
        self.reconciler = IntentReconciler(
            store, planner, epoch=lambda: self.epoch, on_dispatch=self.relay.wake
        )
        self.results = ResultConsumer(store, enqueue=self.enqueue)
        self.heartbeats = HeartbeatConsumer(store, on_capacity=self._capacity_appeared)
        self.liveness = Liveness(store, liveness, enqueue=self.enqueue, on_capacity=self._capacity_appeared)
        self._capacity_event = asyncio.Event()
        self._ready: set[str] = set()
        self.dependents = Dependents()
        source.subscribe(self._source_changed)

    def enqueue(self, name: str) -> None:
        self.queue.add(intent_key(name))

    async def _source_changed(self, names: Sequence[str]) -> None:
        for name in names:
            self.enqueue(name)

    def _capacity_appeared(self) -> None:
        self._capacity_event.set()

    async def reconcile(self, key: str) -> Result:
        """One pass over one intent (what a batch does for each of its keys)."""
        outcome = (await self.reconcile_batch([key]))[key]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def reconcile_batch(self, keys: Sequence[str]) -> Mapping[str, Result | Exception]:
        batch = await self.reconciler.reconcile_many(keys)
        for name in batch.ready:  # every intent of a committed batch, deleted ones too
            self.dependents.track(name, batch.depends_on.get(name, ()))
        self._wake_dependents(batch.ready)
        return batch.outcomes

    def _wake_dependents(self, ready_now: Mapping[str, bool]) -> None:
        """When an intent turns Ready, the intents that depend on it may proceed."""
        for name, ready in ready_now.items():
            if ready and name not in self._ready:
                for dependent in self.dependents.of(name):
                    self.enqueue(dependent)
            if ready:
                self._ready.add(name)
            else:
                self._ready.discard(name)

    # Leading ------------------------------------------------------------------------------

    async def lead(self, epoch: int, lost: asyncio.Event) -> None:
        """Run everything until leadership is lost (or the process stops)."""
        self.epoch = epoch
        log.info("leading with epoch %d", epoch)
        for queue in (RESULTS_QUEUE, HEARTBEATS_QUEUE):
            await self.bus.declare(queue)
        subscriptions: list[Subscription] = [
            await self.bus.consume(RESULTS_QUEUE, self.results.submit, prefetch=RESULTS_PREFETCH),
            await self.bus.consume(
                HEARTBEATS_QUEUE,
                self.liveness.observing(self.heartbeats.submit),
                prefetch=HEARTBEATS_PREFETCH,
            ),
        ]
        await self.source.sync()
        rearmed = await self.store.rearm_unaccepted_runs(epoch)
        if rearmed:
            # Agents that saw this epoch refuse the old leader's requests: send them again as ours.
            log.info(
                "sending %d run request(s) of an earlier leader again under epoch %d", len(rearmed), epoch
            )
        for intent in await self.store.list_intents():
            self.enqueue(intent.metadata.name)
        loops = [
            self.queue.run_batches(self.reconcile_batch, lost, max_batch=self.max_batch),
            self.relay.run(lost),
            self.source.run(lost),
            self._watch_approvals(lost),
            self._wake_capacity_waiters(lost),
            self.liveness.run(lost),
        ]
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            await lost.wait()
        finally:
            lost.set()  # also when cancelled from outside: every loop watches this event
            for subscription in subscriptions:
                await subscription.cancel()
            await self.results.drain()
            await self.heartbeats.drain()
            # Loops end by themselves once `lost` is set; in-flight reconciles get to finish.
            _, unfinished = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("stopped leading (epoch %d)", epoch)

    async def _watch_approvals(self, stop: asyncio.Event) -> None:
        """Approvals may be recorded by an API in another process; poll the (indexed) table."""
        # Start after the newest existing approval: every intent was enqueued on taking the lead.
        seen = 0
        while batch := await self.store.approvals_after(seen):
            seen = batch[-1][0]
        while not stop.is_set():
            await sleep_until(APPROVAL_POLL_SECONDS, stop)
            try:
                for row_id, intent in await self.store.approvals_after(seen):
                    seen = row_id
                    self.enqueue(intent)
            except Exception:  # a database hiccup must not end approval watching
                log.warning("could not read new approvals; retrying", exc_info=True)

    async def _wake_capacity_waiters(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sleep_until(3600, stop, self._capacity_event)
            if self._capacity_event.is_set():
                self._capacity_event.clear()
                for key in list(self.reconciler.waiting_for_capacity):  # first come, first served
                    self.queue.add(key)
                await sleep_until(CAPACITY_COALESCE_SECONDS, stop)


class Dependents:
    """Which intents depend on which, as the reconciler last saw each one.

    Learnt from the passes themselves, never by listing every intent: every
    intent is reconciled when the controller takes the lead and whenever its
    file changes, and one not seen yet reads its dependencies' state when its
    own pass comes, so nothing it needs to be woken for is missed.
    """

    def __init__(self) -> None:
        self._needs: dict[str, tuple[str, ...]] = {}  # intent -> what it depends on
        self._needed_by: dict[str, set[str]] = {}  # intent -> what depends on it

    def track(self, name: str, depends_on: Sequence[str]) -> None:
        """Record what ``name`` depends on now (nothing, when it was deleted)."""
        for old in self._needs.pop(name, ()):
            self._needed_by.get(old, set()).discard(name)
        if depends_on:
            self._needs[name] = tuple(depends_on)
            for dependency in depends_on:
                self._needed_by.setdefault(dependency, set()).add(name)

    def of(self, name: str) -> list[str]:
        """The intents that depend on ``name``, sorted."""
        return sorted(self._needed_by.get(name, ()))
