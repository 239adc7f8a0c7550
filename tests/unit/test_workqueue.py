"""The work queue: dedup, one pass per key, backoff, timed requeues, the cap, shutdown.

Pure decisions (:func:`backoff_delay`, :func:`after_pass`) are tables. The
rest are scenarios that run the real queue: timing with a fake clock that the
test moves by hand (reading the queue promotes due keys, so no real waiting),
or with tiny real delays where the point is that workers wake by themselves.
Every test fails if it leaves an asyncio task running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

import pytest

from chiffon.controllers.reconcile import Result, Stalled, Waiting
from chiffon.controllers.workqueue import Next, Outcome, WorkQueue, after_pass, backoff_delay

KEY = "DeploymentIntent/uptime-kuma"


@pytest.fixture(autouse=True)
async def no_tasks_left_behind() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    assert not leftover, f"tasks still running after the test: {leftover}"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Reconciler:
    """Records passes, counts concurrent ones, and answers from a script of outcomes."""

    def __init__(self, script: dict[str, list[Outcome]] | None = None, *, hold: float = 0.0) -> None:
        self.script = script or {}
        self.hold = hold
        self.calls: list[str] = []
        self.finished: list[str] = []
        self.active: Counter[str] = Counter()
        self.peak_per_key = 0
        self.peak_total = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, key: str) -> Result:
        self.calls.append(key)
        self.active[key] += 1
        self.peak_per_key = max(self.peak_per_key, self.active[key])
        self.peak_total = max(self.peak_total, sum(self.active.values()))
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.hold:
                await asyncio.sleep(self.hold)
            outcome = self.script[key].pop(0) if self.script.get(key) else Result()
        finally:
            self.active[key] -= 1
        self.finished.append(key)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


@asynccontextmanager
async def running(
    queue: WorkQueue, reconcile: Callable[[str], Awaitable[Result]]
) -> AsyncIterator[asyncio.Event]:
    """Run the queue for the duration of the block; stop it and wait for it on the way out."""
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run(reconcile, stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def eventually(predicate: Callable[[], bool], within: float = 2.0) -> None:
    # Polling: the queue's bookkeeping happens inside its workers, which cannot signal the test.
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


def settled(queue: WorkQueue, reconciler: Reconciler, passes: int) -> Callable[[], bool]:
    return lambda: len(reconciler.finished) >= passes and queue.in_flight == 0


# -- pure decisions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "want"),
    [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
        (4, 8.0),
        (5, 16.0),
        (9, 256.0),
        (10, 300.0),
        (11, 300.0),
        (100, 300.0),
        (100_000, 300.0),
    ],
)
def test_backoff_delay_doubles_up_to_the_cap(failures: int, want: float) -> None:
    assert backoff_delay(failures, 1.0, 300.0) == want


@pytest.mark.parametrize(
    ("failures", "base", "cap", "want"), [(1, 0.5, 10, 0.5), (3, 0.5, 10, 2.0), (6, 0.5, 10, 10)]
)
def test_backoff_delay_scales_with_base(failures: int, base: float, cap: float, want: float) -> None:
    assert backoff_delay(failures, base, cap) == want


@pytest.mark.parametrize(
    ("outcome", "failures_before", "want"),
    [
        pytest.param(Result(), 3, Next(None, 0), id="converged-forgets"),
        pytest.param(Result(requeue_after=30), 3, Next(30, 0), id="requeue-after-forgets"),
        pytest.param(Waiting("AwaitingApproval", "Needs approval.", 60), 0, Next(60, 0), id="waiting"),
        pytest.param(
            Waiting("InsufficientCapacity", "No GPU.", 20), 3, Next(20, 3), id="waiting-keeps-backoff"
        ),
        pytest.param(Stalled("InvalidSpec", "Bad spec."), 4, Next(None, 0), id="stalled-forgets"),
        pytest.param(RuntimeError("boom"), 0, Next(1.0, 1), id="first-failure"),
        pytest.param(RuntimeError("boom"), 4, Next(16.0, 5), id="fifth-failure"),
        pytest.param(OSError("down"), 20, Next(300.0, 21), id="capped"),
    ],
)
def test_after_pass(outcome: Outcome, failures_before: int, want: Next) -> None:
    assert after_pass(outcome, failures_before, base=1.0, max_delay=300.0) == want


# -- adding and reading ------------------------------------------------------------------------


def test_a_waiting_key_is_never_queued_twice() -> None:
    queue = WorkQueue(clock=FakeClock())

    for key in ("a", "b", "a", "c", "b"):
        queue.add(key)

    assert len(queue) == 3
    assert [queue.position(k) for k in ("a", "b", "c")] == [1, 2, 3]


def test_add_after_keeps_the_earliest_time() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    queue.add("ready")

    queue.add_after("ready", 10)  # ready now is sooner than in 10 s
    queue.add_after("later", 10)
    queue.add_after("later", 5)  # sooner wins
    queue.add_after("later", 20)  # later loses

    assert len(queue) == 2
    assert queue.position("ready") == 1
    clock.advance(4.9)
    assert queue.position("later") is None
    clock.advance(0.1)
    assert queue.position("later") == 2
    clock.advance(20)
    assert len(queue) == 2  # the superseded 10 s and 20 s timers do not add it again


def test_add_makes_a_delayed_key_ready_now() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    queue.add_after("a", 30)

    queue.add("a")

    assert queue.position("a") == 1
    assert len(queue) == 1
    clock.advance(60)
    assert len(queue) == 1


def test_position_is_the_place_in_the_ready_line() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    queue.add("first")
    queue.add_after("delayed", 5)
    queue.add("second")

    assert queue.position("first") == 1
    assert queue.position("second") == 2
    assert queue.position("delayed") is None
    assert queue.position("unknown") is None
    clock.advance(5)
    assert queue.position("delayed") == 3  # due keys join the back of the line


def test_forget_resets_failures() -> None:
    queue = WorkQueue()
    assert queue.failures(KEY) == 0
    queue.forget(KEY)  # forgetting an unknown key is fine
    assert queue.failures(KEY) == 0


def test_max_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        WorkQueue(max_concurrency=0)


# -- running -----------------------------------------------------------------------------------


async def test_each_key_is_reconciled_once() -> None:
    reconciler = Reconciler()
    queue = WorkQueue()
    for key in ("a", "b", "a", "c"):
        queue.add(key)

    async with running(queue, reconciler):
        await eventually(settled(queue, reconciler, 3))

    assert sorted(reconciler.calls) == ["a", "b", "c"]
    assert len(queue) == 0


async def test_a_key_added_during_its_pass_runs_again_after_it_never_alongside() -> None:
    reconciler = Reconciler()
    reconciler.gate = asyncio.Event()
    queue = WorkQueue(max_concurrency=4)  # room for a second worker, were the queue to allow it
    queue.add(KEY)

    async with running(queue, reconciler):
        await reconciler.entered.wait()
        queue.add(KEY)
        queue.add(KEY)
        queue.add_after(KEY, 0.01)
        assert len(queue) == 0  # it is in flight, marked dirty, not waiting in line
        await asyncio.sleep(0.05)
        assert reconciler.calls == [KEY]
        reconciler.gate.set()
        await eventually(settled(queue, reconciler, 2))
        await asyncio.sleep(0.05)  # nothing else is pending: no third pass comes

    assert reconciler.calls == [KEY, KEY]
    assert reconciler.peak_per_key == 1


async def test_the_concurrency_cap_is_honoured() -> None:
    reconciler = Reconciler(hold=0.01)
    queue = WorkQueue(max_concurrency=3)
    keys = [f"k{n}" for n in range(10)]
    for key in keys:
        queue.add(key)

    async with running(queue, reconciler):
        await eventually(settled(queue, reconciler, 10))

    assert sorted(reconciler.calls) == sorted(keys)
    assert reconciler.peak_total == 3


async def test_requeue_after_looks_again_at_that_time() -> None:
    clock = FakeClock()
    reconciler = Reconciler({KEY: [Result(requeue_after=30), Result()]})
    queue = WorkQueue(clock=clock)
    queue.add(KEY)

    async with running(queue, reconciler):
        await eventually(settled(queue, reconciler, 1))
        assert len(queue) == 1
        clock.advance(29.9)
        assert queue.position(KEY) is None
        clock.advance(0.1)
        assert queue.position(KEY) == 1  # due now; reading the queue promoted it and woke a worker
        await eventually(settled(queue, reconciler, 2))

    assert reconciler.calls == [KEY, KEY]
    assert len(queue) == 0  # Result() asks for nothing more


async def test_requeue_after_wakes_the_workers_by_itself() -> None:
    reconciler = Reconciler({KEY: [Result(requeue_after=0.02), Result()]})
    queue = WorkQueue()
    queue.add(KEY)
    started = time.monotonic()

    async with running(queue, reconciler):
        await eventually(settled(queue, reconciler, 2))

    assert time.monotonic() - started >= 0.02
    assert reconciler.calls == [KEY, KEY]


async def test_failures_back_off_exponentially_and_are_logged_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    boom = [RuntimeError(f"boom {n}") for n in range(3)]
    reconciler = Reconciler({KEY: [*boom, Result()]})
    queue = WorkQueue(clock=clock, base_delay=1.0)
    queue.add(KEY)

    with caplog.at_level(logging.ERROR, logger="chiffon.controllers.workqueue"):
        async with running(queue, reconciler):
            for failures, delay in [(1, 1.0), (2, 2.0), (3, 4.0)]:
                await eventually(settled(queue, reconciler, failures))
                assert queue.failures(KEY) == failures
                clock.advance(delay - 0.01)
                assert queue.position(KEY) is None, f"ready before its {delay}s backoff"
                clock.advance(0.01)
                assert queue.position(KEY) == 1
            await eventually(settled(queue, reconciler, 4))

    assert queue.failures(KEY) == 0  # the success forgot them
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.exc_info[1] if r.exc_info else None for r in errors] == boom
    assert all(KEY in r.getMessage() for r in errors)


async def test_waiting_requeues_after_its_delay_without_growing_the_backoff() -> None:
    clock = FakeClock()
    gate = Waiting("AwaitingApproval", "The plan needs an approval.", 60)
    reconciler = Reconciler({KEY: [RuntimeError("boom"), gate, Result()]})
    queue = WorkQueue(clock=clock)
    queue.add(KEY)

    async with running(queue, reconciler):
        await eventually(settled(queue, reconciler, 1))
        clock.advance(1)
        assert queue.position(KEY) == 1
        await eventually(settled(queue, reconciler, 2))
        assert queue.failures(KEY) == 1  # neither grown nor forgotten
        clock.advance(59)
        assert queue.position(KEY) is None
        clock.advance(1)
        assert queue.position(KEY) == 1
        await eventually(settled(queue, reconciler, 3))

    assert queue.failures(KEY) == 0


async def test_stalled_forgets_and_waits_for_someone_to_add_the_key(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    reconciler = Reconciler(
        {KEY: [RuntimeError("boom"), Stalled("PlaybookNotFound", "No such playbook."), Result()]}
    )
    queue = WorkQueue(clock=clock)
    queue.add(KEY)

    with caplog.at_level(logging.WARNING, logger="chiffon.controllers.workqueue"):
        async with running(queue, reconciler):
            await eventually(settled(queue, reconciler, 1))
            clock.advance(1)
            assert queue.position(KEY) == 1
            await eventually(settled(queue, reconciler, 2))
            assert (queue.failures(KEY), len(queue)) == (0, 0)
            clock.advance(3600)
            await asyncio.sleep(0.02)
            assert len(reconciler.calls) == 2, "a stalled key is not retried by itself"
            queue.add(KEY)  # a new commit, an approval...
            await eventually(settled(queue, reconciler, 3))

    assert any("PlaybookNotFound" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


async def test_an_idle_queue_sleeps() -> None:
    clock = FakeClock()
    reconciler = Reconciler()
    queue = WorkQueue(clock=clock, max_concurrency=4)
    queue.add_after(KEY, 3600)

    async with running(queue, reconciler):
        await asyncio.sleep(0.01)
        reads = clock.reads
        await asyncio.sleep(0.2)
        assert clock.reads == reads, "workers polled an idle queue"
        queue.add("now")  # an add wakes them
        await eventually(settled(queue, reconciler, 1))

    assert reconciler.calls == ["now"]


# -- shutdown ----------------------------------------------------------------------------------


async def test_stop_lets_passes_in_flight_finish_and_starts_no_new_ones() -> None:
    reconciler = Reconciler()
    reconciler.gate = asyncio.Event()
    queue = WorkQueue(max_concurrency=1)
    queue.add("a")
    queue.add("b")
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run(reconciler, stop))
    await reconciler.entered.wait()

    stop.set()
    await asyncio.sleep(0.02)
    assert not task.done(), "run() must wait for the pass in flight"
    reconciler.gate.set()
    await asyncio.wait_for(task, 2)

    assert reconciler.finished == ["a"]
    assert queue.position("b") == 1  # still queued for the next run
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_hung_pass_is_cancelled_after_the_grace_and_queued_again() -> None:
    reconciler = Reconciler()
    reconciler.gate = asyncio.Event()  # never set: the pass hangs
    queue = WorkQueue(shutdown_grace=0.1)
    queue.add(KEY)
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run(reconciler, stop))
    await reconciler.entered.wait()

    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 2)

    assert time.monotonic() - started < 1
    assert reconciler.finished == []
    assert (queue.position(KEY), queue.in_flight) == (1, 0)
    assert asyncio.all_tasks() == {asyncio.current_task()}

    # A later run (leadership regained, say) does the pass again.
    reconciler.gate.set()
    async with running(queue, reconciler):
        await eventually(settled(queue, reconciler, 1))
    assert reconciler.calls == [KEY, KEY]


async def test_run_twice_at_once_is_refused() -> None:
    queue = WorkQueue()
    async with running(queue, Reconciler()):
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            await queue.run(Reconciler(), asyncio.Event())


# -- batches -----------------------------------------------------------------------------------


class BatchReconciler:
    """Records the batches it is handed; answers each key from a script (default Result())."""

    def __init__(self, script: dict[str, Outcome] | None = None, *, fail_whole_batch: bool = False) -> None:
        self.script = script or {}
        self.fail_whole_batch = fail_whole_batch
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()

    async def __call__(self, keys: Sequence[str]) -> Mapping[str, Outcome]:
        self.batches.append(list(keys))
        await self.gate.wait()
        if self.fail_whole_batch:
            raise RuntimeError("database unreachable")
        return {key: self.script.get(key, Result()) for key in keys if key != "DeploymentIntent/forgotten"}


@asynccontextmanager
async def running_batches(queue: WorkQueue, reconcile: BatchReconciler, most: int) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run_batches(reconcile, stop, max_batch=most))
    try:
        yield
    finally:
        stop.set()
        reconcile.gate.set()
        await asyncio.wait_for(task, 5)


async def test_batches_take_ready_keys_oldest_first_up_to_max_batch() -> None:
    queue = WorkQueue(max_concurrency=2)
    reconciler = BatchReconciler()
    keys = [f"DeploymentIntent/k{index}" for index in range(7)]
    for key in keys:
        queue.add(key)
    async with running_batches(queue, reconciler, 3):
        await eventually(lambda: len(reconciler.batches) == 2)
        # Two workers, three keys each; the seventh waits for a worker.
        assert reconciler.batches == [keys[0:3], keys[3:6]]
        assert queue.in_flight == 6 and len(queue) == 1
        queue.add(keys[0])  # in flight: dirty, never handed to a second worker
        reconciler.gate.set()
        await eventually(lambda: len(reconciler.batches) >= 3 and queue.in_flight == 0 and len(queue) == 0)
    handed = [key for batch in reconciler.batches for key in batch]
    assert sorted(handed) == sorted([*keys, keys[0]])


async def test_each_key_of_a_batch_is_scheduled_by_its_own_outcome() -> None:
    clock = FakeClock()
    queue = WorkQueue(max_concurrency=1, clock=clock)
    reconciler = BatchReconciler(
        {
            "DeploymentIntent/waiting": Waiting("AwaitingApproval", "waiting", 600),
            "DeploymentIntent/broken": RuntimeError("boom"),
        }
    )
    reconciler.gate.set()
    for name in ("fine", "waiting", "broken", "forgotten"):
        queue.add(f"DeploymentIntent/{name}")
    async with running_batches(queue, reconciler, 10):
        await eventually(lambda: len(reconciler.batches) == 1 and queue.in_flight == 0)
        assert queue.failures("DeploymentIntent/fine") == 0
        assert queue.failures("DeploymentIntent/waiting") == 0
        assert queue.failures("DeploymentIntent/broken") == 1
        # A key the reconciler forgot to answer for is a failure, not silently done.
        assert queue.failures("DeploymentIntent/forgotten") == 1
        clock.advance(1.0)
        assert queue.position("DeploymentIntent/broken") is not None
        assert queue.position("DeploymentIntent/waiting") is None


async def test_a_batch_that_raises_backs_off_every_key_in_it() -> None:
    queue = WorkQueue(max_concurrency=1, clock=FakeClock())
    reconciler = BatchReconciler(fail_whole_batch=True)
    reconciler.gate.set()
    queue.add("DeploymentIntent/a")
    queue.add("DeploymentIntent/b")
    async with running_batches(queue, reconciler, 10):
        await eventually(lambda: len(reconciler.batches) == 1 and queue.in_flight == 0)
        assert queue.failures("DeploymentIntent/a") == queue.failures("DeploymentIntent/b") == 1


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        asyncio.run(WorkQueue().run_batches(BatchReconciler(), asyncio.Event(), max_batch=0))
