"""Leader election against the real PostgreSQL (and SQLite's one-process stand-in).

The scenarios kill leaders the ways they die in a homelab: the server ends
the leader's backend (``pg_terminate_backend``, as a PostgreSQL restart or a
network cut does), or the leading process is SIGKILLed. A standby must take
over within 15 s with a higher epoch. Takeover times are measured with the
default intervals (2 s) and printed (``pytest -s``) as well as named in the
assertions.

Each PostgreSQL test runs in a throwaway schema; the advisory lock's key
includes the schema, so tests never contend with each other.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from chiffon.controllers.leader import LeaderElector
from chiffon.store import LeaderLease, Store
from chiffon.store.leader import CHECK_TIMEOUT_S
from chiffon.store.testing import execute
from tests.conftest import Database, SchemaFactory

ROOT = Path(__file__).resolve().parents[2]
ELECTION = "controller"
TAKEOVER_LIMIT_S = 15.0


@pytest.fixture(autouse=True)
async def no_tasks_left_behind() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    assert not leftover, f"tasks still running after the test: {leftover}"


@pytest.fixture
async def pg(postgres_url: str, postgres_schema: SchemaFactory) -> AsyncIterator[Database]:
    """A migrated PostgreSQL schema; open as many Stores (replicas) on it as a test needs."""
    async with postgres_schema() as schema:
        database = Database("postgresql", postgres_url, schema)
        store = database.open()
        try:
            await store.migrate()
        finally:
            await store.close()
        yield database


@asynccontextmanager
async def opened(database: Database) -> AsyncIterator[Store]:
    store = database.open()
    try:
        yield store
    finally:
        await store.close()


class Replica:
    """A controller replica: an elector whose ``lead`` records its terms and waits for ``lost``."""

    def __init__(self, store: Store, holder: str, **intervals: float) -> None:
        self.elector = LeaderElector(store, name=ELECTION, holder=holder, **intervals)
        self.holder = holder
        self.epochs: list[int] = []
        self.led_at: list[float] = []
        self.lost_at: list[float] = []
        self.leading = asyncio.Event()
        self.stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def lead(self, epoch: int, lost: asyncio.Event) -> None:
        self.epochs.append(epoch)
        self.led_at.append(time.monotonic())
        self.leading.set()
        try:
            await lost.wait()
            self.lost_at.append(time.monotonic())
        finally:
            self.leading.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self.elector.run(self.stop, self.lead), name=self.holder)

    async def halt(self) -> None:
        self.stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)

    @property
    def lease(self) -> LeaderLease:
        lease = self.elector.lease
        assert lease is not None, f"{self.holder} holds no lease"
        return lease

    async def terms(self, count: int) -> None:
        """Wait until this replica has started its ``count``-th term."""
        await until(lambda: len(self.epochs) >= count)


@asynccontextmanager
async def replicas(*members: Replica) -> AsyncIterator[tuple[Replica, ...]]:
    for member in members:
        member.start()
    try:
        yield members
    finally:
        for member in members:
            await member.halt()


async def until(condition: Callable[[], bool], within: float = TAKEOVER_LIMIT_S + 5) -> None:
    # Polling: the electors run on their own; nothing here is told when they act.
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {within}s"
        await asyncio.sleep(0.01)


async def terminate_backend(store: Store, pid: int | None) -> None:
    assert pid is not None
    await execute(store, f"SELECT pg_terminate_backend({pid})")


def report(what: str, seconds: float) -> str:
    message = f"{what}: {seconds:.2f}s"
    print(f"\n[takeover] {message}")
    return message


# -- the store's leases ------------------------------------------------------------------------


async def test_each_acquisition_starts_a_new_epoch(store: Store) -> None:
    first = await store.acquire_leadership(ELECTION, "replica-a")
    assert first is not None and first.epoch == 1
    assert await first.check()
    await first.release()
    assert not await first.check()
    await first.release()  # twice is harmless

    second = await store.acquire_leadership(ELECTION, "replica-b")
    assert second is not None and second.epoch == 2
    record = await store.current_leader(ELECTION)
    assert record is not None and (record.epoch, record.holder) == (2, "replica-b")
    assert await store.current_leader("another-election") is None
    await second.release()


@pytest.mark.postgres
async def test_the_lock_is_exclusive_and_renewed(pg: Database) -> None:
    async with opened(pg) as a, opened(pg) as b:
        lease = await a.acquire_leadership(ELECTION, "replica-a")
        assert lease is not None and lease.backend_pid
        try:
            assert await b.acquire_leadership(ELECTION, "replica-b") is None
            before = await a.current_leader(ELECTION)
            assert await lease.check()
            after = await a.current_leader(ELECTION)
            assert before is not None and after is not None
            assert after.renewed_at > before.renewed_at and after.epoch == before.epoch == 1
        finally:
            await lease.release()
        taken = await b.acquire_leadership(ELECTION, "replica-b")
        assert taken is not None and taken.epoch == 2
        await taken.release()


@pytest.mark.postgres
async def test_a_terminated_backend_fails_the_check(pg: Database) -> None:
    async with opened(pg) as a, opened(pg) as admin:
        lease = await a.acquire_leadership(ELECTION, "replica-a")
        assert lease is not None

        await terminate_backend(admin, lease.backend_pid)

        assert not await lease.check()
        await lease.release()  # the connection is dead: release must not raise
        again = await admin.acquire_leadership(ELECTION, "replica-b")
        assert again is not None and again.epoch == 2
        await again.release()


@pytest.mark.postgres
async def test_a_hung_connection_fails_the_check_within_its_timeout(pg: Database) -> None:
    async with opened(pg) as a, opened(pg) as admin:
        lease = await a.acquire_leadership(ELECTION, "replica-a")
        assert lease is not None
        # Another session holds the table for longer than the check may take,
        # so the check's renewal hangs as it would on a stuck server.
        blocker = asyncio.create_task(
            execute(admin, "DO $$ BEGIN LOCK TABLE leader_leases; PERFORM pg_sleep(7); END $$")
        )
        try:
            await asyncio.sleep(0.3)
            started = time.monotonic()

            held = await lease.check()

            waited = time.monotonic() - started
            assert not held
            assert waited < CHECK_TIMEOUT_S + 1, f"the check took {waited:.2f}s"
            await asyncio.wait_for(lease.release(), CHECK_TIMEOUT_S + 1)
        finally:
            await blocker


# -- electors on PostgreSQL --------------------------------------------------------------------


@pytest.mark.postgres
async def test_of_two_electors_exactly_one_leads(pg: Database) -> None:
    async with opened(pg) as a, opened(pg) as b:
        fast = {"retry_interval": 0.05, "renew_interval": 0.05}
        async with replicas(Replica(a, "replica-a", **fast), Replica(b, "replica-b", **fast)) as both:
            await until(lambda: any(r.epochs for r in both))
            await asyncio.sleep(1)  # twenty tries for the standby

            assert sorted(len(r.epochs) for r in both) == [0, 1]
            assert sum(r.leading.is_set() for r in both) == 1


@pytest.mark.postgres
async def test_a_standby_takes_over_when_the_leaders_backend_is_terminated(pg: Database) -> None:
    async with opened(pg) as a, opened(pg) as b, opened(pg) as admin:
        first = Replica(a, "replica-a")
        async with replicas(first):
            await first.terms(1)
            second = Replica(b, "replica-b")
            async with replicas(second):
                await asyncio.sleep(0.2)  # its first try has failed: it stands by
                assert second.epochs == []
                killed_at = time.monotonic()

                await terminate_backend(admin, first.lease.backend_pid)

                await second.terms(1)
                await until(lambda: bool(first.lost_at))
                noticed = report(
                    "old leader noticed, after pg_terminate_backend", first.lost_at[0] - killed_at
                )
                took = report("standby led, after pg_terminate_backend", second.led_at[0] - killed_at)
                assert first.lost_at[0] - killed_at < TAKEOVER_LIMIT_S, noticed
                assert second.led_at[0] - killed_at < TAKEOVER_LIMIT_S, took
                assert second.epochs[0] > first.epochs[0]
                assert not first.leading.is_set()


@pytest.mark.postgres
async def test_epochs_strictly_increase_across_takeovers(pg: Database) -> None:
    async with opened(pg) as a, opened(pg) as b, opened(pg) as admin:
        one, two = Replica(a, "replica-a"), Replica(b, "replica-b")
        async with replicas(one):
            await one.terms(1)
            async with replicas(two):
                for leader, standby, terms in [(one, two, 1), (two, one, 2), (one, two, 2)]:
                    killed_at = time.monotonic()
                    await terminate_backend(admin, leader.lease.backend_pid)
                    await standby.terms(terms)
                    took = standby.led_at[-1] - killed_at
                    message = report(f"{standby.holder} led term {terms}, after pg_terminate_backend", took)
                    assert took < TAKEOVER_LIMIT_S, message

        timeline = sorted(zip(one.led_at + two.led_at, one.epochs + two.epochs, strict=True))
        epochs = [epoch for _, epoch in timeline]
        assert epochs == sorted(set(epochs)) == [1, 2, 3, 4], timeline


@pytest.mark.postgres
async def test_stopping_the_leader_releases_at_once(pg: Database) -> None:
    async with opened(pg) as a, opened(pg) as b:
        first = Replica(a, "replica-a")
        async with replicas(first):
            await first.terms(1)
            second = Replica(b, "replica-b", retry_interval=0.1)
            async with replicas(second):
                await asyncio.sleep(0.2)
                assert second.epochs == []
                stopped_at = time.monotonic()

                await first.halt()

                assert first.elector.lease is None and first.lost_at, "lead saw lost before the release"
                await second.terms(1)
                took = second.led_at[0] - stopped_at
                message = report("standby led, after the leader stopped (retry_interval 0.1s)", took)
                assert took < 1.0, message
                assert second.epochs == [2]


SLEEPING_LEADER = """
import asyncio, sys
from chiffon.store import Store

