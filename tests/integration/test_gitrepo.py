"""The git adapter against real repositories on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from chiffon.gitrepo import GitError, GitRepo, Identity, is_remote_url
from tests.helpers import ALICE


async def test_init_commits_a_first_file_and_reopens(tmp_path: Path) -> None:
    repo = await GitRepo.init(tmp_path / "r", initial_files={"README.md": b"hi\n"})
    head = await repo.resolve("HEAD")
    again = await GitRepo.init(tmp_path / "r")
    assert head is not None and await again.resolve("HEAD") == head
    assert (tmp_path / "r" / "README.md").read_text() == "hi\n"


async def test_commit_writes_only_given_paths_and_keeps_author(intents_repo: GitRepo) -> None:
    (intents_repo.path / "scratch.yaml").write_text("not committed\n")
    sha = await intents_repo.commit({"a/b.yaml": b"x: 1\n"}, "add b", ALICE)
    info = await intents_repo.commit_info(sha or "HEAD")
    assert info.author == ALICE and info.subject == "add b"
    assert [e.path for e in await intents_repo.list_files("HEAD")] == ["README.md", "a/b.yaml"]
    assert await intents_repo.uncommitted_files() == ["scratch.yaml"]


async def test_commit_of_identical_content_is_a_no_op(intents_repo: GitRepo) -> None:
    await intents_repo.commit({"a.yaml": b"x: 1\n"}, "add", ALICE)
    assert await intents_repo.commit({"a.yaml": b"x: 1\n"}, "again", ALICE) is None


async def test_delete_and_read_blobs_in_one_batch(intents_repo: GitRepo) -> None:
    await intents_repo.commit({"a.yaml": b"a\n", "b.yaml": b"b" * 70_000}, "add", ALICE)
    entries = {e.path: e.blob for e in await intents_repo.list_files("HEAD")}
    blobs = await intents_repo.read_blobs([entries["a.yaml"], entries["b.yaml"]])
    assert blobs[entries["a.yaml"]] == b"a\n" and len(blobs[entries["b.yaml"]]) == 70_000
    await intents_repo.commit({"a.yaml": None}, "remove", ALICE)
    assert await intents_repo.read_file("HEAD", "a.yaml") is None


@pytest.mark.parametrize("bad", ["../escape.yaml", "/etc/passwd", ".git/config", "a/../../x"])
async def test_refuses_paths_outside_the_repository(intents_repo: GitRepo, bad: str) -> None:
    with pytest.raises(GitError, match="refusing to write"):
        await intents_repo.commit({bad: b"x"}, "evil", ALICE)


async def test_symlinks_in_the_tree_are_never_listed(intents_repo: GitRepo) -> None:
    (intents_repo.path / "link.yaml").symlink_to("/etc/passwd")
    await intents_repo.git("add", "link.yaml")
    await intents_repo.git("commit", "-q", "-m", "link", author=ALICE)
    assert "link.yaml" not in [e.path for e in await intents_repo.list_files("HEAD")]


async def test_push_and_fetch_through_a_bare_remote(tmp_path: Path, intents_repo: GitRepo) -> None:
    bare = tmp_path / "remote.git"
    await intents_repo.git("clone", "-q", "--bare", str(intents_repo.path), str(bare))
    clone = await GitRepo.clone(f"file://{bare}", tmp_path / "clone")
    await clone.commit({"new.yaml": b"n: 1\n"}, "from clone", ALICE)
    await clone.push("origin", "main")
    await intents_repo.git("remote", "add", "origin", str(bare))
    await intents_repo.fetch("origin", "main")
    assert await intents_repo.resolve("refs/remotes/origin/main") == await clone.resolve("HEAD")


def test_identity_parsing() -> None:
    assert Identity.parse("Bob <bob@x.org>") == Identity("Bob", "bob@x.org")
    assert Identity.parse("bob@x.org") == Identity("bob", "bob@x.org")
    assert Identity.parse("bob").email == "bob@chiffon.local"


@pytest.mark.parametrize(
    ("location", "remote"),
    [
        ("https://git.example/i.git", True),
        ("git@github.com:me/i.git", True),
        ("file:///srv/i", True),
        ("/srv/intents", False),
        ("relative/dir", False),
    ],
)
def test_is_remote_url(location: str, remote: bool) -> None:
    assert is_remote_url(location) is remote
