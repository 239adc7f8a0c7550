"""Fixtures for the git side: a real intents repo on disk and a source reading it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from chiffon.controllers.intents_writer import IntentsWriter
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo, Identity
from chiffon.settings import Settings
from chiffon.store import Store
from tests.helpers import ALICE
from tests.integration.live import serve


@pytest.fixture
async def intents_repo(tmp_path: Path) -> GitRepo:
    return await GitRepo.init(tmp_path / "intents", initial_files={"README.md": b"# intents\n"})


@pytest.fixture
def commit(intents_repo: GitRepo) -> Callable[..., object]:
    async def _commit(files: dict[str, str | None], message: str = "change", author: Identity = ALICE) -> str:
        changes = {path: (text.encode() if text is not None else None) for path, text in files.items()}
        sha = await intents_repo.commit(changes, message, author)
        assert sha is not None, "the test expected a commit"
        return sha

    return _commit


@pytest.fixture
async def source(intents_repo: GitRepo, store, tmp_path: Path) -> GitSource:  # type: ignore[no-untyped-def]
    config = SourceConfig(location=str(intents_repo.path), checkout_dir=tmp_path / "checkout")
    git_source = GitSource(config, store)
    await git_source.open()
    return git_source


@pytest.fixture
def writer(source: GitSource) -> IntentsWriter:
    return IntentsWriter(source)


@dataclass
class Served:
    """The API on a real socket over the test's store: where it listens, and the store behind it."""

    store: Store
    server: str


@pytest.fixture
async def served(source: GitSource, store: Store, tmp_path: Path) -> AsyncIterator[Served]:
    from chiffon.api.app import create_app
    from chiffon.api.context import ServerContext

    context = ServerContext(Settings(home=tmp_path), store, source, IntentsWriter(source))
    async with serve(create_app(context)) as url:
        yield Served(store, url)