async def main() -> None:
    url, schema, name = sys.argv[1:4]
    store = Store.from_url(url, schema=schema)
    lease = await store.acquire_leadership(name, "child-process")
    print(f"leading {lease.epoch}" if lease else "standby", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.postgres
async def test_a_standby_takes_over_from_a_killed_process(pg: Database) -> None:
    assert pg.schema is not None
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SLEEPING_LEADER,
        pg.url,
        pg.schema,
        ELECTION,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.decode().strip() == "leading 1"
        async with opened(pg) as store:
            standby = Replica(store, "replica-b")
            async with replicas(standby):
                await asyncio.sleep(0.2)
                assert standby.epochs == [], "the child process leads"
                killed_at = time.monotonic()

                child.kill()  # SIGKILL: no cleanup, the socket is closed by the kernel
                await child.wait()

                await standby.terms(1)
                took = standby.led_at[0] - killed_at
                message = report("standby led, after SIGKILL of the leading process", took)
                assert took < TAKEOVER_LIMIT_S, message
                assert standby.epochs == [2]
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


# -- SQLite ------------------------------------------------------------------------------------


async def test_on_sqlite_a_single_elector_leads_with_a_new_epoch_each_term(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'chiffon.db'}")
    await store.migrate()
    epochs: list[int] = []
    stop = asyncio.Event()

    async def lead(epoch: int, lost: asyncio.Event) -> None:
        epochs.append(epoch)
        if len(epochs) == 3:
            stop.set()  # the term ends, and with it the elector

    elector = LeaderElector(store, name=ELECTION, holder="embedded", retry_interval=0.01, renew_interval=0.01)
    try:
        await asyncio.wait_for(elector.run(stop, lead), 10)
        changes = await store.list_audit(resource=f"Election/{ELECTION}")
    finally:
        await store.close()

    assert epochs == [1, 2, 3]
    assert elector.lease is None
    # Every leader change is in the audit trail: who, which election, which epoch, why it ended.
    assert [(e.action, e.actor, e.details["epoch"]) for e in reversed(changes)] == [
        ("leader.elected", "embedded", 1),
        ("leader.stepped-down", "embedded", 1),
        ("leader.elected", "embedded", 2),
        ("leader.stepped-down", "embedded", 2),
        ("leader.elected", "embedded", 3),
        ("leader.stepped-down", "embedded", 3),
    ]
    assert changes[0].details["why"] == "lead returned"


async def sqlite_store(tmp_path: Path) -> Store:
    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'chiffon.db'}")
    await store.migrate()
    return store


