"""Database failures, in words an operator can act on.

Drivers report an unreachable database in many shapes (``OSError`` from the
socket, asyncpg's own exceptions, SQLAlchemy's ``OperationalError``). The store
turns all of them into one :class:`StoreError` whose message is a single line
naming where the database is — host, port and database, or the SQLite path —
and never the password.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

DEFAULT_POSTGRES_PORT = 5432
MAX_REASON = 300

# asyncpg raises these from connect(); SQLAlchemy passes them through unwrapped
# because they are not DB-API errors of its adapter.
_ASYNCPG_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.TooManyConnectionsError,
)


class StoreError(RuntimeError):
    """The database cannot be used: unreachable, refused, missing or locked."""


def describe_url(url: URL) -> str:
    """Where the database is, without the password: ``postgresql://user@host:port/db``."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///{url.database}" if url.database else "sqlite (in memory)"
    user = f"{url.username}@" if url.username else ""
    host = url.host or "localhost"
    port = url.port or DEFAULT_POSTGRES_PORT
    return f"{url.get_backend_name()}://{user}{host}:{port}/{url.database or ''}"


def is_connection_failure(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not be reached or used at all."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OSError, TimeoutError, OperationalError, *_ASYNCPG_CONNECT_ERRORS))


def store_error(exc: BaseException, url: URL) -> StoreError:
    """A one-line StoreError for ``exc`` that names ``url`` without its password."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = " ".join(str(cause).split())[:MAX_REASON] or type(cause).__name__
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return StoreError(f"cannot use the database at {describe_url(url)}: {reason}")
