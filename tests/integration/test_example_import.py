"""`chiffon up` without --infra-repo imports the bundled example as a git repo: every file committed."""

from __future__ import annotations

from pathlib import Path

from chiffon.cli import bundled_examples, prepare_infra_repo
from chiffon.gitrepo import GitRepo
from chiffon.settings import Settings


async def test_the_bundled_example_is_committed_whole(tmp_path: Path) -> None:
    path = await prepare_infra_repo(Settings(home=tmp_path))

    repo = GitRepo(path)
    tracked = (await repo.git("ls-tree", "-r", "--name-only", "HEAD")).decode().split()
    example = bundled_examples() / "homelab-infra"
    assert "ansible/playbooks/kuma-deployment.yml" in tracked
    assert (path / "README.md").read_bytes() == (example / "README.md").read_bytes()
    assert await repo.uncommitted_files() == [], "files left out of the first commit"
    # A second start keeps what is there.
    assert await prepare_infra_repo(Settings(home=tmp_path)) == path