async def test_a_lead_that_crashes_ends_the_term_and_the_elector_leads_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await sqlite_store(tmp_path)
    epochs: list[int] = []
    stop = asyncio.Event()

    async def lead(epoch: int, lost: asyncio.Event) -> None:
        epochs.append(epoch)
        if len(epochs) == 2:
            stop.set()
            await lost.wait()
        raise RuntimeError("the manager blew up")

    elector = LeaderElector(store, name=ELECTION, holder="embedded", retry_interval=0.01, renew_interval=0.01)
    try:
        await asyncio.wait_for(elector.run(stop, lead), 10)
    finally:
        await store.close()

    assert epochs == [1, 2]
    failures = [r for r in caplog.records if r.getMessage() == "lead failed"]
    assert [str(r.exc_info[1]) if r.exc_info else None for r in failures] == ["the manager blew up"] * 2


async def test_a_lead_that_ignores_lost_is_cancelled_after_the_grace(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path)
    stop = asyncio.Event()
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def stubborn(epoch: int, lost: asyncio.Event) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never looks at lost
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    elector = LeaderElector(store, name=ELECTION, holder="embedded", renew_interval=0.01, grace=0.1)
    try:
        run = asyncio.create_task(elector.run(stop, stubborn))
        await started.wait()
        stopped_at = time.monotonic()
        stop.set()
        await asyncio.wait_for(run, 5)
    finally:
        await store.close()

    assert cancelled == [True]
    assert time.monotonic() - stopped_at < 1
    assert elector.lease is None


async def test_an_unreachable_database_means_standing_by_not_crashing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Port 1 on localhost refuses connections at once.
    store = Store.from_url("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    stop = asyncio.Event()
    led: list[int] = []

    async def lead(epoch: int, lost: asyncio.Event) -> None:
        led.append(epoch)

    elector = LeaderElector(store, name=ELECTION, holder="replica-a", retry_interval=0.02)
    try:
        with caplog.at_level(logging.INFO, logger="chiffon.controllers.leader"):
            run = asyncio.create_task(elector.run(stop, lead))
            await asyncio.sleep(0.3)  # many failed tries
            assert not run.done()
            stop.set()
            await asyncio.wait_for(run, 5)
    finally:
        await store.close()

    assert led == []
    standing_by = [r.getMessage() for r in caplog.records if "standing by" in r.getMessage()]
    assert len(standing_by) == 1, "logged once per change, not once per try"
    assert "127.0.0.1:1" in standing_by[0]
