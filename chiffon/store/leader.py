"""Leader election in the database: a PostgreSQL advisory lock plus an epoch fence.

**Who leads** is decided by a *session* advisory lock,
``pg_try_advisory_lock(key)``, taken on a connection of its own that is held
open for as long as the lease lives. PostgreSQL ties a session lock to its
backend: when the connection goes (the process was killed, the host vanished,
someone ran ``pg_terminate_backend``), the server drops the lock with it and a
standby's next try wins. Nothing has to expire, and no clock is trusted.

* The connection comes from a :class:`~sqlalchemy.pool.NullPool` engine, not
  the store's pool: the lock must never be handed to a request that happens to
  borrow a pooled connection, and closing the lease must really close it.
* The server is asked to probe the leader's socket with TCP keepalives
  (:data:`KEEPALIVE_SETTINGS`), so even a host that disappears without closing
  its sockets frees the lock in about ten seconds instead of the kernel's two
  hours.
* The key is a stable hash of the schema and the election's name: advisory
  locks are per database, and two installations sharing one (or parallel test
  runs in throwaway schemas) must elect separately.

**Which term** is the ``epoch`` in ``leader_leases``: it goes up by one at every
acquisition, in a transaction, before the lease is handed out. A leader stamps
its writes with it (runs carry it), so anything written by an older term can be
recognised. :meth:`LeaderLease.check` confirms, on the held connection and
within a short timeout, that the lock is still granted to *this* backend in
``pg_locks`` and that the row still names this epoch, and records the renewal.

**SQLite** is the embedded mode: one process, no other replica to exclude.
Acquiring always succeeds and still bumps the epoch, so runs are stamped the
same way on both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from chiffon.store.engine import CONNECT_TIMEOUT_S, validate_schema
from chiffon.store.tables import LeaderLeaseRow

log = logging.getLogger(__name__)

#: How long a check or a release may take before the connection counts as dead.
CHECK_TIMEOUT_S = 5.0

#: Server-side TCP keepalives for the lock's connection: first probe after 5 s
#: of silence, then every 2 s, dead after 3 unanswered (about 11 s in all).
KEEPALIVE_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}

_TRY_LOCK = text("SELECT pg_try_advisory_lock(CAST(:key AS BIGINT))")
_UNLOCK = text("SELECT pg_advisory_unlock(CAST(:key AS BIGINT))")
_BACKEND_PID = text("SELECT pg_backend_pid()")
# A bigint advisory key shows in pg_locks split in two 32-bit halves
# (classid = high, objid = low) with objsubid = 1.
_LOCK_HELD = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = pg_backend_pid() AND classid = :high AND objid = :low AND objsubid = 1"
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def advisory_key(name: str, schema: str | None = None) -> int:
    """The advisory-lock key of election ``name`` in ``schema``: stable, positive, 63 bits.

    Positive, so it splits into ``pg_locks``' unsigned halves without sign games.
    """
    digest = hashlib.sha256(f"chiffon-leader\0{schema or ''}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class LeaderRecord:
    """The ``leader_leases`` row of one election: the latest term, as recorded."""

    name: str
    epoch: int
    holder: str
    acquired_at: datetime
    renewed_at: datetime


class LeaderLease(ABC):
    """Leadership of one election, held until :meth:`release` or until lost.

    ``epoch`` is this term's fencing token; ``backend_pid`` is the PostgreSQL
    backend holding the lock (None on SQLite), there for operators and tests.
    """

    def __init__(self, *, name: str, holder: str, epoch: int, backend_pid: int | None) -> None:
        self.name = name
        self.holder = holder
        self.epoch = epoch
        self.backend_pid = backend_pid
        self._released = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} epoch={self.epoch} holder={self.holder!r}>"

    @property
    def released(self) -> bool:
        return self._released

    @abstractmethod
    async def check(self) -> bool:
        """True while the lease is still held; False once released or lost. Never raises."""

    @abstractmethod
    async def release(self) -> None:
        """Give leadership up (idempotent). Never raises: a dead connection has released it already."""


class PostgresLease(LeaderLease):
    """A session advisory lock on a dedicated connection that this object keeps open."""

    def __init__(
        self,
        connection: AsyncConnection,
        *,
        key: int,
        name: str,
        holder: str,
        epoch: int,
        backend_pid: int,
        timeout: float = CHECK_TIMEOUT_S,
    ) -> None:
        super().__init__(name=name, holder=holder, epoch=epoch, backend_pid=backend_pid)
        self._connection = connection
        self._key = key
        self._timeout = timeout
        self._broken = False

    async def check(self) -> bool:
        if self._released or self._broken:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                return await self._confirm_and_renew()
        except Exception as exc:  # a dead or hung connection: either way the lock is not ours
            # Never touch this connection again: SQLAlchemy would quietly
            # reconnect it, and a fresh session holds no lock.
            self._broken = True
            log.warning("leader lease %r (epoch %d) failed its check: %s", self.name, self.epoch, _words(exc))
            return False

    async def _confirm_and_renew(self) -> bool:
        high, low = self._key >> 32, self._key & 0xFFFFFFFF
        async with self._connection.begin():
            held = await self._connection.scalar(_LOCK_HELD, {"high": high, "low": low})
            if not held:
                return False
            # The fence: the row must still name our epoch. It always does while
            # the lock is held; checking costs nothing and catches a broken lock.
            renewed = await self._connection.execute(
                update(LeaderLeaseRow)
                .where(LeaderLeaseRow.name == self.name, LeaderLeaseRow.epoch == self.epoch)
                .values(renewed_at=_utcnow())
            )
            return renewed.rowcount == 1

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._broken:
            await discard(self._connection)
            return
        try:
            async with asyncio.timeout(self._timeout):
                async with self._connection.begin():
                    await self._connection.execute(_UNLOCK, {"key": self._key})
                await self._connection.close()
        except Exception as exc:
            # Closing the session frees the lock too, so a failed unlock only
            # means the connection must be torn down rather than closed politely.
            log.info("leader lease %r: unlock failed (%s); dropping the connection", self.name, _words(exc))
            await discard(self._connection)
        except BaseException:  # cancelled mid-release: still never leave the lock's connection open
            await discard(self._connection)
            raise


class EmbeddedLease(LeaderLease):
    """SQLite's lease: the only process there is leads, until it lets go."""

    async def check(self) -> bool:
        return not self._released

    async def release(self) -> None:
        self._released = True


