"""apply / delete: all-or-nothing commits into the intents repo, then a sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from chiffon.controllers.intents_writer import ApplyError, IntentsWriter, NotFoundError, SubmittedFile
from chiffon.controllers.source import GitSource, SourceConfig
from chiffon.gitrepo import GitRepo
from tests.helpers import ALICE, intent_yaml


def files(**texts: str) -> list[SubmittedFile]:
    return [SubmittedFile(f"{name}.yaml", text.encode()) for name, text in texts.items()]


async def test_apply_commits_the_file_as_the_user_with_comments_intact(writer, intents_repo, store) -> None:
    text = intent_yaml("kuma", comment="keep this comment")
    report = await writer.apply(files(kuma=text), ALICE)
    assert report.committed and [(i.name, i.outcome, i.generation) for i in report.intents] == [
        ("kuma", "created", 1)
    ]
    assert (intents_repo.path / "kuma.yaml").read_text() == text
    info = await intents_repo.commit_info("HEAD")
    assert info.author == ALICE and info.subject == "Apply deploymentintent/kuma"
    assert (await store.get_intent("kuma")).metadata.generation == 1


async def test_apply_twice_is_unchanged_and_commits_nothing(writer, intents_repo) -> None:
    await writer.apply(files(kuma=intent_yaml("kuma")), ALICE)
    head = await intents_repo.resolve("HEAD")
    report = await writer.apply(files(kuma=intent_yaml("kuma")), ALICE)
    assert not report.committed and report.intents[0].outcome == "unchanged"
    assert await intents_repo.resolve("HEAD") == head


async def test_apply_updates_in_place_inside_a_multi_document_file(
    writer, commit, source, intents_repo, store
) -> None:
    original = "# header comment\n" + intent_yaml("one") + "---\n# second\n" + intent_yaml("two")
    await commit({"stack.yaml": original})
    await source.sync()
    report = await writer.apply(files(two=intent_yaml("two", port=4000)), ALICE)
    assert report.intents[0].outcome == "configured" and report.intents[0].generation == 2
    updated = (intents_repo.path / "stack.yaml").read_text()
    assert updated.startswith("# header comment\n" + intent_yaml("one"))
    assert "port: 4000" in updated and not (intents_repo.path / "two.yaml").exists()


async def test_invalid_apply_writes_nothing(writer, intents_repo, store) -> None:
    await writer.apply(files(kuma=intent_yaml("kuma")), ALICE)
    head = await intents_repo.resolve("HEAD")
    bad = intent_yaml("bad", playbook="../../etc/passwd")
    with pytest.raises(ApplyError) as caught:
        await writer.apply(files(good=intent_yaml("good"), bad=bad), ALICE)
    [error] = caught.value.errors
    assert error.source == "bad.yaml" and error.field == "spec.steps[0].playbook" and error.line == 10
    assert await intents_repo.resolve("HEAD") == head
    assert [i.metadata.name for i in await store.list_intents()] == ["kuma"]


async def test_the_same_name_twice_in_one_apply_is_refused(writer) -> None:
    with pytest.raises(ApplyError, match="also defined"):
        await writer.apply(files(a=intent_yaml("kuma"), b=intent_yaml("kuma")), ALICE)


async def test_delete_removes_the_document_and_prunes(writer, commit, source, intents_repo, store) -> None:
    await commit(
        {"stack.yaml": intent_yaml("one") + "---\n" + intent_yaml("two"), "solo.yaml": intent_yaml("solo")}
    )
    await source.sync()
    await writer.delete("two", ALICE)
    await writer.delete("solo", ALICE)
    assert not (intents_repo.path / "solo.yaml").exists()
    assert (intents_repo.path / "stack.yaml").read_text().rstrip("\n-") == intent_yaml("one").rstrip("\n")
    assert [i.metadata.name for i in await store.list_intents()] == ["one"]
    with pytest.raises(NotFoundError):
        await writer.delete("solo", ALICE)


async def test_apply_to_a_remote_pushes_and_survives_a_concurrent_push(
    tmp_path: Path, intents_repo, store
) -> None:
    bare = tmp_path / "remote.git"
    await intents_repo.git("clone", "-q", "--bare", str(intents_repo.path), str(bare))
    source = GitSource(SourceConfig(f"file://{bare}", tmp_path / "checkout", branch="main"), store)
    await source.open()
    writer = IntentsWriter(source)
    other = await GitRepo.clone(f"file://{bare}", tmp_path / "other")
    await other.commit({"proxy.yaml": intent_yaml("proxy").encode()}, "someone else", ALICE)
    await other.push("origin", "main")  # the writer's clone is now behind
    report = await writer.apply(files(kuma=intent_yaml("kuma")), ALICE)
    assert report.committed
    await other.fetch("origin", "main")
    pushed = {e.path for e in await other.list_files("refs/remotes/origin/main")}
    assert {"kuma.yaml", "proxy.yaml"} <= pushed
    assert sorted(i.metadata.name for i in await store.list_intents()) == ["kuma", "proxy"]
