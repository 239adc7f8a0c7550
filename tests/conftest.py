"""Fixtures shared by every test: databases on both backends.

* ``database`` is parametrized ``sqlite`` / ``postgresql``: an empty database
  (a file under ``tmp_path``, or a fresh PostgreSQL schema ``chiffon_t_<8 hex>``
  dropped with CASCADE afterwards). ``store`` is a migrated Store on it.
* PostgreSQL is the real server at ``$CHIFFON_TEST_POSTGRES_URL`` (default
  ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``). If it cannot be
  reached the PostgreSQL tests *fail* with the reason; they are skipped only
  when ``CHIFFON_TEST_SKIP_POSTGRES=1`` says so explicitly.
* ``postgres_url`` and ``postgres_schema`` (a factory of isolated schemas) are
  for other tests that need PostgreSQL directly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from chiffon.store import Store, StoreError
from chiffon.store.testing import create_schema, drop_schema

POSTGRES_URL_ENV = "CHIFFON_TEST_POSTGRES_URL"
SKIP_POSTGRES_ENV = "CHIFFON_TEST_SKIP_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]

SchemaFactory = Callable[[], AbstractAsyncContextManager[str]]


@dataclass(frozen=True)
class Database:
    """An empty database for one test: where it is, and how to open a Store on it."""

    backend: str
    url: str
    schema: str | None = None

    def open(self) -> Store:
        return Store.from_url(self.url, schema=self.schema)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the test PostgreSQL server; skips only when told to explicitly."""
    if os.environ.get(SKIP_POSTGRES_ENV) == "1":
        pytest.skip(f"{SKIP_POSTGRES_ENV}=1: PostgreSQL tests skipped on request")
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


@pytest.fixture
def postgres_schema(postgres_url: str) -> SchemaFactory:
    """``async with postgres_schema() as name:`` a fresh schema, dropped (CASCADE) on exit."""

    @asynccontextmanager
    async def isolated() -> AsyncIterator[str]:
        name = f"chiffon_t_{uuid.uuid4().hex[:8]}"
        unusable: StoreError | None = None
        try:
            await create_schema(postgres_url, name)
        except StoreError as exc:
            unusable = exc
        if unusable is not None:
            pytest.fail(
                f"PostgreSQL is required for this test and is not usable: {unusable}. "
                f"Start it, point {POSTGRES_URL_ENV} at it, or set {SKIP_POSTGRES_ENV}=1 to skip.",
                pytrace=False,
            )
        try:
            yield name
        finally:
            await drop_schema(postgres_url, name)

    return isolated


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        yield Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'state' / 'chiffon.db'}")
        return
    url: str = request.getfixturevalue("postgres_url")
    factory: SchemaFactory = request.getfixturevalue("postgres_schema")
    async with factory() as schema:
        yield Database("postgresql", url, schema)


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    """A migrated Store on each backend."""
    opened = database.open()
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()