def leader_engine(url: URL, schema: str | None) -> AsyncEngine:
    """An engine for lock connections: each one new, and closed for good when released."""
    server_settings = {"application_name": "chiffon-leader", **KEEPALIVE_SETTINGS}
    if schema is not None:
        server_settings["search_path"] = validate_schema(schema)
    return create_async_engine(
        url,
        poolclass=NullPool,
        connect_args={"timeout": CONNECT_TIMEOUT_S, "server_settings": server_settings},
    )


async def acquire_on_postgres(
    engine: AsyncEngine, name: str, holder: str, schema: str | None
) -> PostgresLease | None:
    """Try the lock once on a new connection; on success bump the epoch and keep the connection."""
    key = advisory_key(name, schema)
    connection = await engine.connect()
    try:
        # Each step commits at once: a session lock outlives its transaction,
        # and a connection left "idle in transaction" for days would hold back vacuum.
        async with connection.begin():
            locked = bool(await connection.scalar(_TRY_LOCK, {"key": key}))
        if not locked:
            await connection.close()
            return None
        async with connection.begin():
            epoch = await bump_epoch(connection, name, holder)
            pid = int(await connection.scalar(_BACKEND_PID) or 0)
    except BaseException:
        # Dropping the connection also drops the lock, if we got it.
        await discard(connection)
        raise
    return PostgresLease(connection, key=key, name=name, holder=holder, epoch=epoch, backend_pid=pid)


async def bump_epoch(connection: AsyncConnection, name: str, holder: str) -> int:
    """Start a new term of ``name`` for ``holder``: epoch + 1 (1 for a new election); returns it."""
    now = _utcnow()
    insert = postgres_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = insert(LeaderLeaseRow).values(
        name=name, epoch=1, holder=holder, acquired_at=now, renewed_at=now
    )
    statement = statement.on_conflict_do_update(
        index_elements=["name"],
        set_={
            "epoch": LeaderLeaseRow.epoch + 1,
            "holder": statement.excluded.holder,
            "acquired_at": statement.excluded.acquired_at,
            "renewed_at": statement.excluded.renewed_at,
        },
    )
    return int((await connection.execute(statement.returning(LeaderLeaseRow.epoch))).scalar_one())


def record_from_row(row: LeaderLeaseRow) -> LeaderRecord:
    return LeaderRecord(row.name, row.epoch, row.holder, row.acquired_at, row.renewed_at)


async def discard(connection: AsyncConnection) -> None:
    """Tear a connection down without talking to the server (it may be gone)."""
    with contextlib.suppress(Exception):
        await connection.invalidate()
    with contextlib.suppress(Exception):
        await connection.close()


def _words(exc: BaseException) -> str:
    # The driver's own message, without SQLAlchemy's SQL echo and links.
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return " ".join(str(cause).split())[:200] or type(cause).__name__
